package tokens

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/internal/oauthtest"
)

// manualClock is a clock that moves only when told.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func newManualClock() *manualClock {
	return &manualClock{t: time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Provider names of the test catalog.
const (
	provAuthCode = "testOAuth"
	provCC       = "testClientCreds"
	provMargin   = "testOAuthMargin" // refreshMargin: 10m
	testProject  = "p"
)

// testCatalog writes an override file whose providers use tokenURL and
// loads it.
func testCatalog(tb testing.TB, tokenURL, authStyle string) *catalog.Catalog {
	tb.Helper()
	y := fmt.Sprintf(`providers:
  - name: %[1]s
    baseURL: https://api.example.com
    authType: oauth2
    oauth2: {grantType: authorizationCode, authURL: "https://example.com/authorize", tokenURL: %[4]q, authStyle: %[5]s}
    proxy: true
  - name: %[2]s
    baseURL: https://api.example.com
    authType: oauth2
    oauth2: {grantType: clientCredentials, tokenURL: %[4]q, authStyle: %[5]s}
    proxy: true
  - name: %[3]s
    baseURL: https://api.example.com
    authType: oauth2
    oauth2: {grantType: authorizationCode, authURL: "https://example.com/authorize", tokenURL: %[4]q, authStyle: %[5]s, refreshMargin: 10m}
    proxy: true
`, provAuthCode, provCC, provMargin, tokenURL, authStyle)
	path := filepath.Join(tb.TempDir(), "providers.yaml")
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		tb.Fatal(err)
	}
	cat, err := catalog.Load(path)
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

type envConfig struct {
	server    oauthtest.Options
	authStyle string // catalog authStyle; default inParams
	// tokenURL replaces the test server's token endpoint.
	tokenURL string
	// opts are the Refresher options; Store, Providers, Apps, Now, Logger,
	// OnRefresh and HTTPClient are filled in when empty.
	opts RefresherOptions
	// exactBackoff replaces full jitter with the ceiling itself.
	exactBackoff bool
	// defaultClient leaves opts.HTTPClient nil, as serve does.
	defaultClient bool
}

// refreshEnv is a Refresher wired to a real OAuth2 server, a store on
// disk, a manual clock and a captured log.
type refreshEnv struct {
	srv     *oauthtest.Server
	path    string
	store   *Store
	clock   *manualClock
	cat     *catalog.Catalog
	r       *Refresher
	logs    *syncBuffer
	results chan string
	client  *http.Client
}

func newRefreshEnv(tb testing.TB, cfg envConfig) *refreshEnv {
	tb.Helper()
	e := &refreshEnv{
		srv:     oauthtest.Start(tb, cfg.server),
		path:    filepath.Join(tb.TempDir(), "refresh.db"),
		clock:   newManualClock(),
		logs:    &syncBuffer{},
		results: make(chan string, 10_000),
	}
	var err error
	e.store, err = Open(e.path, testKey, Options{Now: e.clock.Now, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.store.Close() })
	if cfg.authStyle == "" {
		cfg.authStyle = "inParams"
	}
	if cfg.tokenURL == "" {
		cfg.tokenURL = e.srv.TokenURL()
	}
	e.cat = testCatalog(tb, cfg.tokenURL, cfg.authStyle)
	o := cfg.opts
	o.Store = e.store
	if o.Providers == nil {
		o.Providers = func() *catalog.Catalog { return e.cat }
	}
	if o.Apps == nil {
		o.Apps = func(project, provider string) (string, string, bool, error) {
			return e.srv.ClientID(), e.srv.ClientSecret(), project == testProject, nil
		}
	}
	if o.HTTPClient == nil && !cfg.defaultClient {
		e.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
		tb.Cleanup(e.client.CloseIdleConnections)
		o.HTTPClient = e.client
	}
	if o.Wait == 0 {
		// Generous: only the tests about giving up want a short wait.
		o.Wait = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = e.clock.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.OnRefresh == nil {
		o.OnRefresh = func(_, result string, _ time.Duration) { e.results <- result }
	}
	e.r = NewRefresher(o)
	if cfg.exactBackoff {
		e.r.jitter = func(d time.Duration) time.Duration { return d }
	}
	tb.Cleanup(e.r.Close)
	return e
}

// authCodeConn stores an authorization-code connection holding tok,
// expiring at expiry.
func (e *refreshEnv) authCodeConn(tb testing.TB, provider string, tok oauthtest.Tokens, expiry time.Time) *Connection {
	tb.Helper()
	return mustPut(tb, e.store, &Connection{ProjectID: testProject, Provider: provider, GroupRef: "g", AuthScheme: SchemeOAuth2AuthorizationCode,
		Status: StatusWorking, Credential: Credential{AccessToken: tok.Access, RefreshToken: tok.Refresh, Expiry: expiry}})
}

// issue mints a token pair at the server.
func (e *refreshEnv) issue(tb testing.TB) oauthtest.Tokens {
	tb.Helper()
	tok, err := e.srv.IssueTokens(0)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// replaceCredential stores a fresh token pair, valid for an hour, in
// connection id, as an update through the admin API does, and returns it.
func (e *refreshEnv) replaceCredential(tb testing.TB, id string) oauthtest.Tokens {
	tb.Helper()
	fresh := e.issue(tb)
	_, err := e.store.UpdateConnection(testProject, id, func(w *Connection) error {
		w.Credential = Credential{AccessToken: fresh.Access, RefreshToken: fresh.Refresh, Expiry: e.clock.Now().Add(time.Hour)}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return fresh
}

// expiredConn stores a connection whose token expired a minute ago.
func (e *refreshEnv) expiredConn(tb testing.TB) (*Connection, oauthtest.Tokens) {
	tb.Helper()
	tok := e.issue(tb)
	return e.authCodeConn(tb, provAuthCode, tok, e.clock.Now().Add(-time.Minute)), tok
}

// result waits for the next refresh attempt to be reported.
func (e *refreshEnv) result(tb testing.TB) string {
	tb.Helper()
	select {
	case r := <-e.results:
		return r
	case <-time.After(10 * time.Second):
		tb.Fatal("no refresh was reported within 10s")
		return ""
	}
}

// idle waits for the refreshes in flight, and their reports, to end.
func (e *refreshEnv) idle() { e.r.wg.Wait() }

// noResult checks that no refresh attempt has been reported.
func (e *refreshEnv) noResult(tb testing.TB) {
	tb.Helper()
	select {
	case r := <-e.results:
		tb.Fatalf("unexpected refresh attempt, result %s", r)
	default:
	}
}

func (e *refreshEnv) conn(tb testing.TB, id string) *Connection {
	tb.Helper()
	c, ok := e.store.Connection(id)
	if !ok {
		tb.Fatalf("connection %s is missing", id)
	}
	return c
}

// reopen closes the store and opens the file again, as a restart would.
func (e *refreshEnv) reopen(tb testing.TB) *Store {
	tb.Helper()
	e.r.Close()
	if err := e.store.Close(); err != nil {
		tb.Fatal(err)
	}
	s, err := Open(e.path, testKey, Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func TestAccessTokenFresh(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	tok := e.issue(t)
	c := e.authCodeConn(t, provAuthCode, tok, e.clock.Now().Add(time.Hour))
	got, err := e.r.AccessToken(t.Context(), c)
	if err != nil || got != tok.Access {
		t.Fatalf("AccessToken = %q, %v; want the stored token", got, err)
	}
	ctx := t.Context()
	if n := testing.AllocsPerRun(1000, func() { e.r.AccessToken(ctx, c) }); n != 0 {
		t.Errorf("AccessToken with a valid token allocates %.1f times, want 0", n)
	}
	if n := e.srv.Requests(""); n != 0 {
		t.Errorf("%d token requests for a valid token, want 0", n)
	}
}

func BenchmarkAccessTokenValid(b *testing.B) {
	e := newRefreshEnv(b, envConfig{})
	tok := e.issue(b)
	c := e.authCodeConn(b, provAuthCode, tok, e.clock.Now().Add(time.Hour))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.r.AccessToken(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAccessTokenValidParallel(b *testing.B) {
	e := newRefreshEnv(b, envConfig{})
	tok := e.issue(b)
	c := e.authCodeConn(b, provAuthCode, tok, e.clock.Now().Add(time.Hour))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.r.AccessToken(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestRefreshExpiredToken(t *testing.T) {
	cases := []struct {
		name       string
		clientAuth oauthtest.ClientAuth
		authStyle  string
		keep       bool // the provider does not rotate refresh tokens
	}{
		{"params, rotating", oauthtest.ClientAuthParams, "inParams", false},
		{"header, rotating", oauthtest.ClientAuthHeader, "inHeader", false},
		{"provider omits the refresh token", oauthtest.ClientAuthAny, "inParams", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRefreshEnv(t, envConfig{server: oauthtest.Options{ClientAuth: tc.clientAuth, KeepRefreshToken: tc.keep}, authStyle: tc.authStyle})
			c, old := e.expiredConn(t)
			got, err := e.r.AccessToken(t.Context(), c)
			if err != nil {
				t.Fatal(err)
			}
			if got == old.Access || !e.srv.ValidAccess(got) {
				t.Fatal("AccessToken did not return a new token the server accepts")
			}
			if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
				t.Errorf("%d refresh grants, want 1", n)
			}
			issued := e.srv.Issued()
			latest := issued[len(issued)-1]
			if latest.Access != got {
				t.Fatal("the returned token is not the latest the server issued")
			}
			wantRefresh := latest.Refresh
			if tc.keep {
				wantRefresh = old.Refresh
				if !e.srv.ValidRefresh(old.Refresh) {
					t.Error("the server no longer accepts the kept refresh token")
				}
			} else if e.srv.ValidRefresh(old.Refresh) || wantRefresh == old.Refresh {
				t.Error("the server did not rotate the refresh token")
			}
			wantExpiry := e.clock.Now().Add(time.Hour)

			// What the caller got is already on disk.
			s := e.reopen(t)
			sc, ok := s.Connection(c.ID)
			if !ok {
				t.Fatal("connection missing after reopening")
			}
			cr := sc.Credential
			if cr.AccessToken != got || cr.RefreshToken != wantRefresh {
				t.Error("the stored pair is not the new access token with the (rotated or kept) refresh token")
			}
			if !cr.Expiry.Equal(wantExpiry) {
				t.Errorf("stored expiry %s, want %s (now + expires_in)", cr.Expiry, wantExpiry)
			}
			if sc.Status != StatusWorking {
				t.Errorf("status %s, want working", sc.Status)
			}
		})
	}
}

// TestRefreshedTokenNotUsedUntilStored breaks the store under a refresh:
// the provider has rotated the refresh token, so the answer must neither
// be handed out nor thrown away, but stored on the next attempt without
// spending another grant.
func TestRefreshedTokenNotUsedUntilStored(t *testing.T) {
	e := newRefreshEnv(t, envConfig{exactBackoff: true})
	c, _ := e.expiredConn(t)
	e.store.Close() // every write now fails
	_, err := e.r.AccessToken(t.Context(), c)
	var re *RetryError
	if !errors.As(err, &re) {
		t.Fatalf("AccessToken with a failing store = %v, want a *RetryError", err)
	}
	if e.srv.Requests(oauthtest.GrantRefreshToken) != 1 {
		t.Fatal("no refresh grant was made")
	}
	issued := e.srv.Issued()
	answer := issued[len(issued)-1]

	s, err := Open(e.path, testKey, Options{Now: e.clock.Now, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.r.store = s // as after the disk has been fixed
	e.clock.Advance(re.After)
	got, err := e.r.AccessToken(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	if got != answer.Access {
		t.Error("the retry did not hand out the token the endpoint had issued")
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
		t.Errorf("%d refresh grants, want 1: the stored answer must be used", n)
	}
	sc, _ := s.Connection(c.ID)
	if sc.Credential.AccessToken != answer.Access || sc.Credential.RefreshToken != answer.Refresh {
		t.Error("the issued pair was not stored")
	}
}

func TestConcurrentCallersShareOneRefresh(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	e.srv.SetDelay(50 * time.Millisecond) // so that every caller arrives during the refresh
	c, _ := e.expiredConn(t)
	const callers = 100
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		got   [callers]string
		errs  [callers]error
	)
	for i := range callers {
		wg.Go(func() {
			<-start
			got[i], errs[i] = e.r.AccessToken(t.Context(), c)
		})
	}
	close(start)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("caller %d got another token than caller 0", i)
		}
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
		t.Errorf("%d refresh grants reached the server, want exactly 1", n)
	}
}

func TestWaiterGivesUpRefreshGoesOn(t *testing.T) {
	cases := []struct {
		name string
		wait time.Duration
		ctx  func(context.Context) (context.Context, context.CancelFunc)
	}{
		{"Wait elapses", 20 * time.Millisecond, func(ctx context.Context) (context.Context, context.CancelFunc) { return ctx, func() {} }},
		{"request deadline comes first", 10 * time.Second, func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 20*time.Millisecond)
		}},
		{"request cancelled", 10 * time.Second, func(ctx context.Context) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			return ctx, cancel
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRefreshEnv(t, envConfig{opts: RefresherOptions{Wait: tc.wait}})
			e.srv.SetDelay(300 * time.Millisecond)
			c, _ := e.expiredConn(t)
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			_, err := e.r.AccessToken(ctx, c)
			var re *RetryError
			if !errors.As(err, &re) {
				t.Fatalf("AccessToken = %v, want a *RetryError", err)
			}
			if re.RetryAfterSeconds() != 1 {
				t.Errorf("Retry-After %d, want 1", re.RetryAfterSeconds())
			}
			if r := e.result(t); r != resultOK {
				t.Fatalf("the refresh the caller gave up on ended with %s, want ok", r)
			}
			got, err := e.r.AccessToken(t.Context(), c) // the caller's old snapshot
			if err != nil || !e.srv.ValidAccess(got) {
				t.Fatalf("next AccessToken = %v; want the refreshed token", err)
			}
			if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
				t.Errorf("%d refresh grants, want 1", n)
			}
		})
	}
}

func TestInvalidGrantMarksBadCredentials(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	c, tok := e.expiredConn(t)
	if err := e.srv.Revoke(tok.Refresh); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.AccessToken(t.Context(), c); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("AccessToken with a revoked refresh token = %v, want ErrBadCredentials", err)
	}
	if st := e.conn(t, c.ID).Status; st != StatusBadCredentials {
		t.Fatalf("status %s, want bad_credentials", st)
	}
	// Neither requests (with the old snapshot or the stored one), nor the
	// background, nor the passing of time call the endpoint again.
	var wg sync.WaitGroup
	for range 20 {
		e.clock.Advance(time.Hour)
		for _, snap := range []*Connection{c, e.conn(t, c.ID)} {
			if _, err := e.r.AccessToken(t.Context(), snap); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("later AccessToken = %v, want ErrBadCredentials", err)
			}
		}
		e.r.sweep(t.Context(), &wg)
		wg.Wait()
	}
	if n := e.srv.Requests(""); n != 1 {
		t.Errorf("%d token requests, want the 1 that was refused", n)
	}

	// Updated credentials clear it.
	fresh := e.issue(t)
	_, err := e.store.UpdateConnection(testProject, c.ID, func(w *Connection) error {
		w.Credential.AccessToken, w.Credential.RefreshToken = fresh.Access, fresh.Refresh
		w.Credential.Expiry = e.clock.Now().Add(-time.Second)
		w.Status = StatusWorking
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID)); err != nil {
		t.Fatalf("AccessToken after the credentials were updated: %v", err)
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 2 {
		t.Errorf("%d refresh grants, want 2", n)
	}
}

// TestBadCredentialsRememberedWhenStoreFails: when bad_credentials cannot
// be written, the Refresher still stops calling the endpoint.
func TestBadCredentialsRememberedWhenStoreFails(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	c, tok := e.expiredConn(t)
	e.srv.Revoke(tok.Refresh)
	e.store.Close()
	for range 5 {
		e.clock.Advance(time.Hour)
		if _, err := e.r.AccessToken(t.Context(), c); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("AccessToken = %v, want ErrBadCredentials", err)
		}
	}
	if n := e.srv.Requests(""); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
}

func TestTokenEndpointDownBacksOff(t *testing.T) {
	e := newRefreshEnv(t, envConfig{exactBackoff: true})
	e.srv.SetDown(true)
	c, _ := e.expiredConn(t)
	var afters []time.Duration
	// Ten simulated minutes, a request every second.
	for range 600 {
		before := e.srv.Requests("")
		_, err := e.r.AccessToken(t.Context(), c)
		var re *RetryError
		if !errors.As(err, &re) {
			t.Fatalf("AccessToken with the endpoint down = %v, want a *RetryError", err)
		}
		e.idle()
		// Only a request that reached the endpoint is reported: the
		// metrics count and time token requests, not callers refused
		// during the backoff.
		if e.srv.Requests("") > before {
			if r := e.result(t); r != resultError {
				t.Fatalf("result %s, want error", r)
			}
			afters = append(afters, re.After)
		} else {
			e.noResult(t)
		}
		e.clock.Advance(time.Second)
	}
	// Attempts at 0, 1, 3, 7, 15, 31, 63, 127, 255 and 511 s: 1 s doubled
	// up to the 5 min cap.
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 256, 300}
	if len(afters) != len(want) {
		t.Fatalf("%d attempts in 10 minutes (pauses %v), want %d", len(afters), afters, len(want))
	}
	for i, w := range want {
		if afters[i] != w*time.Second {
			t.Errorf("pause after attempt %d: %s, want %s", i+1, afters[i], w*time.Second)
		}
	}
	if n := e.srv.Requests(""); n != len(want) {
		t.Errorf("%d requests reached the server, want %d", n, len(want))
	}

	// Back up: the next attempt after the pause succeeds and resets.
	e.srv.SetDown(false)
	e.clock.Advance(5 * time.Minute)
	if _, err := e.r.AccessToken(t.Context(), c); err != nil {
		t.Fatalf("AccessToken once the endpoint is back: %v", err)
	}
	st := e.r.state(c.ID)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.failures != 0 || !st.retryAt.IsZero() {
		t.Error("a success did not reset the backoff")
	}
}

// TestNewCredentialsEndBackoff: credentials updated through the store (the
// admin API's PATCH) are tried at once, whatever backoff the old ones
// earned.
func TestNewCredentialsEndBackoff(t *testing.T) {
	e := newRefreshEnv(t, envConfig{exactBackoff: true})
	e.srv.SetDown(true)
	c, _ := e.expiredConn(t)
	// Five failures in a row: the next attempt is 16 s away.
	for range 5 {
		e.r.AccessToken(t.Context(), c)
		e.idle()
		e.clock.Advance(e.r.state(c.ID).retryAt.Sub(e.clock.Now()))
	}
	_, err := e.r.AccessToken(t.Context(), c)
	var re *RetryError
	if !errors.As(err, &re) || re.After < 16*time.Second {
		t.Fatalf("AccessToken = %v; want a *RetryError of the backoff, 16 s or more", err)
	}
	e.idle()
	attempts := e.srv.Requests("")

	e.srv.SetDown(false)
	fresh := e.issue(t)
	_, err = e.store.UpdateConnection(testProject, c.ID, func(w *Connection) error {
		w.Credential.RefreshToken = fresh.Refresh
		w.Status = StatusCreated
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
	if err != nil || !e.srv.ValidAccess(got) {
		t.Fatalf("AccessToken right after new credentials = %v; want a refresh with them", err)
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != attempts+1 {
		t.Errorf("%d refresh grants, want %d", n, attempts+1)
	}
}

// TestBackoffJitterBounded runs the real jitter: attempts stay few.
func TestBackoffJitterBounded(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	e.srv.SetDown(true)
	c, _ := e.expiredConn(t)
	for range 600 {
		e.r.AccessToken(t.Context(), c)
		e.idle()
		e.clock.Advance(time.Second)
	}
	// Expected about a dozen; the floor of BackoffBase caps it at 600.
	if n := e.srv.Requests(""); n < 5 || n > 40 {
		t.Errorf("%d attempts in 10 simulated minutes with jitter, want between 5 and 40", n)
	}
	for i := 1; i <= 12; i++ {
		ceiling := min(time.Second<<(i-1), 5*time.Minute)
		if d := e.r.backoff(i); d < time.Second || d > ceiling {
			t.Errorf("backoff(%d) = %s, want within [1s, %s]", i, d, ceiling)
		}
	}
}

// TestFailedRefreshKeepsValidToken: a token inside the margin but not yet
// expired is still handed out while the endpoint is down.
func TestFailedRefreshKeepsValidToken(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	e.srv.SetDown(true)
	tok := e.issue(t)
	c := e.authCodeConn(t, provAuthCode, tok, e.clock.Now().Add(time.Hour))
	e.clock.Advance(57 * time.Minute) // 3 minutes left, inside the 5 minute margin
	for i := range 3 {
		got, err := e.r.AccessToken(t.Context(), c)
		if err != nil || got != tok.Access {
			t.Fatalf("AccessToken = %v; want the still valid token", err)
		}
		e.idle()
		if i == 0 {
			if r := e.result(t); r != resultError {
				t.Fatalf("first call: %s, want error", r)
			}
		} else {
			e.noResult(t) // backing off: no request, no report
		}
	}
	if n := e.srv.Requests(""); n != 1 {
		t.Errorf("%d token requests, want 1 (then backoff)", n)
	}
}

func TestExpiredWithoutRefreshToken(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	now := e.clock.Now()
	expired := e.authCodeConn(t, provAuthCode, oauthtest.Tokens{Access: "no-refresh-access"}, now.Add(-time.Second))
	if _, err := e.r.AccessToken(t.Context(), expired); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired, no refresh token: %v, want ErrTokenExpired", err)
	}
	soon := e.authCodeConn(t, provAuthCode, oauthtest.Tokens{Access: "no-refresh-soon"}, now.Add(time.Minute))
	if got, err := e.r.AccessToken(t.Context(), soon); err != nil || got != "no-refresh-soon" {
		t.Errorf("inside the margin, no refresh token: %q, %v; want the token until it expires", got, err)
	}
	e.r.MarkStale(soon.ID, "no-refresh-soon")
	if got, err := e.r.AccessToken(t.Context(), soon); err != nil || got != "no-refresh-soon" {
		t.Errorf("stale, no refresh token: %q, %v; want the token", got, err)
	}
	if n := e.srv.Requests(""); n != 0 {
		t.Errorf("%d token requests, want 0", n)
	}
}

func TestMarkStale(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	tok1 := e.issue(t)
	c := e.authCodeConn(t, provAuthCode, tok1, e.clock.Now().Add(time.Hour))
	refreshes := func() int { return e.srv.Requests(oauthtest.GrantRefreshToken) }
	current := func() string {
		t.Helper()
		got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	e.r.MarkStale(c.ID, tok1.Access)
	tok2 := current()
	if tok2 == tok1.Access || refreshes() != 1 {
		t.Fatalf("after MarkStale: %d refreshes; want one forced refresh and a new token", refreshes())
	}
	// A late 401 for the replaced token changes nothing.
	e.r.MarkStale(c.ID, tok1.Access)
	if got := current(); got != tok2 || refreshes() != 1 {
		t.Fatalf("after a late MarkStale of the old token: %d refreshes; want the current token, no refresh", refreshes())
	}
	// A 401 for the new token within a minute of the forced refresh:
	// requests go on with it.
	e.clock.Advance(forceGapMin - time.Second)
	e.r.MarkStale(c.ID, tok2)
	if got := current(); got != tok2 || refreshes() != 1 {
		t.Fatalf("MarkStale within the gap: %d refreshes; want the current token, no refresh", refreshes())
	}
	// Once the gap has passed, one more is forced, and the gap doubles.
	e.clock.Advance(time.Second)
	e.r.MarkStale(c.ID, tok2)
	tok3 := current()
	if tok3 == tok2 || refreshes() != 2 {
		t.Fatalf("MarkStale after the gap: %d refreshes, want 2", refreshes())
	}
	e.clock.Advance(forceGapMin)
	e.r.MarkStale(c.ID, tok3)
	if got := current(); got != tok3 || refreshes() != 2 {
		t.Fatalf("MarkStale within the doubled gap: %d refreshes, want 2", refreshes())
	}
	e.clock.Advance(forceGapMin)
	e.r.MarkStale(c.ID, tok3)
	tok4 := current()
	if tok4 == tok3 || refreshes() != 3 {
		t.Fatalf("MarkStale after the doubled gap: %d refreshes, want 3", refreshes())
	}
	// After a quiet spell of twice the gap (now 4 minutes), the gap is
	// back to a minute.
	e.clock.Advance(8 * forceGapMin)
	e.r.MarkStale(c.ID, tok4)
	tok5 := current()
	e.clock.Advance(forceGapMin)
	e.r.MarkStale(c.ID, tok5)
	if tok6 := current(); tok6 == tok5 || refreshes() != 5 {
		t.Fatalf("after a quiet spell: %d refreshes, want 5 (the gap back to %s)", refreshes(), forceGapMin)
	}
}

// TestRepeated401sBounded: a provider that answers 401 to every request
// costs a handful of refresh grants, not one per request, each of which
// rotates the refresh token.
func TestRepeated401sBounded(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	c := e.authCodeConn(t, provAuthCode, e.issue(t), e.clock.Now().Add(24*time.Hour))
	request := func() {
		t.Helper()
		got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
		if err != nil {
			t.Fatal(err)
		}
		e.r.MarkStale(c.ID, got) // the provider's answer: 401
		e.clock.Advance(time.Second)
	}
	for range 20 {
		request()
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
		t.Errorf("20 requests answered 401 in 20 s: %d refresh grants, want 1", n)
	}
	// An hour of it, a request a second: forced refreshes 1, 2, 4, 8, 16
	// and 30 minutes apart.
	for range 3600 - 20 {
		request()
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 6 {
		t.Errorf("3600 requests answered 401 in an hour: %d refresh grants, want 6", n)
	}
}

// TestForcedRefreshRetriesCountOnce: the backoff's retries of a forced
// refresh that failed are the same forced refresh. Half a minute of token
// endpoint outage must not raise the gap for the token that replaces the
// stale one: a 401 for it after the 1-minute gap forces a refresh.
func TestForcedRefreshRetriesCountOnce(t *testing.T) {
	e := newRefreshEnv(t, envConfig{exactBackoff: true})
	tok1 := e.issue(t)
	c := e.authCodeConn(t, provAuthCode, tok1, e.clock.Now().Add(24*time.Hour))
	e.srv.SetDown(true)
	e.r.MarkStale(c.ID, tok1.Access)
	// Attempts at 0, 1, 3, 7 and 15 s fail; the one at 31 s succeeds.
	for i := range 5 {
		_, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
		var re *RetryError
		if !errors.As(err, &re) {
			t.Fatalf("attempt %d with the endpoint down = %v, want a *RetryError", i+1, err)
		}
		e.idle()
		e.clock.Advance(e.r.state(c.ID).retryAt.Sub(e.clock.Now()))
	}
	e.srv.SetDown(false)
	tok2, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
	if err != nil || tok2 == tok1.Access {
		t.Fatalf("AccessToken once the endpoint is back = %v; want a new token", err)
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 6 {
		t.Fatalf("%d refresh grants, want 6 (5 failed, 1 ok)", n)
	}
	e.clock.Advance(2 * forceGapMin)
	e.r.MarkStale(c.ID, tok2)
	tok3, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
	if err != nil || tok3 == tok2 {
		t.Fatalf("401 for the new token %s after the outage: %v; want a forced refresh and a newer token", 2*forceGapMin, err)
	}
}

// TestNewCredentialsLiftForceLimit: credentials updated through the store
// (the admin API's PATCH) may be forced at once, whatever the limit left
// by the ones they replaced.
func TestNewCredentialsLiftForceLimit(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	tok := e.issue(t)
	c := e.authCodeConn(t, provAuthCode, tok, e.clock.Now().Add(time.Hour))
	e.r.MarkStale(c.ID, tok.Access)
	if _, err := e.r.AccessToken(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	fresh := e.replaceCredential(t, c.ID)
	e.r.MarkStale(c.ID, fresh.Access)
	got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
	if err != nil || got == fresh.Access {
		t.Fatalf("AccessToken = %v; want a refresh of the new credentials", err)
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 2 {
		t.Errorf("%d refresh grants, want 2", n)
	}
}

// TestUnusableTokenNotStored: a token endpoint that answers a token with a
// control character or surrounding whitespace, which would break every
// request header it went into, has failed: nothing is stored, the
// connection backs off, and the log names the rule, not the value.
func TestUnusableTokenNotStored(t *testing.T) {
	for _, tc := range []struct{ name, answer, problem string }{
		{"control character", `{"access_token":"SECRET-at\u0007x","refresh_token":"SECRET-rt-new","expires_in":3600}`,
			"access token must not contain control characters"},
		{"surrounding whitespace", `{"access_token":" SECRET-at ","expires_in":3600}`,
			"access token must not begin or end with whitespace"},
		{"refresh token", `{"access_token":"SECRET-at-ok","refresh_token":"SECRET-rt\r\nx","expires_in":3600}`,
			"refresh token must not contain control characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, tc.answer)
			}))
			t.Cleanup(ep.Close)
			e := newRefreshEnv(t, envConfig{tokenURL: ep.URL, exactBackoff: true})
			c := e.authCodeConn(t, provAuthCode, oauthtest.Tokens{Access: "old-at", Refresh: "old-rt"}, e.clock.Now().Add(-time.Minute))
			_, err := e.r.AccessToken(t.Context(), c)
			var re *RetryError
			if !errors.As(err, &re) || re.After != time.Second {
				t.Fatalf("AccessToken = %v; want a *RetryError with the first backoff, 1s", err)
			}
			e.idle()
			if r := e.result(t); r != resultError {
				t.Errorf("result %s, want error", r)
			}
			stored := e.conn(t, c.ID)
			if stored.Credential.AccessToken != "old-at" || stored.Credential.RefreshToken != "old-rt" || stored.Status != StatusWorking {
				t.Errorf("stored %v (status %s); want the old tokens, untouched", stored.Credential, stored.Status)
			}
			// Backing off: the next call does not ask again.
			if _, err := e.r.AccessToken(t.Context(), c); !errors.As(err, &re) {
				t.Fatalf("AccessToken during the backoff = %v, want a *RetryError", err)
			}
			e.idle()
			e.noResult(t)
			logs := e.logs.String()
			if !strings.Contains(logs, tc.problem) {
				t.Errorf("the log does not say %q:\n%s", tc.problem, logs)
			}
			if strings.Contains(logs, "SECRET") || strings.Contains(err.Error(), "SECRET") {
				t.Errorf("a token value leaked:\n%s\n%v", logs, err)
			}
		})
	}
}

// TestMarkStaleOncePerToken: a provider that hands back the same access
// token, and keeps rejecting it, gets one forced refresh, not one per
// gap: refreshing again cannot give a different token.
func TestMarkStaleOncePerToken(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"access_token":"same-token","token_type":"Bearer","expires_in":86400}`)
	}))
	t.Cleanup(ep.Close)
	e := newRefreshEnv(t, envConfig{tokenURL: ep.URL})
	c := e.authCodeConn(t, provAuthCode, oauthtest.Tokens{Access: "same-token", Refresh: "rt"}, e.clock.Now().Add(24*time.Hour))
	for range 5 {
		e.r.MarkStale(c.ID, "same-token")
		if got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID)); err != nil || got != "same-token" {
			t.Fatalf("AccessToken = %q, %v", got, err)
		}
		e.clock.Advance(forceGapMax)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 1 {
		t.Errorf("%d forced refreshes for one token value, want 1", hits)
	}
}

func TestClientCredentials(t *testing.T) {
	e := newRefreshEnv(t, envConfig{server: oauthtest.Options{ClientAuth: oauthtest.ClientAuthHeader}, authStyle: "inHeader"})
	c := mustPut(t, e.store, &Connection{ProjectID: testProject, Provider: provCC, GroupRef: "g", AuthScheme: SchemeOAuth2ClientCredentials,
		Credential: Credential{ClientID: e.srv.ClientID(), ClientSecret: e.srv.ClientSecret(), Scopes: []string{"read", "write"}}})
	mints := func() int { return e.srv.Requests(oauthtest.GrantClientCredentials) }

	tok1, err := e.r.AccessToken(t.Context(), c)
	if err != nil || !e.srv.ValidAccess(tok1) || mints() != 1 {
		t.Fatalf("first AccessToken: %v, %d mints; want a valid minted token", err, mints())
	}
	e.result(t)
	stored := e.conn(t, c.ID)
	if stored.Credential.AccessToken != tok1 || !stored.Credential.Expiry.Equal(e.clock.Now().Add(time.Hour)) || stored.Status != StatusWorking {
		t.Fatal("the minted token was not stored with its expiry")
	}
	e.clock.Advance(54 * time.Minute)
	if got, err := e.r.AccessToken(t.Context(), stored); err != nil || got != tok1 || mints() != 1 {
		t.Fatalf("cached token: %v, %d mints; want the same token, no mint", err, mints())
	}
	e.clock.Advance(2 * time.Minute) // inside the margin: still used while a new one is minted
	if got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID)); err != nil || got != tok1 {
		t.Fatalf("near expiry: %v; want the still valid token", err)
	}
	if r := e.result(t); r != resultOK {
		t.Fatalf("mint near expiry: %s", r)
	}
	tok2, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
	if err != nil || tok2 == tok1 || mints() != 2 {
		t.Fatalf("after the mint: %v, %d mints; want a new token", err, mints())
	}

	// A wrong secret is the connection's own fault: bad_credentials.
	bad := mustPut(t, e.store, &Connection{ProjectID: testProject, Provider: provCC, GroupRef: "g2", AuthScheme: SchemeOAuth2ClientCredentials,
		Credential: Credential{ClientID: e.srv.ClientID(), ClientSecret: "wrong"}})
	if _, err := e.r.AccessToken(t.Context(), bad); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("wrong client secret: %v, want ErrBadCredentials", err)
	}
	if e.conn(t, bad.ID).Status != StatusBadCredentials {
		t.Error("a rejected client-credentials connection is not bad_credentials")
	}
}

// TestAuthStyleHonoured: the catalog's authStyle is used as is, and a
// mismatch is one refused request, never a second try the other way.
func TestAuthStyleHonoured(t *testing.T) {
	cases := []struct {
		name       string
		clientAuth oauthtest.ClientAuth
		authStyle  string
		ok         bool
	}{
		{"header only, inHeader", oauthtest.ClientAuthHeader, "inHeader", true},
		{"header only, inParams", oauthtest.ClientAuthHeader, "inParams", false},
		{"params only, inParams", oauthtest.ClientAuthParams, "inParams", true},
		{"params only, inHeader", oauthtest.ClientAuthParams, "inHeader", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRefreshEnv(t, envConfig{server: oauthtest.Options{ClientAuth: tc.clientAuth}, authStyle: tc.authStyle})
			c, _ := e.expiredConn(t)
			_, err := e.r.AccessToken(t.Context(), c)
			if tc.ok != (err == nil) {
				t.Fatalf("AccessToken = %v, want success %v", err, tc.ok)
			}
			if n := e.srv.Requests(""); n != 1 {
				t.Errorf("%d token requests, want 1", n)
			}
			if !tc.ok {
				// The app was refused (invalid_client): not the connection's fault.
				var re *RetryError
				if !errors.As(err, &re) || !strings.Contains(re.Reason, "invalid_client") {
					t.Errorf("error %v, want a *RetryError naming invalid_client", err)
				}
				if e.conn(t, c.ID).Status == StatusBadCredentials {
					t.Error("an app the provider refused marked the connection bad_credentials")
				}
				if !strings.Contains(e.logs.String(), "providerApps") {
					t.Error("the log does not tell the operator to check providerApps")
				}
			}
		})
	}
}

func TestRefreshMargin(t *testing.T) {
	cases := []struct {
		name     string
		provider string
		life     time.Duration // token lifetime when the connection was stored
		elapsed  time.Duration // time since
		refresh  bool
	}{
		{"default margin, 8 minutes left", provAuthCode, time.Hour, 52 * time.Minute, false},
		{"default margin, 4 minutes left", provAuthCode, time.Hour, 56 * time.Minute, true},
		{"catalog margin 10m, 8 minutes left", provMargin, time.Hour, 52 * time.Minute, true},
		{"catalog margin 10m, 11 minutes left", provMargin, time.Hour, 49 * time.Minute, false},
		// A 4 minute token gets a 2 minute margin, not one that covers its
		// whole life.
		{"short-lived token, just issued", provAuthCode, 4 * time.Minute, 0, false},
		{"short-lived token, past half", provAuthCode, 4 * time.Minute, 2*time.Minute + time.Second, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRefreshEnv(t, envConfig{})
			tok := e.issue(t)
			c := e.authCodeConn(t, tc.provider, tok, e.clock.Now().Add(tc.life))
			e.clock.Advance(tc.elapsed)
			if _, err := e.r.AccessToken(t.Context(), c); err != nil {
				t.Fatal(err)
			}
			refreshed := false
			if tc.refresh {
				refreshed = e.result(t) == resultOK
			} else {
				e.noResult(t)
			}
			if refreshed != tc.refresh || e.srv.Requests("") != map[bool]int{true: 1}[tc.refresh] {
				t.Errorf("refreshed %v (%d requests), want %v", refreshed, e.srv.Requests(""), tc.refresh)
			}
		})
	}
}

// TestCredentialsReplacedDuringRefresh: new credentials stored while a
// refresh runs win over its answer.
func TestCredentialsReplacedDuringRefresh(t *testing.T) {
	e := newRefreshEnv(t, envConfig{opts: RefresherOptions{Wait: time.Millisecond}})
	e.srv.SetDelay(100 * time.Millisecond)
	c, _ := e.expiredConn(t)
	if _, err := e.r.AccessToken(t.Context(), c); err == nil {
		t.Fatal("want a *RetryError while the refresh is held")
	}
	fresh := e.replaceCredential(t, c.ID)
	e.result(t)
	got, err := e.r.AccessToken(t.Context(), e.conn(t, c.ID))
	if err != nil || got != fresh.Access {
		t.Fatalf("AccessToken = %v; want the replacement token", err)
	}
	if cr := e.conn(t, c.ID).Credential; cr.AccessToken != fresh.Access || cr.RefreshToken != fresh.Refresh {
		t.Error("the refresh overwrote credentials stored while it ran")
	}
}

func TestDeletedConnection(t *testing.T) {
	e := newRefreshEnv(t, envConfig{})
	c, _ := e.expiredConn(t)
	if err := e.store.DeleteConnection(testProject, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.AccessToken(t.Context(), c); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AccessToken of a deleted connection = %v, want ErrNotFound", err)
	}
	var wg sync.WaitGroup
	e.r.sweep(t.Context(), &wg)
	wg.Wait()
	if _, ok := e.r.states.Load(c.ID); ok {
		t.Error("the state of a deleted connection was kept")
	}
}

// TestErrorClassification runs the Refresher against token endpoints that
// answer in every way that matters.
func TestErrorClassification(t *testing.T) {
	type want int
	const (
		ok want = iota
		bad
		retry
	)
	cases := []struct {
		name        string
		scheme      AuthScheme
		status      int
		contentType string
		body        string
		want        want
		expiresIn   time.Duration
	}{
		{"invalid_grant", SchemeOAuth2AuthorizationCode, 400, "application/json", `{"error":"invalid_grant"}`, bad, 0},
		{"unauthorized_client, app's fault", SchemeOAuth2AuthorizationCode, 400, "application/json", `{"error":"unauthorized_client"}`, retry, 0},
		{"unauthorized_client, connection's client", SchemeOAuth2ClientCredentials, 400, "application/json", `{"error":"unauthorized_client"}`, bad, 0},
		{"invalid_grant with status 200", SchemeOAuth2AuthorizationCode, 200, "application/json", `{"error":"invalid_grant"}`, bad, 0},
		{"invalid_client, app's fault", SchemeOAuth2AuthorizationCode, 401, "application/json", `{"error":"invalid_client"}`, retry, 0},
		{"invalid_client, connection's client", SchemeOAuth2ClientCredentials, 401, "application/json", `{"error":"invalid_client"}`, bad, 0},
		{"invalid_request", SchemeOAuth2AuthorizationCode, 400, "application/json", `{"error":"invalid_request"}`, retry, 0},
		{"500", SchemeOAuth2AuthorizationCode, 500, "text/html", `<h1>oops</h1>`, retry, 0},
		{"502 empty", SchemeOAuth2AuthorizationCode, 502, "", ``, retry, 0},
		{"429", SchemeOAuth2AuthorizationCode, 429, "application/json", `{"error":"slow_down"}`, retry, 0},
		{"200 not a token", SchemeOAuth2AuthorizationCode, 200, "text/html", `<html>login</html>`, retry, 0},
		{"200 without access_token", SchemeOAuth2AuthorizationCode, 200, "application/json", `{"token_type":"Bearer"}`, retry, 0},
		{"expires_in as a string", SchemeOAuth2AuthorizationCode, 200, "application/json", `{"access_token":"a1","expires_in":"1800"}`, ok, 30 * time.Minute},
		{"form-encoded answer", SchemeOAuth2AuthorizationCode, 200, "application/x-www-form-urlencoded", `access_token=a2&expires_in=600`, ok, 10 * time.Minute},
		{"no expires_in", SchemeOAuth2AuthorizationCode, 200, "application/json", `{"access_token":"a3"}`, ok, 0},
		{"client credentials expires_in", SchemeOAuth2ClientCredentials, 200, "application/json", `{"access_token":"a4","expires_in":120}`, ok, 2 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.contentType != "" {
					w.Header().Set("Content-Type", tc.contentType)
				}
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			t.Cleanup(ep.Close)
			e := newRefreshEnv(t, envConfig{tokenURL: ep.URL})
			prov := provAuthCode
			if tc.scheme == SchemeOAuth2ClientCredentials {
				prov = provCC
			}
			c := mustPut(t, e.store, &Connection{ProjectID: testProject, Provider: prov, GroupRef: "g", AuthScheme: tc.scheme,
				Credential: Credential{AccessToken: "old", RefreshToken: "rt", ClientID: "id", ClientSecret: "secret", Expiry: e.clock.Now().Add(-time.Minute)}})
			got, err := e.r.AccessToken(t.Context(), c)
			var re *RetryError
			stored := e.conn(t, c.ID)
			switch tc.want {
			case ok:
				if err != nil || got == "old" {
					t.Fatalf("AccessToken = %q, %v; want a new token", got, err)
				}
				var wantExp time.Time
				if tc.expiresIn > 0 {
					wantExp = e.clock.Now().Add(tc.expiresIn)
				}
				if !stored.Credential.Expiry.Equal(wantExp) {
					t.Errorf("expiry %s, want %s", stored.Credential.Expiry, wantExp)
				}
				if stored.Credential.RefreshToken != "rt" {
					t.Error("an answer without refresh_token lost the stored one")
				}
			case bad:
				if !errors.Is(err, ErrBadCredentials) || stored.Status != StatusBadCredentials {
					t.Fatalf("AccessToken = %v, status %s; want ErrBadCredentials and bad_credentials", err, stored.Status)
				}
			case retry:
				if !errors.As(err, &re) || stored.Status == StatusBadCredentials {
					t.Fatalf("AccessToken = %v, status %s; want a *RetryError and no status change", err, stored.Status)
				}
				if re.RetryAfterSeconds() < 1 {
					t.Errorf("Retry-After %d", re.RetryAfterSeconds())
				}
			}
		})
	}
}

// TestExpiryOfClocks: an expiry known only from x/oauth2's Expiry, which
// is on the real clock, lands on the Refresher's clock, however far that
// is from the real one: the lifetime, measured from when the request was
// sent, counted from the Refresher's time at that moment.
func TestExpiryOfClocks(t *testing.T) {
	issuedAt := newManualClock().Now()
	sent := time.Now()
	tok := &oauth2.Token{AccessToken: "a", Expiry: sent.Add(10 * time.Minute)}
	if got, want := expiryOf(tok, issuedAt, sent), issuedAt.Add(10*time.Minute); !got.Equal(want) {
		t.Errorf("expiry from Expiry alone = %s, want %s", got, want)
	}
	tok = tok.WithExtra(map[string]any{"expires_in": float64(60)})
	if got, want := expiryOf(tok, issuedAt, sent), issuedAt.Add(time.Minute); !got.Equal(want) {
		t.Errorf("expiry with expires_in = %s, want %s (expires_in wins)", got, want)
	}
	if got := expiryOf(&oauth2.Token{AccessToken: "a"}, issuedAt, sent); !got.IsZero() {
		t.Errorf("expiry of a token without one = %s, want none", got)
	}
}

// TestRedirectNotFollowed: a token endpoint that redirects gets its
// redirect back as a failed answer, with the default client and with a
// caller's client that would follow it. The target never sees the refresh
// token or the client secret, and the connection backs off rather than
// being marked bad_credentials.
func TestRedirectNotFollowed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client *http.Client
	}{
		{"default client", nil},
		{"a client that follows redirects", &http.Client{Timeout: 5 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []string
			target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r.ParseForm()
				mu.Lock()
				seen = append(seen, r.Form.Encode())
				mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"access_token":"from-the-redirect-target","expires_in":3600}`)
			}))
			t.Cleanup(target.Close)
			ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/token", http.StatusTemporaryRedirect)
			}))
			t.Cleanup(ep.Close)
			e := newRefreshEnv(t, envConfig{tokenURL: ep.URL, defaultClient: tc.client == nil, opts: RefresherOptions{HTTPClient: tc.client}})
			c, _ := e.expiredConn(t)
			_, err := e.r.AccessToken(t.Context(), c)
			var re *RetryError
			if !errors.As(err, &re) || !strings.Contains(re.Reason, "HTTP 307") {
				t.Fatalf("AccessToken = %v; want a *RetryError naming HTTP 307", err)
			}
			if st := e.conn(t, c.ID).Status; st == StatusBadCredentials {
				t.Error("a redirect marked the connection bad_credentials")
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 0 {
				t.Errorf("the redirect target got %d requests", len(seen))
			}
			if !strings.Contains(e.logs.String(), "redirect") {
				t.Error("the log does not say the token endpoint redirected")
			}
		})
	}
}

