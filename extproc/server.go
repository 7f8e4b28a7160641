package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/metrics"
	"github.com/ampproxy/ampproxy/throttle"
	"github.com/ampproxy/ampproxy/tokens"
)

// Store is what the request path reads from the connection store. Both
// look-ups are served from memory.
type Store interface {
	Installation(id string) (*tokens.Installation, bool)
	InstallationByGroup(projectID, integration, groupRef string) (*tokens.Installation, bool)
	Connection(id string) (*tokens.Connection, bool)
}

// Tokens hands out OAuth2 access tokens, refreshing them when needed
// (tokens.Refresher). Cached answers from memory while the token is valid
// (allocating only on a connection's first request); AccessToken is asked
// only when Cached says no, and may wait for a refresh until ctx's
// deadline.
type Tokens interface {
	Cached(c *tokens.Connection) (string, bool)
	AccessToken(ctx context.Context, c *tokens.Connection) (string, error)
	MarkStale(connID, accessToken string)
}

// DefaultTokenWait is Options.TokenWait's default: half of Envoy's default
// message_timeout (200 ms).
const DefaultTokenWait = 100 * time.Millisecond

// Lockouts is the throttle table of DESIGN §3 (throttle.Table): Check on
// the request path of throttle-mode requests, Observe429 in the response
// phase of every provider 429.
type Lockouts interface {
	Check(connID string, now time.Time) (throttle.Window, bool)
	// Observe429 returns once the window is durable or ctx (the stream's)
	// has ended, whichever comes first.
	Observe429(ctx context.Context, connID, provider string, h throttle.Headers, rl catalog.RateLimit, now time.Time) (throttle.Window, error)
}

// Options configure a Server. Store and Config are required.
type Options struct {
	Store  Store
	Config *config.Config
	// Now is the clock for token expiry; default time.Now.
	Now func() time.Time
	// Logger receives one line per request; default slog.Default().
	Logger *slog.Logger
	// Metrics records requests, phase latencies and provider statuses;
	// nil records nothing.
	Metrics *metrics.Metrics
	// Tokens refreshes OAuth2 tokens; nil uses tokens as stored and
	// answers 424 once they expire.
	Tokens Tokens
	// TokenWait bounds how long a request waits for an OAuth2 token
	// refresh, counted from when its request headers arrived (when Envoy's
	// message_timeout is already running): past it the request gets 503
	// with Retry-After. Keep it well inside Envoy's message_timeout, past
	// which Envoy answers 504. Zero means DefaultTokenWait.
	TokenWait time.Duration
	// Lockouts remembers provider 429s per connection; nil turns throttle
	// mode off (requests pass, 429s are not remembered).
	Lockouts Lockouts
}

// Server is the ext_proc service. It is safe for concurrent streams.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	store  Store
	cfg    atomic.Pointer[config.Config]
	now    func() time.Time
	log    *slog.Logger
	health *health.Server
	met    *metrics.Metrics
	tokens Tokens
	wait   time.Duration
	locks  Lockouts
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// New returns a Server.
func New(o Options) *Server {
	s := &Server{store: o.Store, now: o.Now, log: o.Logger, health: health.NewServer(), met: o.Metrics, tokens: o.Tokens, wait: o.TokenWait, locks: o.Lockouts}
	if s.wait <= 0 {
		s.wait = DefaultTokenWait
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.cfg.Store(o.Config)
	return s
}

// SetConfig swaps the configuration; streams already open keep the one
// they started with for their request phase.
func (s *Server) SetConfig(c *config.Config) { s.cfg.Store(c) }

// Register adds the ext_proc and gRPC health services to g and marks both
// serving.
func (s *Server) Register(g *grpc.Server) {
	extprocv3.RegisterExternalProcessorServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
}

// Shutdown marks the health service not serving, so that Envoy and
// Kubernetes stop sending new work while open streams finish.
func (s *Server) Shutdown() { s.health.Shutdown() }

// stream is what the request phase leaves for the response phase of the
// same HTTP request.
type stream struct {
	start     time.Time
	arrived   time.Time     // real time the request headers arrived, for TokenWait
	own       time.Duration // ampproxy's own time over both phases
	finished  bool          // counted and logged
	ctx       context.Context
	token     string // the OAuth2 access token sent, for MarkStale
	requestID string
	project   string
	integ     string
	provider  *catalog.Provider
	inst      *tokens.Installation
	conn      *tokens.Connection
	throttle  bool
	upstream  string
	status    int
	outcome   string
	r         reply // the answers of a forwarded request, allocated with the stream
}

// Process serves one HTTP request's stream: request headers, then response
// headers. Messages for phases the filter config does not send (bodies,
// trailers) get an empty answer of the matching kind.
func (s *Server) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	// The stream's state and its common answers are one block, taken from
	// a pool and given back once the stream is over: the last Send has
	// returned, and the log line, metrics and lockout commit are done.
	st := streams.Get().(*stream)
	st.ctx = srv.Context()
	over := false
	defer func() {
		if !over {
			// A panic: count and log the request, and leave the block
			// to the collector rather than reuse it.
			s.finish(st)
		}
	}()
	err := s.process(srv, st)
	s.finish(st)
	over = true
	*st = stream{} // drops what it refers to, the received messages' bytes included
	streams.Put(st)
	return err
}

