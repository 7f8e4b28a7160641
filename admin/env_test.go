package admin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/problem"
)

// TestMain fails the run when a test leaves a goroutine behind.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintln(os.Stderr, "leaked goroutines:\n"+leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits briefly for goroutines of closed servers and
// transports to finish, then reports any that did not.
func leakedGoroutines() string {
	var stacks string
	for range 100 {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var bad []string
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if strings.Contains(g, "leakedGoroutines") {
				continue // this one
			}
			if strings.Contains(g, "net/http") || strings.Contains(g, "ampproxy/admin") {
				bad = append(bad, g)
			}
		}
		if len(bad) == 0 {
			return ""
		}
		stacks = strings.Join(bad, "\n\n")
		// Polling for other goroutines to exit, not waiting for time to pass.
		time.Sleep(20 * time.Millisecond)
	}
	return stacks
}

// Keys and secrets. Every string in secrets must never show up in a
// response body or a log line; env checks that when each test ends.
const (
	keyP1 = "key-p1-SECRET-a81c3f"
	keyP2 = "key-p2-SECRET-b92d40"

	secretAPIKey       = "SECRET-apikey-5d1e"
	secretPassword     = "SECRET-password-77ab"
	secretClientSecret = "SECRET-clientsecret-90cc"
	secretAccess       = "SECRET-access-3e4f"
	secretRefresh      = "SECRET-refresh-6a7b"
)

var secrets = []string{keyP1, keyP2, secretAPIKey, secretPassword, secretClientSecret, secretAccess, secretRefresh}

const testProviders = `providers:
  - name: testKey
    displayName: Test API key
    baseURL: https://api.testkey.example
    authType: apiKey
    apiKey: {header: {name: Authorization, prefix: "Bearer "}}
    proxy: true
  - name: testBasic
    baseURL: https://{{.workspace}}.basic.example
    authType: basic
    metadata:
      - {name: workspace}
    proxy: true
  - name: testOAuth
    baseURL: https://{{.workspace}}.oauth.example
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: https://{{.workspace}}.oauth.example/authorize
      tokenURL: https://{{.workspace}}.oauth.example/token
      authStyle: inHeader
    metadata:
      - {name: workspace}
    proxy: true
  - name: testPKCE
    baseURL: https://api.pkce.example
    authType: oauth2
    oauth2:
      grantType: authorizationCodePKCE
      authURL: https://login.pkce.example/authorize
      tokenURL: https://login.pkce.example/token
      authStyle: inParams
  - name: testClient
    baseURL: https://api.client.example
    authType: oauth2
    oauth2: {grantType: clientCredentials, tokenURL: https://login.client.example/token, authStyle: inParams}
  - name: testRegion
    baseURL: https://{{.region}}.region.example/{{.tenant}}
    authType: apiKey
    apiKey: {query: api_key}
    metadata:
      - {name: region, default: eu}
      - {name: tenant}
  - name: testNone
    baseURL: https://api.none.example
    authType: none
  - name: testWhole
    baseURL: https://{{.workspace}}
    authType: basic
    metadata:
      - {name: workspace}
`

// The manifest installs providers of several auth types; "open" is not
// enabled for proxying and must still be installable.
const testManifest = `specVersion: 1.0.0
integrations:
  - {name: crm, displayName: CRM, provider: testOAuth, proxy: {enabled: true}}
  - {name: keys, provider: testKey, proxy: {enabled: true}}
  - {name: open, provider: testNone}
  - {name: basic-sync, provider: testBasic}
`

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadConfig writes a config, manifest and catalog override into a temp
// dir and loads it the way serve does. p1's API keys are keys.
func loadConfig(t *testing.T, keysP1 ...string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "providers.test.yaml", testProviders)
	writeFile(t, dir, "amp.yaml", testManifest)
	var p1 strings.Builder
	for _, k := range keysP1 {
		p1.WriteString("      - sha256: " + sha(k) + "\n")
	}
	cfg := `grpc:
  listen: unix:///tmp/ampproxy-admin-test.sock
admin:
  listen: 127.0.0.1:0
storage:
  path: data/ampproxy.db
  encryptionKeyFile: data/master.key
  createKey: true
catalog:
  overrides: providers.test.yaml
projects:
  - id: p1
    apiKeys:
` + p1.String() + `    manifest: amp.yaml
    providerApps:
      testOAuth: {clientID: app-client}
  - id: p2
    apiKeys:
      - sha256: ` + sha(keyP2) + `
    manifest: amp.yaml
`
	c, err := config.Load(writeFile(t, dir, "ampproxy.yaml", cfg))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	defaultOnce sync.Once
	defaultCfg  *config.Config
)