func TestTokenEndpointUnreachableOrSlow(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()

	cases := []struct {
		name, url, reason string
	}{
		{"slow", slow.URL, "did not answer within 50ms"},
		{"unreachable", gone.URL, "unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client := &http.Client{Timeout: 50 * time.Millisecond, Transport: &http.Transport{}}
			t.Cleanup(client.CloseIdleConnections)
			e := newRefreshEnv(t, envConfig{tokenURL: tc.url, opts: RefresherOptions{HTTPClient: client}})
			c, _ := e.expiredConn(t)
			_, err := e.r.AccessToken(t.Context(), c)
			var re *RetryError
			if !errors.As(err, &re) || !strings.Contains(re.Reason, tc.reason) {
				t.Fatalf("AccessToken = %v; want a *RetryError saying %q", err, tc.reason)
			}
		})
	}
}

func TestBackgroundRefresh(t *testing.T) {
	e := newRefreshEnv(t, envConfig{opts: RefresherOptions{RecentUse: 30 * time.Minute}})
	t0 := e.clock.Now()
	recent := e.authCodeConn(t, provAuthCode, e.issue(t), t0.Add(time.Hour))
	idle := e.authCodeConn(t, provAuthCode, e.issue(t), t0.Add(time.Hour))
	far := e.authCodeConn(t, provAuthCode, e.issue(t), t0.Add(3*time.Hour))
	never := e.authCodeConn(t, provAuthCode, e.issue(t), t0.Add(time.Hour))
	_ = never
	for _, c := range []*Connection{recent, idle, far} {
		e.r.AccessToken(t.Context(), c)
	}
	e.clock.Advance(45 * time.Minute)
	e.r.AccessToken(t.Context(), recent)
	e.r.AccessToken(t.Context(), far)
	e.clock.Advance(6 * time.Minute) // 9 minutes left: within 2×5m, beyond 5m

	var wg sync.WaitGroup
	e.r.sweep(t.Context(), &wg)
	wg.Wait()
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
		t.Fatalf("%d background refreshes, want 1 (only the recently used connection that expires soon)", n)
	}
	if e.conn(t, recent.ID).Credential.AccessToken == recent.Credential.AccessToken {
		t.Error("the recently used connection was not refreshed")
	}
	for _, c := range []*Connection{idle, far, never} {
		if e.conn(t, c.ID).Credential.AccessToken != c.Credential.AccessToken {
			t.Error("a connection that was not due was refreshed")
		}
	}
	// The request path now finds a fresh token.
	got, err := e.r.AccessToken(t.Context(), e.conn(t, recent.ID))
	if err != nil || !e.srv.ValidAccess(got) {
		t.Fatal(err)
	}
}

