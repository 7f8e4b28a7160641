package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/tokens"
)

// planes lists the data planes the suite runs against: always envoytest,
// and a real envoy when one is on PATH.
func planes(t *testing.T) []planeKind {
	kinds := []planeKind{planeEnvoytest}
	if envoyPath() != "" {
		kinds = append(kinds, planeEnvoy)
	}
	return kinds
}

func (k planeKind) String() string {
	if k == planeEnvoy {
		return "envoy"
	}
	return "envoytest"
}

// TestRealEnvoyPresence says plainly when the real-envoy half is skipped
// (TestMain also prints it, for runs without -v).
func TestRealEnvoyPresence(t *testing.T) {
	if envoyPath() == "" {
		t.Skip(envoyNote())
	}
}

func TestParseEnvoyVersion(t *testing.T) {
	for _, tc := range []struct {
		out   string
		v     [3]int
		ok    bool
		older bool
	}{
		{"\nenvoy  version: 6b9db09c69965d5bfb37bdd29693f8b7f9e9e9ec/1.32.1/Clean/RELEASE/BoringSSL\n", [3]int{1, 32, 1}, true, false},
		{"envoy  version: 0fc7/1.35.0/Clean/RELEASE/BoringSSL-FIPS", [3]int{1, 35, 0}, true, false},
		{"envoy  version: 0fc7/1.36.0-dev/Modified/DEBUG/BoringSSL", [3]int{1, 36, 0}, true, false},
		{"envoy  version: 0fc7/1.31.9/Clean/RELEASE/BoringSSL", [3]int{1, 31, 9}, true, true},
		{"envoy  version: 0fc7/1.9.0/Clean/RELEASE/BoringSSL", [3]int{1, 9, 0}, true, true},
		{"envoy  version: 0fc7/2.0.0/Clean/RELEASE/BoringSSL", [3]int{2, 0, 0}, true, false},
		{"envoy: unknown flag", [3]int{}, false, false},
	} {
		v, ok := parseEnvoyVersion(tc.out)
		if v != tc.v || ok != tc.ok {
			t.Errorf("%q: %v %v, want %v %v", tc.out, v, ok, tc.v, tc.ok)
		}
		if ok && olderThan(v, minEnvoy) != tc.older {
			t.Errorf("%v older than %v: %v, want %v", v, minEnvoy, !tc.older, tc.older)
		}
	}
}

// fixtures are the connections and installations most tests use.
type fixtures struct {
	keyConn, queryConn, basicConn, oauthConn *tokens.Connection
	keyInst                                  *tokens.Installation
	accessToken                              string
}

func (e *env) setup() fixtures {
	e.t.Helper()
	ctx := context.Background()
	var f fixtures
	gen := func(req admin.GenerateConnectionRequest) *tokens.Connection {
		e.t.Helper()
		c, err := e.admin.GenerateConnection(ctx, req)
		if err != nil {
			e.t.Fatalf("generate %s: %v", req.Provider, err)
		}
		return c
	}
	install := func(integration, group, connID string) *tokens.Installation {
		e.t.Helper()
		in, err := e.admin.CreateInstallation(ctx, integration, group, connID)
		if err != nil {
			e.t.Fatalf("install %s: %v", integration, err)
		}
		return in
	}
	f.keyConn = gen(admin.GenerateConnectionRequest{GroupRef: "acme", ConsumerRef: "alice", Provider: "sampleKey", APIKey: providerAPIKey})
	f.queryConn = gen(admin.GenerateConnectionRequest{GroupRef: "acme", ConsumerRef: "alice", Provider: "sampleQuery", APIKey: providerAPIKey})
	f.basicConn = gen(admin.GenerateConnectionRequest{GroupRef: "acme", ConsumerRef: "alice", Provider: "sampleBasic",
		BasicAuth: &admin.BasicAuth{Username: basicUser, Password: basicPassword}})
	access, refresh := e.provider.IssueTokens(time.Hour)
	f.accessToken = access
	e.tokens = append(e.tokens, access, refresh)
	oa := &admin.OAuth2AuthorizationCode{}
	oa.AccessToken.Token = access
	oa.AccessToken.ExpiresAt = time.Now().Add(time.Hour)
	oa.RefreshToken.Token = refresh
	f.oauthConn = gen(admin.GenerateConnectionRequest{GroupRef: "acme", ConsumerRef: "alice", Provider: "sampleOAuth", OAuth2AuthorizationCode: oa})
	f.keyInst = install("key", "acme", "")
	install("query", "acme", "")
	install("basic", "acme", "")
	install("oauth", "acme", "")
	install("disabled", "acme", f.keyConn.ID)
	noproxy := gen(admin.GenerateConnectionRequest{GroupRef: "acme", ConsumerRef: "alice", Provider: "sampleNoProxy", APIKey: providerAPIKey})
	install("noproxy", "acme", noproxy.ID)
	if e.kind == planeEnvoytest {
		ws := gen(admin.GenerateConnectionRequest{GroupRef: "acme", ConsumerRef: "alice", Provider: "sampleWorkspace",
			ProviderWorkspaceRef: "acme-eu", APIKey: providerAPIKey})
		install("ws", "acme", ws.ID)
	}
	return f
}

