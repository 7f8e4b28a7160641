package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/tokens"
)

const (
	genPath   = "/v1/projects/p1/connections:generate"
	connsPath = "/v1/projects/p1/connections"
)

func instPath(integration string) string {
	return "/v1/projects/p1/integrations/" + integration + "/installations"
}

// generate creates a connection and returns it, failing the test on any
// answer but 201.
func (e *env) generate(req GenerateConnectionRequest) *tokens.Connection {
	e.t.Helper()
	w := e.do("POST", genPath, keyP1, mustJSON(e.t, req))
	var c tokens.Connection
	decodeJSON(e.t, w, http.StatusCreated, &c)
	return &c
}

func keyConn(group string) GenerateConnectionRequest {
	return GenerateConnectionRequest{GroupRef: group, ConsumerRef: "user-1", Provider: "testKey", APIKey: secretAPIKey}
}

func oauthConn(group, workspace string) GenerateConnectionRequest {
	return GenerateConnectionRequest{
		GroupRef: group, ConsumerRef: "user-1", Provider: "testOAuth", ProviderWorkspaceRef: workspace,
		OAuth2AuthorizationCode: &OAuth2AuthorizationCode{
			AccessToken:  AccessToken{Token: secretAccess, ExpiresAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)},
			RefreshToken: RefreshToken{Token: secretRefresh},
			Scopes:       []string{"api", "refresh_token"},
		},
	}
}

func TestGenerateConnection(t *testing.T) {
	tests := []struct {
		name       string
		req        GenerateConnectionRequest
		scheme     tokens.AuthScheme
		workspace  string
		meta       map[string]string
		credential tokens.Credential
	}{
		{
			name:       "apiKey",
			req:        keyConn("g1"),
			scheme:     tokens.SchemeAPIKey,
			credential: tokens.Credential{APIKey: secretAPIKey},
		},
		{
			name: "basic with workspace",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme",
				BasicAuth: &BasicAuth{Username: "admin", Password: secretPassword}},
			scheme: tokens.SchemeBasic, workspace: "acme", meta: map[string]string{"workspace": "acme"},
			credential: tokens.Credential{Username: "admin", Password: secretPassword},
		},
		{
			name: "basic with workspace in providerMetadata and key-only user",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testBasic",
				ProviderMetadata: map[string]string{"workspace": "acme-eu"}, BasicAuth: &BasicAuth{Username: secretAPIKey}},
			scheme: tokens.SchemeBasic, workspace: "acme-eu", meta: map[string]string{"workspace": "acme-eu"},
			credential: tokens.Credential{Username: secretAPIKey},
		},
		{
			name: "same workspace given twice",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme",
				ProviderMetadata: map[string]string{"workspace": "acme"}, BasicAuth: &BasicAuth{Username: "u", Password: secretPassword}},
			scheme: tokens.SchemeBasic, workspace: "acme", meta: map[string]string{"workspace": "acme"},
			credential: tokens.Credential{Username: "u", Password: secretPassword},
		},
		{
			name:      "oauth2 authorization code",
			req:       oauthConn("g1", "na1"),
			scheme:    tokens.SchemeOAuth2AuthorizationCode,
			workspace: "na1", meta: map[string]string{"workspace": "na1"},
			credential: tokens.Credential{AccessToken: secretAccess, RefreshToken: secretRefresh,
				Expiry: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), Scopes: []string{"api", "refresh_token"}},
		},
		{
			name: "oauth2 refresh token only, with a provider app",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testOAuth", ProviderWorkspaceRef: "na1",
				OAuth2AuthorizationCode: &OAuth2AuthorizationCode{RefreshToken: RefreshToken{Token: secretRefresh}}},
			scheme: tokens.SchemeOAuth2AuthorizationCode, workspace: "na1", meta: map[string]string{"workspace": "na1"},
			credential: tokens.Credential{RefreshToken: secretRefresh},
		},
		{
			name: "oauth2 PKCE takes oauth2AuthorizationCode",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testPKCE",
				OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: secretAccess}}},
			scheme:     tokens.SchemeOAuth2AuthorizationCode,
			credential: tokens.Credential{AccessToken: secretAccess},
		},
		{
			name: "oauth2 client credentials",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testClient",
				OAuth2ClientCredentials: &OAuth2ClientCredentials{ClientID: "cid", ClientSecret: secretClientSecret, Scopes: []string{"read"}}},
			scheme:     tokens.SchemeOAuth2ClientCredentials,
			credential: tokens.Credential{ClientID: "cid", ClientSecret: secretClientSecret, Scopes: []string{"read"}},
		},
		{
			name:   "none",
			req:    GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testNone"},
			scheme: tokens.SchemeNone,
		},
		{
			name: "metadata with a default and a path value",
			req: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
				ProviderMetadata: map[string]string{"tenant": "team one/x"}},
			scheme: tokens.SchemeAPIKey, meta: map[string]string{"tenant": "team one/x"},
			credential: tokens.Credential{APIKey: secretAPIKey},
		},
		{
			name:   "unicode refs",
			req:    GenerateConnectionRequest{GroupRef: "Gruppe Ä/1", ConsumerRef: "ü@example.com", Provider: "testNone"},
			scheme: tokens.SchemeNone,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			w := e.do("POST", genPath, keyP1, mustJSON(t, tt.req))
			var raw map[string]any
			decodeJSON(t, w, http.StatusCreated, &raw)
			for _, k := range []string{"id", "projectId", "provider", "groupRef", "consumerRef", "authScheme", "status", "createTime", "updateTime"} {
				if _, ok := raw[k]; !ok {
					t.Errorf("response lacks %q: %s", k, w.Body)
				}
			}
			var c tokens.Connection
			json.Unmarshal(w.Body.Bytes(), &c)
			if c.ProjectID != "p1" || c.Provider != tt.req.Provider || c.GroupRef != tt.req.GroupRef || c.ConsumerRef != tt.req.ConsumerRef {
				t.Errorf("connection = %+v", c)
			}
			if c.AuthScheme != tt.scheme || c.Status != tokens.StatusCreated {
				t.Errorf("authScheme %q status %q", c.AuthScheme, c.Status)
			}
			if c.WorkspaceRef != tt.workspace {
				t.Errorf("providerWorkspaceRef %q, want %q", c.WorkspaceRef, tt.workspace)
			}
			if len(c.Metadata) != len(tt.meta) {
				t.Errorf("providerMetadata %v, want %v", c.Metadata, tt.meta)
			}
			for k, v := range tt.meta {
				if c.Metadata[k] != v {
					t.Errorf("providerMetadata %v, want %v", c.Metadata, tt.meta)
				}
			}
			for _, k := range []string{"createTime", "updateTime"} {
				if _, err := time.Parse(time.RFC3339, raw[k].(string)); err != nil {
					t.Errorf("%s not RFC 3339: %v", k, err)
				}
			}
			if loc := w.Header().Get("Location"); loc != connsPath+"/"+c.ID {
				t.Errorf("Location %q", loc)
			}
			got := e.store.credentialOf(c.ID)
			if got.APIKey != tt.credential.APIKey || got.Username != tt.credential.Username || got.Password != tt.credential.Password ||
				got.AccessToken != tt.credential.AccessToken || got.RefreshToken != tt.credential.RefreshToken ||
				!got.Expiry.Equal(tt.credential.Expiry) || got.ClientID != tt.credential.ClientID ||
				got.ClientSecret != tt.credential.ClientSecret || !slices.Equal(got.Scopes, tt.credential.Scopes) {
				t.Errorf("stored credential differs from the request")
			}
		})
	}
}

