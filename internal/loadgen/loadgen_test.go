package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
)

// serve runs srv on a loopback listener (tcp or unix) until the test ends
// and returns its address.
func serve(t *testing.T, network string, register func(*grpc.Server)) string {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = "unix://" + filepath.Join(t.TempDir(), "ep.sock")
	}
	l, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	done := make(chan struct{})
	go func() { g.Serve(l); close(done) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return Addr(l)
}

func baseOptions(target string) Options {
	return Options{
		Target:        target,
		ProjectID:     "proj",
		APIKey:        "caller-key",
		Installations: []Installation{{Integration: "crm", GroupRef: "g1"}},
	}
}

func checkSane(t *testing.T, r *Result) {
	t.Helper()
	l := r.Latency
	if l.Min <= 0 || l.Min > l.P50 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max {
		t.Errorf("latency out of order: %+v", l)
	}
	if l.Mean < l.Min || l.Mean > l.Max {
		t.Errorf("mean %v outside [%v, %v]", l.Mean, l.Min, l.Max)
	}
	if r.RPS <= 0 || r.Elapsed <= 0 {
		t.Errorf("rps %v over %v", r.RPS, r.Elapsed)
	}
}

func TestRunAgainstNoop(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := serve(t, network, NoopServer{}.Register)
			o := baseOptions(addr)
			o.Requests, o.Workers, o.Conns = 300, 4, 2
			o.Warmup = 20 * time.Millisecond
			// In one process the counters include the generator; enough
			// to see that they are read and divided.
			o.ServerStats = ProcessCounters
			r, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if r.Requests != 300 || r.TotalErrors() != 0 {
				t.Fatalf("requests %d, errors %v; want 300 and none", r.Requests, r.Errors)
			}
			if r.Workers != 4 || r.Conns != 2 || r.Target != addr {
				t.Errorf("result describes %d workers, %d conns, %s", r.Workers, r.Conns, r.Target)
			}
			checkSane(t, r)
			if r.Server == nil || r.Server.AllocsPerRequest <= 0 || r.Server.AllocBytesPerRequest <= 0 {
				t.Errorf("server cost %+v, want allocations counted", r.Server)
			}
		})
	}
}

func TestRunDurationAndOpenLoop(t *testing.T) {
	addr := serve(t, "tcp", NoopServer{}.Register)
	o := baseOptions(addr)
	o.Duration, o.Workers, o.TargetRate = 100*time.Millisecond, 2, 500
	r, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	// The schedule allows 50 starts; how many fit is the machine's business.
	if r.Requests == 0 || r.Requests > 50 || r.TotalErrors() != 0 {
		t.Fatalf("requests %d (want 1 to 50), errors %v", r.Requests, r.Errors)
	}
	if r.TargetRate != 500 {
		t.Errorf("target rate %v", r.TargetRate)
	}
	checkSane(t, r)
}

// recorder keeps every message it is sent and answers like the no-op
// server, or with an immediate response when immediate is set.
type recorder struct {
	extprocv3.UnimplementedExternalProcessorServer
	immediate bool

	mu      sync.Mutex
	streams [][]*extprocv3.ProcessingRequest
}

func (r *recorder) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	var msgs []*extprocv3.ProcessingRequest
	defer func() {
		r.mu.Lock()
		r.streams = append(r.streams, msgs)
		r.mu.Unlock()
	}()
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		msgs = append(msgs, req)
		resp := noopResponseHeaders
		switch {
		case req.GetRequestHeaders() != nil && r.immediate:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
				ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized}},
			}}
		case req.GetRequestHeaders() != nil:
			resp = noopRequestHeaders
		}
		if err := srv.Send(resp); err != nil {
			return err
		}
	}
}

func (r *recorder) register(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, r) }

func headerMap(hm *corev3.HeaderMap) (names []string, vals map[string]string) {
	vals = map[string]string{}
	for _, h := range hm.GetHeaders() {
		names = append(names, h.Key)
		vals[h.Key] = string(h.RawValue)
		if h.Value != "" {
			vals[h.Key] = "value field set: " + h.Value
		}
	}
	return names, vals
}

func TestRunSendsWhatEnvoySends(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, "tcp", rec.register)
	o := baseOptions(addr)
	o.Installations = []Installation{{Integration: "crm", GroupRef: "g1"}, {Integration: "crm", GroupRef: "g2"}}
	o.Requests, o.Workers, o.Share429 = 40, 1, 0.25
	r, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 40 || r.TotalErrors() != 0 || r.Responses429 != 10 {
		t.Fatalf("requests %d, errors %v, 429s %d; want 40, none, 10", r.Requests, r.Errors, r.Responses429)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.streams) != 40 {
		t.Fatalf("server saw %d streams", len(rec.streams))
	}
	ids := map[string]bool{}
	groups := map[string]int{}
	n429 := 0
	for i, msgs := range rec.streams {
		if len(msgs) != 2 || msgs[0].GetRequestHeaders() == nil || msgs[1].GetResponseHeaders() == nil {
			t.Fatalf("stream %d: %v", i, msgs)
		}
		pc := msgs[0].GetProtocolConfig()
		if pc.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE || pc == nil || msgs[1].GetProtocolConfig() != nil {
			t.Errorf("stream %d: protocol_config %v on the first message, %v on the second", i, pc, msgs[1].GetProtocolConfig())
		}
		if !msgs[0].GetRequestHeaders().EndOfStream {
			t.Errorf("stream %d: a GET's headers should end the stream", i)
		}
		names, vals := headerMap(msgs[0].GetRequestHeaders().GetHeaders())
		for j, n := range names {
			if n != strings.ToLower(n) {
				t.Errorf("header %q is not lower case", n)
			}
			if j < 4 != strings.HasPrefix(n, ":") {
				t.Errorf("pseudo-headers must come first: %v", names)
			}
		}
		want := map[string]string{
			":method": "GET", ":path": "/v1/items?limit=10", ":authority": "localhost:10000", ":scheme": "http",
			"x-amp-proxy-version": "1", "x-amp-project-id": "proj", "x-api-key": "caller-key",
			"x-amp-integration-name": "crm", "x-forwarded-proto": "http",
		}
		for k, v := range want {
			if vals[k] != v {
				t.Errorf("stream %d: %s = %q, want %q", i, k, vals[k], v)
			}
		}
		id := vals["x-request-id"]
		if len(id) != 36 || ids[id] {
			t.Errorf("stream %d: x-request-id %q is not a fresh UUID", i, id)
		}
		ids[id] = true
		groups[vals["x-amp-group-ref"]]++
		_, rv := headerMap(msgs[1].GetResponseHeaders().GetHeaders())
		switch rv[":status"] {
		case "429":
			n429++
			if rv["retry-after"] != "30" {
				t.Errorf("stream %d: 429 with retry-after %q", i, rv["retry-after"])
			}
		case "200":
		default:
			t.Errorf("stream %d: :status %q", i, rv[":status"])
		}
	}
	if groups["g1"] != 20 || groups["g2"] != 20 {
		t.Errorf("installations used %v, want 20 each", groups)
	}
	if n429 != 10 {
		t.Errorf("server saw %d 429s, want 10", n429)
	}
}

