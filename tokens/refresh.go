package tokens

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ampproxy/ampproxy/catalog"
)

// Defaults of RefresherOptions.
const (
	DefaultRefreshMargin     = 5 * time.Minute
	DefaultRefreshWait       = 100 * time.Millisecond
	DefaultTokenTimeout      = 10 * time.Second
	DefaultBackoffBase       = time.Second
	DefaultBackoffMax        = 5 * time.Minute
	DefaultBackgroundEvery   = 30 * time.Second
	DefaultRecentUse         = time.Hour
	DefaultRefreshConcurrent = 4
)

// Errors of the Refresher, besides *RetryError. Callers match them with
// errors.Is.
var (
	// ErrBadCredentials: the provider's token endpoint rejected the
	// connection's grant (invalid_grant, or invalid_client or
	// unauthorized_client for a client-credentials connection), and the
	// connection is bad_credentials. The token endpoint is not called for
	// it again until its credentials or status are updated. Answer 424.
	ErrBadCredentials = errors.New("the provider rejected the connection's credentials")
	// ErrTokenExpired: the access token has expired and the connection
	// holds no refresh token to get another. Answer 424.
	ErrTokenExpired = errors.New("the access token has expired and the connection has no refresh token")
)

// RetryError says that no usable access token is available now but one
// may be soon: a refresh is still running, or the token endpoint is down
// and the connection is backing off. Answer 503 with RetryAfterSeconds in
// Retry-After. Reason never holds a secret.
type RetryError struct {
	After  time.Duration
	Reason string
}

func (e *RetryError) Error() string {
	return "token refresh: " + e.Reason + " (retry after " + strconv.FormatInt(e.RetryAfterSeconds(), 10) + "s)"
}

// RetryAfterSeconds is After rounded up to whole seconds, at least 1, for
// a Retry-After header.
func (e *RetryError) RetryAfterSeconds() int64 {
	s := int64((e.After + time.Second - 1) / time.Second)
	return max(s, 1)
}

// AppLookup returns the OAuth2 client (the provider app) a project uses
// for a provider: authorization-code connections are refreshed with it.
// ok is false when the project has no app for the provider. The error
// must not hold the secret.
type AppLookup func(projectID, provider string) (clientID, clientSecret string, ok bool, err error)

// RefresherOptions configure a Refresher. Zero fields take the defaults
// above; Store and Providers are required.
type RefresherOptions struct {
	// Store holds the connections; every new token is written to it before
	// anyone gets it.
	Store *Store
	// Providers returns the current catalog (a config reload swaps it).
	Providers func() *catalog.Catalog
	// Apps finds a project's OAuth2 app for refreshing authorization-code
	// connections. Client-credentials connections carry their own client.
	Apps AppLookup
	// HTTPClient calls the token endpoints. The default is
	// NewTokenClient(10 s). It is handed to golang.org/x/oauth2 through the
	// context of the refresh, which is never a request's context; a
	// refresh is bounded by HTTPClient.Timeout, or 10 s when that is zero.
	// Whatever its CheckRedirect, the Refresher uses a copy that does not
	// follow redirects (see NewTokenClient).
	HTTPClient *http.Client
	// Margin is how long before expiry a token is refreshed, unless the
	// catalog's oauth2.refreshMargin says otherwise for the provider. A
	// margin is never more than half the token's lifetime as seen by the
	// store (expiry minus the connection's UpdateTime), so a provider
	// issuing short-lived tokens is not refreshed on every request.
	Margin time.Duration
	// Wait is the longest a caller waits for a refresh in flight before it
	// gets a *RetryError (the refresh goes on), counted from when the wait
	// begins; a caller whose context has a deadline waits until that
	// deadline at most. The request path sets its deadline from when
	// Envoy's message arrived, which is what Envoy's message_timeout (200
	// ms in the shipped bootstrap) counts from too.
	Wait time.Duration
	// BackoffBase and BackoffMax bound the pause after a failed refresh:
	// exponential in the number of failures in a row, with full jitter,
	// never below BackoffBase.
	BackoffBase, BackoffMax time.Duration
	// Background is how often Run looks for tokens to refresh ahead of
	// expiry; RecentUse is how recently a connection must have been used
	// to be refreshed in the background; Concurrency bounds Run's
	// refreshes in flight.
	Background, RecentUse time.Duration
	Concurrency           int
	// Now is the clock of every expiry and backoff decision.
	Now func() time.Time
	// Logger receives refresh outcomes, never a secret. Nil means
	// slog.Default().
	Logger *slog.Logger
	// OnRefresh, when set, is called once per request made to a token
	// endpoint, after it, with the provider, the result and how long the
	// request took. Results: ok (a token was issued and stored),
	// invalid_grant (the endpoint rejected the connection's credentials,
	// which are now bad_credentials), error (anything else). Nothing is
	// reported when no request is made: while a connection backs off, for
	// a configuration problem, or when an answer kept from an earlier
	// attempt is stored. It must be quick.
	OnRefresh func(provider, result string, d time.Duration)
}