func TestGenerateConnectionRejects(t *testing.T) {
	past := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		body string // raw body; used when req is nil
		req  *GenerateConnectionRequest
		want []string
	}{
		{name: "groupRef missing", req: &GenerateConnectionRequest{ConsumerRef: "u", Provider: "testNone"}, want: []string{"groupRef is required"}},
		{name: "consumerRef missing", req: &GenerateConnectionRequest{GroupRef: "g", Provider: "testNone"}, want: []string{"consumerRef is required"}},
		{name: "provider missing", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u"}, want: []string{"provider is required"}},
		{name: "groupRef control char", req: &GenerateConnectionRequest{GroupRef: "g\n1", ConsumerRef: "u", Provider: "testNone"}, want: []string{"groupRef must not contain control characters"}},
		{name: "groupRef too long", req: &GenerateConnectionRequest{GroupRef: strings.Repeat("g", 257), ConsumerRef: "u", Provider: "testNone"}, want: []string{"groupRef must be at most 256 bytes"}},
		{name: "consumerRef padded", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: " u", Provider: "testNone"}, want: []string{"consumerRef must not start or end with whitespace"}},
		{name: "unknown provider", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "nope"}, want: []string{`provider "nope" is not in the provider catalog`}},
		{name: "two credentials", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testKey", APIKey: secretAPIKey, BasicAuth: &BasicAuth{Username: "u", Password: secretPassword}},
			want: []string{"only one of", "apiKey and basicAuth"}},
		{name: "wrong kind", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testKey", BasicAuth: &BasicAuth{Username: "u", Password: secretPassword}},
			want: []string{"basicAuth does not fit provider testKey", "give apiKey"}},
		{name: "client credentials for authorization code provider", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testPKCE",
			OAuth2ClientCredentials: &OAuth2ClientCredentials{ClientID: "c", ClientSecret: secretClientSecret}},
			want: []string{"oauth2ClientCredentials does not fit", "give oauth2AuthorizationCode"}},
		{name: "authorization code for client credentials provider", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testClient",
			OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: secretAccess}}},
			want: []string{"oauth2AuthorizationCode does not fit", "give oauth2ClientCredentials"}},
		{name: "credential for none", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testNone", APIKey: secretAPIKey},
			want: []string{"apiKey must be absent"}},
		{name: "apiKey missing", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testKey"}, want: []string{"apiKey is required"}},
		{name: "apiKey with newline", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testKey", APIKey: secretAPIKey + "\r\nX-Evil: 1"},
			want: []string{"apiKey must not contain control characters"}},
		{name: "apiKey too long", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testKey", APIKey: secretAPIKey + strings.Repeat("k", 17<<10)},
			want: []string{"apiKey must be at most"}},
		{name: "basicAuth empty", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme", BasicAuth: &BasicAuth{}},
			want: []string{"basicAuth.username is required"}},
		{name: "basicAuth username colon", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme", BasicAuth: &BasicAuth{Username: "a:b", Password: secretPassword}},
			want: []string{"basicAuth.username must not contain ':'"}},
		{name: "basicAuth password control", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme", BasicAuth: &BasicAuth{Username: "a", Password: secretPassword + "\x00"}},
			want: []string{"basicAuth.password must not contain control characters"}},
		{name: "clientSecret missing", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testClient", OAuth2ClientCredentials: &OAuth2ClientCredentials{ClientID: "c"}},
			want: []string{"oauth2ClientCredentials.clientSecret is required"}},
		{name: "clientId missing", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testClient", OAuth2ClientCredentials: &OAuth2ClientCredentials{ClientSecret: secretClientSecret}},
			want: []string{"oauth2ClientCredentials.clientId is required"}},
		{name: "bad scope", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testClient",
			OAuth2ClientCredentials: &OAuth2ClientCredentials{ClientID: "c", ClientSecret: secretClientSecret, Scopes: []string{"ok", "a b"}}},
			want: []string{"oauth2ClientCredentials.scopes[1]"}},
		{name: "no tokens", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testPKCE", OAuth2AuthorizationCode: &OAuth2AuthorizationCode{}},
			want: []string{"oauth2AuthorizationCode.accessToken.token is required"}},
		{name: "empty tokens", body: `{"groupRef":"g","consumerRef":"u","provider":"testPKCE","oauth2AuthorizationCode":{"accessToken":{"token":""},"refreshToken":{"token":""}}}`,
			want: []string{"oauth2AuthorizationCode.accessToken.token is required"}},
		{name: "expiry without access token", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testOAuth", ProviderWorkspaceRef: "na1",
			OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{ExpiresAt: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, RefreshToken: RefreshToken{Token: secretRefresh}}},
			want: []string{"oauth2AuthorizationCode.accessToken.token is required with accessToken.expiresAt"}},
		{name: "refresh token with newline", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testPKCE",
			OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: secretAccess}, RefreshToken: RefreshToken{Token: secretRefresh + "\n"}}},
			want: []string{"oauth2AuthorizationCode.refreshToken.token must not contain control characters"}},
		{name: "refresh token without provider app", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testPKCE",
			OAuth2AuthorizationCode: &OAuth2AuthorizationCode{RefreshToken: RefreshToken{Token: secretRefresh}}},
			want: []string{"oauth2AuthorizationCode.accessToken.token is required", "providerApps.testPKCE"}},
		{name: "expired without refresh token", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testPKCE",
			OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: secretAccess, ExpiresAt: past}}},
			want: []string{"oauth2AuthorizationCode.accessToken.expiresAt is in the past"}},
		{name: "bad expiresAt", body: `{"groupRef":"g","consumerRef":"u","provider":"testPKCE","oauth2AuthorizationCode":{"accessToken":{"token":"` + secretAccess + `","expiresAt":"tomorrow"}}}`,
			want: []string{"oauth2AuthorizationCode.accessToken.expiresAt must be an RFC 3339 time"}},
		{name: "expiresAt number", body: `{"groupRef":"g","consumerRef":"u","provider":"testPKCE","oauth2AuthorizationCode":{"accessToken":{"token":"` + secretAccess + `","expiresAt":5}}}`,
			want: []string{"expiresAt"}},
		{name: "unknown field", body: `{"groupRef":"g","consumerRef":"u","provider":"testKey","apiKey":"` + secretAPIKey + `","apikey2":"x"}`,
			want: []string{`unknown field "apikey2"`}},
		{name: "unknown nested field", body: `{"groupRef":"g","consumerRef":"u","provider":"testBasic","basicAuth":{"username":"u","pass":"` + secretPassword + `"}}`,
			want: []string{`unknown field "pass"`}},
		{name: "wrong type", body: `{"groupRef":"g","consumerRef":"u","provider":"testKey","apiKey":5}`, want: []string{"apiKey must be a string"}},
		{name: "wrong nested type", body: `{"groupRef":"g","consumerRef":"u","provider":"testBasic","basicAuth":{"username":"u","password":true}}`,
			want: []string{"basicAuth.password must be a string"}},
		{name: "metadata not an object", body: `{"groupRef":"g","consumerRef":"u","provider":"testBasic","providerMetadata":["a"]}`,
			want: []string{"providerMetadata must be an object"}},
		{name: "not an object", body: `["x"]`, want: []string{"must be a JSON object"}},
		{name: "invalid JSON", body: `{"apiKey":"` + secretAPIKey + `"` + "\x01", want: []string{"not valid JSON (at byte"}},
		{name: "truncated JSON", body: `{"apiKey":"` + secretAPIKey, want: []string{"truncated"}},
		{name: "empty body", body: "", want: []string{"request body is required"}},
		{name: "trailing data", body: `{"groupRef":"g","consumerRef":"u","provider":"testNone"} {}`, want: []string{"exactly one JSON object"}},
		{name: "workspace conflict", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "a",
			ProviderMetadata: map[string]string{"workspace": "b"}, BasicAuth: &BasicAuth{Username: "u"}},
			want: []string{"providerWorkspaceRef and providerMetadata.workspace differ"}},
		{name: "workspace for a provider without one", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testKey", ProviderWorkspaceRef: "a", APIKey: secretAPIKey},
			want: []string{"providerWorkspaceRef must be absent"}},
		{name: "undeclared metadata", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": "t", "host": "evil.com"}},
			want: []string{"providerMetadata.host is not a metadata field of provider testRegion", "region, tenant"}},
		{name: "workspace missing", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic", BasicAuth: &BasicAuth{Username: "u"}},
			want: []string{"providerWorkspaceRef is required"}},
		{name: "metadata missing", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey},
			want: []string{"providerMetadata.tenant is required"}},
		{name: "metadata empty value", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": ""}},
			want: []string{"providerMetadata.tenant must not be empty"}},
		{name: "metadata path value dot segment", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": ".."}},
			want: []string{"providerMetadata.tenant:", "dot segments"}},
		{name: "metadata path value climbing through an escaped slash", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": "team one/../x"}},
			want: []string{"providerMetadata.tenant:", "dot segments"}},
		{name: "metadata region hostile", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": "t", "region": "evil.com:443/"}},
			want: []string{"providerMetadata.region:"}},
		{name: "metadata control char", req: &GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": "a\tb"}},
			want: []string{"providerMetadata.tenant must not contain control characters"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			body := tt.body
			if tt.req != nil {
				body = mustJSON(t, tt.req)
			}
			w := e.do("POST", genPath, keyP1, body)
			wantProblem(t, w, http.StatusBadRequest, "invalid-argument", tt.want...)
			if len(e.store.conns) != 0 {
				t.Errorf("a rejected request stored a connection")
			}
		})
	}
}

