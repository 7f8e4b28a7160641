package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestExposition(t *testing.T) {
	m := New("v1.2.3")
	m.Request("p1", "crm", "hubspot", "forwarded")
	m.Request("p1", "crm", "hubspot", "forwarded")
	m.Request("", "", "", "unauthenticated")
	m.Phase(RequestHeaders, 20*time.Microsecond)
	m.ProviderResponse("hubspot", 429)
	m.Refresh("hubspot", "ok", 30*time.Millisecond)
	m.LockoutOpened("hubspot")
	m.LockoutExtended("hubspot")
	m.LockoutExtended("hubspot")
	m.LockoutPersistFailed()
	m.ShortCircuited("hubspot")
	m.GaugeFunc("ampproxy_lockout_windows_open", "Open lockout windows.", func() float64 { return 3 })
	m.CounterFunc("ampproxy_log_dropped_bytes_total", "Log bytes refused.", func() float64 { return 42 })

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	out := string(body)
	for _, want := range []string{
		`ampproxy_requests_total{integration="crm",outcome="forwarded",project="p1",provider="hubspot"} 2`,
		`ampproxy_requests_total{integration="",outcome="unauthenticated",project="",provider=""} 1`,
		`ampproxy_extproc_phase_duration_seconds_count{phase="request_headers"} 1`,
		`ampproxy_provider_responses_total{code="429",provider="hubspot"} 1`,
		`ampproxy_token_refreshes_total{provider="hubspot",result="ok"} 1`,
		`ampproxy_token_refresh_duration_seconds_count{provider="hubspot"} 1`,
		`ampproxy_lockout_windows_opened_total{provider="hubspot"} 1`,
		`ampproxy_lockout_windows_extended_total{provider="hubspot"} 2`,
		`ampproxy_lockout_persist_failures_total 1`,
		`ampproxy_throttle_short_circuited_total{provider="hubspot"} 1`,
		`ampproxy_lockout_windows_open 3`,
		"# TYPE ampproxy_log_dropped_bytes_total counter\nampproxy_log_dropped_bytes_total 42\n",
		`ampproxy_build_info{goversion="go`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
}

func TestNilRecordsNothing(t *testing.T) {
	var m *Metrics
	m.Request("a", "b", "c", "d")
	m.Phase(ResponseHeaders, time.Millisecond)
	m.ProviderResponse("x", 200)
	m.Refresh("x", "ok", 0)
	m.LockoutOpened("x")
	m.LockoutExtended("x")
	m.LockoutPersistFailed()
	m.ShortCircuited("x")
	m.GaugeFunc("x", "y", func() float64 { return 0 })
	m.CounterFunc("x", "y", func() float64 { return 0 })
}

func BenchmarkRequest(b *testing.B) {
	m := New("dev")
	b.ReportAllocs()
	for b.Loop() {
		m.Request("p1", "crm", "hubspot", "forwarded")
		m.Phase(RequestHeaders, time.Microsecond)
		m.ProviderResponse("hubspot", 200)
	}
}

// TestFamilyNames: after every recording method ran once, each family
// the registry gathers is ampproxy's own or a client_golang collector's
// (Go runtime, process, and the handler's error counter), so nothing
// collides with another exporter's names.
func TestFamilyNames(t *testing.T) {
	m := New("dev")
	m.Handler()
	m.Request("p1", "crm", "hubspot", "forwarded")
	m.Phase(RequestHeaders, time.Microsecond)
	m.Phase(ResponseHeaders, time.Microsecond)
	m.ProviderResponse("hubspot", 200)
	m.Refresh("hubspot", "ok", time.Millisecond)
	m.LockoutOpened("hubspot")
	m.ShortCircuited("hubspot")
	m.GaugeFunc("ampproxy_lockout_windows_open", "Open lockout windows.", func() float64 { return 0 })
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range fams {
		name := f.GetName()
		seen[name] = true
		if !strings.HasPrefix(name, "ampproxy_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") &&
			name != "promhttp_metric_handler_errors_total" {
			t.Errorf("metric family %s: want the prefix ampproxy_, go_ or process_", name)
		}
	}
	// The check above saw the families it is about.
	for _, want := range []string{"ampproxy_requests_total", "ampproxy_extproc_phase_duration_seconds",
		"ampproxy_provider_responses_total", "ampproxy_lockout_windows_opened_total",
		"ampproxy_throttle_short_circuited_total", "ampproxy_build_info", "ampproxy_lockout_windows_open",
		"go_goroutines", "process_resident_memory_bytes"} {
		if !seen[want] {
			t.Errorf("no family %s gathered", want)
		}
	}
}

// TestPhaseBuckets: the phase histogram resolves latencies up to Envoy's
// default 200 ms message_timeout and beyond, with few buckets, since
// every bucket is a series per phase.
func TestPhaseBuckets(t *testing.T) {
	m := New("dev")
	m.Phase(RequestHeaders, 150*time.Millisecond)
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "ampproxy_extproc_phase_duration_seconds" {
			continue
		}
		for _, mt := range f.GetMetric() {
			b := mt.GetHistogram().GetBucket()
			if len(b) == 0 || len(b) > 12 {
				t.Fatalf("%d buckets, want 1 to 12", len(b))
			}
			if top := b[len(b)-1].GetUpperBound(); top < 0.25 {
				t.Errorf("largest bucket %g s, want at least 0.25 s (message_timeout is 0.2 s)", top)
			}
			if b[0].GetUpperBound() > 10e-6 {
				t.Errorf("smallest bucket %g s, want at most 10 µs", b[0].GetUpperBound())
			}
		}
		return
	}
	t.Fatal("no ampproxy_extproc_phase_duration_seconds family")
}
