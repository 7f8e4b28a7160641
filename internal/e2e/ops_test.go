package e2e

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMetrics: after proxied requests, /metrics on the admin listener
// shows the request, phase-latency and provider-status series with their
// labels, and nothing unbounded or secret.
func TestMetrics(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	e.setup()
	e.forward(call{path: "/v1/contacts", headers: proxyHeaders("key", "acme")})
	e.forward(call{path: "/v1/contacts", headers: proxyHeaders("oauth", "acme")})
	bad := proxyHeaders("key", "acme")
	bad["x-api-key"] = "amp_wrong"
	bad["x-amp-project-id"] = "attacker-chosen-project"
	e.do(call{path: "/v1/contacts", headers: bad})

	resp, err := http.Get("http://" + e.amp.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := string(body)
	for _, want := range []string{
		`ampproxy_requests_total{integration="key",outcome="forwarded",project="e2e-project",provider="sampleKey"} 1`,
		`ampproxy_requests_total{integration="oauth",outcome="forwarded",project="e2e-project",provider="sampleOAuth"} 1`,
		`ampproxy_requests_total{integration="",outcome="unauthenticated",project="",provider=""} 1`,
		`ampproxy_extproc_phase_duration_seconds_count{phase="request_headers"} 3`,
		`ampproxy_extproc_phase_duration_seconds_count{phase="response_headers"}`,
		`ampproxy_provider_responses_total{code="200",provider="sampleKey"} 1`,
		`ampproxy_store_connections `,
		`ampproxy_build_info{`,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, never := range append([]string{"attacker-chosen-project", "acme", "/v1/contacts"}, secrets...) {
		if strings.Contains(out, never) {
			t.Errorf("/metrics holds %q", never)
		}
	}
}

// TestGracefulShutdown: SIGTERM while 50 requests are in flight loses
// none of them; ampproxy turns not-ready, lets the streams finish, then
// exits.
func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	e.setup()
	const n = 50
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for i := 0; i < n; i++ {
		// Staggered, so that a burst of 50 streams on two cores under the
		// race detector does not trip the data plane's 200 ms message
		// timeout before the requests are in flight.
		time.Sleep(10 * time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", e.plane.URL()+"/v1/slow?delay_ms=3000", nil)
			for k, v := range proxyHeaders("key", "acme") {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				statuses <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	// Wait until every request reached the provider: their ext_proc
	// streams are open, waiting for the response phase.
	deadline := time.Now().Add(20 * time.Second)
	for e.provider.Hits("/v1/slow") < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := e.provider.Hits("/v1/slow"); got < n {
		t.Fatalf("only %d requests in flight", got)
	}
	e.amp.cmd.Process.Signal(syscall.SIGTERM)
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != 200 {
			t.Errorf("an in-flight request ended with %d", s)
		}
	}
	select {
	case <-e.amp.done:
	case <-time.After(30 * time.Second):
		t.Fatal("ampproxy did not exit after draining")
	}
	if code := e.amp.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d", code)
	}
	if !strings.Contains(e.amp.logs.String(), "ampproxy draining") {
		t.Error("no drain log line")
	}
}