// TestBackgroundShortLivedTokens: an 8-minute token (margin 4 minutes,
// half its life) is refreshed in the background once it is half spent,
// not on every sweep because a fresh token already looks due.
func TestBackgroundShortLivedTokens(t *testing.T) {
	e := newRefreshEnv(t, envConfig{server: oauthtest.Options{AccessTTL: 8 * time.Minute}})
	c := e.authCodeConn(t, provAuthCode, e.issue(t), e.clock.Now().Add(8*time.Minute))
	var wg sync.WaitGroup
	for range 60 { // 30 minutes of sweeps, 30 s apart
		e.r.AccessToken(t.Context(), e.conn(t, c.ID)) // keeps it recently used
		e.clock.Advance(DefaultBackgroundEvery)
		e.r.sweep(t.Context(), &wg)
		wg.Wait()
	}
	// Refreshed at 4, 8, … 28 minutes: each token at half its life.
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 7 {
		t.Errorf("%d background refreshes of an 8-minute token in 30 minutes of sweeps, want 7", n)
	}
}

func TestRunStopsCleanly(t *testing.T) {
	e := newRefreshEnv(t, envConfig{opts: RefresherOptions{Background: time.Millisecond}})
	c := e.authCodeConn(t, provAuthCode, e.issue(t), e.clock.Now().Add(time.Hour))
	e.r.AccessToken(t.Context(), c)
	e.clock.Advance(52 * time.Minute)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		e.r.Run(ctx)
		close(done)
	}()
	if r := e.result(t); r != resultOK {
		t.Fatalf("background refresh: %s", r)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n := e.srv.Requests(oauthtest.GrantRefreshToken); n != 1 {
		t.Errorf("%d refreshes, want 1: a refreshed token is not due again", n)
	}
}

