package e2e

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/admin"
)

// xampLayout is X-Amp-Retry-After's layout (DESIGN §3).
const xampLayout = "Mon, 02 Jan 2006 15:04:05 UTC"

// keyConnection makes a sampleKey connection for group, installed as
// integration key.
func (e *env) keyConnection(group string) string {
	e.t.Helper()
	c, err := e.admin.GenerateConnection(context.Background(), admin.GenerateConnectionRequest{
		GroupRef: group, ConsumerRef: "alice", Provider: "sampleKey", APIKey: providerAPIKey})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.admin.CreateInstallation(context.Background(), "key", group, c.ID); err != nil {
		e.t.Fatal(err)
	}
	return c.ID
}

func throttled(integration, group string) map[string]string {
	h := proxyHeaders(integration, group)
	h["x-amp-rate-limiter-mode"] = "throttle"
	return h
}

// retryAt reads X-Amp-Retry-After and X-Amp-Retryable of a response,
// checking the exact layout.
func retryAt(t *testing.T, resp *http.Response) (time.Time, string) {
	t.Helper()
	v := resp.Header.Get("X-Amp-Retry-After")
	at, err := time.Parse(xampLayout, v)
	if err != nil || !strings.HasSuffix(v, " UTC") {
		t.Fatalf("X-Amp-Retry-After %q does not have the layout %q", v, xampLayout)
	}
	return at, resp.Header.Get("X-Amp-Retryable")
}

// within checks an X-Amp-Retry-After for a window of d opened by a 429
// that ampproxy saw between sent and received: the window ends at least d
// after sent, and the header, which rounds up to the second, at most a
// second after received + d.
func within(t *testing.T, what string, got, sent, received time.Time, d time.Duration) {
	t.Helper()
	if lo, hi := sent.Add(d), received.Add(d+time.Second); got.Before(lo) || got.After(hi) {
		t.Errorf("%s: %s, want within [%s, %s]", what, got.Format(time.RFC3339), lo.Format(time.RFC3339Nano), hi.Format(time.RFC3339Nano))
	}
}

// limited has the provider answer the next request to path 429 with
// headers, sends it for group (in throttle mode), and returns the window's
// X-Amp headers and when the request was sent and answered.
func (e *env) limited(path, group string, headers map[string]string) (until time.Time, retryable string, sent, received time.Time) {
	e.t.Helper()
	e.provider.SetRateLimit(path, 429, headers, 1)
	sent = time.Now()
	resp, _ := e.do(call{path: path, headers: throttled("key", group)})
	received = time.Now()
	if resp.StatusCode != 429 {
		e.t.Fatalf("status %d, want the provider's 429", resp.StatusCode)
	}
	until, retryable = retryAt(e.t, resp)
	return until, retryable, sent, received
}

