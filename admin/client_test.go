package admin

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/throttle"
	"github.com/ampproxy/ampproxy/tokens"
)

// teeWriter copies a response body for the secret check.
type teeWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (w *teeWriter) Write(b []byte) (int, error) {
	w.buf.Write(b)
	return w.ResponseWriter.Write(b)
}

// serve runs the handler on a loopback server and returns a client for
// project p1 with key.
func (e *env) serve(key string) (*Client, *httptest.Server) {
	e.t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &teeWriter{ResponseWriter: w}
		e.h.ServeHTTP(tw, r)
		e.record(tw.buf.String())
	}))
	e.t.Cleanup(srv.Close)
	return &Client{BaseURL: srv.URL + "/", Project: "p1", APIKey: key, HTTP: srv.Client()}, srv
}

func asError(t *testing.T, err error, status int) *Error {
	t.Helper()
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an *admin.Error", err, err)
	}
	if ae.Status != status {
		t.Fatalf("status %d, want %d: %v", ae.Status, status, err)
	}
	return ae
}

func TestClient(t *testing.T) {
	e := newEnv(t)
	c, _ := e.serve(keyP1)
	ctx := context.Background()

	conn, err := c.GenerateConnection(ctx, oauthConn("g1", "na1"))
	if err != nil {
		t.Fatal(err)
	}
	if conn.ID == "" || conn.Provider != "testOAuth" || conn.WorkspaceRef != "na1" || conn.Status != tokens.StatusCreated {
		t.Errorf("connection %+v", conn)
	}
	k1, err := c.GenerateConnection(ctx, keyConn("g1"))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := c.GenerateConnection(ctx, keyConn("g2"))
	if err != nil {
		t.Fatal(err)
	}

	items, next, err := c.ListConnections(ctx, tokens.ConnectionFilter{}, 2, "")
	if err != nil || len(items) != 2 || next == "" {
		t.Fatalf("page 1: %d items, next %q, %v", len(items), next, err)
	}
	items, next, err = c.ListConnections(ctx, tokens.ConnectionFilter{}, 2, next)
	if err != nil || len(items) != 1 || next != "" || items[0].ID != k2.ID {
		t.Fatalf("page 2: %v, next %q, %v", items, next, err)
	}
	items, _, err = c.ListConnections(ctx, tokens.ConnectionFilter{Provider: "testKey", GroupRef: "g1"}, 0, "")
	if err != nil || len(items) != 1 || items[0].ID != k1.ID {
		t.Fatalf("filtered: %v, %v", items, err)
	}
	_, _, err = c.ListConnections(ctx, tokens.ConnectionFilter{}, 0, "not-a-token!")
	if ae := asError(t, err, 400); !strings.Contains(ae.Problem.Detail, "pageToken") {
		t.Errorf("bad token: %v", ae)
	}

	got, err := c.GetConnection(ctx, conn.ID)
	if err != nil || got.ID != conn.ID || !got.CreateTime.Equal(conn.CreateTime) {
		t.Fatalf("get: %+v, %v", got, err)
	}
	_, err = c.GetConnection(ctx, "no/such id?")
	ae := asError(t, err, 404)
	if ae.Problem.Type != "urn:ampproxy:problem:not-found" || ae.Problem.RequestID == "" {
		t.Errorf("problem %+v", ae.Problem)
	}
	if want := "404 Not Found: " + ae.Problem.Detail; ae.Error() != want {
		t.Errorf("Error() = %q, want %q", ae.Error(), want)
	}

	in, err := c.CreateInstallation(ctx, "crm", "g1", "")
	if err != nil || in.ConnectionID != conn.ID || in.Integration != "crm" {
		t.Fatalf("install: %+v, %v", in, err)
	}
	in2, err := c.CreateInstallation(ctx, "keys", "g2", k2.ID)
	if err != nil || in2.ConnectionID != k2.ID {
		t.Fatalf("install with connection: %+v, %v", in2, err)
	}
	_, err = c.CreateInstallation(ctx, "crm", "g1", "")
	asError(t, err, 409)
	_, err = c.CreateInstallation(ctx, "keys", "g1", conn.ID)
	asError(t, err, 400)

	insts, next, err := c.ListInstallations(ctx, "crm", 0, "")
	if err != nil || len(insts) != 1 || next != "" {
		t.Fatalf("list crm: %v %q %v", insts, next, err)
	}
	insts, _, err = c.ListInstallations(ctx, "", 10, "")
	if err != nil || len(insts) != 2 {
		t.Fatalf("list all: %v %v", insts, err)
	}
	gi, err := c.GetInstallation(ctx, "crm", in.ID)
	if err != nil || *gi != *in {
		t.Fatalf("get installation: %+v %v", gi, err)
	}
	_, err = c.GetInstallation(ctx, "keys", in.ID)
	asError(t, err, 404)

	asError(t, c.DeleteConnection(ctx, conn.ID), 409)
	if err := c.DeleteInstallation(ctx, "crm", in.ID); err != nil {
		t.Fatal(err)
	}
	asError(t, c.DeleteInstallation(ctx, "crm", in.ID), 404)
	if err := c.DeleteConnection(ctx, conn.ID); err != nil {
		t.Fatal(err)
	}
	asError(t, c.DeleteConnection(ctx, conn.ID), 404)

	// Validation errors come back naming the field.
	_, err = c.GenerateConnection(ctx, GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic",
		ProviderWorkspaceRef: "evil.com#", BasicAuth: &BasicAuth{Username: "u", Password: secretPassword}})
	if ae := asError(t, err, 400); !strings.Contains(ae.Error(), "providerWorkspaceRef") || strings.Contains(ae.Error(), secretPassword) {
		t.Errorf("error %q", ae)
	}

	for _, call := range []func() error{
		func() error { _, err := c.GetConnection(ctx, ""); return err },
		func() error { return c.DeleteConnection(ctx, "") },
		func() error { _, err := c.CreateInstallation(ctx, "", "g", ""); return err },
		func() error { _, err := c.GetInstallation(ctx, "crm", ""); return err },
		func() error { return c.DeleteInstallation(ctx, "", "x") },
	} {
		if err := call(); err == nil || errors.As(err, new(*Error)) {
			t.Errorf("missing argument: %v", err)
		}
	}
}

