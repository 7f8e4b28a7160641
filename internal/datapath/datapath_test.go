package datapath

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/metrics"
	"github.com/ampproxy/ampproxy/throttle"
	"github.com/ampproxy/ampproxy/tokens"
)

// panicky panics on the first message of a stream whose request path asks
// for it, with a value that holds a secret; other streams are echoed
// with an empty answer.
type panicky struct {
	extprocv3.UnimplementedExternalProcessorServer
}

const secret = "sk-live-do-not-print"

func (panicky) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	req, err := srv.Recv()
	if err != nil {
		return err
	}
	if req.GetRequestHeaders().GetHeaders().GetHeaders()[0].GetKey() == "panic" {
		panic("bad header with credential " + secret)
	}
	return srv.Send(&extprocv3.ProcessingResponse{})
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestPanicEndsOnlyItsStream: a handler's panic ends its stream with
// codes.Internal, is logged without its value, and the server goes on
// serving other streams.
func TestPanicEndsOnlyItsStream(t *testing.T) {
	var logs syncBuffer
	g := grpc.NewServer(ServerOptions(slog.New(slog.NewJSONHandler(&logs, nil)))...)
	extprocv3.RegisterExternalProcessorServer(g, panicky{})
	l := bufconn.Listen(1 << 20)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	cc := dial(t, l)
	cli := extprocv3.NewExternalProcessorClient(cc)

	call := func(key string) error {
		st, err := cli.Process(context.Background())
		if err != nil {
			return err
		}
		if err := st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(key)}}}); err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
	if err := call("panic"); status.Code(err) != codes.Internal {
		t.Fatalf("panicking stream ended with %v, want Internal", err)
	}
	if err := call("x-ok"); err != nil {
		t.Fatalf("the next stream failed: %v", err)
	}
	out := logs.String()
	if !strings.Contains(out, "ext_proc stream panicked") || !strings.Contains(out, `"panic":"string"`) {
		t.Errorf("no panic line with the value's type: %s", out)
	}
	if strings.Contains(out, secret) {
		t.Errorf("the log shows the panic value: %s", out)
	}
}

// lingering is a handler that, once its stream's context is cancelled,
// waits for release before it returns, as one still writing a log line or
// committing a lockout would.
type lingering struct {
	extprocv3.UnimplementedExternalProcessorServer
	started, cancelled, release, returned chan struct{}
}

func (l lingering) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	defer close(l.returned)
	close(l.started)
	<-srv.Context().Done()
	close(l.cancelled)
	<-l.release
	return srv.Context().Err()
}

// TestStopWaitsForHandlers: Stop, which serve calls when the drain times
// out before it closes what handlers use, returns only after every
// handler has returned.
func TestStopWaitsForHandlers(t *testing.T) {
	h := lingering{started: make(chan struct{}), cancelled: make(chan struct{}), release: make(chan struct{}), returned: make(chan struct{})}
	g := grpc.NewServer(ServerOptions(slog.New(slog.DiscardHandler))...)
	extprocv3.RegisterExternalProcessorServer(g, h)
	release := sync.OnceFunc(func() { close(h.release) })
	l := bufconn.Listen(1 << 20)
	go g.Serve(l)
	stopped := make(chan struct{})
	stop := sync.OnceFunc(func() { go func() { g.Stop(); close(stopped) }() })
	t.Cleanup(func() {
		// Whatever failed: let the handler go and the server stop.
		release()
		stop()
		<-stopped
	})
	cc := dial(t, l)
	st, err := extprocv3.NewExternalProcessorClient(cc).Process(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The server runs the handler once it has the stream's first message.
	if err := st.Send(&extprocv3.ProcessingRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not start")
	}
	stop()
	select {
	case <-h.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not cancel the handler's stream")
	}
	// Without WaitForHandlers, Stop returns as soon as the connection is
	// closed. The pause gives it the time to: a slow machine can only
	// make this miss the fault, never fail a server that waits.
	select {
	case <-stopped:
		t.Fatal("Stop returned while a handler was still running")
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return once the handler had")
	}
	select {
	case <-h.returned:
	default:
		t.Fatal("Stop returned before the handler did")
	}
}

func headerMap(key string) *corev3.HeaderMap {
	return &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: key, RawValue: []byte("v")}}}
}

// TestLockoutMetrics: the lockout table's hooks reach the metrics a
// deployment scrapes: a window opened, one extended, and a save the store
// refused.
func TestLockoutMetrics(t *testing.T) {
	dir := t.TempDir()
	key, err := tokens.LoadKey(filepath.Join(dir, "master.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	st, err := tokens.Open(filepath.Join(dir, "ampproxy.db"), key, tokens.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{}
	m := metrics.New("test")
	dp, err := New(Options{Config: func() *config.Config { return cfg }, Store: st, Metrics: m,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Refresher.Close() })
	now := time.Now()
	observe := func(retryAfter string) error {
		_, err := dp.Lockouts.Observe429(context.Background(), "conn-1", "hubspot", throttle.Pairs{{"retry-after", retryAfter}}, catalog.RateLimit{}, now)
		return err
	}
	if err := observe("10"); err != nil {
		t.Fatal(err)
	}
	if err := observe("20"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := observe("30"); err == nil {
		t.Fatal("a save to a closed store succeeded")
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`ampproxy_lockout_windows_opened_total{provider="hubspot"} 1`,
		`ampproxy_lockout_windows_extended_total{provider="hubspot"} 2`,
		`ampproxy_lockout_persist_failures_total 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// dial is a client connection to the server listening on l, closed when
// the test ends.
func dial(t *testing.T, l *bufconn.Listener) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