// Refresh results, as OnRefresh reports them.
const (
	resultOK           = "ok"
	resultInvalidGrant = "invalid_grant"
	resultError        = "error"
)

// Limits on refreshes forced by provider 401s (MarkStale). After a forced
// refresh the connection's next one waits forceGapMin; each forced while
// the previous gap was still recent doubles the gap, up to forceGapMax;
// one that comes after twice the gap or more, or new credentials, start
// again from forceGapMin. A provider that rejects even fresh tokens (a
// missing scope, a suspended account) thus costs a handful of grants an
// hour rather than one per request, each of which may rotate the refresh
// token.
const (
	forceGapMin = time.Minute
	forceGapMax = 30 * time.Minute
)

// Refresher hands out usable OAuth2 access tokens for connections,
// refreshing them with golang.org/x/oauth2 when they are about to expire,
// one refresh per connection at a time. Its methods are safe for
// concurrent use.
type Refresher struct {
	store     *Store
	providers func() *catalog.Catalog
	apps      AppLookup
	client    *http.Client
	timeout   time.Duration
	margin    time.Duration
	wait      time.Duration
	base, max time.Duration
	every     time.Duration
	recent    time.Duration
	now       func() time.Time
	log       *slog.Logger
	onRefresh func(provider, result string, d time.Duration)
	// jitter turns a backoff ceiling into the pause actually taken.
	jitter func(ceiling time.Duration) time.Duration
	// slots bounds the background refreshes in flight.
	slots chan struct{}

	// states holds per-connection refresh state, by connection ID. A
	// sync.Map because the request path only reads it, without locking
	// or allocating, once a connection has been seen.
	states sync.Map

	mu     sync.Mutex // guards closed, and wg.Add against Close's Wait
	closed bool
	wg     sync.WaitGroup // refreshes in flight
}

// connRefresh is the refresh state of one connection.
type connRefresh struct {
	// lastUse is the Now of the latest AccessToken call, in Unix
	// nanoseconds, kept to about a second.
	lastUse atomic.Int64
	// stale is the access token a provider answered 401 for (MarkStale).
	stale atomic.Pointer[string]

	mu sync.Mutex
	// dead: dropped from the map because its connection was deleted;
	// whoever holds it looks the state up again.
	dead   bool
	flight *refreshFlight
	// seen and seenGrant are the UpdateTime and credential of the
	// connection as this state last saw it: a difference is an update
	// made elsewhere (see observe).
	seen      time.Time
	seenGrant grantID
	// forced is the access token the last forced refresh replaced:
	// MarkStale ignores it, so a late 401 for a replaced token, or one
	// for a token that the refresh handed back unchanged, forces nothing.
	forced string
	// forcedAt is when the last forced refresh first started (its retries
	// after a failure do not move it); until forceGap has passed since,
	// MarkStale forces none (see forceGapMin).
	forcedAt time.Time
	forceGap time.Duration
	// failures counts failed refreshes in a row; until retryAt the token
	// endpoint is not called and retryReason explains why.
	failures    int
	retryAt     time.Time
	retryReason string
	// badAt is the UpdateTime of a connection whose credentials the token
	// endpoint rejected; it stands in for the bad_credentials status when
	// writing that status failed.
	badAt time.Time
	// pending is a token the endpoint issued that could not be stored:
	// the next attempt stores it instead of using up another grant.
	pending *issuedToken
}

// refreshFlight is one refresh in progress; token and err are set
// before done is closed.
type refreshFlight struct {
	done  chan struct{}
	token string
	err   error
}