// TestHostileWorkspace feeds values that try to move the request to
// another host through providerWorkspaceRef and providerMetadata.
func TestHostileWorkspace(t *testing.T) {
	hostile := []string{
		"evil.com#", "evil.com/", "evil.com?", "evil.com:8443", "user@evil.com", "evil.com%2f", "evil.com\\",
		"a..b", ".evil", "evil.", "-evil", "evil-", "127.0.0.1", "[::1]", "evil com",
		strings.Repeat("a", 64), "évil",
	}
	for _, v := range hostile {
		for _, via := range []string{"providerWorkspaceRef", "providerMetadata.workspace"} {
			t.Run(via+"="+v, func(t *testing.T) {
				e := newEnv(t)
				req := GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testBasic", BasicAuth: &BasicAuth{Username: "u", Password: secretPassword}}
				if via == "providerWorkspaceRef" {
					req.ProviderWorkspaceRef = v
				} else {
					req.ProviderMetadata = map[string]string{"workspace": v}
				}
				w := e.do("POST", genPath, keyP1, mustJSON(t, req))
				wantProblem(t, w, http.StatusBadRequest, "invalid-argument", via)
			})
		}
	}
	// A template that is the whole host: each value is a fine DNS label,
	// but the resulting host is not allowed.
	for _, v := range []string{"localhost", "app.localhost", "intranet", "10.0.0.1", "2130706433", "a.0x7f000001", "evil.com.1"} {
		t.Run("whole host "+v, func(t *testing.T) {
			e := newEnv(t)
			req := GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testWhole", ProviderWorkspaceRef: v, BasicAuth: &BasicAuth{Username: "u"}}
			wantProblem(t, e.do("POST", genPath, keyP1, mustJSON(t, req)), http.StatusBadRequest, "invalid-argument", "providerWorkspaceRef")
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t)
	big := `{"groupRef":"g","consumerRef":"u","provider":"testKey","apiKey":"` + strings.Repeat("k", MaxBodyBytes) + `"}`
	wantProblem(t, e.do("POST", genPath, keyP1, big), http.StatusRequestEntityTooLarge, "body-too-large")
	// Trailing bytes past the cap after a complete object count too.
	pad := `{"groupRef":"g","consumerRef":"u","provider":"testNone"}` + strings.Repeat(" ", MaxBodyBytes)
	wantProblem(t, e.do("POST", genPath, keyP1, pad), http.StatusRequestEntityTooLarge, "body-too-large")
	install := `{"groupRef":"` + strings.Repeat("g", MaxBodyBytes) + `"}`
	wantProblem(t, e.do("POST", instPath("keys"), keyP1, install), http.StatusRequestEntityTooLarge, "body-too-large")
	if len(e.store.conns) != 0 {
		t.Error("stored a connection")
	}
}

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	c := e.generate(keyConn("g1"))
	paths := []struct{ method, path, body string }{
		{"POST", genPath, mustJSON(t, keyConn("g2"))},
		{"GET", connsPath, ""},
		{"GET", connsPath + "/" + c.ID, ""},
		{"DELETE", connsPath + "/" + c.ID, ""},
		{"POST", instPath("keys"), `{"groupRef":"g1"}`},
		{"GET", instPath("keys"), ""},
		{"GET", instPath("keys") + "/x", ""},
		{"DELETE", instPath("keys") + "/x", ""},
		{"GET", "/v1/projects/p1/installations", ""},
		{"GET", "/v1/projects/p1/no-such-route", ""},
		{"PUT", connsPath, ""},
	}
	var bodies []string
	for _, p := range paths {
		for _, c := range []struct {
			name, project, key string
		}{
			{"missing key", "p1", ""},
			{"wrong key", "p1", "nope"},
			{"other project's key", "p1", keyP2},
			{"key with whitespace", "p1", keyP1 + " "},
			{"unknown project", "p9", keyP1},
			{"unknown project without key", "p9", ""},
			{"escaped project", "p1%2Fx", keyP1},
		} {
			path := strings.Replace(p.path, "/v1/projects/p1", "/v1/projects/"+c.project, 1)
			w := e.do(p.method, path, c.key, p.body)
			pr := wantProblem(t, w, http.StatusUnauthorized, "unauthenticated")
			pr.RequestID = ""
			b, _ := json.Marshal(pr)
			bodies = append(bodies, string(b)+" "+w.Header().Get("WWW-Authenticate"))
		}
	}
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Fatalf("401 answers differ:\n%s\n%s", bodies[0], b)
		}
	}
	if len(e.store.conns) != 1 {
		t.Errorf("an unauthenticated request changed the store")
	}
	// p2's key works for p2 and sees none of p1's connections.
	var list ConnectionList
	decodeJSON(t, e.do("GET", "/v1/projects/p2/connections", keyP2, ""), http.StatusOK, &list)
	if len(list.Items) != 0 {
		t.Errorf("p2 sees %d connections of p1", len(list.Items))
	}
}