// streams recycles the per-stream blocks of Process (see the package's
// Caveats for why nothing refers to one after its stream is over).
var streams = sync.Pool{New: func() any { return new(stream) }}

func (s *Server) process(srv extprocv3.ExternalProcessor_ProcessServer, st *stream) error {
	for {
		req, err := srv.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		var resp *extprocv3.ProcessingResponse
		t0 := s.now()
		switch r := req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			// On the real clock, as Envoy's timer is: Now may be a test's.
			st.start, st.arrived = t0, time.Now()
			resp = s.requestHeaders(st, r.RequestHeaders)
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			resp = s.responseHeaders(st, r.ResponseHeaders)
		case *extprocv3.ProcessingRequest_RequestBody:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
		case *extprocv3.ProcessingRequest_ResponseBody:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
		case *extprocv3.ProcessingRequest_RequestTrailers:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
		default:
			return status.Error(codes.InvalidArgument, "unknown ext_proc message")
		}
		d := s.now().Sub(t0)
		st.own += d
		// The request is counted and logged before the answer that ends
		// it leaves, so that metrics agree with what callers have seen.
		switch req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			s.met.Phase(metrics.RequestHeaders, d)
			if st.outcome != "forwarded" {
				s.finish(st)
			}
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			s.met.Phase(metrics.ResponseHeaders, d)
			s.finish(st)
		}
		if err := srv.Send(resp); err != nil {
			return err
		}
	}
}

// maxControlHeader bounds every x-amp-* and x-api-key value: real values
// are IDs and keys, and a bound keeps hostile input out of lookups and logs.
const maxControlHeader = 512

// incoming holds the headers the request phase reads.
type incoming struct {
	version, project, apiKey, installation, integration, groupRef, mode string
	path, requestID                                                     string
	hasAuthorization                                                    bool
	remove                                                              []string
}

// parseHeaders reads Envoy's header map. Control headers must appear once
// and hold only visible characters; the names of every x-amp-* header and
// x-api-key are appended to remove (a buffer of the caller's) for removal.
// Values are views of the message's bytes (see view), so parsing copies
// nothing.
func parseHeaders(hm *corev3.HeaderMap, remove []string) (incoming, *Problem) {
	in := incoming{remove: remove}
	if hm == nil {
		return in, badRequest("missing-header", "no request headers")
	}
	for _, h := range hm.GetHeaders() {
		k := h.Key
		var dst *string
		switch k {
		case ":path":
			in.path = headerValue(h)
			continue
		case "x-request-id":
			v := headerValue(h)
			if len(v) <= 128 && httpguts.ValidHeaderFieldValue(v) {
				in.requestID = v
			}
			continue
		case "authorization":
			in.hasAuthorization = true
			continue
		case "x-amp-proxy-version":
			dst = &in.version
		case "x-amp-project-id":
			dst = &in.project
		case "x-api-key":
			dst = &in.apiKey
		case "x-amp-installation-id":
			dst = &in.installation
		case "x-amp-integration-name":
			dst = &in.integration
		case "x-amp-group-ref":
			dst = &in.groupRef
		case "x-amp-rate-limiter-mode":
			dst = &in.mode
		default:
			if strings.HasPrefix(k, "x-amp-") {
				in.remove = append(in.remove, k)
			}
			continue
		}
		v := headerValue(h)
		if *dst != "" {
			return in, badRequest("duplicate-header", k+" is given more than once")
		}
		if len(v) > maxControlHeader {
			return in, badRequest("invalid-header", k+" is longer than 512 bytes")
		}
		if !httpguts.ValidHeaderFieldValue(v) || strings.TrimSpace(v) != v {
			return in, badRequest("invalid-header", k+" holds characters that are not allowed")
		}
		if v == "" {
			return in, badRequest("invalid-header", k+" is empty")
		}
		*dst = v
		in.remove = append(in.remove, k)
	}
	return in, nil
}

// headerValue is a header's value: Envoy sends it in raw_value; value is
// read only as a fallback for peers that use the older field.
func headerValue(h *corev3.HeaderValue) string {
	if len(h.RawValue) == 0 {
		return h.Value
	}
	return view(h.RawValue)
}

// requestHeaders runs DESIGN §1's request phase: validate → authenticate →
// find installation → credential → header mutation.
func (s *Server) requestHeaders(st *stream, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	resp, p := s.route(st, h)
	if p != nil {
		p.RequestID = st.requestID
		st.status = p.Status
		st.outcome = p.Slug()
		if p.Status == 429 {
			st.outcome = "short-circuited"
		}
		return immediate(p)
	}
	st.outcome = "forwarded"
	return resp
}
