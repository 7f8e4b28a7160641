package sampleprovider

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testAPIKey       = "sk_test_key"
	testBasicUser    = "basic-user"
	testBasicPass    = "basic:pass word"
	testClientID     = "client id/1"
	testClientSecret = "secret&=+"
)

// clock is a hand-moved time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// start runs a server with every credential configured; edit changes the
// options first.
func start(t *testing.T, edit func(*Options)) (*Server, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	opts := Options{
		Hosts:          []string{"api.sample.test", "*.sample.test"},
		APIKey:         testAPIKey,
		BasicUser:      testBasicUser,
		BasicPassword:  testBasicPass,
		ClientID:       testClientID,
		ClientSecret:   testClientSecret,
		AccessTokenTTL: 30 * time.Minute,
		Now:            clk.Now,
	}
	if edit != nil {
		edit(&opts)
	}
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Close)
	return s, clk
}

func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, body
}

func newRequest(t *testing.T, method, rawURL string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return e.Error
}

func TestAPIAuthentication(t *testing.T) {
	s, clk := start(t, nil)
	access, _ := s.IssueTokens(time.Minute)
	expiring, _ := s.IssueTokens(time.Minute)
	revoked, _ := s.IssueTokens(time.Minute)
	s.RevokeAccessToken(revoked)
	clk.Advance(2 * time.Minute)
	expired := expiring
	access2, _ := s.IssueTokens(0) // default TTL, minted after the clock moved

	tests := []struct {
		name     string
		url      string
		header   http.Header
		basic    []string
		wantAuth string
	}{
		{"bearer", "/v1/items", http.Header{"Authorization": {"Bearer " + access2}}, nil, AuthBearer},
		{"bearer scheme case-insensitive", "/v1/items", http.Header{"Authorization": {"bearer " + access2}}, nil, AuthBearer},
		{"bearer expired", "/v1/items", http.Header{"Authorization": {"Bearer " + expired}}, nil, ""},
		{"bearer expired earlier token", "/v1/items", http.Header{"Authorization": {"Bearer " + access}}, nil, ""},
		{"bearer revoked", "/v1/items", http.Header{"Authorization": {"Bearer " + revoked}}, nil, ""},
		{"bearer unknown", "/v1/items", http.Header{"Authorization": {"Bearer nope"}}, nil, ""},
		{"api key header", "/v1/items", http.Header{"X-Api-Key": {testAPIKey}}, nil, AuthAPIKey},
		{"api key header wrong", "/v1/items", http.Header{"X-Api-Key": {"wrong"}}, nil, ""},
		{"api key header twice", "/v1/items", http.Header{"X-Api-Key": {testAPIKey, testAPIKey}}, nil, ""},
		{"api key query", "/v1/items?api_key=" + url.QueryEscape(testAPIKey) + "&a=1", nil, nil, AuthAPIKeyQuery},
		{"api key query wrong", "/v1/items?api_key=wrong", nil, nil, ""},
		{"api key query twice", "/v1/items?api_key=" + testAPIKey + "&api_key=" + testAPIKey, nil, nil, ""},
		{"basic", "/v1/items", nil, []string{testBasicUser, testBasicPass}, AuthBasic},
		{"basic wrong password", "/v1/items", nil, []string{testBasicUser, "nope"}, ""},
		{"basic wrong user", "/v1/items", nil, []string{"other", testBasicPass}, ""},
		{"none", "/v1/items", nil, nil, ""},
		{"bad bearer but good api key", "/v1/items", http.Header{"Authorization": {"Bearer nope"}, "X-Api-Key": {testAPIKey}}, nil, AuthAPIKey},
		{"two authorization headers", "/v1/items", http.Header{"Authorization": {"Bearer " + access2, "Bearer " + access2}}, nil, ""},
	}
	c := s.Client()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := newRequest(t, http.MethodGet, "https://api.sample.test"+tc.url, nil)
			for k, vs := range tc.header {
				req.Header[k] = vs
			}
			if tc.basic != nil {
				req.SetBasicAuth(tc.basic[0], tc.basic[1])
			}
			resp, body := do(t, c, req)
			seen := s.LastRequest()
			if seen == nil || seen.Auth != tc.wantAuth {
				t.Fatalf("LastRequest().Auth = %+v, want %q", seen, tc.wantAuth)
			}
			if tc.wantAuth == "" {
				if resp.StatusCode != http.StatusUnauthorized || errorCode(t, body) != "unauthorized" {
					t.Fatalf("got %d %s, want 401 unauthorized", resp.StatusCode, body)
				}
				if seen.Status != http.StatusUnauthorized {
					t.Errorf("Seen.Status = %d, want 401", seen.Status)
				}
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got %d %s, want 200", resp.StatusCode, body)
			}
		})
	}
	if got, want := s.Hits("/v1/items"), int64(len(tests)); got != want {
		t.Errorf("Hits = %d, want %d (rejected requests count too)", got, want)
	}
}