func TestRequestID(t *testing.T) {
	e := newEnv(t)
	w := e.do("GET", "/v1/projects/p1/connections/none", keyP1, "", "X-Request-Id", "req-abc-123")
	p := wantProblem(t, w, http.StatusNotFound, "not-found")
	if p.RequestID != "req-abc-123" {
		t.Errorf("requestId %q", p.RequestID)
	}
	w = e.do("GET", connsPath, keyP1, "", "X-Request-Id", "bad id\"with junk")
	if id := w.Header().Get(RequestIDHeader); len(id) != 36 || strings.Contains(id, "junk") {
		t.Errorf("request ID %q not regenerated", id)
	}
	a := e.do("GET", connsPath, keyP1, "").Header().Get(RequestIDHeader)
	b := e.do("GET", connsPath, keyP1, "").Header().Get(RequestIDHeader)
	if a == "" || a == b {
		t.Errorf("generated request IDs %q and %q", a, b)
	}
}

func TestRouting(t *testing.T) {
	tests := []struct {
		method, path string
		key          string
		status       int
		slug         string
		allow        string
	}{
		{"GET", "/", "", 404, "not-found", ""},
		{"GET", "/v1/nope", "", 404, "not-found", ""},
		{"GET", "/v1/projects/p1/nope", keyP1, 404, "not-found", ""},
		{"GET", "/v1/projects/p1/connections/", keyP1, 404, "not-found", ""},
		{"GET", "/v1/projects/p1/connections/a/b", keyP1, 404, "not-found", ""},
		{"GET", "/v1/projects/p1/../p1/connections", keyP1, 404, "not-found", ""},
		{"GET", "/v1/projects/p1//connections", keyP1, 404, "not-found", ""},
		{"GET", "/v1/projects/p1/connections:list", keyP1, 404, "not-found", ""},
		{"GET", genPath, keyP1, 405, "method-not-allowed", "POST"},
		{"PUT", connsPath + "/abc", keyP1, 405, "method-not-allowed", "DELETE, GET, HEAD, PATCH"},
		{"POST", connsPath, keyP1, 405, "method-not-allowed", "GET, HEAD"},
		{"PATCH", instPath("keys"), keyP1, 405, "method-not-allowed", "GET, HEAD, POST"},
		{"POST", "/v1/projects/p1/installations", keyP1, 405, "method-not-allowed", "GET, HEAD"},
		{"GET", "/v1/oauth-connect", "", 405, "method-not-allowed", "POST"},
		{"POST", "/v1/oauth-connect", "", 401, "unauthenticated", ""},
		{"POST", "/v1/oauth/callback", "", 405, "method-not-allowed", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			e := newEnv(t)
			w := e.do(tt.method, tt.path, tt.key, "")
			wantProblem(t, w, tt.status, tt.slug)
			if got := w.Header().Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}

func TestGetAndDeleteConnection(t *testing.T) {
	e := newEnv(t)
	c := e.generate(oauthConn("g1", "na1"))
	other := e.do("POST", "/v1/projects/p2/connections:generate", keyP2, mustJSON(t, keyConn("g1")))
	var c2 tokens.Connection
	decodeJSON(t, other, http.StatusCreated, &c2)
	// Every member DESIGN §5 lists is present, empty ones included.
	var members map[string]json.RawMessage
	if err := json.Unmarshal(other.Body.Bytes(), &members); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"id", "projectId", "provider", "groupRef", "consumerRef", "providerWorkspaceRef", "providerMetadata", "authScheme", "status", "createTime", "updateTime"} {
		if _, ok := members[m]; !ok {
			t.Errorf("connection without workspace or metadata lacks %q: %s", m, other.Body)
		}
	}
	if string(members["providerWorkspaceRef"]) != `""` || string(members["providerMetadata"]) != `{}` {
		t.Errorf("providerWorkspaceRef %s, providerMetadata %s; want \"\" and {}", members["providerWorkspaceRef"], members["providerMetadata"])
	}

	var got tokens.Connection
	w := e.do("GET", connsPath+"/"+c.ID, keyP1, "")
	decodeJSON(t, w, http.StatusOK, &got)
	if got.ID != c.ID || got.WorkspaceRef != "na1" || !got.CreateTime.Equal(c.CreateTime) {
		t.Errorf("got %+v, want %+v", got, c)
	}
	if strings.Contains(w.Body.String(), "credential") || strings.Contains(w.Body.String(), "REDACTED") {
		t.Errorf("credential serialised: %s", w.Body)
	}

	// Another project's connection is as missing as an unknown one, for
	// reading and for deleting.
	wantProblem(t, e.do("GET", connsPath+"/"+c2.ID, keyP1, ""), 404, "not-found", "not found")
	wantProblem(t, e.do("DELETE", connsPath+"/"+c2.ID, keyP1, ""), 404, "not-found")
	wantProblem(t, e.do("GET", connsPath+"/nope", keyP1, ""), 404, "not-found", `"nope"`)
	if _, ok := e.store.Connection(c2.ID); !ok {
		t.Fatal("p1 deleted p2's connection")
	}

	// In use: 409 naming the way out.
	var in tokens.Installation
	decodeJSON(t, e.do("POST", instPath("crm"), keyP1, `{"groupRef":"g1"}`), 201, &in)
	wantProblem(t, e.do("DELETE", connsPath+"/"+c.ID, keyP1, ""), 409, "conflict", "delete the installations first")

	w = e.do("DELETE", instPath("crm")+"/"+in.ID, keyP1, "")
	if w.Code != 204 || w.Body.Len() != 0 {
		t.Fatalf("delete installation: %d %s", w.Code, w.Body)
	}
	w = e.do("DELETE", connsPath+"/"+c.ID, keyP1, "")
	if w.Code != 204 || w.Body.Len() != 0 {
		t.Fatalf("delete connection: %d %s", w.Code, w.Body)
	}
	wantProblem(t, e.do("GET", connsPath+"/"+c.ID, keyP1, ""), 404, "not-found")
	wantProblem(t, e.do("DELETE", connsPath+"/"+c.ID, keyP1, ""), 404, "not-found")
}

func TestListConnections(t *testing.T) {
	e := newEnv(t)
	var list ConnectionList
	w := e.do("GET", connsPath, keyP1, "")
	decodeJSON(t, w, 200, &list)
	if strings.TrimSpace(w.Body.String()) != `{"items":[]}` {
		t.Errorf("empty list = %s", w.Body)
	}

	var ids []string
	for i := range 5 {
		ids = append(ids, e.generate(keyConn(fmt.Sprintf("g%d", i%2))).ID)
	}
	e.generate(oauthConn("g0", "na1"))

	// Walk all pages of two.
	var seen []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		path := connsPath + "?provider=testKey&pageSize=2"
		if token != "" {
			path += "&pageToken=" + token
		}
		w := e.do("GET", path, keyP1, "")
		var raw map[string]json.RawMessage
		decodeJSON(t, w, 200, &raw)
		var page ConnectionList
		json.Unmarshal(w.Body.Bytes(), &page)
		for _, c := range page.Items {
			seen = append(seen, c.ID)
		}
		if page.NextPageToken == "" {
			if _, ok := raw["nextPageToken"]; ok {
				t.Errorf("last page carries nextPageToken: %s", w.Body)
			}
			break
		}
		if len(page.Items) != 2 {
			t.Errorf("page of %d items", len(page.Items))
		}
		token = page.NextPageToken
	}
	if !slices.Equal(seen, ids) {
		t.Errorf("paged IDs %v, want %v", seen, ids)
	}

	for _, tt := range []struct {
		query string
		n     int
	}{
		{"", 6},
		{"?groupRef=g0", 4},
		{"?groupRef=g1&provider=testKey", 2},
		{"?provider=testOAuth", 1},
		{"?provider=none", 0},
		{"?pageSize=1000", 6},
		{"?pageSize=1", 1},
		{"?unknown=1", 6},
	} {
		var l ConnectionList
		decodeJSON(t, e.do("GET", connsPath+tt.query, keyP1, ""), 200, &l)
		if len(l.Items) != tt.n {
			t.Errorf("%s: %d items, want %d", tt.query, len(l.Items), tt.n)
		}
	}

	for _, q := range []string{"pageSize=0", "pageSize=-1", "pageSize=1001", "pageSize=abc", "pageSize=", "pageSize=1.5", "pageSize=99999999999999999999"} {
		wantProblem(t, e.do("GET", connsPath+"?"+q, keyP1, ""), 400, "invalid-argument", "pageSize")
	}
	for _, tok := range []string{"garbage!", "bm90LWEtbnVtYmVy", strings.Repeat("A", 2000)} {
		wantProblem(t, e.do("GET", connsPath+"?pageToken="+tok, keyP1, ""), 400, "invalid-argument", "pageToken")
	}
	wantProblem(t, e.do("GET", connsPath+"?groupRef=%0A", keyP1, ""), 400, "invalid-argument", "groupRef")
}