func TestRunCountsImmediateResponses(t *testing.T) {
	rec := &recorder{immediate: true}
	addr := serve(t, "tcp", rec.register)
	o := baseOptions(addr)
	o.Requests, o.Workers = 30, 3
	r, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 0 || !reflect.DeepEqual(r.Errors, map[string]uint64{"immediate 401": 30}) {
		t.Fatalf("requests %d, errors %v; want 0 and 30 × immediate 401", r.Requests, r.Errors)
	}

	o.ExpectImmediate = true
	r, err = Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 30 || r.TotalErrors() != 0 {
		t.Fatalf("expecting immediate responses: requests %d, errors %v", r.Requests, r.Errors)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, msgs := range rec.streams {
		if len(msgs) != 1 {
			t.Fatalf("after an immediate response the stream must end; server saw %d messages", len(msgs))
		}
	}

	// Expecting one and getting a header mutation is an error too.
	o.Target = serve(t, "tcp", NoopServer{}.Register)
	r, err = Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 0 || r.TotalErrors() != 30 {
		t.Fatalf("no-op server while expecting immediate: requests %d, errors %v", r.Requests, r.Errors)
	}
}

// cancelling ends the stream that is cut short without calling it a
// failure.
type cancelAfter struct {
	NoopServer
	mu     sync.Mutex
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	c.mu.Lock()
	c.n++
	if c.n == 50 {
		c.cancel()
	}
	c.mu.Unlock()
	return c.NoopServer.Process(srv)
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := &cancelAfter{cancel: cancel}
	addr := serve(t, "tcp", func(g *grpc.Server) { extprocv3.RegisterExternalProcessorServer(g, srv) })
	o := baseOptions(addr)
	o.Duration, o.Workers = time.Hour, 4
	r, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.TotalErrors() != 0 || r.Requests == 0 || r.Requests > 50 {
		t.Fatalf("requests %d, errors %v; want up to 50 and none", r.Requests, r.Errors)
	}
}

func TestRunRefusesBadOptions(t *testing.T) {
	_, err := Run(context.Background(), Options{
		Share429:      2,
		Installations: []Installation{{ID: "i1"}, {Integration: "crm"}},
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"target is required", "duration and requests", "between 0 and 1", "project ID", "installations[1]", "all by ID"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestRunUnreachable(t *testing.T) {
	o := baseOptions("unix://" + filepath.Join(t.TempDir(), "nobody.sock"))
	o.Requests, o.ConnectTimeout = 1, 200*time.Millisecond
	if _, err := Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("err = %v, want not ready", err)
	}
}

func TestResultJSONRoundTrip(t *testing.T) {
	addr := serve(t, "tcp", NoopServer{}.Register)
	o := baseOptions(addr)
	o.Requests, o.Share429, o.ServerStats = 20, 0.5, ProcessCounters
	measured, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	measured.Errors = map[string]uint64{"immediate 404": 3, "request-phase: Unavailable": 1}
	for _, r := range []*Result{measured, {Target: "unix:///x.sock", ServerStatsError: "child gone"}} {
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Result
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(&back, r) {
			t.Errorf("round trip changed the result:\n got %+v\nwant %+v\njson %s", back, *r, data)
		}
	}
	var text strings.Builder
	if err := measured.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"20 in", "p99.9", "allocs/req", "10 answered 429", "error      immediate 404: 3"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, text.String())
		}
	}
}

// TestDecodeAllocs checks that decoding is counted: a request message of
// a dozen headers cannot decode in fewer objects than it has headers.
func TestDecodeAllocs(t *testing.T) {
	o := Options{Target: "x", Requests: 1, ProjectID: "p", APIKey: "k", Installations: []Installation{{Integration: "i", GroupRef: "g"}}}
	n, err := DecodeAllocs(o)
	if err != nil {
		t.Fatal(err)
	}
	if n < 12 || n > 200 {
		t.Errorf("DecodeAllocs = %.1f, want at least one object per header of the two messages and not absurdly many", n)
	}
	t.Logf("%.1f objects to decode one stream's two messages", n)
	if _, err := DecodeAllocs(Options{}); err == nil {
		t.Error("DecodeAllocs accepted options without a target")
	}
}