func TestAuthDisabledWhenUnconfigured(t *testing.T) {
	s, _ := start(t, func(o *Options) { o.APIKey, o.BasicUser, o.BasicPassword = "", "", "" })
	for _, req := range []*http.Request{
		newRequest(t, http.MethodGet, "https://api.sample.test/v1/x?api_key=", nil),
		func() *http.Request {
			r := newRequest(t, http.MethodGet, "https://api.sample.test/v1/x", nil)
			r.Header.Set("X-Api-Key", "")
			r.SetBasicAuth("", "")
			return r
		}(),
	} {
		if resp, body := do(t, s.Client(), req); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: got %d %s, want 401", req.URL, resp.StatusCode, body)
		}
	}
}

func TestEcho(t *testing.T) {
	s, _ := start(t, nil)
	tests := []struct {
		host, wantWorkspace string
	}{
		{"api.sample.test", ""},
		{"acme.sample.test", "acme"},
		{"ACME.sample.test", "acme"},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			const payload = `{"name":"Acme"}`
			req := newRequest(t, http.MethodPut, "https://"+tc.host+"/v1/sobjects/Account?x=1&y=%2F", strings.NewReader(payload))
			req.Header.Set("X-Api-Key", testAPIKey)
			req.Header.Set("Content-Type", "application/vnd.custom+json")
			req.Header.Add("X-Multi", "a")
			req.Header.Add("X-Multi", "b")
			resp, body := do(t, s.Client(), req)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got %d %s", resp.StatusCode, body)
			}
			var e Echo
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256([]byte(payload))
			want := Echo{
				Method: http.MethodPut, Host: tc.host, Path: "/v1/sobjects/Account", Query: "x=1&y=%2F",
				BodyBytes: int64(len(payload)), BodySHA256: hex.EncodeToString(sum[:]),
				ContentType: "application/vnd.custom+json", Workspace: tc.wantWorkspace,
			}
			got := e
			got.Headers = nil
			if !reflect.DeepEqual(got, want) {
				t.Errorf("echo = %+v\nwant   %+v", got, want)
			}
			if e.Headers["x-api-key"] != testAPIKey || e.Headers["x-multi"] != "a, b" ||
				e.Headers["content-type"] != "application/vnd.custom+json" {
				t.Errorf("headers = %v", e.Headers)
			}
			seen := s.LastRequest()
			if seen.Method != http.MethodPut || seen.Host != tc.host || seen.RawQuery != "x=1&y=%2F" ||
				seen.BodyLen != int64(len(payload)) || seen.BodySHA256 != want.BodySHA256 ||
				seen.Header.Get("X-Api-Key") != testAPIKey || seen.Status != http.StatusOK || seen.Auth != AuthAPIKey {
				t.Errorf("LastRequest = %+v", seen)
			}
			// The copy is the caller's own.
			seen.Header.Set("X-Api-Key", "changed")
			if s.LastRequest().Header.Get("X-Api-Key") != testAPIKey {
				t.Error("LastRequest shares its header map")
			}
		})
	}
}

func TestWorkspace(t *testing.T) {
	for host, want := range map[string]string{
		"api.sample.test":       "",
		"api.sample.test:8443":  "",
		"acme.sample.test:8443": "acme",
		"acme.sample.test.":     "acme",
		"127.0.0.1:443":         "",
		"[::1]:443":             "",
		"":                      "",
	} {
		if got := workspace(host); got != want {
			t.Errorf("workspace(%q) = %q, want %q", host, got, want)
		}
	}
}

