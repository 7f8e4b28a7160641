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