func TestClientAuthErrors(t *testing.T) {
	e := newEnv(t)
	for _, key := range []string{"", "wrong-SECRET-key", keyP2} {
		c, _ := e.serve(key)
		_, _, err := c.ListConnections(context.Background(), tokens.ConnectionFilter{}, 0, "")
		ae := asError(t, err, 401)
		if ae.Error() != "401 Unauthorized: unknown project or invalid API key" {
			t.Errorf("Error() = %q", ae.Error())
		}
		if key != "" && strings.Contains(ae.Error(), key) {
			t.Errorf("error carries the key")
		}
	}
	c, _ := e.serve(keyP1)
	c.Project = "p9"
	_, err := c.GetConnection(context.Background(), "x")
	asError(t, err, 401)

	var empty Client
	if _, err := empty.GetConnection(context.Background(), "x"); err == nil {
		t.Error("client without BaseURL worked")
	}
}

// TestClientNonProblemBodies: whatever a proxy in front answers, the
// client returns an *Error with something readable.
func TestClientNonProblemBodies(t *testing.T) {
	tests := []struct {
		name, ctype, body string
		status            int
		want              string
	}{
		{"plain text", "text/plain; charset=utf-8", "upstream connect error\n", 502, "502 Bad Gateway: upstream connect error"},
		{"html", "text/html", "<html><body>oops</body></html>", 503, "503 Service Unavailable: unexpected text/html response (not application/problem+json)"},
		{"empty", "", "", 500, "500 Internal Server Error: empty response body"},
		{"json not a problem", "application/json", `{"error":"nope"}`, 400, `400 Bad Request: {"error":"nope"}`},
		{"long text", "text/plain", strings.Repeat("x", 500), 429, "429 Too Many Requests: " + strings.Repeat("x", 200) + "…"},
		{"control characters", "text/plain", "a\x1b[31mb\r\nc", 404, "404 Not Found: a [31mb  c"},
		{"problem without status", "application/problem+json", `{"title":"Teapot","detail":"short and stout"}`, 418, "418 Teapot: short and stout"},
		{"unexpected success status", "application/json", `{}`, 200, "200 OK: {}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				w.Header().Set(RequestIDHeader, "rid-1")
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := &Client{BaseURL: srv.URL, Project: "p1", APIKey: keyP1, HTTP: srv.Client()}
			err := c.DeleteConnection(context.Background(), "x")
			ae := asError(t, err, tt.status)
			if ae.Error() != tt.want {
				t.Errorf("Error() = %q, want %q", ae.Error(), tt.want)
			}
			if ae.Problem.RequestID != "rid-1" || ae.Problem.Status != tt.status {
				t.Errorf("problem %+v", ae.Problem)
			}
		})
	}
}

