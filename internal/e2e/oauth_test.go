package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/internal/oauthtest"
	"github.com/ampproxy/ampproxy/tokens"
)

// The OAuth2 providers of these tests: their token and authorization
// endpoints are an oauthtest server (go-oauth2, configured to rotate
// refresh tokens and remove used ones); their API is the sample provider.
func oauthProviders(host string, auth *oauthtest.Server) string {
	var b strings.Builder
	for _, p := range []struct{ name, grant string }{
		{"sampleRefresh", "authorizationCode"},
		{"samplePKCE", "authorizationCodePKCE"},
		{"sampleCC", "clientCredentials"},
	} {
		b.WriteString(`  - name: ` + p.name + `
    baseURL: https://` + host + `
    authType: oauth2
    oauth2:
      grantType: ` + p.grant + `
      authURL: ` + auth.AuthURL() + `
      tokenURL: ` + auth.TokenURL() + `
      authStyle: inParams
    proxy: true
`)
	}
	return b.String()
}

const oauthIntegrations = `  - {name: refresh, provider: sampleRefresh, proxy: {enabled: true}}
  - {name: pkce, provider: samplePKCE, proxy: {enabled: true}}
  - {name: cc, provider: sampleCC, proxy: {enabled: true}}
`

func oauthApps(clientID, redirect string) string {
	var b strings.Builder
	b.WriteString("    providerApps:\n")
	for _, p := range []string{"sampleRefresh", "samplePKCE"} {
		b.WriteString("      " + p + ":\n        clientID: " + clientID +
			"\n        clientSecretFile: client-secret\n        redirectURL: " + redirect + "\n")
	}
	return b.String()
}

func startAuth(t *testing.T, opts oauthtest.Options) *oauthtest.Server {
	t.Helper()
	opts.ClientAuth = oauthtest.ClientAuthParams // the catalog says inParams
	opts.ClientSecret = "e2e_OAUTH_APP_SECRET_must_not_leak"
	return oauthtest.Start(t, opts)
}

// oauthMessageTimeout is the ext_proc message timeout of the OAuth tests,
// in the data plane and in ampproxy alike; ampproxy waits at most half of
// it for a token refresh. It is the suite's (see e2eMessageTimeout), named
// here because the slow-endpoint test measures its delays against it.
const oauthMessageTimeout = e2eMessageTimeout

// newOAuthEnv is newEnvWith for the OAuth tests: envoytest, auth as the
// authorization server, and oauthMessageTimeout.
func newOAuthEnv(t *testing.T, auth *oauthtest.Server) *env {
	t.Helper()
	return newEnvWith(t, planeEnvoytest, auth, withMessageTimeout(oauthMessageTimeout))
}

