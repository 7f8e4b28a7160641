package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/tokens"
)

func TestUpdateConnection(t *testing.T) {
	future := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		create GenerateConnectionRequest
		body   string
		scheme tokens.AuthScheme
		meta   map[string]string
		cred   tokens.Credential
	}{
		{
			name:   "apiKey replaced",
			create: keyConn("g1"),
			body:   `{"apiKey":"SECRET-apikey-new-11"}`,
			scheme: tokens.SchemeAPIKey,
			cred:   tokens.Credential{APIKey: "SECRET-apikey-new-11"},
		},
		{
			name:   "oauth2 tokens replaced, workspace kept",
			create: oauthConn("g1", "na1"),
			body:   mustJSON(t, UpdateConnectionRequest{OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: "SECRET-access-new", ExpiresAt: future}, RefreshToken: RefreshToken{Token: "SECRET-refresh-new"}}}),
			scheme: tokens.SchemeOAuth2AuthorizationCode,
			meta:   map[string]string{"workspace": "na1"},
			cred:   tokens.Credential{AccessToken: "SECRET-access-new", RefreshToken: "SECRET-refresh-new", Expiry: future},
		},
		{
			name:   "credential and workspace at once",
			create: oauthConn("g1", "na1"),
			body:   mustJSON(t, UpdateConnectionRequest{ProviderWorkspaceRef: "eu2", OAuth2AuthorizationCode: &OAuth2AuthorizationCode{RefreshToken: RefreshToken{Token: "SECRET-refresh-new"}}}),
			scheme: tokens.SchemeOAuth2AuthorizationCode,
			meta:   map[string]string{"workspace": "eu2"},
			cred:   tokens.Credential{RefreshToken: "SECRET-refresh-new"},
		},
		{
			name: "workspace only keeps the credential",
			create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme",
				BasicAuth: &BasicAuth{Username: "admin", Password: secretPassword}},
			body:   `{"providerWorkspaceRef":"acme-eu"}`,
			scheme: tokens.SchemeBasic,
			meta:   map[string]string{"workspace": "acme-eu"},
			cred:   tokens.Credential{Username: "admin", Password: secretPassword},
		},
		{
			name: "workspace through providerMetadata",
			create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testBasic", ProviderWorkspaceRef: "acme",
				BasicAuth: &BasicAuth{Username: "admin", Password: secretPassword}},
			body:   `{"providerMetadata":{"workspace":"acme-us"}}`,
			scheme: tokens.SchemeBasic,
			meta:   map[string]string{"workspace": "acme-us"},
			cred:   tokens.Credential{Username: "admin", Password: secretPassword},
		},
		{
			name: "metadata merged",
			create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
				ProviderMetadata: map[string]string{"tenant": "t1"}},
			body:   `{"providerMetadata":{"region":"us"}}`,
			scheme: tokens.SchemeAPIKey,
			meta:   map[string]string{"tenant": "t1", "region": "us"},
			cred:   tokens.Credential{APIKey: secretAPIKey},
		},
		{
			name: "null removes a metadata value, the default applies",
			create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
				ProviderMetadata: map[string]string{"tenant": "t1", "region": "us"}},
			body:   `{"providerMetadata":{"region":null,"tenant":"t2"}}`,
			scheme: tokens.SchemeAPIKey,
			meta:   map[string]string{"tenant": "t2"},
			cred:   tokens.Credential{APIKey: secretAPIKey},
		},
		{
			name: "client credentials replaced",
			create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testClient",
				OAuth2ClientCredentials: &OAuth2ClientCredentials{ClientID: "cid", ClientSecret: secretClientSecret}},
			body:   `{"oauth2ClientCredentials":{"clientId":"cid2","clientSecret":"SECRET-cs-new","scopes":["read"]}}`,
			scheme: tokens.SchemeOAuth2ClientCredentials,
			cred:   tokens.Credential{ClientID: "cid2", ClientSecret: "SECRET-cs-new", Scopes: []string{"read"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.generate(tt.create)
			e.store.setStatus(c.ID, tokens.StatusBadCredentials)

			w := e.do("PATCH", connsPath+"/"+c.ID, keyP1, tt.body)
			var got tokens.Connection
			decodeJSON(t, w, http.StatusOK, &got)
			if strings.Contains(w.Body.String(), "SECRET") {
				t.Errorf("a secret in the response: %s", w.Body)
			}
			if got.ID != c.ID || got.Provider != c.Provider || got.GroupRef != c.GroupRef || got.ConsumerRef != c.ConsumerRef {
				t.Errorf("identity changed: %+v", got)
			}
			if got.Status != tokens.StatusCreated {
				t.Errorf("status %q, want created (bad_credentials cleared)", got.Status)
			}
			if got.AuthScheme != tt.scheme {
				t.Errorf("authScheme %q, want %q", got.AuthScheme, tt.scheme)
			}
			if !maps.Equal(got.Metadata, tt.meta) && (len(got.Metadata) != 0 || len(tt.meta) != 0) {
				t.Errorf("metadata %v, want %v", got.Metadata, tt.meta)
			}
			if got.WorkspaceRef != tt.meta["workspace"] {
				t.Errorf("providerWorkspaceRef %q, want %q", got.WorkspaceRef, tt.meta["workspace"])
			}
			if !got.CreateTime.Equal(c.CreateTime) || !got.UpdateTime.After(c.UpdateTime) {
				t.Errorf("times: create %v→%v update %v→%v", c.CreateTime, got.CreateTime, c.UpdateTime, got.UpdateTime)
			}
			cred := e.store.credentialOf(c.ID)
			if cred.APIKey != tt.cred.APIKey || cred.Username != tt.cred.Username || cred.Password != tt.cred.Password ||
				cred.AccessToken != tt.cred.AccessToken || cred.RefreshToken != tt.cred.RefreshToken || !cred.Expiry.Equal(tt.cred.Expiry) ||
				cred.ClientID != tt.cred.ClientID || cred.ClientSecret != tt.cred.ClientSecret || !slices.Equal(cred.Scopes, tt.cred.Scopes) {
				t.Errorf("stored credential differs from the expected one")
			}
			// The answer is what a read returns.
			var again tokens.Connection
			decodeJSON(t, e.do("GET", connsPath+"/"+c.ID, keyP1, ""), 200, &again)
			if again.Status != got.Status || !again.UpdateTime.Equal(got.UpdateTime) || again.WorkspaceRef != got.WorkspaceRef {
				t.Errorf("read back %+v, answered %+v", again, got)
			}
		})
	}
}