func TestClientTransportError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := &Client{BaseURL: url, Project: "p1", APIKey: keyP1}
	_, err := c.GetConnection(context.Background(), "x")
	if err == nil || errors.As(err, new(*Error)) || strings.Contains(err.Error(), keyP1) {
		t.Errorf("err = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.GetConnection(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

// TestClientColonPath checks the colon route over a real socket, where the
// request line carries connections:generate literally.
func TestClientColonPath(t *testing.T) {
	e := newEnv(t)
	_, srv := e.serve(keyP1)
	req, _ := http.NewRequest("POST", srv.URL+genPath, strings.NewReader(mustJSON(t, keyConn("g1"))))
	req.Header.Set(APIKeyHeader, keyP1)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// An escaped colon names the same resource.
	req, _ = http.NewRequest("POST", srv.URL+"/v1/projects/p1/connections%3Agenerate", strings.NewReader(mustJSON(t, keyConn("g2"))))
	req.Header.Set(APIKeyHeader, keyP1)
	resp, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("escaped colon: status %d", resp.StatusCode)
	}
}

// fakeLocks reports fixed windows, as throttle.Table.Check would.
type fakeLocks map[string]throttle.Window

func (f fakeLocks) Check(connID string, now time.Time) (throttle.Window, bool) {
	w, ok := f[connID]
	return w, ok && now.Before(w.Until)
}

// TestConnectionView: GET …/connections/{id} carries rateLimitedUntil and
// retryable while the connection's window is open, and neither once it is
// closed; the client returns them, and the raw JSON omits them.
func TestConnectionView(t *testing.T) {
	e := newEnv(t)
	open := e.generate(keyConn("g-open"))
	locked := e.generate(keyConn("g-locked"))
	closed := e.generate(keyConn("g-closed"))
	never := e.generate(keyConn("g-never"))
	now := e.clock.Now()
	locks := fakeLocks{
		open.ID:   {ConnectionID: open.ID, Provider: "testKey", Until: now.Add(90 * time.Second), Retryable: true},
		locked.ID: {ConnectionID: locked.ID, Provider: "testKey", Until: now.Add(24 * time.Hour), Retryable: false},
		closed.ID: {ConnectionID: closed.ID, Provider: "testKey", Until: now.Add(-time.Second), Retryable: true},
	}
	e.h = New(Options{Store: e.store, Config: e.cfg.Load, Logger: slog.New(slog.DiscardHandler), Now: e.clock.Now, Lockouts: locks})
	c, _ := e.serve(keyP1)

	for _, tc := range []struct {
		name      string
		id        string
		until     time.Time // zero: no window
		retryable bool
	}{
		{"open, retryable", open.ID, now.Add(90 * time.Second), true},
		{"open, not retryable", locked.ID, now.Add(24 * time.Hour), false},
		{"expired", closed.ID, time.Time{}, false},
		{"never locked", never.ID, time.Time{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := c.GetConnection(context.Background(), tc.id)
			if err != nil {
				t.Fatal(err)
			}
			if v.Connection == nil || v.ID != tc.id || v.Provider != "testKey" {
				t.Fatalf("connection %+v", v.Connection)
			}
			raw := e.do("GET", "/v1/projects/p1/connections/"+tc.id, keyP1, "").Body.String()
			if tc.until.IsZero() {
				if v.RateLimitedUntil != nil || v.Retryable != nil {
					t.Errorf("closed window shown: until %v, retryable %v", v.RateLimitedUntil, v.Retryable)
				}
				if strings.Contains(raw, "rateLimitedUntil") || strings.Contains(raw, "retryable") {
					t.Errorf("closed window in the JSON: %s", raw)
				}
				return
			}
			if v.RateLimitedUntil == nil || !v.RateLimitedUntil.Equal(tc.until) || v.Retryable == nil || *v.Retryable != tc.retryable {
				t.Errorf("view until %v retryable %v, want %s %t", v.RateLimitedUntil, v.Retryable, tc.until, tc.retryable)
			}
			want := `"rateLimitedUntil":"` + tc.until.Format(time.RFC3339) + `"`
			if !strings.Contains(raw, want) || !strings.Contains(raw, `"retryable":`+strconv.FormatBool(tc.retryable)) {
				t.Errorf("JSON %s lacks %s and retryable %t", raw, want, tc.retryable)
			}
		})
	}
}