// tokenRequest posts form to /oauth/token, authenticating the client in the
// given style.
func tokenRequest(t *testing.T, s *Server, style, id, secret string, form url.Values) (int, map[string]any) {
	t.Helper()
	form = cloneValues(form)
	if style == AuthStyleInParams {
		form.Set("client_id", id)
		form.Set("client_secret", secret)
	}
	req := newRequest(t, http.MethodPost, "https://acme.sample.test/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if style == AuthStyleInHeader {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	resp, body := do(t, s.Client(), req)
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", resp.Header.Get("Cache-Control"))
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("token response %q: %v", body, err)
	}
	return resp.StatusCode, m
}

func cloneValues(v url.Values) url.Values {
	c := url.Values{}
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	return c
}

func apiStatus(t *testing.T, s *Server, access string) int {
	t.Helper()
	req := newRequest(t, http.MethodGet, "https://api.sample.test/v1/me", nil)
	req.Header.Set("Authorization", "Bearer "+access)
	resp, _ := do(t, s.Client(), req)
	return resp.StatusCode
}

func TestRefreshTokenRotation(t *testing.T) {
	for _, style := range []string{AuthStyleInHeader, AuthStyleInParams} {
		t.Run(style, func(t *testing.T) {
			s, _ := start(t, nil)
			_, refresh := s.IssueTokens(0)

			status, m := tokenRequest(t, s, style, testClientID, testClientSecret,
				url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}})
			if status != http.StatusOK {
				t.Fatalf("refresh: %d %v", status, m)
			}
			newAccess, _ := m["access_token"].(string)
			newRefresh, _ := m["refresh_token"].(string)
			if newAccess == "" || newRefresh == "" || newRefresh == refresh || m["token_type"] != "Bearer" ||
				m["expires_in"] != float64(1800) || m["instance_url"] != "https://acme.sample.test" {
				t.Fatalf("refresh response = %v", m)
			}
			if got := apiStatus(t, s, newAccess); got != http.StatusOK {
				t.Errorf("new access token: API status %d", got)
			}

			// The old refresh token was spent.
			status, m = tokenRequest(t, s, style, testClientID, testClientSecret,
				url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}})
			if status != http.StatusBadRequest || m["error"] != "invalid_grant" {
				t.Fatalf("reused refresh token: %d %v, want 400 invalid_grant", status, m)
			}

			// A revoked one too.
			s.RevokeRefreshToken(newRefresh)
			status, m = tokenRequest(t, s, style, testClientID, testClientSecret,
				url.Values{"grant_type": {"refresh_token"}, "refresh_token": {newRefresh}})
			if status != http.StatusBadRequest || m["error"] != "invalid_grant" {
				t.Fatalf("revoked refresh token: %d %v, want 400 invalid_grant", status, m)
			}
			if got := s.TokenRequests(); got != 3 {
				t.Errorf("TokenRequests = %d, want 3", got)
			}
			if got, other := s.TokenGrants("refresh_token"), s.TokenGrants("client_credentials"); got != 3 || other != 0 {
				t.Errorf("TokenGrants: refresh_token %d, client_credentials %d; want 3 and 0", got, other)
			}
		})
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	s, _ := start(t, nil)
	_, refresh := s.IssueTokens(0)
	grant := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}
	tests := []struct {
		name, style, id, secret string
		form                    url.Values
		wantStatus              int
		wantError               string
	}{
		{"wrong secret in header", AuthStyleInHeader, testClientID, "nope", grant, 401, "invalid_client"},
		{"wrong secret in params", AuthStyleInParams, testClientID, "nope", grant, 401, "invalid_client"},
		{"wrong client id", AuthStyleInParams, "other", testClientSecret, grant, 401, "invalid_client"},
		{"no client authentication", "", "", "", grant, 401, "invalid_client"},
		{"no grant type", AuthStyleInHeader, testClientID, testClientSecret, url.Values{}, 400, "invalid_request"},
		{"unknown grant type", AuthStyleInHeader, testClientID, testClientSecret, url.Values{"grant_type": {"password"}}, 400, "unsupported_grant_type"},
		{"unknown refresh token", AuthStyleInHeader, testClientID, testClientSecret,
			url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"nope"}}, 400, "invalid_grant"},
		{"unknown code", AuthStyleInHeader, testClientID, testClientSecret,
			url.Values{"grant_type": {"authorization_code"}, "code": {"nope"}}, 400, "invalid_grant"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, m := tokenRequest(t, s, tc.style, tc.id, tc.secret, tc.form)
			if status != tc.wantStatus || m["error"] != tc.wantError {
				t.Errorf("got %d %v, want %d %s", status, m, tc.wantStatus, tc.wantError)
			}
		})
	}
	// Failed client authentication must not spend the refresh token.
	if status, m := tokenRequest(t, s, AuthStyleInHeader, testClientID, testClientSecret, grant); status != http.StatusOK {
		t.Errorf("refresh after failed attempts: %d %v", status, m)
	}
	if got, want := s.TokenRequests(), int64(len(tests)+1); got != want {
		t.Errorf("TokenRequests = %d, want %d", got, want)
	}
}

