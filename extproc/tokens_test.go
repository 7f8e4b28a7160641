package extproc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/tokens"
)

// fakeTokens answers AccessToken with a fixed token or error and records
// MarkStale calls.
type fakeTokens struct {
	mu     sync.Mutex
	token  string
	err    error
	stale  []string
	called int
}

// Cached never answers, so that every request reaches AccessToken.
func (f *fakeTokens) Cached(*tokens.Connection) (string, bool) { return "", false }

func (f *fakeTokens) AccessToken(_ context.Context, c *tokens.Connection) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.called++
	return f.token, f.err
}

func (f *fakeTokens) MarkStale(connID, tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stale = append(f.stale, connID+"/"+tok)
}

// TestTokenSourceErrors: the refresher's outcomes become DESIGN §2's
// statuses — 424 for rejected or unusable credentials, 503 with
// Retry-After when the token endpoint is down or slow.
func TestTokenSourceErrors(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		slug       string
		retryAfter string
	}{
		{"invalid_grant", fmt.Errorf("refresh: %w", tokens.ErrBadCredentials), 424, "bad-credentials", ""},
		{"no refresh token", tokens.ErrTokenExpired, 424, "token-expired", ""},
		{"endpoint down", &tokens.RetryError{After: 2500 * time.Millisecond, Reason: "token endpoint answered 503"}, 503, "token-unavailable", "3"},
		{"connection gone", fmt.Errorf("x: %w", tokens.ErrNotFound), 404, "connection-not-found", ""},
		{"anything else", errors.New("boom"), 503, "token-unavailable", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := &fakeTokens{err: tc.err}
			h := newHarnessWith(t, Options{Store: newFixture(), Tokens: ft})
			first, second := h.exchange(envoyHeaders("/x", proxyHeaders("oauth-int", "g1")...), "200")
			if second != nil {
				t.Fatal("forwarded")
			}
			// problemOf checks all five members and that status equals
			// the HTTP status.
			p := problemOf(t, first)
			ir := first.GetImmediateResponse()
			if p.Status != tc.status || p.Type != ProblemTypePrefix+tc.slug {
				t.Fatalf("got %d %s", ir.Status.Code, ir.Body)
			}
			if p.RequestID != requestID {
				t.Errorf("requestId = %q, want %q", p.RequestID, requestID)
			}
			for _, s := range secrets {
				if strings.Contains(string(ir.Body), s) {
					t.Errorf("problem body echoes secret %q: %s", s, ir.Body)
				}
			}
			got := ""
			for _, hv := range ir.Headers.SetHeaders {
				if hv.Header.Key == "retry-after" {
					got = string(hv.Header.RawValue)
				}
			}
			if got != tc.retryAfter {
				t.Errorf("retry-after %q, want %q", got, tc.retryAfter)
			}
		})
	}
}

// TestTokenSourceUsedAndMarkedStale: the refresher's token is what goes
// out, and a provider 401 marks exactly that token stale.
func TestTokenSourceUsedAndMarkedStale(t *testing.T) {
	ft := &fakeTokens{token: "fresh-token-from-refresher"}
	h := newHarnessWith(t, Options{Store: newFixture(), Tokens: ft})
	first, _ := h.exchange(envoyHeaders("/x", proxyHeaders("oauth-int", "g1")...), "200")
	found := false
	for _, hv := range first.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if hv.Header.Key == "authorization" && string(hv.Header.RawValue) == "Bearer fresh-token-from-refresher" {
			found = true
		}
	}
	if !found {
		t.Fatal("the refresher's token was not sent")
	}
	if len(ft.stale) != 0 {
		t.Fatal("marked stale after a 200")
	}
	h.exchange(envoyHeaders("/x", proxyHeaders("oauth-int", "g1")...), "401")
	if len(ft.stale) != 1 || !strings.HasSuffix(ft.stale[0], "/fresh-token-from-refresher") {
		t.Fatalf("stale = %v", ft.stale)
	}
	// API-key requests never ask for a token.
	before := ft.called
	h.exchange(envoyHeaders("/x", proxyHeaders("key-int", "g1")...), "401")
	if ft.called != before || len(ft.stale) != 1 {
		t.Error("an API-key request used the token source")
	}
}

// waitTokens records what the request path asks of its token source.
type waitTokens struct {
	mu       sync.Mutex
	cached   bool
	asked    int
	deadline time.Time
}

func (w *waitTokens) Cached(*tokens.Connection) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return "cached-token", w.cached
}

func (w *waitTokens) AccessToken(ctx context.Context, _ *tokens.Connection) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.asked++
	w.deadline, _ = ctx.Deadline()
	return "refreshed-token", nil
}

func (w *waitTokens) MarkStale(string, string) {}

// TestTokenWaitFromArrival: a request whose token is not cached may wait
// for it until TokenWait after its headers arrived, since Envoy's
// message_timeout runs from then; a request whose token is cached never
// reaches AccessToken.
func TestTokenWaitFromArrival(t *testing.T) {
	const wait = 70 * time.Millisecond
	wt := &waitTokens{}
	h := newHarnessWith(t, Options{Store: newFixture(), Tokens: wt, TokenWait: wait})
	sent := func() string {
		t.Helper()
		first, _ := h.exchange(envoyHeaders("/x", proxyHeaders("oauth-int", "g1")...), "200")
		for _, hv := range first.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
			if hv.Header.Key == "authorization" {
				return string(hv.Header.RawValue)
			}
		}
		t.Fatal("no authorization was set")
		return ""
	}

	before := time.Now()
	got := sent()
	after := time.Now()
	wt.mu.Lock()
	deadline, asked := wt.deadline, wt.asked
	wt.mu.Unlock()
	if got != "Bearer refreshed-token" || asked != 1 {
		t.Fatalf("sent %q after %d AccessToken calls; want the refreshed token after 1", got, asked)
	}
	// The stream's own context ends in 10 s (the harness's timeout); the
	// wait must end TokenWait after the headers arrived, which happened
	// between before and after.
	if deadline.Before(before.Add(wait)) || deadline.After(after.Add(wait)) {
		t.Errorf("AccessToken's deadline is %s after the request was sent; want %s after its headers arrived",
			deadline.Sub(before), wait)
	}

	wt.mu.Lock()
	wt.cached = true
	wt.mu.Unlock()
	if got := sent(); got != "Bearer cached-token" {
		t.Errorf("sent %q, want the cached token", got)
	}
	wt.mu.Lock()
	defer wt.mu.Unlock()
	if wt.asked != 1 {
		t.Errorf("AccessToken was asked for a cached token")
	}
}