// TestForwarding covers every auth style, the templated host, query
// merging and the rule that the installation ID wins.
func TestForwarding(t *testing.T) {
	for _, kind := range planes(t) {
		t.Run(kind.String(), func(t *testing.T) {
			e := newEnv(t, kind)
			f := e.setup()

			t.Run("api key in header", func(t *testing.T) {
				h := proxyHeaders("key", "acme")
				h["authorization"] = "Bearer caller-supplied"
				got := e.forward(call{path: "/v1/contacts?limit=10", headers: h})
				if got.Headers["x-api-key"] != providerAPIKey || got.Path != "/v1/contacts" || got.Query != "limit=10" {
					t.Errorf("provider saw %+v", got)
				}
				if _, ok := got.Headers["authorization"]; ok {
					t.Error("the caller's authorization header reached the provider")
				}
			})
			t.Run("api key in query", func(t *testing.T) {
				got := e.forward(call{path: "/v1/search?q=a%20b&api_key=callers&x=1", headers: proxyHeaders("query", "acme")})
				q, err := url.ParseQuery(got.Query)
				if err != nil {
					t.Fatal(err)
				}
				if q.Get("api_key") != providerAPIKey || len(q["api_key"]) != 1 || q.Get("q") != "a b" || q.Get("x") != "1" {
					t.Errorf("provider saw query %q", got.Query)
				}
			})
			t.Run("basic", func(t *testing.T) {
				got := e.forward(call{path: "/v1/me", headers: proxyHeaders("basic", "acme")})
				want := "Basic " + base64.StdEncoding.EncodeToString([]byte(basicUser+":"+basicPassword))
				if got.Headers["authorization"] != want {
					t.Errorf("provider saw authorization %q", mask(got.Headers["authorization"]))
				}
			})
			t.Run("oauth2 bearer", func(t *testing.T) {
				got := e.forward(call{method: "DELETE", path: "/v1/things/7", headers: proxyHeaders("oauth", "acme")})
				if got.Headers["authorization"] != "Bearer "+f.accessToken || got.Method != "DELETE" {
					t.Errorf("provider saw %s %q", got.Method, mask(got.Headers["authorization"]))
				}
			})
			t.Run("templated workspace host", func(t *testing.T) {
				if kind != planeEnvoytest {
					t.Skip("templated hosts need a resolver for *.sample.test, which a real envoy does not have here")
				}
				got := e.forward(call{path: "/v1/tickets", headers: proxyHeaders("ws", "acme")})
				if got.Host != "acme-eu.sample.test" || got.Workspace != "acme-eu" {
					t.Errorf("provider saw host %q", got.Host)
				}
			})
			t.Run("installation ID wins", func(t *testing.T) {
				// A second installation of the same provider for another
				// group, with its own connection; the ID names it while the
				// integration+group headers name the first one.
				other, err := e.admin.GenerateConnection(context.Background(), admin.GenerateConnectionRequest{
					GroupRef: "globex", ConsumerRef: "bob", Provider: "sampleKey", APIKey: providerAPIKey + "-globex"})
				if err != nil {
					t.Fatal(err)
				}
				in, err := e.admin.CreateInstallation(context.Background(), "key-other", "globex", other.ID)
				if err != nil {
					t.Fatal(err)
				}
				h := proxyHeaders("key", "acme")
				h["x-amp-installation-id"] = in.ID
				resp, body := e.do(call{path: "/v1/contacts", headers: h})
				// The sample provider accepts only its one API key, so the
				// globex key is answered 401 by the provider itself: proof
				// that the ID's connection was used.
				if resp.StatusCode != 401 || !strings.Contains(string(body), "unauthorized") {
					t.Fatalf("status %d: %s", resp.StatusCode, body)
				}
				if got := e.provider.LastRequest(); got == nil || got.Header.Get("X-Api-Key") != providerAPIKey+"-globex" {
					t.Error("the installation named by ID was not the one used")
				}
				h["x-amp-installation-id"] = f.keyInst.ID
				e.forward(call{path: "/v1/contacts", headers: h})
			})
		})
	}
}