func TestClientAuthStyleRestriction(t *testing.T) {
	for _, allowed := range []string{AuthStyleInHeader, AuthStyleInParams} {
		t.Run(allowed, func(t *testing.T) {
			s, _ := start(t, func(o *Options) { o.ClientAuthStyle = allowed })
			for _, style := range []string{AuthStyleInHeader, AuthStyleInParams} {
				status, m := tokenRequest(t, s, style, testClientID, testClientSecret,
					url.Values{"grant_type": {"client_credentials"}})
				want := http.StatusUnauthorized
				if style == allowed {
					want = http.StatusOK
				}
				if status != want {
					t.Errorf("%s: got %d %v, want %d", style, status, m, want)
				}
			}
		})
	}
}

func TestClientCredentials(t *testing.T) {
	s, clk := start(t, nil)
	status, m := tokenRequest(t, s, AuthStyleInHeader, testClientID, testClientSecret,
		url.Values{"grant_type": {"client_credentials"}, "scope": {"read"}})
	if status != http.StatusOK {
		t.Fatalf("client_credentials: %d %v", status, m)
	}
	if _, ok := m["refresh_token"]; ok {
		t.Errorf("client_credentials answered a refresh token: %v", m)
	}
	access, _ := m["access_token"].(string)
	if got := apiStatus(t, s, access); got != http.StatusOK {
		t.Fatalf("API status %d with the client-credentials token", got)
	}
	clk.Advance(30 * time.Minute)
	if got := apiStatus(t, s, access); got != http.StatusUnauthorized {
		t.Errorf("API status %d after expiry, want 401", got)
	}
}

// authorize runs GET /oauth/authorize and returns the redirect's query.
func authorize(t *testing.T, s *Server, params url.Values) (int, url.Values) {
	t.Helper()
	c := s.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, body := do(t, c, newRequest(t, http.MethodGet, "https://api.sample.test/oauth/authorize?"+params.Encode(), nil))
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("Location %q: %v (body %s)", resp.Header.Get("Location"), err, body)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != "https://app.example/callback" {
		t.Errorf("redirected to %q", got)
	}
	return resp.StatusCode, loc.Query()
}