// expiredTokens has the authorization server issue a token pair and
// returns it as an admin credential whose access token expired a minute
// ago, so that the next request must refresh first; the pair is added to
// the secrets the logs are checked for.
func (e *env) expiredTokens() (*admin.OAuth2AuthorizationCode, oauthtest.Tokens) {
	e.t.Helper()
	tok, err := e.auth.IssueTokens(time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	e.tokens = append(e.tokens, tok.Access, tok.Refresh)
	oa := &admin.OAuth2AuthorizationCode{}
	oa.AccessToken.Token = tok.Access
	oa.AccessToken.ExpiresAt = time.Now().Add(-time.Minute)
	oa.RefreshToken.Token = tok.Refresh
	return oa, tok
}

// expiredConnection stores a connection whose access token expired a
// minute ago, with a valid refresh token, and installs integration
// refresh for group.
func (e *env) expiredConnection(group string) (tokens.Connection, oauthtest.Tokens) {
	e.t.Helper()
	oa, tok := e.expiredTokens()
	c, err := e.admin.GenerateConnection(context.Background(), admin.GenerateConnectionRequest{
		GroupRef: group, ConsumerRef: "alice", Provider: "sampleRefresh", OAuth2AuthorizationCode: oa})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.admin.CreateInstallation(context.Background(), "refresh", group, c.ID); err != nil {
		e.t.Fatal(err)
	}
	return *c, tok
}

// checkNoOAuthSecrets fails when a token the server issued, or the app's
// client secret, is in ampproxy's log or /metrics.
func (e *env) checkNoOAuthSecrets() {
	e.t.Helper()
	for _, tok := range e.auth.Issued() {
		e.tokens = append(e.tokens, tok.Access)
		if tok.Refresh != "" {
			e.tokens = append(e.tokens, tok.Refresh)
		}
	}
	e.tokens = append(e.tokens, e.auth.ClientSecret())
	e.checkLogs()
	resp, err := http.Get("http://" + e.amp.admin + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, s := range e.tokens {
		if s != "" && strings.Contains(string(body), s) {
			e.t.Error("/metrics holds a secret")
		}
	}
}

// TestOAuthRefresh: an expired token is refreshed transparently, with the
// refresh token rotated; 100 concurrent requests on an expired token
// cause exactly one refresh grant; requests waiting on a slow token
// endpoint get 503 with Retry-After, before the data plane's 504.
func TestOAuthRefresh(t *testing.T) {
	auth := startAuth(t, oauthtest.Options{})
	e := newOAuthEnv(t, auth)

	t.Run("expired token refreshed transparently", func(t *testing.T) {
		_, old := e.expiredConnection("g1")
		before := auth.Requests(oauthtest.GrantRefreshToken)
		got := e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "g1")})
		if auth.Requests(oauthtest.GrantRefreshToken) != before+1 {
			t.Errorf("%d refresh grants, want 1", auth.Requests(oauthtest.GrantRefreshToken)-before)
		}
		if got.Headers["authorization"] == "Bearer "+old.Access || !strings.HasPrefix(got.Headers["authorization"], "Bearer ") {
			t.Error("the provider did not get a new token")
		}
		if auth.ValidRefresh(old.Refresh) {
			t.Error("the server did not rotate the refresh token")
		}
		// The refresh is counted and timed per provider, with no
		// connection or group in its labels.
		m := e.scrape()
		for _, want := range []string{
			`ampproxy_token_refreshes_total{provider="sampleRefresh",result="ok"} 1`,
			`ampproxy_token_refresh_duration_seconds_count{provider="sampleRefresh"} 1`,
			`ampproxy_requests_total{integration="refresh",outcome="forwarded",project="e2e-project",provider="sampleRefresh"} 1`,
		} {
			if !strings.Contains(m, want) {
				t.Errorf("/metrics lacks %s:\n%s", want, grepLines(m, "refresh"))
			}
		}
		if strings.Contains(m, `group`) || strings.Contains(m, `"g1"`) {
			t.Errorf("/metrics has a group in its labels:\n%s", grepLines(m, "g1"))
		}
	})

	t.Run("100 concurrent requests, one refresh", func(t *testing.T) {
		e.expiredConnection("g100")
		// Held a little, so that requests arrive while the one refresh
		// is in flight, but well within the wait.
		auth.SetDelay(30 * time.Millisecond)
		defer auth.SetDelay(0)
		before := auth.Requests(oauthtest.GrantRefreshToken)
		statuses, late := e.burst(t, 100, call{path: "/v1/contacts", headers: proxyHeaders("refresh", "g100")})
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 1 {
			t.Errorf("%d refresh grants reached the server, want exactly 1", n)
		}
		// A request that waited past its budget gets 503 with
		// Retry-After (burst checks the header). The data plane's 504 is
		// tolerated only for a request ampproxy did not keep waiting for
		// the token: one it never received in time, or one it forwarded
		// with the token, whose answer the race-instrumented data plane
		// of this process carried late on a busy machine.
		outcomes := e.requestOutcomes(late)
		for _, id := range late {
			if o, seen := outcomes[id]; seen && o != "forwarded" {
				t.Errorf("request %s: 504, though ampproxy answered it %s", id, o)
			}
		}
		if statuses[200] == 0 || statuses[200]+statuses[503]+statuses[504] != 100 {
			t.Errorf("statuses %v, want only 200, 503 and 504", statuses)
		}
		t.Logf("statuses %v", statuses)
	})

	t.Run("slow token endpoint: 503 with Retry-After, not 504", func(t *testing.T) {
		e.expiredConnection("slow")
		// Longer than the wait (half of the message timeout, counted from
		// when ampproxy got the request headers), so every request gives
		// up; each must get ampproxy's 503 rather than the data plane's
		// 504, which would come as long again later.
		auth.SetDelay(oauthMessageTimeout + oauthMessageTimeout/4)
		before := auth.Requests(oauthtest.GrantRefreshToken)
		statuses, _ := e.burst(t, 50, call{path: "/v1/contacts", headers: proxyHeaders("refresh", "slow")})
		if statuses[503] != 50 {
			t.Errorf("statuses %v, want 503 for all 50", statuses)
		}
		auth.SetDelay(0)
		auth.WaitIdle()
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 1 {
			t.Errorf("%d refresh grants reached the server, want exactly 1", n)
		}
		// The refresh went on without them; the next request uses it.
		e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "slow")})
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 1 {
			t.Errorf("%d refresh grants after the refresh finished, want still 1", n)
		}
	})
	e.checkNoOAuthSecrets()
}