// TestNoSecretsInLogsOrErrors drives every outcome with distinctive
// secrets and looks for them in the log and in every error.
func TestNoSecretsInLogsOrErrors(t *testing.T) {
	const clientSecret = "client-secret-Zq8vW3"
	e := newRefreshEnv(t, envConfig{server: oauthtest.Options{ClientSecret: clientSecret}})
	var errs []string
	call := func(c *Connection) {
		if _, err := e.r.AccessToken(t.Context(), c); err != nil {
			errs = append(errs, err.Error(), fmt.Sprintf("%+v %#v", err, err))
		}
	}
	// Success, then invalid_grant.
	c1, _ := e.expiredConn(t)
	call(c1)
	c2, tok2 := e.expiredConn(t)
	e.srv.Revoke(tok2.Refresh)
	call(c2)
	// Endpoint down.
	e.srv.SetDown(true)
	c3, _ := e.expiredConn(t)
	call(c3)
	e.srv.SetDown(false)
	// The app refused: a wrong secret.
	wrong := newRefreshEnv(t, envConfig{opts: RefresherOptions{
		Logger: slog.New(slog.NewJSONHandler(e.logs, nil)),
		Apps: func(string, string) (string, string, bool, error) {
			return "oauthtest-client", "wrong-secret-Hx5pR1", true, nil
		},
	}})
	c4, tok4 := wrong.expiredConn(t)
	if _, err := wrong.r.AccessToken(t.Context(), c4); err != nil {
		errs = append(errs, err.Error())
	}
	// Endpoints that echo the request in their error answers.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		u, p, _ := r.BasicAuth()
		leak := r.PostForm.Encode() + " " + u + ":" + p
		if r.PostForm.Get("grant_type") == "client_credentials" {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(500)
			fmt.Fprint(w, "<pre>"+leak+"</pre>")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":"invalid_request","error_description":%q,"error_uri":%q}`, leak, "https://x/"+leak)
	}))
	t.Cleanup(echo.Close)
	echoEnv := newRefreshEnv(t, envConfig{tokenURL: echo.URL, opts: RefresherOptions{
		Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Apps: func(string, string) (string, string, bool, error) {
			return "oauthtest-client", clientSecret, true, nil
		},
	}})
	c5, tok5 := echoEnv.expiredConn(t)
	if _, err := echoEnv.r.AccessToken(t.Context(), c5); err != nil {
		errs = append(errs, err.Error())
	}
	c6 := mustPut(t, echoEnv.store, &Connection{ProjectID: testProject, Provider: provCC, GroupRef: "g", AuthScheme: SchemeOAuth2ClientCredentials,
		Credential: Credential{ClientID: "cc-id", ClientSecret: "cc-secret-Lm4Tn7"}})
	if _, err := echoEnv.r.AccessToken(t.Context(), c6); err != nil {
		errs = append(errs, err.Error())
	}

	secrets := []string{clientSecret, "wrong-secret-Hx5pR1", "cc-secret-Lm4Tn7", tok4.Access, tok4.Refresh, tok5.Access, tok5.Refresh}
	for _, srv := range []*oauthtest.Server{e.srv, wrong.srv, echoEnv.srv} {
		for _, p := range srv.Issued() {
			secrets = append(secrets, p.Access, p.Refresh)
		}
	}
	logs := e.logs.String() + wrong.logs.String() + echoEnv.logs.String()
	if len(errs) < 5 || !strings.Contains(logs, "invalid_grant") || !strings.Contains(logs, "refreshed") {
		t.Fatalf("the scenarios did not run as planned: %d errors, log:\n%s", len(errs), logs)
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(logs, s) {
			t.Errorf("a secret appears in the log:\n%s", logs)
		}
		for _, msg := range errs {
			if strings.Contains(msg, s) {
				t.Errorf("a secret appears in an error: %s", msg)
			}
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		after time.Duration
		want  int64
	}{{0, 1}, {time.Millisecond, 1}, {time.Second, 1}, {1500 * time.Millisecond, 2}, {5 * time.Minute, 300}} {
		if got := (&RetryError{After: tc.after}).RetryAfterSeconds(); got != tc.want {
			t.Errorf("RetryAfterSeconds(%s) = %d, want %d", tc.after, got, tc.want)
		}
	}
}