// NewRefresher returns a Refresher. It panics without a Store or
// Providers.
func NewRefresher(o RefresherOptions) *Refresher {
	if o.Store == nil || o.Providers == nil {
		panic("tokens: NewRefresher needs a Store and Providers")
	}
	r := &Refresher{
		store:     o.Store,
		providers: o.Providers,
		apps:      o.Apps,
		client:    o.HTTPClient,
		margin:    orDefault(o.Margin, DefaultRefreshMargin),
		wait:      orDefault(o.Wait, DefaultRefreshWait),
		base:      orDefault(o.BackoffBase, DefaultBackoffBase),
		max:       orDefault(o.BackoffMax, DefaultBackoffMax),
		every:     orDefault(o.Background, DefaultBackgroundEvery),
		recent:    orDefault(o.RecentUse, DefaultRecentUse),
		now:       o.Now,
		log:       o.Logger,
		onRefresh: o.OnRefresh,
	}
	if r.client == nil {
		r.client = NewTokenClient(DefaultTokenTimeout)
	} else {
		r.client = WithoutRedirects(r.client)
	}
	r.timeout = r.client.Timeout
	if r.timeout <= 0 {
		r.timeout = DefaultTokenTimeout
	}
	r.max = max(r.max, r.base)
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	n := o.Concurrency
	if n <= 0 {
		n = DefaultRefreshConcurrent
	}
	r.slots = make(chan struct{}, n)
	r.jitter = r.fullJitter
	return r
}

// NewTokenClient returns an HTTP client for token endpoints, with the
// given timeout, that answers a redirect with the redirect itself instead
// of following it. A token request carries the client secret and the grant
// (refresh token, authorization code) in its body: following a 307 or 308
// would post them again to wherever Location points, and a 301 to 303
// would turn the request into a GET without them. A token endpoint that
// redirects is misconfigured; its answer fails as an HTTP 3xx.
func NewTokenClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, CheckRedirect: noRedirect}
}

// WithoutRedirects returns a copy of c, with the same transport and
// timeout, that does not follow redirects, whatever c's CheckRedirect (see
// NewTokenClient). Every client that calls a token endpoint goes through
// it or NewTokenClient.
func WithoutRedirects(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = noRedirect
	return &cc
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// AccessToken returns a usable access token for c, an OAuth2 connection
// (authorization code or client credentials) as the store returned it.
//
// A token that Cached would return is returned at once, without locking,
// allocation or I/O. Otherwise the connection is read again from the
// store and, when needed, refreshed: one refresh per connection at a
// time, which every concurrent caller shares. A token that is about to
// expire but has not is returned at once while its refresh runs; a caller
// whose token has expired waits for the refresh, until ctx's deadline or
// at most Wait, and then gets a *RetryError while the refresh goes on, on
// its own context, for the next request.
//
// Errors: ErrBadCredentials, ErrTokenExpired, *RetryError, or a wrapped
// ErrNotFound when the connection has been deleted.
func (r *Refresher) AccessToken(ctx context.Context, c *Connection) (string, error) {
	if tok, ok := r.Cached(c); ok {
		return tok, nil
	}
	return r.slow(ctx, c.ID, r.state(c.ID))
}

// Cached returns c's access token when it can be sent as it is: valid for
// longer than the margin, not marked stale, and the connection not
// bad_credentials. It answers from memory, without locking, allocation or
// I/O, and records the use as AccessToken does. When it says no,
// AccessToken has work to do; a caller on a hot path asks Cached first
// and builds AccessToken's context (with a deadline, which allocates)
// only then.
func (r *Refresher) Cached(c *Connection) (string, bool) {
	now := r.now()
	st := r.state(c.ID)
	st.touch(now)
	if c.Status != StatusBadCredentials && !st.isStale(c.Credential.AccessToken) && r.fresh(c, now) {
		return c.Credential.AccessToken, true
	}
	return "", false
}

// MarkStale records that a provider answered 401 to a request made with
// accessToken: the connection's next request refreshes first. Forced
// refreshes are limited per connection (see forceGapMin): within the gap
// after the last one a 401 forces nothing, and requests go on with the
// current token. A 401 for a token that a forced refresh has already
// replaced forces nothing either.
func (r *Refresher) MarkStale(connID, accessToken string) {
	if accessToken == "" {
		return
	}
	c, found := r.store.Connection(connID)
	for {
		st := r.state(connID)
		st.mu.Lock()
		if st.dead {
			st.mu.Unlock()
			continue
		}
		if found {
			// New credentials since the last forced refresh lift its limit.
			st.observe(c)
		}
		if st.forced != accessToken && (st.forcedAt.IsZero() || r.now().Sub(st.forcedAt) >= st.forceGap) {
			st.stale.Store(&accessToken)
		}
		st.mu.Unlock()
		return
	}
}

// Close stops new refreshes and waits for those in flight, which end
// within the token endpoint timeout. They are not cancelled: a refresh
// cut short after the provider rotated the refresh token, but before the
// new one was stored, would lose the connection.
func (r *Refresher) Close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *Refresher) state(id string) *connRefresh {
	if v, ok := r.states.Load(id); ok {
		return v.(*connRefresh)
	}
	v, _ := r.states.LoadOrStore(id, new(connRefresh))
	return v.(*connRefresh)
}

