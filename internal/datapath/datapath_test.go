package datapath

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
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
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
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

func headerMap(key string) *corev3.HeaderMap {
	return &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: key, RawValue: []byte("v")}}}
}