func TestInstallations(t *testing.T) {
	e := newEnv(t)
	old := e.generate(oauthConn("g1", "na1"))
	newest := e.generate(oauthConn("g1", "na2"))
	e.generate(keyConn("g1"))
	keyG2 := e.generate(keyConn("g2"))

	// Without connectionId: the group's newest connection to the provider.
	w := e.do("POST", instPath("crm"), keyP1, `{"groupRef":"g1"}`)
	var in tokens.Installation
	decodeJSON(t, w, 201, &in)
	if in.ConnectionID != newest.ID || in.Integration != "crm" || in.GroupRef != "g1" || in.ProjectID != "p1" || in.ID == "" || in.CreateTime.IsZero() {
		t.Errorf("installation %+v, want connection %s", in, newest.ID)
	}
	if loc := w.Header().Get("Location"); loc != instPath("crm")+"/"+in.ID {
		t.Errorf("Location %q", loc)
	}
	var raw map[string]any
	json.Unmarshal(w.Body.Bytes(), &raw)
	for _, k := range []string{"id", "projectId", "integration", "groupRef", "connectionId", "createTime"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("installation lacks %q", k)
		}
	}
	wantProblem(t, e.do("POST", instPath("crm"), keyP1, `{"groupRef":"g1","connectionId":"`+old.ID+`"}`), 409, "conflict", "already has an installation of integration crm")

	// With connectionId; an integration whose proxying is disabled too.
	var in2 tokens.Installation
	decodeJSON(t, e.do("POST", instPath("keys"), keyP1, mustJSON(t, CreateInstallationRequest{GroupRef: "g2", ConnectionID: keyG2.ID})), 201, &in2)
	if in2.ConnectionID != keyG2.ID {
		t.Errorf("installation uses %s, want %s", in2.ConnectionID, keyG2.ID)
	}
	none := e.generate(GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testNone"})
	var in3 tokens.Installation
	decodeJSON(t, e.do("POST", instPath("open"), keyP1, `{"groupRef":"g1"}`), 201, &in3)
	if in3.ConnectionID != none.ID {
		t.Errorf("open installation uses %s", in3.ConnectionID)
	}

	for _, tt := range []struct {
		name, path, body string
		status           int
		want             []string
	}{
		{"unknown integration", instPath("nope"), `{"groupRef":"g1"}`, 404, []string{`integration "nope" is not in the manifest`}},
		{"no connection in group", instPath("basic-sync"), `{"groupRef":"g1"}`, 404, []string{`group "g1" has no connection to provider testBasic`}},
		{"unknown connection", instPath("keys"), `{"groupRef":"g1","connectionId":"nope"}`, 404, []string{"connectionId", `"nope"`}},
		{"provider mismatch", instPath("keys"), `{"groupRef":"g1","connectionId":"` + old.ID + `"}`, 400, []string{"connectionId", "testOAuth", "testKey"}},
		{"other group's connection", instPath("keys"), `{"groupRef":"g1","connectionId":"` + keyG2.ID + `"}`, 400, []string{"connectionId", "another group"}},
		{"groupRef missing", instPath("keys"), `{}`, 400, []string{"groupRef is required"}},
		{"groupRef control", instPath("keys"), `{"groupRef":"a\u0007"}`, 400, []string{"groupRef must not contain control characters"}},
		{"connectionId control", instPath("keys"), `{"groupRef":"g1","connectionId":"a\u0000"}`, 400, []string{"connectionId"}},
		{"unknown field", instPath("keys"), `{"groupRef":"g1","connection":"x"}`, 400, []string{`unknown field "connection"`}},
		{"wrong type", instPath("keys"), `{"groupRef":1}`, 400, []string{"groupRef must be a string"}},
		{"empty body", instPath("keys"), ``, 400, []string{"request body is required"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantProblem(t, e.do("POST", tt.path, keyP1, tt.body), tt.status, "", tt.want...)
		})
	}

	// Another project's connection cannot be installed.
	var p2c tokens.Connection
	decodeJSON(t, e.do("POST", "/v1/projects/p2/connections:generate", keyP2, mustJSON(t, keyConn("g3"))), 201, &p2c)
	wantProblem(t, e.do("POST", instPath("keys"), keyP1, `{"groupRef":"g3","connectionId":"`+p2c.ID+`"}`), 404, "not-found")
	wantProblem(t, e.do("POST", instPath("keys"), keyP1, `{"groupRef":"g3"}`), 404, "not-found")

	// Read back.
	var got tokens.Installation
	decodeJSON(t, e.do("GET", instPath("crm")+"/"+in.ID, keyP1, ""), 200, &got)
	if got != in {
		t.Errorf("got %+v, want %+v", got, in)
	}
	wantProblem(t, e.do("GET", instPath("keys")+"/"+in.ID, keyP1, ""), 404, "not-found")
	wantProblem(t, e.do("GET", "/v1/projects/p2/integrations/crm/installations/"+in.ID, keyP2, ""), 404, "not-found")
	wantProblem(t, e.do("DELETE", "/v1/projects/p2/integrations/crm/installations/"+in.ID, keyP2, ""), 404, "not-found")
	wantProblem(t, e.do("DELETE", instPath("keys")+"/"+in.ID, keyP1, ""), 404, "not-found")
	wantProblem(t, e.do("GET", instPath("nope"), keyP1, ""), 404, "not-found", "nope")

	var list InstallationList
	decodeJSON(t, e.do("GET", instPath("crm"), keyP1, ""), 200, &list)
	if len(list.Items) != 1 || list.Items[0].ID != in.ID || list.NextPageToken != "" {
		t.Errorf("crm list %+v", list)
	}
	decodeJSON(t, e.do("GET", "/v1/projects/p1/installations", keyP1, ""), 200, &list)
	if len(list.Items) != 3 {
		t.Errorf("all installations: %d", len(list.Items))
	}
	decodeJSON(t, e.do("GET", "/v1/projects/p1/installations?pageSize=2", keyP1, ""), 200, &list)
	if len(list.Items) != 2 || list.NextPageToken == "" {
		t.Fatalf("first page %+v", list)
	}
	next := list.NextPageToken
	list = InstallationList{}
	decodeJSON(t, e.do("GET", "/v1/projects/p1/installations?pageSize=2&pageToken="+next, keyP1, ""), 200, &list)
	if len(list.Items) != 1 || list.NextPageToken != "" {
		t.Errorf("last page %+v", list)
	}
	w = e.do("GET", instPath("basic-sync"), keyP1, "")
	if strings.TrimSpace(w.Body.String()) != `{"items":[]}` {
		t.Errorf("empty installation list = %s", w.Body)
	}
	wantProblem(t, e.do("GET", instPath("crm")+"?pageSize=0", keyP1, ""), 400, "invalid-argument", "pageSize")
	wantProblem(t, e.do("GET", "/v1/projects/p1/installations?pageToken=zz!", keyP1, ""), 400, "invalid-argument", "pageToken")

	// Delete, then the group may install again, and the connection may go.
	if w := e.do("DELETE", instPath("crm")+"/"+in.ID, keyP1, ""); w.Code != 204 {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	wantProblem(t, e.do("GET", instPath("crm")+"/"+in.ID, keyP1, ""), 404, "not-found")
	decodeJSON(t, e.do("POST", instPath("crm"), keyP1, `{"groupRef":"g1","connectionId":"`+old.ID+`"}`), 201, nil)
	if w := e.do("DELETE", connsPath+"/"+newest.ID, keyP1, ""); w.Code != 204 {
		t.Errorf("delete unused connection: %d %s", w.Code, w.Body)
	}
}

// TestInstallationOfRemovedIntegration: after a reload drops an
// integration from the manifest, its installations can still be read and
// deleted, but no new one created.
func TestInstallationOfRemovedIntegration(t *testing.T) {
	e := newEnv(t)
	e.generate(keyConn("g1"))
	var in tokens.Installation
	decodeJSON(t, e.do("POST", instPath("keys"), keyP1, `{"groupRef":"g1"}`), 201, &in)

	cfg := loadConfig(t, keyP1)
	p, _ := cfg.Project("p1")
	m, errs := config.LoadManifest(writeFile(t, t.TempDir(), "amp.yaml", "specVersion: 1.0.0\nintegrations:\n  - {name: crm, provider: testOAuth}\n"), cfg.Providers)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	p.Integrations = m
	e.cfg.Store(cfg)
	wantProblem(t, e.do("POST", instPath("keys"), keyP1, `{"groupRef":"g2"}`), 404, "not-found", "manifest")
	decodeJSON(t, e.do("GET", instPath("keys")+"/"+in.ID, keyP1, ""), 200, nil)
	if w := e.do("DELETE", instPath("keys")+"/"+in.ID, keyP1, ""); w.Code != 204 {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
}

func TestConfigReload(t *testing.T) {
	e := newEnv(t)
	decodeJSON(t, e.do("GET", connsPath, keyP1, ""), 200, nil)
	// The key is rotated: the old one stops working on the next request.
	e.cfg.Store(loadConfig(t, "key-p1-SECRET-rotated"))
	wantProblem(t, e.do("GET", connsPath, keyP1, ""), 401, "unauthenticated")
	decodeJSON(t, e.do("GET", connsPath, "key-p1-SECRET-rotated", ""), 200, nil)
}

func TestNotReady(t *testing.T) {
	h := New(Options{Store: newFakeStore(time.Now), Config: func() *config.Config { return nil }})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", connsPath, nil))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "unavailable") {
		t.Errorf("nil config: %d %s", w.Code, w.Body)
	}
}

func TestInternalError(t *testing.T) {
	e := newEnv(t)
	e.store.failNext = errors.New("disk on fire")
	w := e.do("POST", genPath, keyP1, mustJSON(t, keyConn("g1")))
	p := wantProblem(t, w, 500, "internal", w.Header().Get(RequestIDHeader))
	if strings.Contains(p.Detail, "disk on fire") {
		t.Errorf("internal error leaked into the detail: %s", p.Detail)
	}
	if !strings.Contains(e.logs.String(), "disk on fire") || !strings.Contains(e.logs.String(), `"level":"ERROR"`) {
		t.Errorf("internal error not logged: %s", e.logs)
	}
}

func TestLogLines(t *testing.T) {
	e := newEnv(t)
	c := e.generate(oauthConn("g1", "na1"))
	e.do("GET", connsPath+"/"+c.ID, keyP1, "")
	e.do("GET", connsPath, "wrong-key", "")
	e.do("GET", "/v1/nope", "", "")
	e.do("PUT", genPath, keyP1, "")

	lines := strings.Split(strings.TrimSpace(e.logs.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d log lines for 5 requests:\n%s", len(lines), e.logs)
	}
	want := []struct {
		route   string
		status  int
		project string
	}{
		{"POST /v1/projects/{project}/connections:generate", 201, "p1"},
		{"GET /v1/projects/{project}/connections/{id}", 200, "p1"},
		{"GET /v1/projects/{project}/connections", 401, ""},
		{"unmatched", 404, ""},
		{"unmatched", 405, "p1"},
	}
	for i, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if rec["route"] != want[i].route || rec["status"] != float64(want[i].status) {
			t.Errorf("line %d: %s", i, l)
		}
		if p, _ := rec["project"].(string); p != want[i].project {
			t.Errorf("line %d project %q, want %q", i, p, want[i].project)
		}
		for _, k := range []string{"method", "duration", "requestId"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("line %d lacks %s: %s", i, k, l)
			}
		}
		if strings.Contains(l, "na1") || strings.Contains(l, c.ID) {
			t.Errorf("line %d carries request values: %s", i, l)
		}
	}
}