func TestAuthorizationCode(t *testing.T) {
	const redirect = "https://app.example/callback?keep=1"
	verifier := strings.Repeat("abcdefghij", 5) // 50 unreserved characters
	sum := sha256.Sum256([]byte(verifier))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])

	base := url.Values{
		"response_type": {"code"}, "client_id": {testClientID},
		"redirect_uri": {redirect}, "state": {"st-123"},
	}
	withPKCE := func(method, challenge string) url.Values {
		v := cloneValues(base)
		v.Set("code_challenge", challenge)
		if method != "" {
			v.Set("code_challenge_method", method)
		}
		return v
	}
	exchange := func(code, redirectURI, verifier string) url.Values {
		v := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI}}
		if verifier != "" {
			v.Set("code_verifier", verifier)
		}
		return v
	}

	tests := []struct {
		name          string
		authorize     url.Values
		redirectURI   string
		verifier      string
		advance       time.Duration
		wantGrantFail bool
	}{
		{"no PKCE", base, redirect, "", 0, false},
		{"S256", withPKCE("S256", challenge), redirect, verifier, 0, false},
		{"plain", withPKCE("", verifier), redirect, verifier, 0, false},
		{"S256 missing verifier", withPKCE("S256", challenge), redirect, "", 0, true},
		{"S256 wrong verifier", withPKCE("S256", challenge), redirect, strings.Repeat("z", 43), 0, true},
		{"verifier without challenge", base, redirect, verifier, 0, true},
		{"redirect_uri differs", base, "https://app.example/other", "", 0, true},
		{"code expired", base, redirect, "", 11 * time.Minute, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, clk := start(t, nil)
			status, q := authorize(t, s, tc.authorize)
			if status != http.StatusFound || q.Get("code") == "" || q.Get("state") != "st-123" || q.Get("keep") != "1" {
				t.Fatalf("authorize: %d %v", status, q)
			}
			clk.Advance(tc.advance)
			code := q.Get("code")
			status, m := tokenRequest(t, s, AuthStyleInParams, testClientID, testClientSecret, exchange(code, tc.redirectURI, tc.verifier))
			if tc.wantGrantFail {
				if status != http.StatusBadRequest || m["error"] != "invalid_grant" {
					t.Fatalf("exchange: %d %v, want 400 invalid_grant", status, m)
				}
			} else {
				if status != http.StatusOK || m["refresh_token"] == nil || m["access_token"] == nil {
					t.Fatalf("exchange: %d %v", status, m)
				}
				if got := apiStatus(t, s, m["access_token"].(string)); got != http.StatusOK {
					t.Errorf("API status %d with the exchanged token", got)
				}
			}
			// A code is single-use, whether or not the first exchange worked.
			status, m = tokenRequest(t, s, AuthStyleInParams, testClientID, testClientSecret, exchange(code, redirect, tc.verifier))
			if status != http.StatusBadRequest || m["error"] != "invalid_grant" {
				t.Errorf("second exchange: %d %v, want 400 invalid_grant", status, m)
			}
		})
	}
}

func TestAuthorizeErrors(t *testing.T) {
	s, _ := start(t, nil)
	base := url.Values{
		"response_type": {"code"}, "client_id": {testClientID},
		"redirect_uri": {"https://app.example/callback"}, "state": {"s"},
	}
	with := func(k, v string) url.Values {
		c := cloneValues(base)
		if v == "" {
			c.Del(k)
		} else {
			c.Set(k, v)
		}
		return c
	}
	tests := []struct {
		name       string
		params     url.Values
		wantStatus int
		wantError  string // in the redirect
	}{
		{"unknown client", with("client_id", "other"), http.StatusBadRequest, ""},
		{"no redirect_uri", with("redirect_uri", ""), http.StatusBadRequest, ""},
		{"relative redirect_uri", with("redirect_uri", "/callback"), http.StatusBadRequest, ""},
		{"token response type", with("response_type", "token"), http.StatusFound, "unsupported_response_type"},
		{"unknown challenge method", with("code_challenge_method", "S512"), http.StatusFound, "invalid_request"},
		{"S256 challenge malformed", func() url.Values {
			c := with("code_challenge_method", "S256")
			c.Set("code_challenge", "short")
			return c
		}(), http.StatusFound, "invalid_request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, q := authorize(t, s, tc.params)
			if status != tc.wantStatus || q.Get("error") != tc.wantError {
				t.Fatalf("got %d %v, want %d error=%q", status, q, tc.wantStatus, tc.wantError)
			}
			if q != nil && (q.Get("code") != "" || q.Get("state") != "s") {
				t.Errorf("error redirect = %v", q)
			}
		})
	}
}

func TestLargeBodyIsStreamed(t *testing.T) {
	s, _ := start(t, nil)
	const size = 20 << 20
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2], func(t *testing.T) {
			src := rand.NewChaCha8([32]byte{1, 2, 3})
			clientHash := sha256.New()
			body := io.TeeReader(io.LimitReader(src, size), clientHash)
			req := newRequest(t, http.MethodPost, "https://api.sample.test/v1/upload", io.NopCloser(body))
			req.ContentLength = -1 // chunked on HTTP/1.1, DATA frames on HTTP/2
			req.Header.Set("X-Api-Key", testAPIKey)
			req.Header.Set("Content-Type", "application/octet-stream")

			peak := watchHeap(t)
			resp, respBody := do(t, pinnedClient(t, s, h2), req)
			grew := peak()

			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != map[bool]int{false: 1, true: 2}[h2] {
				t.Fatalf("got %d over %s: %s", resp.StatusCode, resp.Proto, respBody)
			}
			var e Echo
			if err := json.Unmarshal(respBody, &e); err != nil {
				t.Fatal(err)
			}
			if want := hex.EncodeToString(clientHash.Sum(nil)); e.BodyBytes != size || e.BodySHA256 != want {
				t.Errorf("server saw %d bytes %s, client sent %d bytes %s", e.BodyBytes, e.BodySHA256, size, want)
			}
			// Client and server share this process, so this bounds both.
			// Holding the body would need 20 MiB at once; flow-control
			// windows, TLS records and garbage awaiting collection stay far
			// below that.
			t.Logf("heap grew by at most %d KiB", grew>>10)
			if grew > size/2 {
				t.Errorf("heap grew by %d bytes moving a %d-byte body", grew, size)
			}
		})
	}
}

