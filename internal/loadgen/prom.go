package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MetricsStats is a ServerStats that reads a server's Prometheus endpoint
// (ampproxy's GET /metrics on the admin listener) for the counters of
// client_golang's Go and process collectors: go_memstats_mallocs_total,
// go_memstats_alloc_bytes_total, process_cpu_seconds_total,
// process_resident_memory_bytes and go_gc_duration_seconds_count. It lets
// a generator in another process than the server report the server's cost
// per request.
//
// The figures differ a little from ProcessCounters': mallocs_total counts
// tiny allocations too (runtime.MemStats.Mallocs), the CPU time has the
// resolution of process_cpu_seconds_total, and each reading is a scrape
// that the server allocates for, twice per run. VmHWM and RssFile are not
// exported and stay zero.
func MetricsStats(url string) ServerStats {
	client := &http.Client{Timeout: 10 * time.Second}
	return func() (ServerCounters, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return ServerCounters{}, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return ServerCounters{}, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return ServerCounters{}, fmt.Errorf("%s: %s", url, resp.Status)
		}
		want := map[string]float64{
			"go_memstats_mallocs_total":     -1,
			"go_memstats_alloc_bytes_total": -1,
			"process_cpu_seconds_total":     -1,
			"process_resident_memory_bytes": -1,
			"go_gc_duration_seconds_count":  -1,
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			// name value [timestamp]; labelled series are not wanted.
			f := strings.Fields(sc.Text())
			if len(f) < 2 || strings.HasPrefix(f[0], "#") {
				continue
			}
			if _, ok := want[f[0]]; !ok {
				continue
			}
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return ServerCounters{}, fmt.Errorf("%s: %s has the value %q", url, f[0], f[1])
			}
			want[f[0]] = v
		}
		if err := sc.Err(); err != nil {
			return ServerCounters{}, fmt.Errorf("%s: %w", url, err)
		}
		for _, name := range []string{"go_memstats_mallocs_total", "process_cpu_seconds_total"} {
			if want[name] < 0 {
				return ServerCounters{}, fmt.Errorf("%s does not export %s", url, name)
			}
		}
		c := ServerCounters{
			Allocs: uint64(want["go_memstats_mallocs_total"]),
			CPU:    time.Duration(want["process_cpu_seconds_total"] * float64(time.Second)),
		}
		if v := want["go_memstats_alloc_bytes_total"]; v >= 0 {
			c.AllocBytes = uint64(v)
		}
		if v := want["process_resident_memory_bytes"]; v >= 0 {
			c.RSS = uint64(v)
		}
		if v := want["go_gc_duration_seconds_count"]; v >= 0 {
			c.GCCycles = uint64(v)
		}
		return c, nil
	}
}