// touch records a use; writes are rare so that callers of one busy
// connection do not contend on the cache line.
func (st *connRefresh) touch(now time.Time) {
	n := now.UnixNano()
	if n-st.lastUse.Load() > int64(time.Second) {
		st.lastUse.Store(n)
	}
}

// observe notes c as just read from the store, with st.mu held. An update
// this Refresher did not make (new credentials or metadata through the
// admin API) ends the connection's backoff and the limit on its forced
// refreshes: what failed, or was rejected, belonged to what it replaced.
// While a refresh runs its own write is not yet noted, so nothing is
// decided; an update made meanwhile is seen once it has ended.
func (st *connRefresh) observe(c *Connection) {
	if st.flight != nil {
		return
	}
	g := grantOf(&c.Credential)
	if c.UpdateTime.Equal(st.seen) && g == st.seenGrant {
		return
	}
	st.failures, st.retryAt, st.retryReason = 0, time.Time{}, ""
	st.forcedAt, st.forceGap = time.Time{}, 0
	st.seen, st.seenGrant = c.UpdateTime, g
}

// noteWritten records c as this Refresher left it in the store, so that
// observe does not take its own write for someone else's.
func (st *connRefresh) noteWritten(c *Connection) {
	st.seen, st.seenGrant = c.UpdateTime, grantOf(&c.Credential)
}

func (st *connRefresh) isStale(token string) bool {
	p := st.stale.Load()
	return p != nil && *p == token
}

// marginFor is the refresh margin of c: the provider's, else the
// default, and at most half the token's lifetime as the store saw it.
func (r *Refresher) marginFor(c *Connection) time.Duration {
	m := r.margin
	if cat := r.providers(); cat != nil {
		if p, ok := cat.Provider(c.Provider); ok && p.OAuth2 != nil && p.OAuth2.RefreshMargin > 0 {
			m = p.OAuth2.RefreshMargin
		}
	}
	if life := c.Credential.Expiry.Sub(c.UpdateTime); life > 0 && m > life/2 {
		m = life / 2
	}
	return m
}

// fresh reports whether c's token is valid for longer than the margin.
func (r *Refresher) fresh(c *Connection, now time.Time) bool {
	cr := &c.Credential
	if cr.AccessToken == "" {
		return false
	}
	return cr.Expiry.IsZero() || now.Add(r.marginFor(c)).Before(cr.Expiry)
}

// usable reports whether c's token may still be sent: not expired.
func usable(c *Connection, now time.Time) bool {
	cr := &c.Credential
	return cr.AccessToken != "" && (cr.Expiry.IsZero() || now.Before(cr.Expiry))
}

func (r *Refresher) slow(ctx context.Context, id string, st *connRefresh) (string, error) {
	for {
		st.mu.Lock()
		if !st.dead {
			break
		}
		st.mu.Unlock()
		st = r.state(id)
	}
	// Read the connection under st.mu: a refresh stores its result before
	// it leaves the flight, so a caller that finds no flight also finds
	// the latest tokens and never refreshes with a used refresh token.
	c, ok := r.store.Connection(id)
	if !ok {
		st.mu.Unlock()
		return "", fmt.Errorf("connection %s: %w", id, ErrNotFound)
	}
	st.observe(c)
	now := r.now()
	if c.Status == StatusBadCredentials || (!st.badAt.IsZero() && c.UpdateTime.Equal(st.badAt)) {
		st.mu.Unlock()
		return "", ErrBadCredentials
	}
	stale := st.isStale(c.Credential.AccessToken)
	if !stale && r.fresh(c, now) {
		st.mu.Unlock()
		return c.Credential.AccessToken, nil
	}
	if c.AuthScheme == SchemeOAuth2AuthorizationCode && c.Credential.RefreshToken == "" {
		// Nothing to refresh with: the token serves until it expires, even
		// after a 401, which then reaches the caller as the provider sent it.
		st.mu.Unlock()
		if usable(c, now) {
			return c.Credential.AccessToken, nil
		}
		return "", ErrTokenExpired
	}
	still := !stale && usable(c, now)
	f := st.flight
	if f == nil {
		if now.Before(st.retryAt) {
			after, reason := st.retryAt.Sub(now), st.retryReason
			st.mu.Unlock()
			if still {
				return c.Credential.AccessToken, nil
			}
			return "", &RetryError{After: after, Reason: reason}
		}
		f = r.start(st, c, stale, nil)
	}
	st.mu.Unlock()
	switch {
	case still:
		// Still valid: use it, and let the refresh serve the next requests.
		return c.Credential.AccessToken, nil
	case f == nil:
		return "", &RetryError{After: time.Second, Reason: "shutting down"}
	}
	return r.await(ctx, f)
}