func TestUpdateConnectionRejects(t *testing.T) {
	past := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		create GenerateConnectionRequest
		id     string // "" means the created connection
		key    string // "" means keyP1
		body   string
		status int
		want   []string
	}{
		{name: "empty object", create: keyConn("g1"), body: `{}`, status: 400, want: []string{"changes nothing"}},
		{name: "empty apiKey", create: keyConn("g1"), body: `{"apiKey":""}`, status: 400, want: []string{"changes nothing"}},
		{name: "empty metadata", create: keyConn("g1"), body: `{"providerMetadata":{}}`, status: 400, want: []string{"changes nothing"}},
		{name: "no body", create: keyConn("g1"), body: ``, status: 400, want: []string{"request body is required"}},
		{name: "unknown field", create: keyConn("g1"), body: `{"provider":"testBasic"}`, status: 400, want: []string{`unknown field "provider"`}},
		{name: "groupRef cannot change", create: keyConn("g1"), body: `{"groupRef":"g2"}`, status: 400, want: []string{`unknown field "groupRef"`}},
		{name: "wrong kind", create: keyConn("g1"), body: mustJSON(t, UpdateConnectionRequest{BasicAuth: &BasicAuth{Username: "u", Password: secretPassword}}),
			status: 400, want: []string{"basicAuth does not fit provider testKey", "give apiKey"}},
		{name: "two credentials", create: keyConn("g1"), body: mustJSON(t, UpdateConnectionRequest{APIKey: secretAPIKey, BasicAuth: &BasicAuth{Username: "u"}}),
			status: 400, want: []string{"only one of", "apiKey and basicAuth"}},
		{name: "apiKey with newline", create: keyConn("g1"), body: mustJSON(t, UpdateConnectionRequest{APIKey: secretAPIKey + "\r\nX: y"}),
			status: 400, want: []string{"apiKey must not contain control characters"}},
		{name: "credential for authType none", create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testNone"},
			body: mustJSON(t, UpdateConnectionRequest{APIKey: secretAPIKey}), status: 400, want: []string{"apiKey must be absent"}},
		{name: "expired token without refresh token", create: oauthConn("g1", "na1"),
			body:   mustJSON(t, UpdateConnectionRequest{OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: secretAccess, ExpiresAt: past}}}),
			status: 400, want: []string{"oauth2AuthorizationCode.accessToken.expiresAt is in the past"}},
		{name: "hostile workspace", create: oauthConn("g1", "na1"), body: `{"providerWorkspaceRef":"evil.com#"}`, status: 400, want: []string{"providerWorkspaceRef:"}},
		{name: "hostile workspace in metadata", create: oauthConn("g1", "na1"), body: `{"providerMetadata":{"workspace":"evil.com/"}}`, status: 400, want: []string{"providerMetadata.workspace:"}},
		{name: "workspace twice, different", create: oauthConn("g1", "na1"), body: `{"providerWorkspaceRef":"a","providerMetadata":{"workspace":"b"}}`,
			status: 400, want: []string{"providerWorkspaceRef and providerMetadata.workspace differ"}},
		{name: "workspace set and removed", create: oauthConn("g1", "na1"), body: `{"providerWorkspaceRef":"a","providerMetadata":{"workspace":null}}`,
			status: 400, want: []string{"providerWorkspaceRef sets the workspace that providerMetadata.workspace removes"}},
		{name: "required workspace removed", create: oauthConn("g1", "na1"), body: `{"providerMetadata":{"workspace":null}}`,
			status: 400, want: []string{"providerWorkspaceRef is required"}},
		{name: "undeclared metadata", create: oauthConn("g1", "na1"), body: `{"providerMetadata":{"host":"x"}}`,
			status: 400, want: []string{"providerMetadata.host is not a metadata field of provider testOAuth"}},
		{name: "workspace for a provider without one", create: keyConn("g1"), body: `{"providerWorkspaceRef":"acme"}`,
			status: 400, want: []string{"providerWorkspaceRef must be absent"}},
		{name: "required metadata removed", create: GenerateConnectionRequest{GroupRef: "g1", ConsumerRef: "u", Provider: "testRegion", APIKey: secretAPIKey,
			ProviderMetadata: map[string]string{"tenant": "t1"}}, body: `{"providerMetadata":{"tenant":""}}`,
			status: 400, want: []string{"providerMetadata.tenant is required"}},
		{name: "unknown connection", create: keyConn("g1"), id: "nope", body: `{"apiKey":"x"}`, status: 404, want: []string{`connection "nope" not found in project p1`}},
		{name: "no key", create: keyConn("g1"), key: "-", body: `{"apiKey":"x"}`, status: 401},
		{name: "wrong key", create: keyConn("g1"), key: "wrong", body: `{"apiKey":"x"}`, status: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.generate(tt.create)
			e.store.setStatus(c.ID, tokens.StatusBadCredentials)
			before, _ := e.store.Connection(c.ID)
			id := tt.id
			if id == "" {
				id = c.ID
			}
			key := tt.key
			switch key {
			case "":
				key = keyP1
			case "-":
				key = ""
			}
			w := e.do("PATCH", connsPath+"/"+id, key, tt.body)
			wantProblem(t, w, tt.status, "", tt.want...)
			after, _ := e.store.Connection(c.ID)
			if after != before {
				t.Errorf("a rejected update changed the connection")
			}
		})
	}
}

