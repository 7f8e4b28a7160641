package loadgen

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const sampleMetrics = `# HELP go_gc_duration_seconds A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.1e-05
go_gc_duration_seconds_sum 0.0125
go_gc_duration_seconds_count 42
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 1.234567e+07
# TYPE go_memstats_mallocs_total counter
go_memstats_mallocs_total 98765
ampproxy_requests_total{project="p",integration="i",provider="x",outcome="forwarded"} 10
process_cpu_seconds_total 3.5
process_resident_memory_bytes 5.24288e+07
`

func TestMetricsStats(t *testing.T) {
	body := sampleMetrics
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)

	got, err := MetricsStats(srv.URL + "/metrics")()
	if err != nil {
		t.Fatal(err)
	}
	want := ServerCounters{Allocs: 98765, AllocBytes: 12345670, CPU: 3500 * time.Millisecond, RSS: 52428800, GCCycles: 42}
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}

	body = strings.ReplaceAll(sampleMetrics, "go_memstats_mallocs_total", "other_total")
	if _, err := MetricsStats(srv.URL + "/metrics")(); err == nil || !strings.Contains(err.Error(), "go_memstats_mallocs_total") {
		t.Errorf("endpoint without the allocation counter: err = %v", err)
	}
	if _, err := MetricsStats(srv.URL + "/nothing")(); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("a 404: err = %v", err)
	}
}