// TestSetupErrors: configuration that prevents a refresh gives a
// *RetryError with a generic reason, the details in the log, no token
// request, and backoff.
func TestSetupErrors(t *testing.T) {
	cases := []struct {
		name    string
		apps    AppLookup
		conn    Connection
		wantLog string
	}{
		{"no provider app", func(string, string) (string, string, bool, error) { return "", "", false, nil },
			Connection{Provider: provAuthCode, AuthScheme: SchemeOAuth2AuthorizationCode}, "has no OAuth2 app (providerApps) for provider " + provAuthCode},
		{"provider app unreadable", func(string, string) (string, string, bool, error) {
			return "", "", false, errors.New("client secret: open /etc/apps/x: permission denied")
		}, Connection{Provider: provAuthCode, AuthScheme: SchemeOAuth2AuthorizationCode}, "permission denied"},
		{"provider not in the catalog", nil,
			Connection{Provider: "gone", AuthScheme: SchemeOAuth2AuthorizationCode}, "provider gone is not an OAuth2 provider"},
		{"client credentials without client ID", nil,
			Connection{Provider: provCC, AuthScheme: SchemeOAuth2ClientCredentials}, "holds no client ID"},
		{"not an OAuth2 connection", nil,
			Connection{Provider: provAuthCode, AuthScheme: SchemeAPIKey}, "authScheme apiKey is not OAuth2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRefreshEnv(t, envConfig{opts: RefresherOptions{Apps: tc.apps}})
			c := tc.conn
			c.ProjectID, c.GroupRef = testProject, "g"
			c.Credential = Credential{AccessToken: "old", RefreshToken: "rt", Expiry: e.clock.Now().Add(-time.Minute)}
			stored := mustPut(t, e.store, &c)
			_, err := e.r.AccessToken(t.Context(), stored)
			var re *RetryError
			if !errors.As(err, &re) || !strings.Contains(re.Reason, "configuration") {
				t.Fatalf("AccessToken = %v; want a *RetryError about the configuration", err)
			}
			if !strings.Contains(e.logs.String(), tc.wantLog) {
				t.Errorf("the log does not say %q:\n%s", tc.wantLog, e.logs)
			}
			if strings.Contains(err.Error(), "/etc/apps") {
				t.Error("a server path reached the caller's error")
			}
			if _, err := e.r.AccessToken(t.Context(), stored); !errors.As(err, &re) {
				t.Fatalf("second AccessToken = %v", err)
			}
			// No request was made, so none is counted or timed.
			e.idle()
			e.noResult(t)
			if n := e.srv.Requests(""); n != 0 {
				t.Errorf("%d token requests, want 0", n)
			}
		})
	}
}