// await waits for f at most Wait, and no later than ctx's deadline, or
// until ctx ends.
func (r *Refresher) await(ctx context.Context, f *refreshFlight) (string, error) {
	select {
	case <-f.done:
		return f.token, f.err
	default:
	}
	wait := r.wait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-f.done:
			return f.token, f.err
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return "", &RetryError{After: time.Second, Reason: "a token refresh is in progress"}
}

// start begins a refresh of c, with st.mu held, and returns its flight;
// nil once the Refresher is closed. done, when set, runs after it.
func (r *Refresher) start(st *connRefresh, c *Connection, forced bool, done func()) *refreshFlight {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.wg.Add(1)
	r.mu.Unlock()
	f := &refreshFlight{done: make(chan struct{})}
	st.flight = f
	// A forced refresh counts once per token forced: after a failure the
	// token stays stale and the backoff's retries start again with
	// forced set, but they are the same forced refresh. Counting each
	// would double the gap per retry, so a token endpoint down for half a
	// minute would leave the next token's 401s ignored for half an hour.
	if forced && (st.forced != c.Credential.AccessToken || st.forcedAt.IsZero()) {
		st.forced = c.Credential.AccessToken
		now := r.now()
		if st.forcedAt.IsZero() || now.Sub(st.forcedAt) >= 2*st.forceGap {
			st.forceGap = forceGapMin
		} else {
			st.forceGap = min(2*st.forceGap, forceGapMax)
		}
		st.forcedAt = now
	}
	pending := st.pending
	go func() {
		defer r.wg.Done()
		if done != nil {
			defer done()
		}
		r.fly(st, f, c, pending)
	}()
	return f
}

// fly runs one refresh and publishes its outcome to the state and to the
// callers waiting on f.
func (r *Refresher) fly(st *connRefresh, f *refreshFlight, c *Connection, pending *issuedToken) {
	out := r.refresh(c, pending)

	st.mu.Lock()
	st.flight = nil
	st.pending = out.pending
	st.noteWritten(out.left)
	switch out.result {
	case resultOK:
		st.failures, st.retryAt, st.retryReason = 0, time.Time{}, ""
		if p := st.stale.Load(); p != nil && *p == c.Credential.AccessToken {
			st.stale.Store(nil)
		}
		f.token = out.token
	case resultInvalidGrant:
		st.failures, st.retryAt, st.retryReason = 0, time.Time{}, ""
		st.badAt = out.badAt
		f.err = ErrBadCredentials
	default:
		after := time.Second
		if !out.noBackoff {
			st.failures++
			after = r.backoff(st.failures)
			st.retryAt = r.now().Add(after)
			st.retryReason = out.reason
		}
		f.err = &RetryError{After: after, Reason: out.reason}
	}
	st.mu.Unlock()
	close(f.done)
	if out.called && r.onRefresh != nil {
		r.onRefresh(c.Provider, out.result, out.took)
	}
}

// backoff is the pause after the n-th failure in a row: BackoffBase
// doubled n-1 times, at most BackoffMax, then jittered.
func (r *Refresher) backoff(n int) time.Duration {
	d := r.base
	for i := 1; i < n && d < r.max; i++ {
		d *= 2
	}
	return r.jitter(min(d, r.max))
}

// fullJitter draws the pause uniformly from [0, ceiling], so that
// connections that failed together (a provider outage) do not retry
// together, but never below BackoffBase, so that an unlucky draw does not
// turn into a burst of attempts.
func (r *Refresher) fullJitter(ceiling time.Duration) time.Duration {
	return max(time.Duration(rand.Int64N(int64(ceiling)+1)), r.base)
}
