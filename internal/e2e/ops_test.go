package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcstatus "google.golang.org/grpc/status"
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
	// Every family of the served registry, serve's own gauges included,
	// carries ampproxy's prefix or that of a client_golang collector: Go
	// runtime, process, and the /metrics handler's own error counter.
	families := 0
	for _, line := range strings.Split(out, "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			families++
			name, _, _ = strings.Cut(name, " ")
			if !strings.HasPrefix(name, "ampproxy_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") &&
				name != "promhttp_metric_handler_errors_total" {
				t.Errorf("metric family %s: want the prefix ampproxy_, go_ or process_", name)
			}
		}
	}
	if families == 0 {
		t.Error("/metrics has no # TYPE lines")
	}
	for _, never := range append([]string{"attacker-chosen-project", "acme", "/v1/contacts"}, secrets...) {
		if strings.Contains(out, never) {
			t.Errorf("/metrics holds %q", never)
		}
	}
}

// TestGracefulShutdown: SIGTERM while 50 requests are in flight loses
// none of them. The provider holds every request until the test lets it
// go, so all 50 ext_proc streams are open when SIGTERM arrives. While
// they drain, ampproxy is not ready: /readyz answers 503, a health Watch
// opened before turns NOT_SERVING, and a new health check gets
// NOT_SERVING or finds the listener closed. Then the requests are
// released, all 50 succeed, and ampproxy exits 0.
func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	e.setup()
	release := e.provider.Hold("/v1/slow")
	t.Cleanup(release)

	health := func() (healthpb.Health_WatchClient, context.CancelFunc) {
		conn, err := grpc.NewClient("unix://"+e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return w, cancel
	}
	watch, stopWatch := health()
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before SIGTERM: %v %v", r, err)
	}

	const n = 50
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for i := 0; i < n; i++ {
		// Staggered, so that a burst of 50 streams on two busy cores under
		// the race detector does not trip the data plane's message timeout
		// before the requests are in flight.
		time.Sleep(10 * time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", e.plane.URL()+"/v1/slow", nil)
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
	// Every request reached the provider and waits there: its ext_proc
	// stream is open, waiting for the response phase.
	deadline := time.Now().Add(30 * time.Second)
	for e.provider.Hits("/v1/slow") < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := e.provider.Hits("/v1/slow"); got != n {
		t.Fatalf("%d requests in flight, want %d (%d already answered)", got, n, len(statuses))
	}
	if len(statuses) != 0 {
		t.Fatalf("%d requests finished before SIGTERM", len(statuses))
	}
	e.amp.cmd.Process.Signal(syscall.SIGTERM)

	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health Watch after SIGTERM: %v %v, want NOT_SERVING", r, err)
	}
	resp, err := http.Get("http://" + e.amp.admin + "/readyz")
	if err != nil {
		t.Fatalf("/readyz while draining: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: %d, want 503", resp.StatusCode)
	}
	if st, err := checkHealth(e.sock); err == nil && st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("new health check while draining: %v, want NOT_SERVING or a closed listener", st)
	} else if err != nil && grpcstatus.Code(err) != codes.Unavailable {
		t.Errorf("new health check while draining: %v, want NOT_SERVING or Unavailable", err)
	}
	select {
	case <-e.amp.done:
		t.Fatal("ampproxy exited with streams open")
	default:
	}
	if len(statuses) != 0 {
		t.Fatalf("%d requests ended while held", len(statuses))
	}
	// The Watch is a stream too: end it, or the drain waits for it.
	stopWatch()
	release()
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
	if !strings.Contains(e.amp.logs.String(), `"msg":"ampproxy draining","timeout":"20s"`) {
		t.Error("no drain log line with the default shutdown.drainTimeout")
	}
}

// checkHealth asks the gRPC health service on a new connection, as a
// Kubernetes gRPC probe does.
func checkHealth(sock string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return r.GetStatus(), err
}

// TestRequestLog decodes the JSON log line of one proxied request, as the
// binary's own logger writes it: every field is there with the expected
// value, and no header value the caller sent appears anywhere in the log.
func TestRequestLog(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	f := e.setup()
	const (
		requestID = "e2e-request-log-1"
		auth      = "Bearer caller_AUTHORIZATION_must_not_log"
		cookie    = "session=caller_COOKIE_must_not_log"
	)
	h := proxyHeaders("key", "acme")
	h["x-request-id"] = requestID
	h["authorization"] = auth
	h["cookie"] = cookie
	e.forward(call{path: "/v1/contacts?limit=1", headers: h})

	line := e.waitLog(`"requestId":"`+requestID+`"`, 1)
	var got struct {
		Msg          string
		RequestID    string
		Project      string
		Integration  string
		Provider     string
		Installation string
		Upstream     string
		Status       int
		Outcome      string
		Latency      *int64
	}
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("log line %s: %v", line, err)
	}
	want := []struct{ field, got, want string }{
		{"msg", got.Msg, "request"},
		{"requestId", got.RequestID, requestID},
		{"project", got.Project, projectID},
		{"integration", got.Integration, "key"},
		{"provider", got.Provider, "sampleKey"},
		{"installation", got.Installation, f.keyInst.ID},
		{"upstream", got.Upstream, "api.sample.test"},
		{"outcome", got.Outcome, "forwarded"},
	}
	for _, w := range want {
		if w.got != w.want {
			t.Errorf("log field %s = %q, want %q", w.field, w.got, w.want)
		}
	}
	if got.Status != 200 {
		t.Errorf("log field status = %d, want 200", got.Status)
	}
	if got.Latency == nil || *got.Latency <= 0 {
		t.Errorf("log field latency = %v, want a positive duration", got.Latency)
	}
	if t.Failed() {
		t.Log(line)
	}
	logs := e.amp.logs.String()
	for _, v := range append([]string{auth, "caller_AUTHORIZATION_must_not_log", cookie, "caller_COOKIE_must_not_log"}, secrets...) {
		if strings.Contains(logs, v) {
			t.Errorf("the log holds %q", mask(v))
		}
	}
}
