package admin

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/tokens"
)

const (
	secretAppCode = "SECRET-appsecret-code-41f0"
	secretAppPKCE = "SECRET-appsecret-pkce-93e2"
	redirectURL   = "https://amp.example/v1/oauth/callback"
	connectPath   = "/v1/oauth-connect"
)

// asClient is an OAuth2 client the test authorization server knows.
type asClient struct {
	secret string
	style  string // inHeader or inParams
	pkce   bool
}

// asGrant is an authorization code the server issued.
type asGrant struct {
	clientID, redirectURI, challenge string
	used                             bool
}

// authServer is a small OAuth2 authorization server (RFC 6749 §4.1 with
// RFC 7636 S256): /authorize issues a code by redirecting, /token checks
// the code, the redirect URI, the client's authentication in the style
// its registration says and the PKCE verifier, and answers tokens with an
// instance_url. mode makes /token fail in chosen ways.
type authServer struct {
	srv     *httptest.Server
	clients map[string]asClient

	mu          sync.Mutex
	mode        string // "", "invalid_grant", "500", "garbage", "hangup"
	instanceURL string
	grants      map[string]*asGrant
	n           int
	exchanges   int
	rejections  []string
	issued      []string // every code, verifier and token, for the secret check
}

func newAuthServer(t *testing.T) *authServer {
	as := &authServer{
		clients: map[string]asClient{
			"code-client": {secret: secretAppCode, style: "inHeader"},
			"pkce-client": {secret: secretAppPKCE, style: "inParams", pkce: true},
			"ws-client":   {style: "inHeader"},
		},
		grants:      map[string]*asGrant{},
		instanceURL: "https://acme.api.example",
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", as.authorize)
	mux.HandleFunc("POST /token", as.token)
	as.srv = httptest.NewServer(mux)
	t.Cleanup(as.srv.Close)
	return as
}

func (as *authServer) set(mode, instanceURL string) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.mode, as.instanceURL = mode, instanceURL
}

func (as *authServer) reject(w http.ResponseWriter, status int, code, why string) {
	as.rejections = append(as.rejections, why)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":%q,"error_description":%q}`, code, why)
}