// TestContractErrors covers the rows of DESIGN §2's error table that this
// build produces, through the whole stack, and checks the provider is not
// reached.
func TestContractErrors(t *testing.T) {
	for _, kind := range planes(t) {
		t.Run(kind.String(), func(t *testing.T) {
			e := newEnv(t, kind)
			e.setup()
			with := func(base map[string]string, kv ...string) map[string]string {
				h := map[string]string{}
				for k, v := range base {
					h[k] = v
				}
				for i := 0; i < len(kv); i += 2 {
					if kv[i+1] == "" {
						delete(h, kv[i])
					} else {
						h[kv[i]] = kv[i+1]
					}
				}
				return h
			}
			good := proxyHeaders("key", "acme")
			for _, tc := range []struct {
				name    string
				headers map[string]string
				status  int
				slug    string
			}{
				{"missing version", with(good, "x-amp-proxy-version", ""), 400, "missing-header"},
				{"wrong version", with(good, "x-amp-proxy-version", "2"), 400, "unsupported-version"},
				{"missing selector", with(good, "x-amp-group-ref", ""), 400, "missing-selector"},
				{"bad rate-limiter mode", with(good, "x-amp-rate-limiter-mode", "fast"), 400, "invalid-header"},
				{"wrong api key", with(good, "x-api-key", "amp_wrong"), 401, "unauthenticated"},
				{"unknown project", with(good, "x-amp-project-id", "nope"), 401, "unauthenticated"},
				{"proxy disabled", proxyHeaders("disabled", "acme"), 403, "proxy-disabled"},
				{"provider not proxyable", proxyHeaders("noproxy", "acme"), 403, "provider-not-proxyable"},
				{"installation not found", proxyHeaders("key", "nobody"), 404, "installation-not-found"},
				{"unknown installation id", with(good, "x-amp-installation-id", "00000000-0000-4000-8000-000000000000"), 404, "installation-not-found"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					before := e.provider.TotalHits()
					resp, body := e.do(call{path: "/v1/contacts", headers: tc.headers})
					checkProblem(t, resp, body, tc.status, tc.slug)
					if e.provider.TotalHits() != before {
						t.Error("the provider was reached")
					}
				})
			}
			// sampleOAuth's token endpoint is the sample provider's, but
			// the project has no OAuth2 app for it: the token cannot be
			// refreshed until the operator adds one, which is a 503 with
			// Retry-After (the log names providerApps), not a 424.
			t.Run("expired token, no app to refresh it", func(t *testing.T) {
				access, refresh := e.provider.IssueTokens(time.Hour)
				oa := &admin.OAuth2AuthorizationCode{}
				oa.AccessToken.Token = access
				oa.AccessToken.ExpiresAt = time.Now().Add(-time.Minute)
				oa.RefreshToken.Token = refresh
				c, err := e.admin.GenerateConnection(context.Background(), admin.GenerateConnectionRequest{
					GroupRef: "expired", ConsumerRef: "carol", Provider: "sampleOAuth", OAuth2AuthorizationCode: oa})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := e.admin.CreateInstallation(context.Background(), "oauth", "expired", c.ID); err != nil {
					t.Fatal(err)
				}
				before := e.provider.TotalHits()
				resp, body := e.do(call{path: "/v1/contacts", headers: proxyHeaders("oauth", "expired")})
				checkProblem(t, resp, body, 503, "token-unavailable")
				if resp.Header.Get("Retry-After") == "" {
					t.Error("no Retry-After")
				}
				if e.provider.TotalHits() != before || strings.Contains(string(body), access) {
					t.Error("the provider was reached, or the token echoed")
				}
			})
			e.checkLogs()
		})
	}
}

