package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/ampproxy/ampproxy/internal/loadgen"
)

// TestLoadReadsServerMetrics checks that load --metrics reports the
// server's cost per request from two scrapes of its Prometheus endpoint.
func TestLoadReadsServerMetrics(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	loadgen.NoopServer{}.Register(g)
	go g.Serve(l)
	t.Cleanup(g.Stop)

	// Each scrape reports 2,000 more allocations and 10 ms more CPU: over
	// 20 requests, 100 allocations and 500 µs per request.
	var scrapes atomic.Int64
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := scrapes.Add(1)
		fmt.Fprintf(w, "go_memstats_mallocs_total %d\nprocess_cpu_seconds_total %g\n", 5000+2000*n, 0.01*float64(n))
	}))
	t.Cleanup(metrics.Close)

	var out, errb strings.Builder
	code := Main(context.Background(), []string{"load", "--target", l.Addr().String(), "--requests", "20", "--duration", "0", "--warmup", "0",
		"--metrics", metrics.URL + "/metrics"}, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "server     100.0 allocs/req") || !strings.Contains(out.String(), "500µs CPU/req") {
		t.Errorf("output lacks the server's cost per request:\n%s", out.String())
	}
	if scrapes.Load() != 2 {
		t.Errorf("%d scrapes, want 2 (before and after the run)", scrapes.Load())
	}

	errb.Reset()
	if code := Main(context.Background(), []string{"load", "--target", l.Addr().String(), "--metrics", "localhost:8081/metrics"}, strings.NewReader(""), &out, &errb); code != 2 || !strings.Contains(errb.String(), "--metrics") {
		t.Errorf("a URL without scheme: exit %d, %s", code, errb.String())
	}
}
