package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/throttle"
)

// fakeLockouts is a Lockouts with fixed windows per connection. It records
// the clock and arguments it is called with.
type fakeLockouts struct {
	mu       sync.Mutex
	open     map[string]throttle.Window // windows Check reports, by connection
	checks   []time.Time
	observed []observation
	next     throttle.Window // what Observe429 answers
	err      error
	// hang, when set, makes Observe429 wait for its context, as a commit
	// to a hung disk does, and then close hang.
	hang chan struct{}
}

type observation struct {
	conn, provider string
	retryAfter     string // the provider's Retry-After, read through the Headers given
	rl             catalog.RateLimit
	now            time.Time
}

var _ Lockouts = (*fakeLockouts)(nil)

func (f *fakeLockouts) Check(connID string, now time.Time) (throttle.Window, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, now)
	w, ok := f.open[connID]
	return w, ok && now.Before(w.Until)
}

func (f *fakeLockouts) Observe429(ctx context.Context, connID, provider string, h throttle.Headers, rl catalog.RateLimit, now time.Time) (throttle.Window, error) {
	if f.hang != nil {
		<-ctx.Done()
		close(f.hang)
		return throttle.Window{}, throttle.ErrCommitPending
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ra, _ := h.Get("retry-after")
	f.observed = append(f.observed, observation{conn: connID, provider: provider, retryAfter: ra, rl: rl, now: now})
	w := f.next
	w.ConnectionID, w.Provider = connID, provider
	return w, f.err
}

// immediateHeaders returns the headers of an immediate response, checking
// that each travels in raw_value only (DESIGN §6).
func immediateHeaders(t *testing.T, r *extprocv3.ProcessingResponse) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range r.GetImmediateResponse().GetHeaders().GetSetHeaders() {
		if o.GetHeader().GetValue() != "" || o.Append != nil {
			t.Errorf("header %s: value or append set", o.GetHeader().GetKey())
		}
		out[o.GetHeader().GetKey()] = string(o.GetHeader().GetRawValue())
	}
	return out
}

// TestThrottleShortCircuit: a throttle-mode request whose connection has an
// open window is answered 429 by ampproxy and never reaches the provider;
// without the header, or for another connection, it is forwarded (DESIGN §3).
func TestThrottleShortCircuit(t *testing.T) {
	throttleMode := []string{"x-amp-rate-limiter-mode", "throttle"}
	cases := []struct {
		name      string
		hdrs      []string
		window    throttle.Window // the window of c-key
		forwarded bool
		// For a short-circuit: the three headers and a word of the detail.
		retryAfter, ampRetryAfter, retryable, detail string
	}{
		{name: "open window, retryable", hdrs: proxyHeaders("key-int", "g1", throttleMode...),
			window:     throttle.Window{Until: now.Add(90*time.Second + 500*time.Millisecond), Retryable: true},
			retryAfter: "91", ampRetryAfter: "Wed, 25 Nov 2026 12:01:31 UTC", retryable: "true", detail: "retry after"},
		{name: "open window, locked out", hdrs: proxyHeaders("key-int", "g1", throttleMode...),
			window:     throttle.Window{Until: now.Add(time.Hour), Retryable: false},
			retryAfter: "3600", ampRetryAfter: "Wed, 25 Nov 2026 13:00:00 UTC", retryable: "false", detail: "will not help"},
		{name: "window under a second still says 1", hdrs: proxyHeaders("key-int", "g1", throttleMode...),
			window:     throttle.Window{Until: now.Add(time.Millisecond), Retryable: true},
			retryAfter: "1", ampRetryAfter: "Wed, 25 Nov 2026 12:00:01 UTC", retryable: "true", detail: "retry after"},
		{name: "open window without the header", hdrs: proxyHeaders("key-int", "g1"),
			window: throttle.Window{Until: now.Add(time.Hour), Retryable: true}, forwarded: true},
		{name: "window closed at the harness clock", hdrs: proxyHeaders("key-int", "g1", throttleMode...),
			window: throttle.Window{Until: now, Retryable: true}, forwarded: true},
		{name: "another connection's window", hdrs: proxyHeaders("basic-int", "g1", throttleMode...),
			window: throttle.Window{Until: now.Add(time.Hour), Retryable: true}, forwarded: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.window.ConnectionID, c.window.Provider = "c-key", "testKey"
			fl := &fakeLockouts{open: map[string]throttle.Window{"c-key": c.window}}
			h := newHarnessWith(t, Options{Store: newFixture(), Lockouts: fl})
			first, second := h.exchange(envoyHeaders("/x", c.hdrs...), "200")
			for _, at := range fl.checks {
				if !at.Equal(now) {
					t.Errorf("Check was given %s, not the server's clock %s", at, now)
				}
			}
			if c.forwarded {
				if first.GetRequestHeaders() == nil || second.GetResponseHeaders() == nil {
					t.Fatalf("not forwarded: %s", prototext.Format(first))
				}
				return
			}
			if second != nil {
				t.Fatal("a short-circuited request reached the response phase")
			}
			if len(fl.checks) != 1 {
				t.Errorf("Check called %d times, want 1", len(fl.checks))
			}
			p := problemOf(t, first)
			if p.Status != 429 || p.Type != ProblemTypePrefix+"rate-limited" || p.RequestID != requestID {
				t.Errorf("problem %+v", p)
			}
			if !strings.Contains(p.Detail, c.detail) || !strings.Contains(p.Detail, c.ampRetryAfter) {
				t.Errorf("detail %q lacks %q and the retry time", p.Detail, c.detail)
			}
			hs := immediateHeaders(t, first)
			want := map[string]string{"retry-after": c.retryAfter, "x-amp-retry-after": c.ampRetryAfter, "x-amp-retryable": c.retryable}
			for k, v := range want {
				if hs[k] != v {
					t.Errorf("%s = %q, want %q", k, hs[k], v)
				}
			}
			if at, err := time.Parse(throttle.RetryAfterLayout, hs["x-amp-retry-after"]); err != nil || at.Before(c.window.Until) {
				t.Errorf("x-amp-retry-after %q: %v, or before the window's end %s", hs["x-amp-retry-after"], err, c.window.Until)
			}
			body := string(first.GetImmediateResponse().Body)
			for _, s := range secrets {
				if strings.Contains(body, s) {
					t.Errorf("problem body echoes secret %q", s)
				}
			}
		})
	}
}