// watchHeap samples the heap until the returned function is called, which
// reports the largest growth seen over the starting point. A low GC
// percentage keeps uncollected garbage from passing for buffering.
func watchHeap(t *testing.T) func() uint64 {
	t.Helper()
	old := debug.SetGCPercent(10)
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	base := read()
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var max uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if v := read(); v > max {
				max = v
			}
			select {
			case <-stop:
				done <- max
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	var grew uint64
	finish := func() uint64 {
		once.Do(func() {
			close(stop)
			if max := <-done; max > base {
				grew = max - base
			}
			debug.SetGCPercent(old)
		})
		return grew
	}
	t.Cleanup(func() { finish() })
	return finish
}

// pinnedClient is a client of our own, as Envoy would be: the server's CA
// pool and a dialer that sends every name to the loopback address. h2
// chooses HTTP/2 or HTTP/1.1 through ALPN.
func pinnedClient(t *testing.T, s *Server, h2 bool) *http.Client {
	t.Helper()
	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2", "http/1.1"}
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.CACertPool(), NextProtos: protos},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.Addr())
		},
		ForceAttemptHTTP2: h2,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func TestBig(t *testing.T) {
	s, _ := start(t, nil)
	for _, n := range []int64{0, 1, 1 << 20, 5<<20 + 7} {
		req := newRequest(t, http.MethodGet, "https://api.sample.test/v1/big?bytes="+itoa(n), nil)
		req.Header.Set("X-Api-Key", testAPIKey)
		resp, err := s.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		got, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || got != n || resp.ContentLength != n ||
			resp.Header.Get(BodySHA256Header) != hex.EncodeToString(h.Sum(nil)) {
			t.Errorf("bytes=%d: status %d, %d bytes, header %q, body %x", n, resp.StatusCode, got,
				resp.Header.Get(BodySHA256Header), h.Sum(nil))
		}
	}
	// The data is deterministic.
	first := bigSum(t, s, 4096)
	if again := bigSum(t, s, 4096); again != first {
		t.Errorf("two answers for bytes=4096: %s, %s", first, again)
	}

	for _, bad := range []string{"", "x", "-1", itoa(MaxBigBytes + 1)} {
		req := newRequest(t, http.MethodGet, "https://api.sample.test/v1/big?bytes="+bad, nil)
		req.Header.Set("X-Api-Key", testAPIKey)
		if resp, body := do(t, s.Client(), req); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("bytes=%q: got %d %s, want 400", bad, resp.StatusCode, body)
		}
	}
	if resp, _ := do(t, s.Client(), newRequest(t, http.MethodGet, "https://api.sample.test/v1/big?bytes=10", nil)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated /v1/big: %d, want 401", resp.StatusCode)
	}
}