func TestSecretTypesRedact(t *testing.T) {
	req := oauthConn("g1", "na1")
	req.APIKey = secretAPIKey
	req.BasicAuth = &BasicAuth{Username: secretAPIKey, Password: secretPassword}
	req.OAuth2ClientCredentials = &OAuth2ClientCredentials{ClientID: "c", ClientSecret: secretClientSecret}
	var out []string
	for _, v := range []any{req, &req, *req.BasicAuth, *req.OAuth2ClientCredentials, *req.OAuth2AuthorizationCode, req.OAuth2AuthorizationCode.AccessToken} {
		out = append(out, fmt.Sprintf("%v %+v %#v %s", v, v, v, v))
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	logger.Info("req", "req", req, "basic", req.BasicAuth, "cc", req.OAuth2ClientCredentials, "code", req.OAuth2AuthorizationCode)
	out = append(out, logs.String())
	all := strings.Join(out, "\n")
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("secret %q printed: %s", s, all)
		}
	}
	if !strings.Contains(all, "testOAuth") {
		t.Errorf("non-secret fields hidden too: %s", all)
	}
}

// A value used in several templates (base, authorization and token URLs)
// is reported once, not once per template.
func TestMetadataDetailOnce(t *testing.T) {
	for _, via := range []string{"providerWorkspaceRef", "providerMetadata.workspace"} {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			req := GenerateConnectionRequest{GroupRef: "g", ConsumerRef: "u", Provider: "testOAuth",
				OAuth2AuthorizationCode: &OAuth2AuthorizationCode{}}
			req.OAuth2AuthorizationCode.AccessToken.Token = "tok"
			if via == "providerWorkspaceRef" {
				req.ProviderWorkspaceRef = "evil.com#"
			} else {
				req.ProviderMetadata = map[string]string{"workspace": "evil.com#"}
			}
			w := e.do("POST", genPath, keyP1, mustJSON(t, req))
			p := wantProblem(t, w, http.StatusBadRequest, "invalid-argument", via+":")
			if n := strings.Count(p.Detail, via+":"); n != 1 {
				t.Errorf("detail names %s %d times: %q", via, n, p.Detail)
			}
		})
	}
}

// GET …/connections/{id} writes the connection's members and, during a
// lockout, rateLimitedUntil and retryable beside them.
func TestConnectionViewJSON(t *testing.T) {
	c := &tokens.Connection{ID: "c1", Provider: "testKey"}
	until := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	retryable := true
	for _, tc := range []struct {
		view   ConnectionView
		locked bool
	}{
		{ConnectionView{Connection: c}, false},
		{ConnectionView{Connection: c, RateLimitedUntil: &until, Retryable: &retryable}, true},
	} {
		b, err := json.Marshal(tc.view)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if string(m["id"]) != `"c1"` || string(m["providerMetadata"]) != `{}` || string(m["providerWorkspaceRef"]) != `""` {
			t.Errorf("connection members missing: %s", b)
		}
		_, hasUntil := m["rateLimitedUntil"]
		_, hasRetryable := m["retryable"]
		if hasUntil != tc.locked || hasRetryable != tc.locked {
			t.Errorf("locked %v: %s", tc.locked, b)
		}
		if tc.locked && (string(m["rateLimitedUntil"]) != `"2026-03-01T12:00:30Z"` || string(m["retryable"]) != "true") {
			t.Errorf("lockout members: %s", b)
		}
	}
}