// burst sends n copies of c at once, each with its own x-request-id,
// counts the statuses and returns the request IDs answered 504. A 503
// must be ampproxy's token-unavailable problem with a Retry-After of at
// least a second. t is the calling test: the requests' goroutines only
// record what went wrong, and t fails once they are all done.
func (e *env) burst(t *testing.T, n int, c call) (statuses map[int]int, late []string) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []error // requests that got no answer
	var wrong []string // answers that break the rules above
	statuses = map[int]int{}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("burst-%d-%d", time.Now().UnixNano(), i)
			c := c
			c.headers = maps.Clone(c.headers)
			c.headers["x-request-id"] = id
			resp, body, err := e.send(c)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, fmt.Errorf("request %s: %w", id, err))
				return
			}
			statuses[resp.StatusCode]++
			if resp.StatusCode == 504 {
				late = append(late, id)
			}
			if resp.StatusCode != 503 {
				return
			}
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
				wrong = append(wrong, fmt.Sprintf("request %s: 503 with Retry-After %q", id, resp.Header.Get("Retry-After")))
			}
			if !strings.Contains(string(body), "token-unavailable") {
				wrong = append(wrong, fmt.Sprintf("request %s: 503 that is not ampproxy's token-unavailable: %s", id, body))
			}
		}()
	}
	wg.Wait()
	for _, w := range wrong {
		t.Error(w)
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed: %v", len(failed), n, errors.Join(failed...))
	}
	return statuses, late
}

// requestOutcomes reads ampproxy's log: each request's outcome by its
// request ID. ampproxy writes its log out every second, so it waits a
// little for the lines of the requests in want.
func (e *env) requestOutcomes(want []string) map[string]string {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		out := map[string]string{}
		for _, line := range strings.Split(e.amp.logs.String(), "\n") {
			var r struct{ Msg, RequestID, Outcome string }
			if json.Unmarshal([]byte(line), &r) == nil && r.Msg == "request" {
				out[r.RequestID] = r.Outcome
			}
		}
		missing := 0
		for _, id := range want {
			if _, ok := out[id]; !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOAuthRefreshAcrossRestart: the rotated refresh token is persisted,
// so a restart between two refreshes still works. Tokens live a second
// here, so that the second refresh is due soon after the restart; the
// authorization server's lifetimes follow the real clock (it has no clock
// hook), so the test waits for that second on the real clock.
func TestOAuthRefreshAcrossRestart(t *testing.T) {
	const ttl = time.Second
	auth := startAuth(t, oauthtest.Options{AccessTTL: ttl})
	e := newOAuthEnv(t, auth)
	e.expiredConnection("g1")
	e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "g1")})
	// The refreshed token expires ttl after its request was sent, so by
	// ttl from now at the latest. Expired (not merely inside its margin),
	// the next request has to wait for the refresh rather than start it
	// in the background, which makes the count below exact.
	expired := time.Now().Add(ttl + 50*time.Millisecond)
	if n := auth.Requests(oauthtest.GrantRefreshToken); n != 1 {
		t.Fatalf("%d refresh grants, want 1", n)
	}
	// The second refresh needs the rotated refresh token, which only the
	// store can have kept.
	e.restart()
	time.Sleep(time.Until(expired))
	e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "g1")})
	if n := auth.Requests(oauthtest.GrantRefreshToken); n != 2 {
		t.Errorf("after restart: %d refresh grants in all, want 2", n)
	}
	e.checkNoOAuthSecrets()
}

