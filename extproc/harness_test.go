package extproc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/tokens"
)

// Secrets used by the fixture; tests check that none of them leaks.
const (
	callerKey   = "caller-key-5b1c2d"
	otherKey    = "other-project-key-9e8f"
	providerKey = "prov-api-key-7f3a9c"
	basicPass   = "basic-pass-2d4e6f"
	accessToken = "access-token-8a7b6c"
	refreshTok  = "refresh-token-1f2e3d"
	mismatchKey = "mismatch-key-4c5d6e"
	requestID   = "6c1f8e1a-1111-4222-8333-944455556666"
)

var secrets = []string{callerKey, otherKey, providerKey, basicPass, accessToken, refreshTok, mismatchKey}

const overrides = `providers:
  - name: testKey
    baseURL: https://api.key.test
    authType: apiKey
    apiKey: {header: {name: X-Api-Key, prefix: "Token "}}
    rateLimit:
      resetHeaders: [{name: X-RateLimit-Reset, format: epochSeconds}]
    proxy: true
  - name: testQuery
    baseURL: https://api.query.test/v2
    authType: apiKey
    apiKey: {query: api_key}
    proxy: true
  - name: testBasic
    baseURL: https://api.basic.test
    authType: basic
    proxy: true
  - name: testOAuth
    baseURL: https://{{.workspace}}.oauth.test
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: https://login.oauth.test/authorize
      tokenURL: https://login.oauth.test/token
      authStyle: inHeader
    metadata: [{name: workspace}]
    proxy: true
  - name: testTokenHeader
    baseURL: https://api.tokenheader.test
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: https://login.tokenheader.test/authorize
      tokenURL: https://login.tokenheader.test/token
      authStyle: inParams
      header: {name: X-Access-Token}
    proxy: true
  - name: testNone
    baseURL: https://api.none.test
    authType: none
    proxy: true
  - name: testNoProxy
    baseURL: https://api.noproxy.test
    authType: basic
    proxy: false
`