func TestUpdateConnectionOtherProject(t *testing.T) {
	e := newEnv(t)
	var p2c tokens.Connection
	decodeJSON(t, e.do("POST", "/v1/projects/p2/connections:generate", keyP2, mustJSON(t, keyConn("g1"))), 201, &p2c)
	wantProblem(t, e.do("PATCH", connsPath+"/"+p2c.ID, keyP1, `{"apiKey":"x"}`), 404, "not-found")
	// p1's key cannot reach p2's path either.
	wantProblem(t, e.do("PATCH", "/v1/projects/p2/connections/"+p2c.ID, keyP1, `{"apiKey":"x"}`), 401, "unauthenticated")
	if got := e.store.credentialOf(p2c.ID); got.APIKey != secretAPIKey {
		t.Error("p2's credential changed")
	}
}

func TestUpdateConnectionStoreError(t *testing.T) {
	e := newEnv(t)
	c := e.generate(keyConn("g1"))
	e.store.failNext = errors.New("disk on fire")
	w := e.do("PATCH", connsPath+"/"+c.ID, keyP1, `{"apiKey":"SECRET-apikey-new-22"}`)
	p := wantProblem(t, w, 500, "internal")
	if strings.Contains(p.Detail, "disk on fire") || e.store.credentialOf(c.ID).APIKey != secretAPIKey {
		t.Errorf("detail %q, or the credential changed", p.Detail)
	}
	if l := e.logs.String(); !strings.Contains(l, "disk on fire") || strings.Contains(l, "SECRET-apikey-new-22") {
		t.Errorf("log: %s", l)
	}
}

func TestUpdateRequestRedacts(t *testing.T) {
	req := UpdateConnectionRequest{ProviderWorkspaceRef: "acme", APIKey: secretAPIKey,
		BasicAuth:               &BasicAuth{Username: secretAPIKey, Password: secretPassword},
		OAuth2AuthorizationCode: &OAuth2AuthorizationCode{AccessToken: AccessToken{Token: secretAccess}}}
	logs := &syncBuffer{}
	slog.New(slog.NewJSONHandler(logs, nil)).Info("req", "req", req)
	all := fmt.Sprintf("%v %+v %#v %s", req, req, req, &req) + logs.String()
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("secret %q printed: %s", s, all)
		}
	}
	if !strings.Contains(all, "apiKey,basicAuth,oauth2AuthorizationCode") {
		t.Errorf("credential kinds hidden too: %s", all)
	}
}
