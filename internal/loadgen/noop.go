package loadgen

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// NoopServer is the floor of the ext_proc protocol: it answers every
// message with an empty response of the matching kind and does nothing
// else. Whatever a real processor costs beyond it is the processor's own.
type NoopServer struct {
	extprocv3.UnimplementedExternalProcessorServer
}

var _ extprocv3.ExternalProcessorServer = NoopServer{}

// The answers are built once and shared: a message that is only read may
// be marshalled by many streams at once.
var (
	noopRequestHeaders   = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	noopResponseHeaders  = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	noopRequestBody      = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	noopResponseBody     = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	noopRequestTrailers  = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	noopResponseTrailers = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
)

// Process answers each message of the stream until the client closes it.
func (NoopServer) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := srv.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		var resp *extprocv3.ProcessingResponse
		switch req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			resp = noopRequestHeaders
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp = noopResponseHeaders
		case *extprocv3.ProcessingRequest_RequestBody:
			resp = noopRequestBody
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp = noopResponseBody
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp = noopRequestTrailers
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp = noopResponseTrailers
		default:
			return status.Error(codes.InvalidArgument, "unknown ext_proc message")
		}
		if err := srv.Send(resp); err != nil {
			return err
		}
	}
}

// Register adds the no-op ext_proc service and, as ampproxy does, the gRPC
// health service (serving) to g.
func (n NoopServer) Register(g *grpc.Server) {
	extprocv3.RegisterExternalProcessorServer(g, n)
	h := health.NewServer()
	healthpb.RegisterHealthServer(g, h)
	h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	h.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
}

// Listen opens host:port or unix:///path.sock. A socket file left by a
// process that is gone is removed first; one that answers is not.
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%s: want unix:///absolute/path.sock", addr)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another process is serving on this socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return net.Listen("unix", path)
}

// Addr names a listener as Listen takes it, with the port the kernel
// chose for :0.
func Addr(l net.Listener) string {
	if l.Addr().Network() == "unix" {
		return "unix://" + l.Addr().String()
	}
	return l.Addr().String()
}