const manifest = `specVersion: 1.0.0
integrations:
  - {name: key-int, provider: testKey, proxy: {enabled: true}}
  - {name: query-int, provider: testQuery, proxy: {enabled: true}}
  - {name: basic-int, provider: testBasic, proxy: {enabled: true}}
  - {name: oauth-int, provider: testOAuth, proxy: {enabled: true}}
  - {name: none-int, provider: testNone, proxy: {enabled: true}}
  - {name: tokenheader-int, provider: testTokenHeader, proxy: {enabled: true}}
  - {name: disabled-int, provider: testKey}
  - {name: noproxy-int, provider: testNoProxy, proxy: {enabled: true}}
`

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// loadConfig writes a config, manifest and catalog override to a temp dir
// and loads them the way serve does.
func loadConfig(t testing.TB) *config.Config {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"providers.local.yaml": overrides,
		"amp.yaml":             manifest,
		"ampproxy.yaml": `grpc: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
storage: {path: data/db, encryptionKeyFile: data/key, createKey: true}
catalog: {overrides: providers.local.yaml}
projects:
  - id: proj
    apiKeys: [{sha256: ` + sha(callerKey) + `}]
    manifest: amp.yaml
  - id: other
    apiKeys: [{sha256: ` + sha(otherKey) + `}]
    manifest: amp.yaml
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := config.Load(filepath.Join(dir, "ampproxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fakeStore is an in-memory Store.
type fakeStore struct {
	mu    sync.RWMutex
	insts map[string]*tokens.Installation
	conns map[string]*tokens.Connection
}

func (f *fakeStore) Installation(id string) (*tokens.Installation, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	i, ok := f.insts[id]
	return i, ok
}

func (f *fakeStore) InstallationByGroup(project, integration, group string) (*tokens.Installation, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, i := range f.insts {
		if i.ProjectID == project && i.Integration == integration && i.GroupRef == group {
			return i, true
		}
	}
	return nil, false
}

func (f *fakeStore) Connection(id string) (*tokens.Connection, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c, ok := f.conns[id]
	return c, ok
}

func (f *fakeStore) add(c *tokens.Connection, integration, instID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns[c.ID] = c
	f.insts[instID] = &tokens.Installation{ID: instID, ProjectID: c.ProjectID, Integration: integration, GroupRef: c.GroupRef, ConnectionID: c.ID}
}

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// hostileWorkspaces are stored workspace values that testOAuth's templated
// host ({{.workspace}}.oauth.test) must not take (DESIGN §4). The admin API
// refuses them at creation; a store written by hand or by an older version
// may still hold them. newFixture installs the i-th for group "g-ws-i".
var hostileWorkspaces = []string{"evil.com#", "a.b@c", "127.0.0.1", "x/y", "acme:444", ""}

// newFixture returns a store with one installation per test integration,
// all for group "g1" of project "proj".
func newFixture() *fakeStore {
	f := &fakeStore{insts: map[string]*tokens.Installation{}, conns: map[string]*tokens.Connection{}}
	conn := func(id, prov string, cred tokens.Credential, meta map[string]string) *tokens.Connection {
		return &tokens.Connection{ID: id, ProjectID: "proj", Provider: prov, GroupRef: "g1", Metadata: meta, Status: tokens.StatusWorking, Credential: cred}
	}
	f.add(conn("c-key", "testKey", tokens.Credential{APIKey: providerKey}, nil), "key-int", "i-key")
	f.add(conn("c-query", "testQuery", tokens.Credential{APIKey: providerKey}, nil), "query-int", "i-query")
	f.add(conn("c-basic", "testBasic", tokens.Credential{Username: "user", Password: basicPass}, nil), "basic-int", "i-basic")
	f.add(conn("c-oauth", "testOAuth", tokens.Credential{AccessToken: accessToken, RefreshToken: refreshTok, Expiry: now.Add(time.Hour)},
		map[string]string{"workspace": "acme"}), "oauth-int", "i-oauth")
	f.add(conn("c-none", "testNone", tokens.Credential{}, nil), "none-int", "i-none")
	f.add(conn("c-tokenheader", "testTokenHeader", tokens.Credential{AccessToken: accessToken, Expiry: now.Add(time.Hour)}, nil), "tokenheader-int", "i-tokenheader")
	f.add(conn("c-disabled", "testKey", tokens.Credential{APIKey: providerKey}, nil), "disabled-int", "i-disabled")
	f.add(conn("c-noproxy", "testNoProxy", tokens.Credential{Username: "u", Password: basicPass}, nil), "noproxy-int", "i-noproxy")
	// A second group of the same integration, to prove the installation ID
	// wins over the integration+group selector.
	f.add(&tokens.Connection{ID: "c-key2", ProjectID: "proj", Provider: "testKey", GroupRef: "g2", Status: tokens.StatusWorking,
		Credential: tokens.Credential{APIKey: "second-key"}}, "key-int", "i-key-g2")
	expired := conn("c-expired", "testOAuth", tokens.Credential{AccessToken: accessToken, RefreshToken: refreshTok, Expiry: now.Add(-time.Minute)},
		map[string]string{"workspace": "acme"})
	expired.GroupRef = "g-expired"
	f.add(expired, "oauth-int", "i-expired")
	bad := conn("c-bad", "testKey", tokens.Credential{APIKey: providerKey}, nil)
	bad.GroupRef, bad.Status = "g-bad", tokens.StatusBadCredentials
	f.add(bad, "key-int", "i-bad")
	for i, ws := range hostileWorkspaces {
		c := conn(fmt.Sprintf("c-ws-%d", i), "testOAuth", tokens.Credential{AccessToken: accessToken, Expiry: now.Add(time.Hour)},
			map[string]string{"workspace": ws})
		c.GroupRef = fmt.Sprintf("g-ws-%d", i)
		f.add(c, "oauth-int", fmt.Sprintf("i-ws-%d", i))
	}
	// A connection of testQuery behind an installation of key-int (testKey),
	// as left behind when a manifest edit moves an integration to another
	// provider.
	mismatch := conn("c-mismatch", "testQuery", tokens.Credential{APIKey: mismatchKey}, nil)
	mismatch.GroupRef = "g-mismatch"
	f.add(mismatch, "key-int", "i-mismatch")
	f.add(&tokens.Connection{ID: "c-other", ProjectID: "other", Provider: "testKey", GroupRef: "g1", Status: tokens.StatusWorking,
		Credential: tokens.Credential{APIKey: providerKey}}, "key-int", "i-other")
	return f
}

// harness runs a Server over bufconn and plays Envoy's side of the stream.
type harness struct {
	t    testing.TB
	srv  *Server
	conn *grpc.ClientConn
	cli  extprocv3.ExternalProcessorClient
	logs *syncBuffer
}

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

func newHarness(t testing.TB, store Store) *harness {
	return newHarnessWith(t, Options{Store: store})
}

// newHarnessWith fills in the config, clock and logger of o.
func newHarnessWith(t testing.TB, o Options) *harness {
	t.Helper()
	logs := &syncBuffer{}
	o.Config = loadConfig(t)
	o.Now = func() time.Time { return now }
	o.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	srv := New(o)
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		g.Stop()
	})
	return &harness{t: t, srv: srv, conn: cc, cli: extprocv3.NewExternalProcessorClient(cc), logs: logs}
}

// envoyHeaders builds a header map as Envoy sends it: lower-case names,
// pseudo-headers first, values in raw_value only.
func envoyHeaders(path string, kv ...string) *corev3.HeaderMap {
	hs := []*corev3.HeaderValue{
		{Key: ":authority", RawValue: []byte("localhost:10000")},
		{Key: ":path", RawValue: []byte(path)},
		{Key: ":method", RawValue: []byte("GET")},
		{Key: ":scheme", RawValue: []byte("http")},
		{Key: "x-request-id", RawValue: []byte(requestID)},
	}
	for i := 0; i+1 < len(kv); i += 2 {
		hs = append(hs, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &corev3.HeaderMap{Headers: hs}
}

// proxyHeaders is a valid request for installation-by-group of integration.
func proxyHeaders(integration, group string, extra ...string) []string {
	return append([]string{
		"x-amp-proxy-version", "1",
		"x-amp-project-id", "proj",
		"x-api-key", callerKey,
		"x-amp-integration-name", integration,
		"x-amp-group-ref", group,
	}, extra...)
}

// exchange sends request headers and, unless the answer is an immediate
// response, response headers with the given status; it returns both
// answers (the second is nil after an immediate response).
func (h *harness) exchange(req *corev3.HeaderMap, status string) (*extprocv3.ProcessingResponse, *extprocv3.ProcessingResponse) {
	h.t.Helper()
	return h.exchangeResp(req, &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte(status)},
		{Key: "content-type", RawValue: []byte("application/json")},
	}})
}

// exchangeResp is exchange with the provider's whole response header map.
func (h *harness) exchangeResp(req, resp *corev3.HeaderMap) (*extprocv3.ProcessingResponse, *extprocv3.ProcessingResponse) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := h.cli.Process(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: req, EndOfStream: true}}}); err != nil {
		h.t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		h.t.Fatal(err)
	}
	if first.GetImmediateResponse() != nil {
		st.CloseSend()
		return first, nil
	}
	if err := st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: resp}}}); err != nil {
		h.t.Fatal(err)
	}
	second, err := st.Recv()
	if err != nil {
		h.t.Fatal(err)
	}
	st.CloseSend()
	return first, second
}

var discardLogger = slog.New(slog.DiscardHandler)
