package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/tokens"
)

// TestAdminCLI drives `ampproxy admin` against a running serve: the CLI
// is a client of the admin API, in table and JSON output, and failures
// print the problem's detail with a non-zero exit.
func TestAdminCLI(t *testing.T) {
	dir := t.TempDir()
	cfg := goodConfig(t, dir, "127.0.0.1:0")
	admin, logs := startServe(t, cfg)
	server := "http://" + admin
	t.Setenv("AMPPROXY_SERVER", server)
	t.Setenv("AMPPROXY_PROJECT", "demo")
	t.Setenv("AMPPROXY_API_KEY", "test-key")

	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("hs_ACCESS_TOKEN_must_not_print\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	expires := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	code, out, errOut := runMain(t, "admin", "connections", "generate", "-o", "json", "--provider", "hubspot",
		"--group-ref", "acme", "--consumer-ref", "alice", "--access-token", "@"+tokenFile,
		"--refresh-token", "hs_REFRESH_TOKEN_must_not_print", "--expires-at", expires)
	if code != 0 {
		t.Fatalf("generate: exit %d: %s", code, errOut)
	}
	var conn tokens.Connection
	if err := json.Unmarshal([]byte(out), &conn); err != nil || conn.ID == "" || conn.Provider != "hubspot" {
		t.Fatalf("generate output %q: %v", out, err)
	}
	if strings.Contains(out, "must_not_print") {
		t.Error("a token was printed")
	}

	code, out, errOut = runMain(t, "admin", "connections", "list")
	if code != 0 || !strings.Contains(out, "PROVIDER") || !strings.Contains(out, conn.ID) {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runMain(t, "admin", "connections", "get", conn.ID, "-o", "json")
	if code != 0 || !strings.Contains(out, `"groupRef": "acme"`) {
		t.Fatalf("get: exit %d\n%s", code, out)
	}

	code, out, errOut = runMain(t, "admin", "installations", "create", "--integration", "crm", "--group-ref", "acme", "-o", "json")
	var inst tokens.Installation
	if code != 0 || json.Unmarshal([]byte(out), &inst) != nil || inst.ConnectionID != conn.ID {
		t.Fatalf("install: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runMain(t, "admin", "installations", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, inst.ID) {
		t.Fatalf("installations list: exit %d\n%s", code, out)
	}

	// Failures: the problem detail, exit 1.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"admin", "installations", "create", "--integration", "crm", "--group-ref", "acme"}, "409"},
		{[]string{"admin", "connections", "delete", conn.ID}, "409"},
		{[]string{"admin", "connections", "get", "no-such-id"}, "404"},
		{[]string{"admin", "connections", "generate", "--provider", "nope", "--group-ref", "g", "--consumer-ref", "c"}, "provider"},
		{[]string{"admin", "connections", "list", "--api-key", "wrong"}, "401"},
	} {
		code, _, errOut := runMain(t, tc.args...)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want 1 and %q", tc.args, code, errOut, tc.want)
		}
	}
	// Usage mistakes: exit 2, nothing sent.
	for _, args := range [][]string{
		{"admin", "connections"},
		{"admin", "connections", "frob"},
		{"admin", "connections", "get"},
		{"admin", "installations", "get", "x"},
		{"admin", "connections", "list", "-o", "yaml"},
	} {
		if code, _, _ := runMain(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}

	if code, out, errOut := runMain(t, "admin", "installations", "delete", "--integration", "crm", inst.ID); code != 0 || !strings.Contains(out, "deleted installation") {
		t.Fatalf("delete installation: exit %d %s%s", code, out, errOut)
	}
	if code, _, errOut := runMain(t, "admin", "connections", "delete", conn.ID); code != 0 {
		t.Fatalf("delete connection: exit %d %s", code, errOut)
	}
	if strings.Contains(logs.String(), "must_not_print") || strings.Contains(logs.String(), "test-key") {
		t.Error("serve logged a secret")
	}
}

// TestDev runs `ampproxy dev` and sends a request through its data plane:
// ampproxy answers it (here with the 400 for a missing header), which
// proves the data plane reaches the ext_proc server.
func TestDev(t *testing.T) {
	dir := t.TempDir()
	sdir, err := os.MkdirTemp("", "amp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })
	cfg := goodConfig(t, dir, "unix://"+filepath.Join(sdir, "x.sock"))
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"dev", "--config", cfg, "--listen", "127.0.0.1:0"}, io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("dev did not stop")
		}
	})
	url := waitForLog(t, logs, "send requests to ", done)
	url = strings.Fields(url + " ")[0]
	resp, err := http.Get(url + "/v1/anything")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "x-amp-proxy-version is required") {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}