// TestBodies sends bodies of several content types and a 20 MB streamed
// body; each must arrive byte for byte.
func TestBodies(t *testing.T) {
	for _, kind := range planes(t) {
		t.Run(kind.String(), func(t *testing.T) {
			e := newEnv(t, kind)
			e.setup()
			var mp bytes.Buffer
			mw := multipart.NewWriter(&mp)
			fw, _ := mw.CreateFormFile("file", "report.csv")
			io.WriteString(fw, "id,name\n1,Acme\n")
			mw.WriteField("note", "quarterly")
			mw.Close()
			binary := make([]byte, 64<<10)
			for i := range binary {
				binary[i] = byte(i * 7)
			}
			for _, tc := range []struct {
				method, contentType string
				body                []byte
			}{
				{"POST", "application/json", []byte(`{"name":"Acme","tags":["a","b"],"n":1}`)},
				{"PUT", "application/x-www-form-urlencoded", []byte(url.Values{"name": {"Acme & Co"}, "n": {"1"}}.Encode())},
				{"POST", mw.FormDataContentType(), mp.Bytes()},
				{"PUT", "application/octet-stream", binary},
				{"PATCH", "text/plain; charset=utf-8", []byte("héllo\r\nworld")},
			} {
				t.Run(tc.contentType, func(t *testing.T) {
					h := proxyHeaders("key", "acme")
					h["content-type"] = tc.contentType
					got := e.forward(call{method: tc.method, path: "/v1/upload", headers: h, body: bytes.NewReader(tc.body)})
					sum := sha256.Sum256(tc.body)
					if got.Method != tc.method || got.ContentType != tc.contentType || got.BodyBytes != int64(len(tc.body)) || got.BodySHA256 != hex.EncodeToString(sum[:]) {
						t.Errorf("provider saw %s %q %d bytes %s", got.Method, got.ContentType, got.BodyBytes, got.BodySHA256)
					}
				})
			}
			t.Run("20 MB streamed", func(t *testing.T) {
				const size = 20 << 20
				h := sha256.New()
				pr, pw := io.Pipe()
				go func() {
					chunk := make([]byte, 32<<10)
					for sent := 0; sent < size; sent += len(chunk) {
						for i := range chunk {
							chunk[i] = byte(sent + i)
						}
						h.Write(chunk)
						if _, err := pw.Write(chunk); err != nil {
							return
						}
					}
					pw.Close()
				}()
				hd := proxyHeaders("key", "acme")
				hd["content-type"] = "application/octet-stream"
				got := e.forward(call{method: "PUT", path: "/v1/blobs/big", headers: hd, body: pr})
				if got.BodyBytes != size || got.BodySHA256 != hex.EncodeToString(h.Sum(nil)) {
					t.Errorf("provider got %d bytes, sha %s", got.BodyBytes, got.BodySHA256)
				}
			})
		})
	}
}