func bigSum(t *testing.T, s *Server, n int64) string {
	t.Helper()
	req := newRequest(t, http.MethodGet, "https://api.sample.test/v1/big?bytes="+itoa(n), nil)
	req.Header.Set("X-Api-Key", testAPIKey)
	_, body := do(t, s.Client(), req)
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestRateLimit(t *testing.T) {
	s, _ := start(t, nil)
	call := func(path string, authed bool) *http.Response {
		req := newRequest(t, http.MethodPost, "https://api.sample.test"+path, strings.NewReader("payload"))
		if authed {
			req.Header.Set("X-Api-Key", testAPIKey)
		}
		resp, _ := do(t, s.Client(), req)
		return resp
	}

	s.SetRateLimit("/v1/limited", 0, map[string]string{"Retry-After": "30", "X-RateLimit-Reset": "1767225600"}, 2)
	if resp := call("/v1/limited", false); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated: %d, want 401 before the limit", resp.StatusCode)
	}
	for i := range 2 {
		resp := call("/v1/limited", true)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "30" ||
			resp.Header.Get("X-Ratelimit-Reset") != "1767225600" {
			t.Fatalf("limited call %d: %d %v", i, resp.StatusCode, resp.Header)
		}
		if seen := s.LastRequest(); seen.Status != http.StatusTooManyRequests || seen.BodyLen != 7 {
			t.Errorf("LastRequest = %+v", seen)
		}
	}
	if resp := call("/v1/limited", true); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the limit ran out: %d", resp.StatusCode)
	}
	if resp := call("/v1/other", true); resp.StatusCode != http.StatusOK {
		t.Fatalf("other path: %d", resp.StatusCode)
	}

	s.SetRateLimit("/v1/limited", http.StatusServiceUnavailable, nil, -1)
	for range 3 {
		if resp := call("/v1/limited", true); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("open-ended limit: %d", resp.StatusCode)
		}
	}
	s.SetRateLimit("/v1/limited", 0, nil, 0)
	if resp := call("/v1/limited", true); resp.StatusCode != http.StatusOK {
		t.Fatalf("after clearing: %d", resp.StatusCode)
	}

	if got := s.Hits("/v1/limited"); got != 8 {
		t.Errorf("Hits(/v1/limited) = %d, want 8", got)
	}
	if got := s.TotalHits(); got != 9 {
		t.Errorf("TotalHits = %d, want 9", got)
	}

	defer func() {
		if recover() == nil {
			t.Error("SetRateLimit with status 42 did not panic")
		}
	}()
	s.SetRateLimit("/v1/x", 42, nil, 1)
}

func TestTLS(t *testing.T) {
	s, _ := start(t, nil)
	for _, tc := range []struct {
		h2        bool
		wantMajor int
	}{{true, 2}, {false, 1}} {
		c := pinnedClient(t, s, tc.h2)
		for _, host := range []string{"api.sample.test", "acme.sample.test", "127.0.0.1"} {
			resp, err := c.Get("https://" + host + "/healthz")
			if err != nil {
				t.Fatalf("%s: %v", host, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != tc.wantMajor {
				t.Errorf("%s: %d over HTTP/%d, want 200 over HTTP/%d",
					host, resp.StatusCode, resp.ProtoMajor, tc.wantMajor)
			}
		}
	}

	// A name outside Hosts fails verification; so does a client without the CA.
	_, err := pinnedClient(t, s, true).Get("https://api.other.test/healthz")
	var hostErr x509.HostnameError
	if !errors.As(err, &hostErr) {
		t.Errorf("host outside Hosts: err = %v, want x509.HostnameError", err)
	}
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{ServerName: "api.sample.test", RootCAs: x509.NewCertPool()})
	if err == nil {
		conn.Close()
		t.Error("handshake succeeded without the CA")
	}

	// CAPEM is the same authority.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAPEM()) {
		t.Fatal("CAPEM holds no certificate")
	}
	conn, err = tls.Dial("tcp", s.Addr(), &tls.Config{ServerName: "x.sample.test", RootCAs: pool})
	if err != nil {
		t.Fatalf("handshake with the CAPEM pool: %v", err)
	}
	conn.Close()
}

func TestHealthzAndUnknownPaths(t *testing.T) {
	s, _ := start(t, nil)
	resp, body := do(t, s.Client(), newRequest(t, http.MethodGet, "https://api.sample.test/healthz", nil))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, s.Client(), newRequest(t, http.MethodGet, "https://api.sample.test/v2/x", nil))
	if resp.StatusCode != http.StatusNotFound || errorCode(t, body) != "not_found" {
		t.Errorf("/v2/x: %d %s", resp.StatusCode, body)
	}
	if s.TotalHits() != 0 || s.LastRequest() != nil {
		t.Errorf("non-API paths were counted: %d %+v", s.TotalHits(), s.LastRequest())
	}
}