// TestReload: a broken manifest is rejected and the running config stays
// in force; a good one takes effect in the admin API without a restart.
// internal/e2e's TestReload checks the data path through the binary.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	cfg := goodConfig(t, dir, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- Main(ctx, []string{"serve", "--config", cfg}, io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	t.Setenv("AMPPROXY_SERVER", "http://"+waitForLog(t, logs, `"admin":"`, done))
	t.Setenv("AMPPROXY_PROJECT", "demo")
	t.Setenv("AMPPROXY_API_KEY", "test-key")
	if code, _, errOut := runMain(t, "admin", "connections", "generate", "--provider", "hubspot", "--group-ref", "acme",
		"--consumer-ref", "a", "--access-token", "tok"); code != 0 {
		t.Fatalf("generate: %s", errOut)
	}
	manifest := filepath.Join(dir, "amp.yaml")
	if err := os.WriteFile(manifest, []byte("specVersion: 1.0.0\nintegrations:\n  - name: Not Valid\n    provider: hubspot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, logs, "config reload rejected", done)
	if code, _, errOut := runMain(t, "admin", "installations", "create", "--integration", "crm", "--group-ref", "acme"); code != 0 {
		t.Fatalf("old config not in force after a rejected reload: %s", errOut)
	}
	good := "specVersion: 1.0.0\nintegrations:\n  - name: crm\n    provider: hubspot\n    proxy: {enabled: true}\n  - name: crm2\n    provider: hubspot\n"
	if err := os.WriteFile(manifest, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, logs, "config reloaded", done)
	if code, _, errOut := runMain(t, "admin", "installations", "create", "--integration", "crm2", "--group-ref", "acme"); code != 0 {
		t.Fatalf("new integration not in force after reload: %s", errOut)
	}
}

// TestAdminCLIConnect drives `ampproxy admin connect` and `connections
// update` against a running serve whose project has a HubSpot app: connect
// prints the provider's authorization URL (nothing is sent to HubSpot), the
// callback answers on the same listener, and update replaces a credential.
func TestAdminCLIConnect(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "amp.yaml", "specVersion: 1.0.0\nintegrations:\n  - {name: crm, provider: hubspot, proxy: {enabled: true}}\n")
	writeFile(t, dir, "hubspot.secret", "hs_CLIENT_SECRET_must_not_print\n")
	h := sha256.Sum256([]byte("test-key"))
	cfg := writeFile(t, dir, "ampproxy.yaml", `grpc:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
storage:
  path: data/ampproxy.db
  encryptionKeyFile: data/master.key
  createKey: true
log:
  format: json
projects:
  - id: demo
    apiKeys:
      - sha256: `+hex.EncodeToString(h[:])+`
    manifest: amp.yaml
    providerApps:
      hubspot:
        clientID: hs-client
        clientSecretFile: hubspot.secret
        scopes: [crm.objects.contacts.read, oauth]
        redirectURL: https://amp.example/v1/oauth/callback
`)
	admin, logs := startServe(t, cfg)
	server := "http://" + admin
	t.Setenv("AMPPROXY_SERVER", server)
	t.Setenv("AMPPROXY_PROJECT", "demo")
	t.Setenv("AMPPROXY_API_KEY", "test-key")
	var outputs []string

	code, out, errOut := runMain(t, "admin", "connect", "--provider", "hubspot", "--group-ref", "acme", "--consumer-ref", "alice")
	outputs = append(outputs, out, errOut)
	if code != 0 {
		t.Fatalf("connect: exit %d: %s", code, errOut)
	}
	if strings.Count(out, "\n") != 1 || !strings.Contains(errOut, "Open this URL") {
		t.Errorf("connect printed %q, hint %q", out, errOut)
	}
	u, err := url.Parse(strings.TrimSpace(out))
	if err != nil || u.Host != "app.hubspot.com" || u.Path != "/oauth/authorize" {
		t.Fatalf("connect printed %q", out)
	}
	q := u.Query()
	if q.Get("state") == "" || q.Get("client_id") != "hs-client" || q.Get("redirect_uri") != "https://amp.example/v1/oauth/callback" ||
		q.Get("scope") != "crm.objects.contacts.read oauth" || q.Has("code_challenge") {
		t.Errorf("authorization URL %s", u)
	}

	code, out, errOut = runMain(t, "admin", "connect", "-o", "json", "--provider", "hubspot", "--group-ref", "acme", "--consumer-ref", "alice")
	outputs = append(outputs, out, errOut)
	var js struct {
		AuthorizationURL string `json:"authorizationUrl"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil || !strings.Contains(js.AuthorizationURL, "state=") {
		t.Fatalf("connect -o json: exit %d %q %s", code, out, errOut)
	}

	// The callback is served on the admin listener, without a key; a
	// state it did not issue is a 400 page.
	resp, err := http.Get(server + "/v1/oauth/callback?state=forged&code=x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(body), "no longer valid") {
		t.Errorf("callback: %d %s", resp.StatusCode, body)
	}

	// connections update on a generated connection.
	code, out, errOut = runMain(t, "admin", "connections", "generate", "-o", "json", "--provider", "hubspot",
		"--group-ref", "acme", "--consumer-ref", "alice", "--access-token", "hs_OLD_TOKEN_must_not_print")
	var conn tokens.Connection
	if code != 0 || json.Unmarshal([]byte(out), &conn) != nil {
		t.Fatalf("generate: exit %d %s%s", code, out, errOut)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("hs_NEW_TOKEN_must_not_print\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runMain(t, "admin", "connections", "update", conn.ID, "-o", "json",
		"--access-token", "@"+tokenFile, "--refresh-token", "hs_REFRESH_must_not_print")
	outputs = append(outputs, out, errOut)
	var up tokens.Connection
	if code != 0 || json.Unmarshal([]byte(out), &up) != nil || up.ID != conn.ID || up.Status != tokens.StatusCreated || !up.UpdateTime.After(conn.UpdateTime.Add(-time.Second)) {
		t.Fatalf("update: exit %d %s%s", code, out, errOut)
	}
	code, out, _ = runMain(t, "admin", "connections", "update", conn.ID, "--access-token", "hs_NEWER_TOKEN_must_not_print")
	outputs = append(outputs, out)
	if code != 0 || !strings.Contains(out, conn.ID) || !strings.Contains(out, "STATUS") {
		t.Fatalf("update table: exit %d %s", code, out)
	}

	// Failures: the problem detail, exit 1.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"admin", "connect", "--provider", "nope", "--group-ref", "g", "--consumer-ref", "c"}, "not in the provider catalog"},
		{[]string{"admin", "connect", "--provider", "hubspot", "--group-ref", "g", "--consumer-ref", "c", "--api-key", "wrong"}, "401"},
		{[]string{"admin", "connect", "--provider", "hubspot", "--group-ref", "g", "--consumer-ref", "c", "--project", "other"}, "401"},
		{[]string{"admin", "connections", "update", "no-such-id", "--access-token", "x"}, "404"},
		{[]string{"admin", "connections", "update", conn.ID, "--provider-key", "x"}, "does not fit provider hubspot"},
		{[]string{"admin", "connections", "update", conn.ID, "--workspace", "acme"}, "providerWorkspaceRef must be absent"},
	} {
		code, out, errOut := runMain(t, tc.args...)
		outputs = append(outputs, out, errOut)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want 1 and %q", tc.args, code, errOut, tc.want)
		}
	}
	// Usage mistakes: exit 2, nothing sent.
	for _, args := range [][]string{
		{"admin", "connect"},
		{"admin", "connect", "--group-ref", "g", "--consumer-ref", "c"},
		{"admin", "connect", "extra", "--provider", "hubspot", "--group-ref", "g", "--consumer-ref", "c"},
		{"admin", "connections", "update"},
		{"admin", "connections", "update", conn.ID},
		{"admin", "connections", "update", conn.ID, "--provider-key", "a", "--access-token", "b"},
		{"admin", "connections", "update", conn.ID, "--access-token", "b", "--expires-at", "tomorrow"},
	} {
		if code, _, _ := runMain(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}

	all := strings.Join(outputs, "\n") + logs.String()
	for _, s := range []string{"must_not_print", "test-key"} {
		if strings.Contains(all, s) {
			t.Errorf("%q printed or logged", s)
		}
	}
	if st := q.Get("state"); strings.Contains(logs.String(), st) {
		t.Error("serve logged a state")
	}
}

// TestPrintConnectionView: `admin connections get` shows the lockout
// window in the table's last two columns (dashes while none is open) and
// in -o json.
func TestPrintConnectionView(t *testing.T) {
	created := time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)
	until := time.Date(2026, 3, 1, 12, 1, 30, 0, time.UTC)
	conn := &tokens.Connection{ID: "c-1", Provider: "github", GroupRef: "acme", ConsumerRef: "alice",
		AuthScheme: "oauth2", Status: tokens.StatusWorking, CreateTime: created}
	yes, no := true, false
	for _, tc := range []struct {
		name               string
		view               admin.ConnectionView
		untilCol, retryCol string
		json, notJSON      []string
	}{
		{"open, retryable", admin.ConnectionView{Connection: conn, RateLimitedUntil: &until, Retryable: &yes},
			"2026-03-01T12:01:30Z", "true",
			[]string{`"rateLimitedUntil": "2026-03-01T12:01:30Z"`, `"retryable": true`, `"id": "c-1"`}, nil},
		{"open, not retryable", admin.ConnectionView{Connection: conn, RateLimitedUntil: &until, Retryable: &no},
			"2026-03-01T12:01:30Z", "false",
			[]string{`"retryable": false`}, nil},
		{"no window", admin.ConnectionView{Connection: conn}, "-", "-",
			[]string{`"id": "c-1"`}, []string{"rateLimitedUntil", "retryable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var table, js strings.Builder
			if err := printConnectionView("table", &table, &tc.view); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(table.String()), "\n")
			if len(lines) != 2 {
				t.Fatalf("table:\n%s", table.String())
			}
			head, row := strings.Fields(lines[0]), strings.Fields(lines[1])
			if len(head) != len(row) || head[len(head)-2] != "RATE-LIMITED-UNTIL" || head[len(head)-1] != "RETRYABLE" {
				t.Fatalf("table:\n%s", table.String())
			}
			if row[0] != "c-1" || row[len(row)-2] != tc.untilCol || row[len(row)-1] != tc.retryCol {
				t.Errorf("row %q, want ID c-1 and window %s %s", row, tc.untilCol, tc.retryCol)
			}
			if err := printConnectionView("json", &js, &tc.view); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.json {
				if !strings.Contains(js.String(), w) {
					t.Errorf("JSON lacks %q:\n%s", w, js.String())
				}
			}
			for _, w := range tc.notJSON {
				if strings.Contains(js.String(), w) {
					t.Errorf("JSON has %q:\n%s", w, js.String())
				}
			}
		})
	}
}