// TestThrottle runs DESIGN §3 through the stack: a provider 429 opens a
// lockout window for its connection; throttle-mode requests on that
// connection are answered by ampproxy until the window ends, also after
// a restart; other requests and other connections are not affected.
func TestThrottle(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	e.setup()
	connA := e.keyConnection("t-a")
	e.keyConnection("t-b")
	e.keyConnection("t-c")

	// A 30 s window, long enough to outlive the restart below.
	until, retryable, sent, received := e.limited("/v1/limited", "t-a", map[string]string{"Retry-After": "30"})
	within(t, "X-Amp-Retry-After", until, sent, received, 30*time.Second)
	if retryable != "true" {
		t.Errorf("X-Amp-Retryable %q", retryable)
	}

	hits := e.provider.TotalHits()
	resp, body := e.do(call{path: "/v1/contacts", headers: throttled("key", "t-a")})
	checkProblem(t, resp, body, 429, "rate-limited")
	if got, _ := retryAt(t, resp); !got.Equal(until) {
		t.Errorf("short-circuit says %s, the 429 said %s", got, until)
	}
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 || n > 31 {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if e.provider.TotalHits() != hits {
		t.Error("a short-circuited request reached the provider")
	}

	// Without the header the request passes; another connection of the
	// same provider is not locked.
	e.forward(call{path: "/v1/contacts", headers: proxyHeaders("key", "t-a")})
	e.forward(call{path: "/v1/contacts", headers: throttled("key", "t-b")})

	// A later 429 without throttle mode extends the window.
	e.provider.SetRateLimit("/v1/limited", 429, map[string]string{"Retry-After": "40"}, 1)
	sent = time.Now()
	resp, _ = e.do(call{path: "/v1/limited", headers: proxyHeaders("key", "t-a")})
	received = time.Now()
	if resp.StatusCode != 429 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	until, _ = retryAt(t, resp)
	within(t, "extended X-Amp-Retry-After", until, sent, received, 40*time.Second)

	// The admin API, through its Go client, shows the window.
	view, err := e.admin.GetConnection(context.Background(), connA)
	if err != nil {
		t.Fatal(err)
	}
	if view.RateLimitedUntil == nil || view.Retryable == nil || !*view.Retryable || view.RateLimitedUntil.After(until) || until.Sub(*view.RateLimitedUntil) >= time.Second {
		t.Errorf("admin view until %v retryable %v, want %s (to the second) and true", view.RateLimitedUntil, view.Retryable, until)
	}

	// Counters live as long as the process: check these before the
	// restart.
	m := e.scrape()
	for _, want := range []string{
		`ampproxy_lockout_windows_opened_total{provider="sampleKey"} 1`,
		`ampproxy_lockout_windows_extended_total{provider="sampleKey"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(m, "lockout"))
		}
	}

	// A restart inside the window keeps it, to the second.
	e.restart()
	hits = e.provider.TotalHits()
	resp, body = e.do(call{path: "/v1/contacts", headers: throttled("key", "t-a")})
	checkProblem(t, resp, body, 429, "rate-limited")
	if got, _ := retryAt(t, resp); !got.Equal(until) {
		t.Errorf("after the restart the short-circuit says %s, the 429 said %s", got, until)
	}
	if e.provider.TotalHits() != hits {
		t.Error("after a restart, a locked connection reached the provider")
	}

	// After a window ends the request reaches the provider again: a 1 s
	// window on another connection keeps the wait short.
	untilC, _, sent, received := e.limited("/v1/limited-c", "t-c", map[string]string{"Retry-After": "1"})
	within(t, "short X-Amp-Retry-After", untilC, sent, received, time.Second)
	time.Sleep(time.Until(untilC) + 100*time.Millisecond)
	e.forward(call{path: "/v1/contacts", headers: throttled("key", "t-c")})

	metrics := e.scrape()
	for _, want := range []string{
		`ampproxy_throttle_short_circuited_total{provider="sampleKey"} 1`,
		`ampproxy_requests_total{integration="key",outcome="short-circuited",project="e2e-project",provider="sampleKey"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	e.checkLogs()
}

// TestThrottleHints: the window end comes from the longest hint — an
// HTTP-date Retry-After, the catalog's reset header in epoch seconds or
// milliseconds — or the default window; a reset header whose bucket still
// has room is ignored; a lockout marker makes the 429 not retryable.
func TestThrottleHints(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	e.setup()
	// Whole seconds, so that the epoch and date hints are exact.
	now := time.Now().Truncate(time.Second)
	epoch := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for i, tc := range []struct {
		name      string
		headers   map[string]string
		exact     time.Time     // the X-Amp-Retry-After a date or epoch hint gives
		delta     time.Duration // or the window a delta hint opens from the 429
		retryable string
	}{
		{"no hint: default window (60 s)", nil, time.Time{}, 60 * time.Second, "true"},
		{"HTTP-date Retry-After", map[string]string{"Retry-After": now.Add(90 * time.Second).UTC().Format(http.TimeFormat)}, now.Add(90 * time.Second), 0, "true"},
		{"epoch-seconds reset header", map[string]string{"X-Ratelimit-Reset": epoch(120 * time.Second)}, now.Add(120 * time.Second), 0, "true"},
		{"epoch-milliseconds reset header", map[string]string{"X-Ratelimit-Reset": strconv.FormatInt(now.Add(100*time.Second).UnixMilli()+250, 10)}, now.Add(101 * time.Second), 0, "true"},
		{"longest hint wins", map[string]string{"Retry-After": "30", "X-Ratelimit-Reset": epoch(150 * time.Second)}, now.Add(150 * time.Second), 0, "true"},
		{"reset of a bucket with room is ignored", map[string]string{"Retry-After": "20", "X-Ratelimit-Remaining": "10", "X-Ratelimit-Reset": epoch(150 * time.Second)}, time.Time{}, 20 * time.Second, "true"},
		{"lockout marker", map[string]string{"Retry-After": "20", "X-Token-Locked": "1"}, time.Time{}, 20 * time.Second, "false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			group := "h" + strconv.Itoa(i)
			e.keyConnection(group)
			at, retryable, sent, received := e.limited("/v1/hint"+strconv.Itoa(i), group, tc.headers)
			if tc.exact.IsZero() {
				within(t, "X-Amp-Retry-After", at, sent, received, tc.delta)
			} else if !at.Equal(tc.exact) {
				t.Errorf("X-Amp-Retry-After %s, want %s", at.Format(time.RFC3339), tc.exact.Format(time.RFC3339))
			}
			if retryable != tc.retryable {
				t.Errorf("X-Amp-Retryable %q, want %q", retryable, tc.retryable)
			}
			resp, body := e.do(call{path: "/v1/contacts", headers: throttled("key", group)})
			checkProblem(t, resp, body, 429, "rate-limited")
			if resp.Header.Get("X-Amp-Retryable") != tc.retryable {
				t.Errorf("short-circuit X-Amp-Retryable %q", resp.Header.Get("X-Amp-Retryable"))
			}
		})
	}
}

func (e *env) scrape() string {
	e.t.Helper()
	resp, err := http.Get("http://" + e.amp.admin + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