func (as *authServer) authorize(w http.ResponseWriter, r *http.Request) {
	as.mu.Lock()
	defer as.mu.Unlock()
	q := r.URL.Query()
	c, ok := as.clients[q.Get("client_id")]
	switch {
	case !ok:
		as.reject(w, 400, "unauthorized_client", "unknown client_id")
		return
	case q.Get("response_type") != "code" || q.Get("state") == "" || q.Get("redirect_uri") == "":
		as.reject(w, 400, "invalid_request", "response_type, state and redirect_uri are required")
		return
	case c.pkce && (q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43):
		as.reject(w, 400, "invalid_request", "PKCE S256 challenge required")
		return
	case !c.pkce && (q.Has("code_challenge") || q.Has("code_challenge_method")):
		as.reject(w, 400, "invalid_request", "unexpected PKCE challenge")
		return
	}
	as.n++
	code := fmt.Sprintf("SECRET-code-%d-7d1a", as.n)
	as.issued = append(as.issued, code)
	as.grants[code] = &asGrant{clientID: q.Get("client_id"), redirectURI: q.Get("redirect_uri"), challenge: q.Get("code_challenge")}
	back, _ := url.Parse(q.Get("redirect_uri"))
	bq := back.Query()
	bq.Set("code", code)
	bq.Set("state", q.Get("state"))
	back.RawQuery = bq.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func (as *authServer) token(w http.ResponseWriter, r *http.Request) {
	as.mu.Lock()
	defer as.mu.Unlock()
	as.exchanges++
	if err := r.ParseForm(); err != nil {
		as.reject(w, 400, "invalid_request", "unreadable form")
		return
	}
	if v := r.PostForm.Get("code_verifier"); v != "" {
		as.issued = append(as.issued, v)
	}
	switch as.mode {
	case "500":
		http.Error(w, "upstream exploded", 500)
		return
	case "garbage":
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte("<html>maintenance</html>"))
		return
	case "hangup":
		c, _, _ := http.NewResponseController(w).Hijack()
		c.Close()
		return
	case "invalid_grant":
		as.reject(w, 400, "invalid_grant", "code revoked")
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "authorization_code" {
		as.reject(w, 400, "unsupported_grant_type", "want authorization_code")
		return
	}
	// Client authentication, in exactly the registered style.
	var id, secret string
	user, pass, basic := r.BasicAuth()
	g := as.grants[f.Get("code")]
	if g == nil {
		as.reject(w, 400, "invalid_grant", "unknown code")
		return
	}
	c := as.clients[g.clientID]
	switch c.style {
	case "inHeader":
		if !basic || f.Has("client_secret") {
			as.reject(w, 401, "invalid_client", "want client credentials in the Authorization header only")
			return
		}
		id, _ = url.QueryUnescape(user)
		secret, _ = url.QueryUnescape(pass)
	case "inParams":
		if basic {
			as.reject(w, 401, "invalid_client", "want client credentials in the body only")
			return
		}
		id, secret = f.Get("client_id"), f.Get("client_secret")
	}
	if id != g.clientID || secret != c.secret {
		as.reject(w, 401, "invalid_client", "wrong client id or secret")
		return
	}
	if g.used {
		as.reject(w, 400, "invalid_grant", "code already used")
		return
	}
	g.used = true
	if f.Get("redirect_uri") != g.redirectURI {
		as.reject(w, 400, "invalid_grant", "redirect_uri differs from the authorization request")
		return
	}
	if c.pkce {
		sum := sha256.Sum256([]byte(f.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			as.reject(w, 400, "invalid_grant", "PKCE verifier does not match")
			return
		}
	} else if f.Has("code_verifier") {
		as.reject(w, 400, "invalid_request", "unexpected code_verifier")
		return
	}
	at := fmt.Sprintf("SECRET-at-%d-c3b9", as.n)
	rt := fmt.Sprintf("SECRET-rt-%d-e85f", as.n)
	as.issued = append(as.issued, at, rt)
	resp := map[string]any{
		"access_token": at, "refresh_token": rt, "token_type": "Bearer", "expires_in": 3600,
		"scope": "api refresh_token",
	}
	if as.instanceURL != "" {
		resp["instance_url"] = as.instanceURL
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

func (as *authServer) secrets() []string {
	as.mu.Lock()
	defer as.mu.Unlock()
	return slices.Clone(as.issued)
}

func (as *authServer) exchangeCount() int {
	as.mu.Lock()
	defer as.mu.Unlock()
	return as.exchanges
}

// oauthProviders are catalog entries whose endpoints are the test server.
const oauthProviders = `providers:
  - name: asCode
    baseURL: https://{{.workspace}}.api.example
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: AS/authorize
      tokenURL: AS/token
      authStyle: inHeader
      tokenMetadataFields:
        - {field: instance_url, metadata: workspace, extract: subdomain}
    metadata:
      - {name: workspace}
  - name: asPKCE
    baseURL: https://{{.workspace}}.pkce.example/{{.region}}
    authType: oauth2
    oauth2:
      grantType: authorizationCodePKCE
      authURL: AS/authorize?prompt=consent
      tokenURL: AS/token
      authStyle: inParams
      tokenMetadataFields:
        - {field: instance_url, metadata: workspace, extract: subdomain}
    metadata:
      - {name: workspace}
      - {name: region}
  - name: asWsAuth
    baseURL: https://{{.workspace}}.ws.example
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: AS/{{.workspace}}/authorize
      tokenURL: AS/token
      authStyle: inHeader
      tokenMetadataFields:
        - {field: instance_url, metadata: workspace, extract: subdomain}
    metadata:
      - {name: workspace}
  - name: asNoApp
    baseURL: https://api.noapp.example
    authType: oauth2
    oauth2: {grantType: authorizationCode, authURL: AS/authorize, tokenURL: AS/token, authStyle: inHeader}
  - name: asNoRedirect
    baseURL: https://api.noredirect.example
    authType: oauth2
    oauth2: {grantType: authorizationCode, authURL: AS/authorize, tokenURL: AS/token, authStyle: inHeader}
  - name: asClient
    baseURL: https://api.client.example
    authType: oauth2
    oauth2: {grantType: clientCredentials, tokenURL: AS/token, authStyle: inParams}
  - name: asKey
    baseURL: https://api.key.example
    authType: apiKey
    apiKey: {header: {name: X-Key}}
`

// oauthConfig loads a config whose catalog points at as; p1 has
// providerApps for the test server's clients, p2 for asCode only.
func oauthConfig(t *testing.T, as *authServer, withApps bool) *config.Config {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "providers.test.yaml", strings.ReplaceAll(oauthProviders, "AS/", as.srv.URL+"/"))
	writeFile(t, dir, "amp.yaml", "specVersion: 1.0.0\nintegrations:\n  - {name: crm, provider: asCode}\n")
	writeFile(t, dir, "code.secret", secretAppCode+"\n")
	writeFile(t, dir, "pkce.secret", secretAppPKCE)
	apps := ""
	if withApps {
		apps = `    providerApps:
      asCode: {clientID: code-client, clientSecretFile: code.secret, scopes: [api, refresh_token], redirectURL: ` + redirectURL + `}
      asPKCE: {clientID: pkce-client, clientSecretFile: pkce.secret, scopes: [read], redirectURL: ` + redirectURL + `}
      asWsAuth: {clientID: ws-client, redirectURL: ` + redirectURL + `}
      asNoRedirect: {clientID: x}
      asClient: {clientID: c, redirectURL: ` + redirectURL + `}
`
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
      - sha256: ` + sha(keyP1) + `
    manifest: amp.yaml
` + apps + `  - id: p2
    apiKeys:
      - sha256: ` + sha(keyP2) + `
    manifest: amp.yaml
    providerApps:
      asCode: {clientID: code-client, clientSecretFile: code.secret, redirectURL: ` + redirectURL + `}
`
	c, err := config.Load(writeFile(t, dir, "ampproxy.yaml", cfg))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// oauthEnv is an env whose catalog points at a running authServer.
type oauthEnv struct {
	*env
	as     *authServer
	states []string
}

func newOAuthEnv(t *testing.T) *oauthEnv {
	t.Helper()
	as := newAuthServer(t)
	e := &env{t: t, clock: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}, logs: &syncBuffer{}}
	e.store = newFakeStore(e.clock.Now)
	e.cfg.Store(oauthConfig(t, as, true))
	e.h = New(Options{
		Store:  e.store,
		Config: e.cfg.Load,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    e.clock.Now,
	})
	o := &oauthEnv{env: e, as: as}
	t.Cleanup(o.checkNoSecrets)
	t.Cleanup(e.checkNoSecrets)
	return o
}

// checkNoSecrets greps every response and the log for the app secrets and
// for every code, verifier and token the server issued, and the log for
// every state.
func (o *oauthEnv) checkNoSecrets() {
	o.mu.Lock()
	all := strings.Join(o.bodies, "\n")
	o.mu.Unlock()
	logs := o.logs.String()
	for _, s := range append(o.as.secrets(), secretAppCode, secretAppPKCE) {
		if strings.Contains(all, s) {
			o.t.Errorf("secret %q appears in a response", s)
		}
		if strings.Contains(logs, s) {
			o.t.Errorf("secret %q appears in the log", s)
		}
	}
	for _, s := range o.states {
		if strings.Contains(logs, s) {
			o.t.Errorf("state %q appears in the log", s)
		}
	}
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (o *oauthEnv) pending() int { return o.h.(*server).connects.len() }

// connect starts a flow and returns the authorization URL, failing the
// test on any answer but 200.
func (o *oauthEnv) connect(req OAuthConnectRequest) *url.URL {
	o.t.Helper()
	if req.ProjectIDOrName == "" {
		req.ProjectIDOrName = "p1"
	}
	w := o.do("POST", connectPath, keyP1, mustJSON(o.t, req))
	if w.Code != 200 {
		o.t.Fatalf("connect: %d %s", w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" || w.Header().Get("Cache-Control") != "no-store" {
		o.t.Errorf("connect headers %v", w.Header())
	}
	u, err := url.Parse(strings.TrimSpace(w.Body.String()))
	if err != nil {
		o.t.Fatal(err)
	}
	o.states = append(o.states, u.Query().Get("state"))
	return u
}

// authorize plays the browser at the provider: it opens the
// authorization URL and returns the callback path the provider redirects
// to.
func (o *oauthEnv) authorize(u *url.URL) string {
	o.t.Helper()
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(u.String())
	if err != nil {
		o.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		o.t.Fatalf("authorize: %d (%v)", resp.StatusCode, o.as.rejections)
	}
	back, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || back.Scheme+"://"+back.Host+back.Path != redirectURL {
		o.t.Fatalf("authorize redirected to %q", resp.Header.Get("Location"))
	}
	return CallbackPath + "?" + back.RawQuery
}

// callback opens the callback path the way the browser does: no key.
// pointTokenURL makes the pending connect flows exchange their codes at
// url instead of the catalog's token URL.
func (o *oauthEnv) pointTokenURL(url string) {
	s := o.h.(*server)
	s.connects.mu.Lock()
	defer s.connects.mu.Unlock()
	for _, pc := range s.connects.byState {
		pc.tokenURL = url
	}
}

func (o *oauthEnv) callback(path string) *httptest.ResponseRecorder {
	o.t.Helper()
	return o.do("GET", path, "", "")
}

// wantPage checks an HTML page's status, security headers and content.
func wantPage(t *testing.T, w *httptest.ResponseRecorder, status int, want ...string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d: %s", w.Code, status, w.Body)
	}
	h := w.Header()
	for k, v := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-store",
		"Referrer-Policy":        "no-referrer",
		"X-Content-Type-Options": "nosniff",
		"X-Frame-Options":        "DENY",
	} {
		if h.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, h.Get(k), v)
		}
	}
	csp := h.Get("Content-Security-Policy")
	if !strings.HasPrefix(csp, "default-src 'none'") || strings.Contains(csp, "script-src") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	for _, s := range want {
		if !strings.Contains(w.Body.String(), s) {
			t.Errorf("page lacks %q:\n%s", s, w.Body)
		}
	}
}

func TestOAuthConnectURL(t *testing.T) {
	o := newOAuthEnv(t)
	as := o.as.srv.URL
	for _, tt := range []struct {
		name     string
		req      OAuthConnectRequest
		endpoint string
		clientID string
		scope    string
		pkce     bool
		extra    map[string]string
	}{
		{name: "authorization code", req: OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "u1"},
			endpoint: as + "/authorize", clientID: "code-client", scope: "api refresh_token"},
		{name: "authorization code with workspace", req: OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "u1", ProviderWorkspaceRef: "login"},
			endpoint: as + "/authorize", clientID: "code-client", scope: "api refresh_token"},
		{name: "PKCE keeps the template's query", req: OAuthConnectRequest{Provider: "asPKCE", GroupRef: "g1", ConsumerRef: "u1", ProviderMetadata: map[string]string{"region": "eu"}},
			endpoint: as + "/authorize", clientID: "pkce-client", scope: "read", pkce: true, extra: map[string]string{"prompt": "consent"}},
		{name: "workspace in the authorization URL", req: OAuthConnectRequest{Provider: "asWsAuth", GroupRef: "g1", ConsumerRef: "u1", ProviderWorkspaceRef: "acme"},
			endpoint: as + "/acme/authorize", clientID: "ws-client"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := o.connect(tt.req)
			q := u.Query()
			if got := u.Scheme + "://" + u.Host + u.Path; got != tt.endpoint {
				t.Errorf("endpoint %q, want %q", got, tt.endpoint)
			}
			want := map[string]string{
				"response_type": "code", "client_id": tt.clientID, "redirect_uri": redirectURL, "scope": tt.scope,
				"access_type": "offline",
			}
			for k, v := range tt.extra {
				want[k] = v
			}
			for k, v := range want {
				if q.Get(k) != v {
					t.Errorf("%s = %q, want %q (%s)", k, q.Get(k), v, u)
				}
			}
			if tt.scope == "" && q.Has("scope") {
				t.Errorf("scope present without app scopes: %s", u)
			}
			st := q.Get("state")
			if b, err := base64.RawURLEncoding.DecodeString(st); err != nil || len(b) != 32 {
				t.Errorf("state %q is not 32 bytes of base64url", st)
			}
			if tt.pkce {
				if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 {
					t.Errorf("PKCE challenge missing: %s", u)
				}
			} else if q.Has("code_challenge") || q.Has("code_challenge_method") {
				t.Errorf("challenge for a provider without PKCE: %s", u)
			}
			if strings.Contains(u.String(), "SECRET") {
				t.Errorf("a secret in the authorization URL: %s", u)
			}
		})
	}
	// Every flow has its own state and challenge.
	a := o.connect(OAuthConnectRequest{Provider: "asPKCE", GroupRef: "g1", ConsumerRef: "u1", ProviderMetadata: map[string]string{"region": "eu"}}).Query()
	b := o.connect(OAuthConnectRequest{Provider: "asPKCE", GroupRef: "g1", ConsumerRef: "u1", ProviderMetadata: map[string]string{"region": "eu"}}).Query()
	if a.Get("state") == b.Get("state") || a.Get("code_challenge") == b.Get("code_challenge") {
		t.Error("two flows share a state or a challenge")
	}
	if n := o.pending(); n != 6 {
		t.Errorf("%d pending flows, want 6", n)
	}
	if o.as.exchangeCount() != 0 {
		t.Error("connect called the token endpoint")
	}
	// The line of a connect names the project, not the state.
	if !strings.Contains(o.logs.String(), `"route":"POST /v1/oauth-connect","status":200`) || !strings.Contains(o.logs.String(), `"project":"p1"`) {
		t.Errorf("log: %s", o.logs)
	}
}

func TestOAuthConnectRejects(t *testing.T) {
	o := newOAuthEnv(t)
	for _, tt := range []struct {
		name   string
		key    string
		body   string
		status int
		want   []string
	}{
		{name: "no key", key: "", body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u"}`, status: 401},
		{name: "wrong key", key: "wrong", body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u"}`, status: 401},
		{name: "another project's key", key: keyP2, body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u"}`, status: 401},
		{name: "unknown project", key: keyP1, body: `{"projectIdOrName":"nope","provider":"asCode","groupRef":"g","consumerRef":"u"}`, status: 401},
		{name: "no project", key: keyP1, body: `{"provider":"asCode","groupRef":"g","consumerRef":"u"}`, status: 400, want: []string{"projectIdOrName is required"}},
		{name: "unknown field", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u","clientSecret":"x"}`, status: 400, want: []string{`unknown field "clientSecret"`}},
		{name: "empty body", key: keyP1, body: ``, status: 400, want: []string{"request body is required"}},
		{name: "groupRef missing", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asCode","consumerRef":"u"}`, status: 400, want: []string{"groupRef is required"}},
		{name: "consumerRef control", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u\n"}`, status: 400, want: []string{"consumerRef must not contain control characters"}},
		{name: "unknown provider", key: keyP1, body: `{"projectIdOrName":"p1","provider":"nope","groupRef":"g","consumerRef":"u"}`, status: 400, want: []string{`provider "nope" is not in the provider catalog`}},
		{name: "client credentials", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asClient","groupRef":"g","consumerRef":"u"}`, status: 400,
			want: []string{"clientCredentials grant", "connections:generate", "oauth2ClientCredentials"}},
		{name: "api key provider", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asKey","groupRef":"g","consumerRef":"u"}`, status: 400,
			want: []string{"authType apiKey", "connections:generate"}},
		{name: "no provider app", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asNoApp","groupRef":"g","consumerRef":"u"}`, status: 400,
			want: []string{"providerApps.asNoApp"}},
		{name: "no redirect URL", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asNoRedirect","groupRef":"g","consumerRef":"u"}`, status: 400,
			want: []string{"providerApps.asNoRedirect.redirectURL", CallbackPath}},
		{name: "other project's apps", key: keyP2, body: `{"projectIdOrName":"p2","provider":"asPKCE","groupRef":"g","consumerRef":"u","providerMetadata":{"region":"eu"}}`, status: 400,
			want: []string{"project p2 has no providerApps.asPKCE"}},
		{name: "undeclared metadata", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u","providerMetadata":{"host":"evil.com"}}`, status: 400,
			want: []string{"providerMetadata.host is not a metadata field of provider asCode"}},
		{name: "hostile workspace", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u","providerWorkspaceRef":"evil.com#"}`, status: 400,
			want: []string{"providerWorkspaceRef:"}},
		{name: "workspace given twice", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asCode","groupRef":"g","consumerRef":"u","providerWorkspaceRef":"a","providerMetadata":{"workspace":"b"}}`, status: 400,
			want: []string{"providerWorkspaceRef and providerMetadata.workspace differ"}},
		{name: "required metadata missing", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asPKCE","groupRef":"g","consumerRef":"u"}`, status: 400,
			want: []string{"providerMetadata.region is required"}},
		{name: "metadata dot segment", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asPKCE","groupRef":"g","consumerRef":"u","providerMetadata":{"region":".."}}`, status: 400,
			want: []string{"providerMetadata.region:", "dot segments"}},
		{name: "workspace the authorization URL needs", key: keyP1, body: `{"projectIdOrName":"p1","provider":"asWsAuth","groupRef":"g","consumerRef":"u"}`, status: 400,
			want: []string{"providerWorkspaceRef is required"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := o.do("POST", connectPath, tt.key, tt.body)
			slug := "invalid-argument"
			if tt.status == 401 {
				slug = "unauthenticated"
			}
			p := wantProblem(t, w, tt.status, slug, tt.want...)
			if tt.status == 401 && (p.Detail != "unknown project or invalid API key" || w.Header().Get("WWW-Authenticate") == "") {
				t.Errorf("401 differs from the other endpoints': %s %v", p.Detail, w.Header())
			}
		})
	}
	if n := o.pending(); n != 0 {
		t.Errorf("rejected requests left %d pending flows", n)
	}
	// A refused key leaves no project on the log line.
	for l := range strings.SplitSeq(strings.TrimSpace(o.logs.String()), "\n") {
		if strings.Contains(l, `"status":401`) && strings.Contains(l, `"project"`) {
			t.Errorf("401 line names a project: %s", l)
		}
	}
}

func TestOAuthFlow(t *testing.T) {
	for _, tt := range []struct {
		name     string
		req      OAuthConnectRequest
		instance string
		meta     map[string]string
	}{
		{name: "authorization code", req: OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"},
			instance: "https://acme.api.example", meta: map[string]string{"workspace": "acme"}},
		{name: "token response wins over the given workspace", req: OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice", ProviderWorkspaceRef: "login"},
			instance: "https://acme-eu.api.example/", meta: map[string]string{"workspace": "acme-eu"}},
		{name: "no instance_url keeps the given workspace", req: OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice", ProviderWorkspaceRef: "given"},
			instance: "", meta: map[string]string{"workspace": "given"}},
		{name: "PKCE", req: OAuthConnectRequest{Provider: "asPKCE", GroupRef: "Gruppe Ä", ConsumerRef: "bob", ProviderMetadata: map[string]string{"region": "us"}},
			instance: "https://globex.pkce.example", meta: map[string]string{"workspace": "globex", "region": "us"}},
		// Salesforce sandboxes live at acme--dev.sandbox.my.salesforce.com:
		// every label in front of the template's own is the workspace.
		{name: "host with several leading labels", req: OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"},
			instance: "https://acme--dev.sandbox.api.example", meta: map[string]string{"workspace": "acme--dev.sandbox"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOAuthEnv(t)
			o.as.set("", tt.instance)
			cb := o.authorize(o.connect(tt.req))
			w := o.callback(cb)
			wantPage(t, w, 200, "Connected", tt.req.Provider)
			if len(o.store.conns) != 1 {
				t.Fatalf("%d connections stored (%v)", len(o.store.conns), o.as.rejections)
			}
			c := o.store.conns[0]
			if !strings.Contains(w.Body.String(), c.ID) || !strings.Contains(w.Body.String(), template.HTMLEscapeString(tt.req.GroupRef)) {
				t.Errorf("page lacks the connection ID or group:\n%s", w.Body)
			}
			if c.ProjectID != "p1" || c.Provider != tt.req.Provider || c.GroupRef != tt.req.GroupRef || c.ConsumerRef != tt.req.ConsumerRef ||
				c.AuthScheme != tokens.SchemeOAuth2AuthorizationCode || c.Status != tokens.StatusWorking {
				t.Errorf("connection %+v", c)
			}
			if c.WorkspaceRef != tt.meta["workspace"] || len(c.Metadata) != len(tt.meta) {
				t.Errorf("workspace %q metadata %v, want %v", c.WorkspaceRef, c.Metadata, tt.meta)
			}
			for k, v := range tt.meta {
				if c.Metadata[k] != v {
					t.Errorf("metadata %v, want %v", c.Metadata, tt.meta)
				}
			}
			cred := c.Credential
			issued := o.as.secrets()
			if !strings.HasPrefix(cred.AccessToken, "SECRET-at-") || !strings.HasPrefix(cred.RefreshToken, "SECRET-rt-") ||
				!slices.Contains(issued, cred.AccessToken) || !slices.Contains(issued, cred.RefreshToken) {
				t.Errorf("stored tokens are not the issued ones")
			}
			if d := cred.Expiry.Sub(c.CreateTime); d < 3590*time.Second || d > 3610*time.Second {
				t.Errorf("expiry %v is %v after creation, want about an hour on the server's clock", cred.Expiry, d)
			}
			if !slices.Equal(cred.Scopes, []string{"api", "refresh_token"}) {
				t.Errorf("scopes %v, want the granted ones", cred.Scopes)
			}
			if o.as.exchangeCount() != 1 || len(o.as.rejections) != 0 {
				t.Errorf("%d exchanges, rejections %v", o.as.exchangeCount(), o.as.rejections)
			}

			// The state is single use: the same callback again stores
			// nothing and does not reach the token endpoint.
			wantPage(t, o.callback(cb), 400, "no longer valid")
			if len(o.store.conns) != 1 || o.as.exchangeCount() != 1 {
				t.Errorf("a reused state stored %d connections, %d exchanges", len(o.store.conns), o.as.exchangeCount())
			}
			if o.pending() != 0 {
				t.Errorf("%d flows still pending", o.pending())
			}
		})
	}
}

func TestOAuthCallbackFailures(t *testing.T) {
	codeReq := OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"}
	for _, tt := range []struct {
		name string
		// run returns the callback answer; the env is fresh.
		run       func(o *oauthEnv) *httptest.ResponseRecorder
		status    int
		want      []string
		exchanges int
		log       string
	}{
		{name: "unknown state", status: 400, want: []string{"no longer valid", "Nothing was stored"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				o.connect(codeReq)
				return o.callback(CallbackPath + "?code=SECRET-code-forged&state=" + strings.Repeat("A", 43))
			}, log: "connect state unknown, expired or already used"},
		{name: "HEAD does not use up the state", status: 200, want: []string{"Connected"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				if w := o.do("HEAD", cb, "", ""); w.Code != 405 || w.Header().Get("Allow") != "GET" {
					o.t.Errorf("HEAD: %d, Allow %q", w.Code, w.Header().Get("Allow"))
				}
				return o.callback(cb)
			}},
		{name: "no state", status: 400, want: []string{"no longer valid"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder { return o.callback(CallbackPath + "?code=x") }},
		{name: "expired state", status: 400, want: []string{"no longer valid"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.clock.advance(ConnectStateTTL)
				return o.callback(cb)
			}},
		{name: "state just before expiry works", status: 200, want: []string{"Connected"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.clock.advance(ConnectStateTTL - 10*time.Second)
				return o.callback(cb)
			}},
		{name: "provider error", status: 400, want: []string{"did not grant access", "access_denied", "asCode", "g1"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				u := o.connect(codeReq)
				st := u.Query().Get("state")
				w := o.callback(CallbackPath + "?error=access_denied&error_description=User+said+no&state=" + st)
				// The state is consumed: a code for it afterwards is refused.
				if w2 := o.callback(CallbackPath + "?code=SECRET-code-late&state=" + st); w2.Code != 400 {
					o.t.Errorf("state usable after a provider error: %d", w2.Code)
				}
				return w
			}, log: "error access_denied"},
		{name: "provider error is escaped", status: 400, want: []string{"&lt;script&gt;"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				st := o.connect(codeReq).Query().Get("state")
				w := o.callback(CallbackPath + "?error=" + url.QueryEscape("<script>alert(1)</script>") + "&state=" + st)
				if strings.Contains(w.Body.String(), "<script>") {
					o.t.Errorf("error code not escaped:\n%s", w.Body)
				}
				return w
			}},
		{name: "provider error with control characters", status: 400, want: []string{"(invalid error code)"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				st := o.connect(codeReq).Query().Get("state")
				return o.callback(CallbackPath + "?error=a%0Ab&state=" + st)
			}},
		{name: "no code", status: 400, want: []string{"no authorization code"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				return o.callback(CallbackPath + "?state=" + o.connect(codeReq).Query().Get("state"))
			}},
		{name: "code refused", status: 400, want: []string{"did not accept", "invalid_grant"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.as.set("invalid_grant", "https://acme.api.example")
				return o.callback(cb)
			}, log: "token endpoint answered HTTP 400 with error invalid_grant"},
		{name: "forged code", status: 400, want: []string{"invalid_grant"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				st := o.connect(codeReq).Query().Get("state")
				return o.callback(CallbackPath + "?code=SECRET-code-forged&state=" + st)
			}},
		{name: "token endpoint 500", status: 502, want: []string{"did not accept"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.as.set("500", "")
				return o.callback(cb)
			}, log: "token endpoint answered HTTP 500"},
		{name: "token endpoint garbage", status: 502, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.as.set("garbage", "")
				return o.callback(cb)
			}},
		{name: "token endpoint hangs up", status: 502, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.as.set("hangup", "")
				return o.callback(cb)
			}, log: "token exchange: "},
		{name: "instance_url not a URL", status: 502, want: []string{"cannot be used", "instance_url"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				o.as.set("", "https://not a host/")
				return o.callback(o.authorize(o.connect(codeReq)))
			}},
		{name: "instance_url without subdomain", status: 502, want: []string{"instance_url has no subdomain"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				o.as.set("", "https://localhost")
				return o.callback(o.authorize(o.connect(codeReq)))
			}},
		{name: "instance_url yields a hostile workspace", status: 502, want: []string{"names host a_b.evil.example", "cannot be made to point at"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				o.as.set("", "https://a_b.evil.example")
				return o.callback(o.authorize(o.connect(codeReq)))
			}},
		{name: "instance_url elsewhere than the base URL", status: 502, want: []string{"names host acme.elsewhere.example", "cannot be made to point at"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				o.as.set("", "https://acme.elsewhere.example")
				return o.callback(o.authorize(o.connect(codeReq)))
			}},
		{name: "no workspace at all", status: 502, want: []string{"metadata is invalid"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				o.as.set("", "")
				return o.callback(o.authorize(o.connect(codeReq)))
			}},
		{name: "provider app removed during the flow", status: 409, want: []string{"no longer has providerApps.asCode"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.cfg.Store(oauthConfig(o.t, o.as, false))
				return o.callback(cb)
			}},
		{name: "client secret unreadable", status: 500, want: []string{"Internal error", "Request ID"},
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				cfg := oauthConfig(o.t, o.as, true)
				p, _ := cfg.Project("p1")
				app := p.ProviderApps["asCode"]
				app.ClientSecretFile = "/nonexistent/secret"
				p.ProviderApps["asCode"] = app
				o.cfg.Store(cfg)
				return o.callback(cb)
			}, log: "/nonexistent/secret"},
		{name: "store fails", status: 500, want: []string{"Internal error"}, exchanges: 1,
			run: func(o *oauthEnv) *httptest.ResponseRecorder {
				cb := o.authorize(o.connect(codeReq))
				o.store.failNext = fmt.Errorf("disk on fire")
				return o.callback(cb)
			}, log: "disk on fire"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOAuthEnv(t)
			w := tt.run(o)
			wantPage(t, w, tt.status, tt.want...)
			stored := len(o.store.conns)
			if tt.status == 200 {
				stored--
			}
			if stored != 0 {
				t.Errorf("a failed callback stored a connection")
			}
			if got := o.as.exchangeCount(); got != tt.exchanges {
				t.Errorf("%d token requests, want %d", got, tt.exchanges)
			}
			if tt.log != "" && !strings.Contains(o.logs.String(), tt.log) {
				t.Errorf("log lacks %q:\n%s", tt.log, o.logs)
			}
		})
	}
}

// TestOAuthTokenClientTimeout: a token endpoint that never answers ends
// in a 502 within the client's timeout, not with a hung callback.
func TestOAuthTokenClientTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })

	o := newOAuthEnv(t)
	o.h = New(Options{
		Store: o.store, Config: o.cfg.Load, Now: o.clock.Now,
		Logger:     slog.New(slog.NewJSONHandler(o.logs, nil)),
		HTTPClient: &http.Client{Timeout: 50 * time.Millisecond},
	})
	cb := o.authorize(o.connect(OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"}))
	// The flow's token URL is the slow server's.
	o.pointTokenURL(slow.URL + "/token")
	start := time.Now()
	w := o.callback(cb)
	wantPage(t, w, 502, "did not accept")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("callback took %v", d)
	}
	if len(o.store.conns) != 0 {
		t.Error("stored after a timeout")
	}
}

// TestOAuthTokenRedirectNotFollowed: a caller's client that follows
// redirects is not used as is: a token endpoint answering 307 does not get
// the code, the verifier and the client secret posted again to its
// Location.
func TestOAuthTokenRedirectNotFollowed(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, string(body))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"from-the-redirect-target","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(target.Close)
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/token", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirecting.Close)

	o := newOAuthEnv(t)
	follows := &http.Client{Timeout: 5 * time.Second} // nil CheckRedirect: follows up to 10
	o.h = New(Options{
		Store: o.store, Config: o.cfg.Load, Now: o.clock.Now,
		Logger:     slog.New(slog.NewJSONHandler(o.logs, nil)),
		HTTPClient: follows,
	})
	cb := o.authorize(o.connect(OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"}))
	o.pointTokenURL(redirecting.URL + "/token")
	w := o.callback(cb)
	wantPage(t, w, 502, "did not accept")
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 0 {
		t.Errorf("the redirect target got %d token requests: %q", len(seen), seen)
	}
	if len(o.store.conns) != 0 {
		t.Error("stored a connection from a redirected token request")
	}
	if follows.CheckRedirect != nil {
		t.Error("New changed the caller's client")
	}
}

// TestOAuthUnusableToken: a token whose value would break the request
// header it goes into (tokens.CheckToken) is not stored, and neither the
// page nor the log quotes it.
func TestOAuthUnusableToken(t *testing.T) {
	for _, tc := range []struct{ name, answer, want string }{
		{"whitespace", `{"access_token":"SECRET-at ","token_type":"Bearer","expires_in":3600}`, "access token must not begin or end with whitespace"},
		{"control", `{"access_token":"SECRET-at","refresh_token":"SECRET-rt\u0000","token_type":"Bearer"}`, "refresh token must not contain control characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, tc.answer)
			}))
			t.Cleanup(ep.Close)
			o := newOAuthEnv(t)
			o.h = New(Options{Store: o.store, Config: o.cfg.Load, Now: o.clock.Now, Logger: slog.New(slog.NewJSONHandler(o.logs, nil))})
			cb := o.authorize(o.connect(OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"}))
			o.pointTokenURL(ep.URL + "/token")
			w := o.callback(cb)
			wantPage(t, w, 502, tc.want, "Nothing was stored")
			if len(o.store.conns) != 0 {
				t.Error("stored a connection with an unusable token")
			}
			if strings.Contains(w.Body.String(), "SECRET") || strings.Contains(o.logs.String(), "SECRET") {
				t.Errorf("a token value leaked:\n%s\n%s", w.Body, o.logs)
			}
		})
	}
}

// stillClock moves only when told to.
type stillClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stillClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *stillClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestOAuthPendingBound(t *testing.T) {
	o := newOAuthEnv(t)
	clk := &stillClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	o.h = New(Options{Store: o.store, Config: o.cfg.Load, Now: clk.Now})
	req := mustJSON(t, OAuthConnectRequest{ProjectIDOrName: "p1", Provider: "asCode", GroupRef: "g", ConsumerRef: "u"})
	for i := range MaxPendingConnects {
		if w := o.do("POST", connectPath, keyP1, req); w.Code != 200 {
			t.Fatalf("connect %d: %d %s", i, w.Code, w.Body)
		}
	}
	w := o.do("POST", connectPath, keyP1, req)
	wantProblem(t, w, http.StatusTooManyRequests, "too-many-requests", "unfinished connect flows")
	if ra := w.Header().Get("Retry-After"); ra != "600" {
		t.Errorf("Retry-After %q, want 600 (the oldest flow's remaining time)", ra)
	}
	// Another project is not crowded out.
	p2 := mustJSON(t, OAuthConnectRequest{ProjectIDOrName: "p2", Provider: "asCode", GroupRef: "g", ConsumerRef: "u"})
	if w := o.do("POST", connectPath, keyP2, p2); w.Code != 200 {
		t.Fatalf("p2 connect: %d %s", w.Code, w.Body)
	}
	// Once the flows expire there is room again, and the map shrinks.
	clk.advance(ConnectStateTTL)
	if w := o.do("POST", connectPath, keyP1, req); w.Code != 200 {
		t.Fatalf("connect after expiry: %d %s", w.Code, w.Body)
	}
	if n := o.pending(); n != 1 {
		t.Errorf("%d pending after expiry, want 1", n)
	}
}

// TestOAuthClient drives the connect flow and an update through the Go
// client.
func TestOAuthClient(t *testing.T) {
	o := newOAuthEnv(t)
	c, _ := o.serve(keyP1)
	ctx := context.Background()
	authURL, err := c.OAuthConnect(ctx, OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(authURL)
	o.states = append(o.states, u.Query().Get("state"))
	if !strings.HasPrefix(authURL, o.as.srv.URL+"/authorize?") || u.Query().Get("state") == "" {
		t.Fatalf("authorization URL %q", authURL)
	}
	wantPage(t, o.callback(o.authorize(u)), 200, "Connected")
	conn := o.store.conns[0]

	_, err = c.OAuthConnect(ctx, OAuthConnectRequest{Provider: "asClient", GroupRef: "g1", ConsumerRef: "alice"})
	if ae := asError(t, err, 400); !strings.Contains(ae.Problem.Detail, "connections:generate") {
		t.Errorf("detail %q", ae.Problem.Detail)
	}
	c.APIKey = "wrong"
	_, err = c.OAuthConnect(ctx, OAuthConnectRequest{Provider: "asCode", GroupRef: "g1", ConsumerRef: "alice"})
	asError(t, err, 401)
	c.APIKey = keyP1

	o.store.setStatus(conn.ID, tokens.StatusBadCredentials)
	up, err := c.UpdateConnection(ctx, conn.ID, UpdateConnectionRequest{OAuth2AuthorizationCode: &OAuth2AuthorizationCode{
		AccessToken: AccessToken{Token: secretAccess}, RefreshToken: RefreshToken{Token: secretRefresh}}})
	if err != nil {
		t.Fatal(err)
	}
	if up.Status != tokens.StatusCreated || up.ID != conn.ID || up.WorkspaceRef != "acme" {
		t.Errorf("updated %+v", up)
	}
	if got := o.store.credentialOf(conn.ID); got.AccessToken != secretAccess || got.RefreshToken != secretRefresh {
		t.Error("update did not replace the tokens")
	}
	_, err = c.UpdateConnection(ctx, "nope", UpdateConnectionRequest{ProviderWorkspaceRef: "x"})
	asError(t, err, 404)
	if _, err := c.UpdateConnection(ctx, "", UpdateConnectionRequest{}); err == nil {
		t.Error("empty ID accepted")
	}
}

// TestSubdomainSalesforce: with the embedded catalog's Salesforce entry,
// production and sandbox instance URLs give the workspace that points
// back at them; a host outside my.salesforce.com is refused.
func TestSubdomainSalesforce(t *testing.T) {
	cat, err := catalog.Load("")
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := cat.Provider("salesforce")
	if !ok {
		t.Fatal("no salesforce in the catalog")
	}
	for _, tc := range []struct{ instance, want, err string }{
		{"https://acme.my.salesforce.com", "acme", ""},
		{"https://acme.my.salesforce.com:443/", "acme", ""},
		{"https://acme--dev.sandbox.my.salesforce.com", "acme--dev.sandbox", ""},
		{"https://acme--uat.sandbox.my.salesforce.com/services/data", "acme--uat.sandbox", ""},
		{"https://na1.salesforce.com", "", "cannot be made to point at"},
		{"https://acme.my.salesforce.com.evil.example", "", "cannot be made to point at"},
	} {
		got, err := subdomain(sf, nil, "workspace", tc.instance)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("subdomain(%s) = %q, %v; want %q", tc.instance, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("subdomain(%s) = %q, %v; want an error saying %q", tc.instance, got, err, tc.err)
		}
	}
}