// TestRestartKeepsAdminData: connections and installations made through
// the admin API survive a restart, and proxying works right after.
func TestRestartKeepsAdminData(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	f := e.setup()
	e.restart()
	c, err := e.admin.GetConnection(context.Background(), f.keyConn.ID)
	if err != nil || c.Provider != "sampleKey" || c.GroupRef != "acme" {
		t.Fatalf("after restart: %+v, %v", c, err)
	}
	got := e.forward(call{path: "/v1/contacts", headers: proxyHeaders("oauth", "acme")})
	if got.Headers["authorization"] != "Bearer "+f.accessToken {
		t.Error("OAuth2 token not usable after restart")
	}
	e.checkLogs()
}

// TestAmpproxyKilled: with ampproxy gone the data plane fails closed: the
// caller gets 500 and nothing reaches the provider.
func TestAmpproxyKilled(t *testing.T) {
	for _, kind := range planes(t) {
		t.Run(kind.String(), func(t *testing.T) {
			e := newEnv(t, kind)
			e.setup()
			e.forward(call{path: "/v1/contacts", headers: proxyHeaders("key", "acme")})
			e.amp.stop(syscall.SIGKILL)
			before := e.provider.TotalHits()
			resp, body := e.do(call{path: "/v1/contacts", headers: proxyHeaders("key", "acme")})
			if resp.StatusCode != 500 {
				t.Errorf("status %d: %s", resp.StatusCode, body)
			}
			if e.provider.TotalHits() != before {
				t.Error("a request reached the provider while ampproxy was down")
			}
		})
	}
}

// TestAdminAPI runs the admin API's error paths against the binary.
func TestAdminAPI(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	ctx := context.Background()
	bad := *e.admin
	bad.APIKey = "amp_wrong"
	_, _, err := bad.ListConnections(ctx, admin.ConnectionFilter{}, 0, "")
	if status(err) != 401 {
		t.Errorf("wrong key: %v", err)
	}
	_, err = e.admin.GenerateConnection(ctx, admin.GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "c", Provider: "sampleWorkspace",
		ProviderWorkspaceRef: "evil.com#", APIKey: providerAPIKey})
	if status(err) != 400 || !strings.Contains(err.Error(), "providerWorkspaceRef") {
		t.Errorf("hostile workspace: %v", err)
	}
	c, err := e.admin.GenerateConnection(ctx, admin.GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "c", Provider: "sampleKey", APIKey: providerAPIKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateInstallation(ctx, "key", "g", c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.CreateInstallation(ctx, "key", "g", c.ID); status(err) != 409 {
		t.Errorf("second installation: %v", err)
	}
	if err := e.admin.DeleteConnection(ctx, c.ID); status(err) != 409 {
		t.Errorf("delete connection in use: %v", err)
	}
	resp, err := http.Post("http://"+e.amp.admin+"/v1/oauth-connect", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("oauth-connect without a key: %d", resp.StatusCode)
	}
	e.checkLogs()
}

func status(err error) int {
	if ae, ok := err.(*admin.Error); ok {
		return ae.Status
	}
	return 0
}

// checkLogs fails the test when ampproxy logged a secret. ampproxy
// writes its log out every second, so this sees what it has written so
// far; the whole log is checked again once it stops (startAmpproxy).
func (e *env) checkLogs() {
	e.t.Helper()
	e.checkLogText(e.amp.logs.String())
}

// checkLogText fails the test when logs hold a secret.
func (e *env) checkLogText(logs string) {
	e.t.Helper()
	for _, s := range append(secrets, e.tokens...) {
		if s != "" && strings.Contains(logs, s) {
			e.t.Errorf("ampproxy logged a secret")
		}
	}
}

// mask hides all but the first characters of a credential in failure
// messages.
func mask(s string) string {
	if len(s) > 10 {
		return s[:10] + "…"
	}
	return s
}