func TestStartValidation(t *testing.T) {
	_, err := Start(Options{Hosts: []string{"ok.test", ""}, ClientAuthStyle: "inBody", AccessTokenTTL: -1})
	if err == nil {
		t.Fatal("Start accepted bad options")
	}
	for _, want := range []string{"Hosts[1]", "ClientAuthStyle", "AccessTokenTTL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	s, _ := start(t, nil)
	const workers, each = 8, 10
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				access, refresh := s.IssueTokens(0)
				req, _ := http.NewRequest(http.MethodGet, "https://api.sample.test/v1/c", nil)
				req.Header.Set("Authorization", "Bearer "+access)
				resp, err := s.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("worker %d: %d", w, resp.StatusCode)
				}
				s.RevokeRefreshToken(refresh)
				s.SetRateLimit("/v1/unused", 429, nil, 1)
				_ = s.LastRequest()
			}
		}()
	}
	wg.Wait()
	if got := s.Hits("/v1/c"); got != workers*each {
		t.Errorf("Hits = %d, want %d", got, workers*each)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Error("still listening after Close")
	}
}

// With PlainHTTP the same endpoints answer over plain HTTP on a second
// loopback port, and Close stops both listeners.
func TestPlainHTTP(t *testing.T) {
	s, _ := start(t, nil)
	if s.HTTPAddr() != "" {
		t.Errorf("HTTPAddr = %q without PlainHTTP", s.HTTPAddr())
	}
	s, _ = start(t, func(o *Options) { o.PlainHTTP = true })
	if s.HTTPAddr() == "" || s.HTTPAddr() == s.Addr() {
		t.Fatalf("HTTPAddr = %q, Addr = %q", s.HTTPAddr(), s.Addr())
	}
	_, refresh := s.IssueTokens(0)
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh},
		"client_id": {testClientID}, "client_secret": {testClientSecret}}
	resp, body := do(t, http.DefaultClient, func() *http.Request {
		req := newRequest(t, http.MethodPost, "http://"+s.HTTPAddr()+"/oauth/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return req
	}())
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("refresh over plain HTTP: %d %s", resp.StatusCode, body)
	}
	if m["instance_url"] != "http://"+s.HTTPAddr() {
		t.Errorf("instance_url = %v, want the plain-HTTP origin", m["instance_url"])
	}
	if s.TokenGrants("refresh_token") != 1 {
		t.Errorf("TokenGrants(refresh_token) = %d, want 1", s.TokenGrants("refresh_token"))
	}
	req := newRequest(t, http.MethodGet, "http://"+s.HTTPAddr()+"/v1/me", nil)
	req.Header.Set("Authorization", "Bearer "+m["access_token"].(string))
	if resp, body := do(t, http.DefaultClient, req); resp.StatusCode != http.StatusOK {
		t.Errorf("API over plain HTTP: %d %s", resp.StatusCode, body)
	}
	http.DefaultClient.CloseIdleConnections()

	s.Close()
	for _, addr := range []string{s.Addr(), s.HTTPAddr()} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after Close", addr)
		}
	}
}

// TestHold: held requests are counted but not answered until released;
// other paths and requests after the release pass at once.
func TestHold(t *testing.T) {
	s, _ := start(t, nil)
	release := s.Hold("/v1/held")
	t.Cleanup(release)
	get := func(path string) int {
		req := newRequest(t, http.MethodGet, "https://api.sample.test"+path, nil)
		req.Header.Set("X-Api-Key", testAPIKey)
		resp, err := s.Client().Do(req)
		if err != nil {
			return -1
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	const n = 3
	answers := make(chan int, n)
	for range n {
		go func() { answers <- get("/v1/held") }()
	}
	if got := get("/v1/other"); got != http.StatusOK {
		t.Fatalf("another path: %d", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Hits("/v1/held") < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := s.Hits("/v1/held"); got != n {
		t.Fatalf("%d held requests arrived, want %d", got, n)
	}
	select {
	case a := <-answers:
		t.Fatalf("a held request was answered (%d) before the release", a)
	default:
	}
	release()
	release()
	for range n {
		if a := <-answers; a != http.StatusOK {
			t.Errorf("released request: %d", a)
		}
	}
	if got := get("/v1/held"); got != http.StatusOK {
		t.Errorf("after the release: %d", got)
	}
}