// defaultConfig loads p1 with keyP1 once for the whole run: parsing the
// embedded catalog is the slow part of a test, and a loaded config is
// immutable and holds no open files.
func defaultConfig(t *testing.T) *config.Config {
	defaultOnce.Do(func() { defaultCfg = loadConfig(t, keyP1) })
	if defaultCfg == nil {
		t.Fatal("default config failed to load")
	}
	return defaultCfg
}

// clock is a controllable time source; each reading advances it a second
// so that creation order is visible in times.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

// syncBuffer is a log sink the handler and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	t     *testing.T
	h     http.Handler
	store *fakeStore
	clock *clock
	logs  *syncBuffer
	cfg   atomic.Pointer[config.Config]

	mu     sync.Mutex
	bodies []string // every response body, checked for secrets at the end
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, clock: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, logs: &syncBuffer{}}
	e.store = newFakeStore(e.clock.Now)
	e.cfg.Store(defaultConfig(t))
	e.h = New(Options{
		Store:  e.store,
		Config: e.cfg.Load,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    e.clock.Now,
	})
	t.Cleanup(e.checkNoSecrets)
	return e
}

// checkNoSecrets greps every response body and the whole log for every
// secret the tests use.
func (e *env) checkNoSecrets() {
	e.mu.Lock()
	all := strings.Join(e.bodies, "\n")
	e.mu.Unlock()
	logs := e.logs.String()
	for _, s := range secrets {
		if strings.Contains(all, s) {
			e.t.Errorf("secret %q appears in a response body", s)
		}
		if strings.Contains(logs, s) {
			e.t.Errorf("secret %q appears in the log", s)
		}
	}
}

func (e *env) record(body string) {
	e.mu.Lock()
	e.bodies = append(e.bodies, body)
	e.mu.Unlock()
}

// do serves one request. key "" sends no x-api-key.
func (e *env) do(method, path, key, body string, hdr ...string) *httptest.ResponseRecorder {
	e.t.Helper()
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		r.Header.Set(APIKeyHeader, key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	e.record(w.Body.String())
	for k, vs := range w.Header() {
		e.record(k + ": " + strings.Join(vs, ","))
	}
	return w
}

// mustJSON marshals v for a request body.
func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decodeProblem checks the problem+json shape of an error answer: all five
// members, status equal to the HTTP status, requestId equal to the header.
func decodeProblem(t *testing.T, w *httptest.ResponseRecorder) problem.Problem {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != problem.ContentType {
		t.Fatalf("Content-Type = %q, want %q (body %s)", ct, problem.ContentType, w.Body)
	}
	var raw map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &raw); err != nil {
		t.Fatalf("problem body: %v: %s", err, w.Body)
	}
	for _, k := range []string{"type", "title", "status", "detail", "requestId"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("problem lacks %q: %s", k, w.Body)
		}
	}
	var p problem.Problem
	json.Unmarshal(w.Body.Bytes(), &p)
	if p.Status != w.Code {
		t.Errorf("problem status %d, HTTP status %d", p.Status, w.Code)
	}
	if p.RequestID == "" || p.RequestID != w.Header().Get(RequestIDHeader) {
		t.Errorf("requestId %q, header %q", p.RequestID, w.Header().Get(RequestIDHeader))
	}
	if !strings.HasPrefix(p.Type, problem.TypePrefix) {
		t.Errorf("type %q", p.Type)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", w.Header().Get("Cache-Control"))
	}
	return p
}

// wantProblem checks status, slug and that detail holds every want.
func wantProblem(t *testing.T, w *httptest.ResponseRecorder, status int, slug string, want ...string) problem.Problem {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	p := decodeProblem(t, w)
	if slug != "" && p.Slug() != slug {
		t.Errorf("slug %q, want %q", p.Slug(), slug)
	}
	for _, s := range want {
		if !strings.Contains(p.Detail, s) {
			t.Errorf("detail %q does not contain %q", p.Detail, s)
		}
	}
	return p
}

// decodeJSON checks a success answer's headers and decodes it.
func decodeJSON(t *testing.T, w *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", w.Header().Get("Cache-Control"))
	}
	if v != nil {
		if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
			t.Fatalf("decode: %v: %s", err, w.Body)
		}
	}
}
