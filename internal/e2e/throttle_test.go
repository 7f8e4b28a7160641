package e2e

import (
	"context"
	"encoding/json"
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

func about(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("%s: %s, want about %s", what, got.Format(time.RFC3339), want.Format(time.RFC3339))
	}
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

	// The provider answers the next request to /v1/limited 429 with
	// Retry-After: 3.
	e.provider.SetRateLimit("/v1/limited", 429, map[string]string{"Retry-After": "3"}, 1)
	resp, _ := e.do(call{path: "/v1/limited", headers: throttled("key", "t-a")})
	if resp.StatusCode != 429 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	until, retryable := retryAt(t, resp)
	about(t, "X-Amp-Retry-After", until, time.Now().Add(3*time.Second))
	if retryable != "true" {
		t.Errorf("X-Amp-Retryable %q", retryable)
	}

	hits := e.provider.TotalHits()
	resp, body := e.do(call{path: "/v1/contacts", headers: throttled("key", "t-a")})
	checkProblem(t, resp, body, 429, "rate-limited")
	if got, _ := retryAt(t, resp); !got.Equal(until) {
		t.Errorf("short-circuit says %s, the 429 said %s", got, until)
	}
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 || n > 4 {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if e.provider.TotalHits() != hits {
		t.Error("a short-circuited request reached the provider")
	}

	// Without the header the request passes; another connection of the
	// same provider is not locked.
	e.forward(call{path: "/v1/contacts", headers: proxyHeaders("key", "t-a")})
	e.forward(call{path: "/v1/contacts", headers: throttled("key", "t-b")})

	// The admin API shows the window.
	var view struct {
		RateLimitedUntil *time.Time `json:"rateLimitedUntil"`
		Retryable        *bool      `json:"retryable"`
	}
	req, _ := http.NewRequest("GET", "http://"+e.amp.admin+"/v1/projects/"+projectID+"/connections/"+connA, nil)
	req.Header.Set("x-api-key", projectKey)
	ar, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(ar.Body).Decode(&view)
	ar.Body.Close()
	if view.RateLimitedUntil == nil || view.Retryable == nil || !*view.Retryable {
		t.Errorf("admin view %+v", view)
	} else {
		about(t, "rateLimitedUntil", *view.RateLimitedUntil, until)
	}

	// Counters live as long as the process: check this one before the
	// restart.
	if m := e.scrape(); !strings.Contains(m, `ampproxy_lockout_windows_opened_total{provider="sampleKey"} 1`) {
		t.Errorf("/metrics lacks the opened window:\n%s", grepLines(m, "lockout"))
	}

	// A restart inside the window keeps it.
	e.restart()
	hits = e.provider.TotalHits()
	resp, body = e.do(call{path: "/v1/contacts", headers: throttled("key", "t-a")})
	checkProblem(t, resp, body, 429, "rate-limited")
	if e.provider.TotalHits() != hits {
		t.Error("after a restart, a locked connection reached the provider")
	}

	// After the window the request reaches the provider again.
	time.Sleep(time.Until(until) + 100*time.Millisecond)
	e.forward(call{path: "/v1/contacts", headers: throttled("key", "t-a")})

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
// HTTP-date Retry-After, the catalog's epoch reset header — or the
// default window; a lockout marker makes the 429 not retryable.
func TestThrottleHints(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	e.setup()
	now := time.Now()
	for i, tc := range []struct {
		name      string
		headers   map[string]string
		want      time.Time
		retryable string
	}{
		{"no hint: default window (60 s)", nil, now.Add(60 * time.Second), "true"},
		{"HTTP-date Retry-After", map[string]string{"Retry-After": now.Add(90 * time.Second).UTC().Format(http.TimeFormat)}, now.Add(90 * time.Second), "true"},
		{"epoch-seconds reset header", map[string]string{"X-Ratelimit-Reset": strconv.FormatInt(now.Add(120*time.Second).Unix(), 10)}, now.Add(120 * time.Second), "true"},
		{"longest hint wins", map[string]string{"Retry-After": "30", "X-Ratelimit-Reset": strconv.FormatInt(now.Add(150*time.Second).Unix(), 10)}, now.Add(150 * time.Second), "true"},
		{"lockout marker", map[string]string{"Retry-After": "20", "X-Token-Locked": "1"}, now.Add(20 * time.Second), "false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			group := "h" + strconv.Itoa(i)
			e.keyConnection(group)
			path := "/v1/hint" + strconv.Itoa(i)
			e.provider.SetRateLimit(path, 429, tc.headers, 1)
			resp, _ := e.do(call{path: path, headers: proxyHeaders("key", group)})
			if resp.StatusCode != 429 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			at, retryable := retryAt(t, resp)
			about(t, "X-Amp-Retry-After", at, tc.want)
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