// TestThrottleObserve429: a provider 429 is handed to Observe429 with the
// connection, the provider, its headers, the catalog's rate-limit headers
// and the server's clock, and the caller gets X-Amp-Retry-After and
// X-Amp-Retryable on the provider's response (DESIGN §3).
func TestThrottleObserve429(t *testing.T) {
	cases := []struct {
		name           string
		integration    string
		status         string
		next           throttle.Window
		err            error
		conn, provider string // want Observe429 called with these; "" for not at all
		resetHeader    string // the catalog reset header it must be given
		ampRetryAfter  string
		retryable      string
		logLevel       string // of the line about err; "" for none
	}{
		{"429 retryable", "key-int", "429", throttle.Window{Until: now.Add(45 * time.Second), Retryable: true}, nil,
			"c-key", "testKey", "x-ratelimit-reset", "Wed, 25 Nov 2026 12:00:45 UTC", "true", ""},
		{"429 locked out", "oauth-int", "429", throttle.Window{Until: now.Add(time.Hour), Retryable: false}, nil,
			"c-oauth", "testOAuth", "", "Wed, 25 Nov 2026 13:00:00 UTC", "false", ""},
		// A stream that ended while its commit was pending is expected: a
		// warning, not an error, which the log would write out at once.
		{"window not yet on disk still answers", "basic-int", "429", throttle.Window{Until: now.Add(45*time.Second + time.Millisecond), Retryable: true},
			fmt.Errorf("%w: %w", throttle.ErrCommitPending, context.Canceled), "c-basic", "testBasic", "", "Wed, 25 Nov 2026 12:00:46 UTC", "true", "WARN"},
		{"window not saved still answers", "basic-int", "429", throttle.Window{Until: now.Add(45 * time.Second), Retryable: true},
			errors.New("bolt: database not open"), "c-basic", "testBasic", "", "Wed, 25 Nov 2026 12:00:45 UTC", "true", "ERROR"},
		{"200 is not observed", "key-int", "200", throttle.Window{}, nil, "", "", "", "", "", ""},
		{"503 is not observed", "key-int", "503", throttle.Window{}, nil, "", "", "", "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fl := &fakeLockouts{next: c.next, err: c.err}
			h := newHarnessWith(t, Options{Store: newFixture(), Lockouts: fl})
			resp := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: ":status", RawValue: []byte(c.status)},
				{Key: "retry-after", RawValue: []byte("45")},
				{Key: "x-ratelimit-reset", RawValue: []byte("1795608045")},
			}}
			first, second := h.exchangeResp(envoyHeaders("/x", proxyHeaders(c.integration, "g1")...), resp)
			if first.GetRequestHeaders() == nil {
				t.Fatalf("not forwarded: %s", prototext.Format(first))
			}
			rh := second.GetResponseHeaders()
			if rh == nil {
				t.Fatalf("response phase answered %s", prototext.Format(second))
			}
			set := map[string]string{}
			for _, o := range rh.GetResponse().GetHeaderMutation().GetSetHeaders() {
				// DESIGN §6: raw_value only, append unset.
				if o.GetHeader().GetValue() != "" || o.Append != nil || o.AppendAction != 0 {
					t.Errorf("header %s: value, append or append_action set", o.GetHeader().GetKey())
				}
				set[o.GetHeader().GetKey()] = string(o.GetHeader().GetRawValue())
			}
			if rm := rh.GetResponse().GetHeaderMutation().GetRemoveHeaders(); len(rm) != 0 {
				t.Errorf("response headers removed: %v", rm)
			}
			if c.conn == "" {
				if len(fl.observed) != 0 || len(set) != 0 {
					t.Errorf("a %s was observed (%v) or changed (%v)", c.status, fl.observed, set)
				}
				return
			}
			if len(fl.observed) != 1 {
				t.Fatalf("Observe429 called %d times, want 1", len(fl.observed))
			}
			o := fl.observed[0]
			if o.conn != c.conn || o.provider != c.provider || !o.now.Equal(now) || o.retryAfter != "45" {
				t.Errorf("Observe429(%q, %q, retry-after %q, now %s), want (%q, %q, 45, %s)", o.conn, o.provider, o.retryAfter, o.now, c.conn, c.provider, now)
			}
			gotReset := ""
			if len(o.rl.ResetHeaders) > 0 {
				gotReset = o.rl.ResetHeaders[0].Name
			}
			if gotReset != c.resetHeader {
				t.Errorf("Observe429 got reset headers %+v, want %q", o.rl.ResetHeaders, c.resetHeader)
			}
			want := map[string]string{"x-amp-retry-after": c.ampRetryAfter, "x-amp-retryable": c.retryable}
			if len(set) != len(want) {
				t.Errorf("response mutation sets %v, want only %v", set, want)
			}
			for k, v := range want {
				if set[k] != v {
					t.Errorf("%s = %q, want %q", k, set[k], v)
				}
			}
			// observe429 logs before it answers.
			var levels []string
			for line := range strings.SplitSeq(h.logs.String(), "\n") {
				if strings.Contains(line, "lockout window") {
					var rec struct{ Level string }
					if err := json.Unmarshal([]byte(line), &rec); err != nil {
						t.Fatalf("log line %q: %v", line, err)
					}
					levels = append(levels, rec.Level)
				}
			}
			if c.logLevel == "" && len(levels) != 0 || c.logLevel != "" && (len(levels) != 1 || levels[0] != c.logLevel) {
				t.Errorf("lockout log lines at levels %v, want %q", levels, c.logLevel)
			}
		})
	}
}

// TestThrottleObserve429StreamEnds: Observe429 waits with the stream's
// context, so a 429 whose commit hangs (a stuck disk) frees its goroutine
// once Envoy gives up on the stream, instead of waiting for ever.
func TestThrottleObserve429StreamEnds(t *testing.T) {
	fl := &fakeLockouts{hang: make(chan struct{})}
	h := newHarnessWith(t, Options{Store: newFixture(), Lockouts: fl})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := h.cli.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(r *extprocv3.ProcessingRequest) {
		t.Helper()
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: envoyHeaders("/x", proxyHeaders("key-int", "g1")...), EndOfStream: true}}})
	if r, err := st.Recv(); err != nil || r.GetRequestHeaders() == nil {
		t.Fatalf("request phase: %v %v", r, err)
	}
	send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte("429")}}}}}})
	// Envoy's message timeout: it resets the stream without an answer.
	cancel()
	select {
	case <-fl.hang:
	case <-time.After(10 * time.Second):
		t.Fatal("Observe429 still waits after the stream ended")
	}
	if _, err := st.Recv(); err == nil || !errors.Is(ctx.Err(), context.Canceled) {
		t.Errorf("stream after cancel: %v", err)
	}
}