// metric is the value of one series in a /metrics exposition, 0 when it
// is absent.
func metric(exposition, series string) float64 {
	for _, l := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// renew gives connection id a fresh refresh token through the admin API's
// PATCH, as an operator would after fixing what was wrong, with an access
// token that has expired, so that the next request needs the new refresh
// token at once.
func (e *env) renew(id string) {
	e.t.Helper()
	oa, _ := e.expiredTokens()
	if _, err := e.admin.UpdateConnection(context.Background(), id, admin.UpdateConnectionRequest{OAuth2AuthorizationCode: oa}); err != nil {
		e.t.Fatal(err)
	}
}

// TestOAuthFailures: a revoked refresh token marks the connection
// bad_credentials (424, and no more token requests) until new credentials
// are given; a token endpoint that is down gives 503 with Retry-After,
// with attempts backing off until it is back or the credentials change;
// a provider 401 makes the next request refresh first.
func TestOAuthFailures(t *testing.T) {
	auth := startAuth(t, oauthtest.Options{})
	e := newOAuthEnv(t, auth)
	ctx := context.Background()

	t.Run("revoked refresh token", func(t *testing.T) {
		c, tok := e.expiredConnection("revoked")
		if err := auth.Revoke(tok.Refresh); err != nil {
			t.Fatal(err)
		}
		before := auth.Requests(oauthtest.GrantRefreshToken)
		resp, body := e.do(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "revoked")})
		checkProblem(t, resp, body, 424, "bad-credentials")
		got, err := e.admin.GetConnection(ctx, c.ID)
		if err != nil || got.Status != tokens.StatusBadCredentials {
			t.Fatalf("connection status %v, %v", got, err)
		}
		hits := e.provider.TotalHits()
		resp, body = e.do(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "revoked")})
		checkProblem(t, resp, body, 424, "bad-credentials")
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 1 {
			t.Errorf("%d refresh grants for a revoked token, want 1", n)
		}
		if e.provider.TotalHits() != hits {
			t.Error("the provider was reached")
		}

		// New credentials through the admin API clear bad_credentials:
		// the next request refreshes with them and is proxied.
		e.renew(c.ID)
		e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "revoked")})
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 2 {
			t.Errorf("%d refresh grants in all, want 2 (the refused one, then one with the new refresh token)", n)
		}
		if got, err := e.admin.GetConnection(ctx, c.ID); err != nil || got.Status != tokens.StatusWorking {
			t.Errorf("connection status %v, %v; want working", got, err)
		}
	})

	t.Run("token endpoint down", func(t *testing.T) {
		c, _ := e.expiredConnection("down")
		auth.SetDown(true)
		defer auth.SetDown(false)
		before := auth.Requests(oauthtest.GrantRefreshToken)
		m0 := e.scrape()
		for i := 0; i < 10; i++ {
			resp, body := e.do(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "down")})
			checkProblem(t, resp, body, 503, "token-unavailable")
			if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
				t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
			}
		}
		// Ten requests within a fraction of a second: the first attempt
		// fails and opens a backoff of at least a second, so the
		// endpoint sees one or two attempts, not ten.
		n := auth.Requests(oauthtest.GrantRefreshToken) - before
		if n < 1 || n > 2 {
			t.Errorf("%d token requests while down, want 1 or 2", n)
		}
		// The refresh metrics count and time those attempts only; the
		// requests refused during the backoff count as requests.
		m := e.scrape()
		for series, want := range map[string]int{
			`ampproxy_token_refreshes_total{provider="sampleRefresh",result="error"}`:                                                   n,
			`ampproxy_token_refresh_duration_seconds_count{provider="sampleRefresh"}`:                                                   n,
			`ampproxy_requests_total{integration="refresh",outcome="token-unavailable",project="e2e-project",provider="sampleRefresh"}`: 10,
		} {
			if got := metric(m, series) - metric(m0, series); got != float64(want) {
				t.Errorf("%s grew by %v, want %d", series, got, want)
			}
		}
		if strings.Contains(m, `result="backoff"`) {
			t.Errorf("/metrics counts backoffs as token requests:\n%s", grepLines(m, "refresh"))
		}

		// The endpoint back and new credentials given: they are tried at
		// once, not after the backoff the old ones earned.
		auth.SetDown(false)
		e.renew(c.ID)
		e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "down")})
	})

	t.Run("provider 401 refreshes first", func(t *testing.T) {
		// The stored token is one the provider does not accept (it was
		// never issued), though it has not expired.
		tok, err := auth.IssueTokens(time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e.tokens = append(e.tokens, tok.Access, tok.Refresh)
		oa := &admin.OAuth2AuthorizationCode{}
		oa.AccessToken.Token = "not-a-token-the-provider-knows"
		oa.AccessToken.ExpiresAt = time.Now().Add(time.Hour)
		oa.RefreshToken.Token = tok.Refresh
		c, err := e.admin.GenerateConnection(ctx, admin.GenerateConnectionRequest{
			GroupRef: "g401", ConsumerRef: "alice", Provider: "sampleRefresh", OAuth2AuthorizationCode: oa})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.CreateInstallation(ctx, "refresh", "g401", c.ID); err != nil {
			t.Fatal(err)
		}
		before := auth.Requests(oauthtest.GrantRefreshToken)
		resp, _ := e.do(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "g401")})
		if resp.StatusCode != 401 {
			t.Fatalf("status %d, want the provider's 401", resp.StatusCode)
		}
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 0 {
			t.Fatalf("%d refresh grants before the 401, want 0", n)
		}
		got := e.forward(call{path: "/v1/contacts", headers: proxyHeaders("refresh", "g401")})
		if n := auth.Requests(oauthtest.GrantRefreshToken) - before; n != 1 {
			t.Errorf("%d refresh grants after the 401, want 1", n)
		}
		if got.Headers["authorization"] == "Bearer not-a-token-the-provider-knows" {
			t.Error("the provider got the rejected token again")
		}
	})

	t.Run("client credentials", func(t *testing.T) {
		c, err := e.admin.GenerateConnection(ctx, admin.GenerateConnectionRequest{GroupRef: "cc", ConsumerRef: "svc", Provider: "sampleCC",
			OAuth2ClientCredentials: &admin.OAuth2ClientCredentials{ClientID: auth.ClientID(), ClientSecret: auth.ClientSecret()}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.CreateInstallation(ctx, "cc", "cc", c.ID); err != nil {
			t.Fatal(err)
		}
		before := auth.Requests(oauthtest.GrantClientCredentials)
		e.forward(call{path: "/v1/contacts", headers: proxyHeaders("cc", "cc")})
		e.forward(call{path: "/v1/contacts", headers: proxyHeaders("cc", "cc")})
		if n := auth.Requests(oauthtest.GrantClientCredentials) - before; n != 1 {
			t.Errorf("%d client-credentials grants for two requests, want 1 (cached until expiry)", n)
		}
	})
	e.checkNoOAuthSecrets()
}

// TestOAuthConnect: the connect flow for authorization code and PKCE,
// through the authorization server and ampproxy's callback, then a
// proxied call with the stored token.
func TestOAuthConnect(t *testing.T) {
	auth := startAuth(t, oauthtest.Options{})
	e := newOAuthEnv(t, auth)
	ctx := context.Background()
	for _, tc := range []struct{ provider, integration string }{
		{"sampleRefresh", "refresh"},
		{"samplePKCE", "pkce"},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			group := "connect-" + tc.integration
			u, err := e.admin.OAuthConnect(ctx, admin.OAuthConnectRequest{ProjectIDOrName: projectID, Provider: tc.provider, GroupRef: group, ConsumerRef: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(u, "code_challenge=") != (tc.provider == "samplePKCE") {
				t.Errorf("PKCE challenge presence wrong in %s", u)
			}
			// The user's browser: the authorization server approves and
			// redirects to ampproxy's callback, which answers a page.
			resp, err := http.Get(u)
			if err != nil {
				t.Fatal(err)
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Request.URL.Path != "/v1/oauth/callback" {
				t.Fatalf("callback %s answered %d: %s", resp.Request.URL.Path, resp.StatusCode, page)
			}
			// Replaying the callback (same state) stores nothing more.
			again, err := http.Get(resp.Request.URL.String())
			if err != nil {
				t.Fatal(err)
			}
			again.Body.Close()
			if again.StatusCode < 400 || again.StatusCode >= 500 {
				t.Errorf("replayed state answered %d", again.StatusCode)
			}
			items, _, err := e.admin.ListConnections(ctx, admin.ConnectionFilter{GroupRef: group}, 0, "")
			if err != nil || len(items) != 1 {
				t.Fatalf("connections for %s: %d, %v", group, len(items), err)
			}
			if _, err := e.admin.CreateInstallation(ctx, tc.integration, group, ""); err != nil {
				t.Fatal(err)
			}
			e.forward(call{path: "/v1/me", headers: proxyHeaders(tc.integration, group)})
		})
	}
	e.checkNoOAuthSecrets()
}
