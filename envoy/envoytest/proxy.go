package envoytest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// DefaultMessageTimeout is ext_proc's message_timeout default, also the
// value envoy.yaml sets.
const DefaultMessageTimeout = 200 * time.Millisecond

// Config configures a Proxy. ExtProcAddr is required; the zero value of
// every other field is the setting in envoy.yaml.
type Config struct {
	// ExtProcAddr is the ext_proc server: "host:port" or "unix:///path".
	ExtProcAddr string
	// MessageTimeout bounds each ext_proc answer; default 200ms.
	MessageTimeout time.Duration
	// AllowAllRouting is mutation_rules.allow_all_routing; default true.
	// With false, changes to :authority, host, :method and :scheme are
	// silently dropped.
	AllowAllRouting *bool
	// RootCAs verifies provider certificates; nil means the system pool.
	RootCAs *x509.CertPool
	// Resolve, if set, maps the "host:port" a request is forwarded to onto
	// the "ip:port" to dial, standing in for the DNS cache; an error is a DNS
	// failure. SNI and certificate checks still use the host.
	Resolve func(hostport string) (string, error)
	// Logger receives one line per local reply; default slog.Default().
	Logger *slog.Logger
}

// Stats are counters a test can read; they mirror some of Envoy's
// ext_proc and router stats.
type Stats struct {
	Requests          int64 // downstream requests accepted
	Streams           int64 // ext_proc streams opened (streams_started)
	StreamsFailed     int64 // streams that ended with a gRPC error (streams_failed)
	MessageTimeouts   int64 // ext_proc answers that came too late (message_timeouts)
	RejectedMutations int64 // header mutations ignored or refused (rejected_header_mutations)
	SpuriousMessages  int64 // answers of the wrong kind (spurious_msgs_received)
	ResponsePhases    int64 // response-header messages sent to ext_proc
	Forwarded         int64 // requests sent upstream (connections attempted)
	LocalReplies      int64 // responses the proxy made itself
}

// Proxy is a running stand-in. Its methods are safe for concurrent use.
type Proxy struct {
	timeout time.Duration
	rules   checker
	resolve func(string) (string, error)
	log     *slog.Logger

	ln       net.Listener
	srv      *http.Server
	conn     *grpc.ClientConn
	client   extprocv3.ExternalProcessorClient
	upstream *http.Transport
	served   chan struct{}

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup

	requests, streams, streamsFailed, timeouts, rejected, spurious, responsePhases, forwarded, localReplies atomic.Int64
}

// Start listens on listenAddr (e.g. "127.0.0.1:0") and serves HTTP/1.1 and
// h2c on it, as the envoy.yaml listener does with codec_type AUTO.
func Start(cfg Config, listenAddr string) (*Proxy, error) {
	if cfg.ExtProcAddr == "" {
		return nil, errors.New("envoytest: ExtProcAddr is required")
	}
	if cfg.MessageTimeout < 0 {
		return nil, errors.New("envoytest: MessageTimeout is negative")
	}
	p := &Proxy{
		timeout: cfg.MessageTimeout,
		rules:   checker{allowAllRouting: cfg.AllowAllRouting == nil || *cfg.AllowAllRouting},
		resolve: cfg.Resolve,
		log:     cfg.Logger,
		served:  make(chan struct{}),
	}
	if p.timeout == 0 {
		p.timeout = DefaultMessageTimeout
	}
	if p.log == nil {
		p.log = slog.Default()
	}

	target := cfg.ExtProcAddr
	if !strings.HasPrefix(target, "unix://") {
		target = "passthrough:///" + target
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("envoytest: ext_proc client: %w", err)
	}
	p.conn = conn
	p.client = extprocv3.NewExternalProcessorClient(conn)

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	p.upstream = &http.Transport{
		Proxy:               nil, // never an environment proxy: the upstream is the provider
		DialContext:         p.dial,
		TLSClientConfig:     &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		Protocols:           protocols, // explicit_http_config: http_protocol_options (HTTP/1.1)
		DisableCompression:  true,      // Envoy adds no Accept-Encoding
		MaxIdleConnsPerHost: 16,
	}

	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("envoytest: %w", err)
	}
	p.ln = ln
	downstream := new(http.Protocols)
	downstream.SetHTTP1(true)
	downstream.SetUnencryptedHTTP2(true)
	p.srv = &http.Server{
		Handler:           p,
		Protocols:         downstream,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// Addr is the listener's "host:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is "http://" + Addr().
func (p *Proxy) URL() string { return "http://" + p.Addr() }

// Forwarded is Stats().Forwarded.
func (p *Proxy) Forwarded() int64 { return p.forwarded.Load() }

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Requests:          p.requests.Load(),
		Streams:           p.streams.Load(),
		StreamsFailed:     p.streamsFailed.Load(),
		MessageTimeouts:   p.timeouts.Load(),
		RejectedMutations: p.rejected.Load(),
		SpuriousMessages:  p.spurious.Load(),
		ResponsePhases:    p.responsePhases.Load(),
		Forwarded:         p.forwarded.Load(),
		LocalReplies:      p.localReplies.Load(),
	}
}

// Close stops the listener, ends open connections, waits for every request
// in progress to finish, and closes the gRPC connection. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.srv.Close()
	<-p.served
	p.inflight.Wait()
	p.upstream.CloseIdleConnections()
	if cerr := p.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

func (p *Proxy) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.inflight.Add(1)
	return true
}

// dnsFailure marks an error the DNS cache would report.
type dnsFailure struct{ err error }

func (e dnsFailure) Error() string { return "DNS resolution failure: " + e.err.Error() }
func (e dnsFailure) Unwrap() error { return e.err }

func (p *Proxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if p.resolve != nil {
		to, err := p.resolve(addr)
		if err != nil {
			return nil, dnsFailure{err}
		}
		addr = to
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// ServeHTTP runs one request through ext_proc → dynamic_forward_proxy →
// router, as envoy.yaml's filter chain does.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.enter() {
		http.Error(w, "", http.StatusServiceUnavailable)
		return
	}
	defer p.inflight.Done()
	p.requests.Add(1)
	rc := http.NewResponseController(w)
	// HTTP/1.1 handlers may not read the body after writing the response
	// unless asked; a proxy streams both ways at once. (HTTP/2 always can.)
	_ = rc.EnableFullDuplex()

	x := p.newExchange(r.Context())
	defer x.close()

	reqHeaders := downstreamHeaders(r)
	noBody := r.Body == nil || r.Body == http.NoBody
	body := r.Body

	// Request phase: one message with the headers; bodies never go to the
	// processor (request_body_mode NONE).
	if lr := x.requestPhase(&reqHeaders, noBody, &body); lr != nil {
		p.writeLocal(w, rc, lr)
		return
	}
	if body != r.Body {
		noBody = false // CONTINUE_AND_REPLACE gave the request a new body
	}

	// dynamic_forward_proxy and router.
	status, respHeaders, respBody, respTrailer, lr := p.forward(r.Context(), reqHeaders, noBody, body)
	if lr != nil {
		// Local replies from filters after ext_proc still pass through its
		// encode path, so the processor sees them in the response phase
		// (Filter::encodeHeaders in ext_proc.cc does not tell them apart).
		if own := x.responsePhase(&lr.headers, lr.body == ""); own != nil {
			lr = own
		}
		p.writeLocal(w, rc, lr)
		return
	}
	defer respBody.Close()
	respHeaders.set(":status", strconv.Itoa(status))
	if own := x.responsePhase(&respHeaders, responseHasNoBody(r.Method, status, respHeaders)); own != nil {
		p.writeLocal(w, rc, own)
		return
	}
	x.close() // Envoy closes the stream once no more messages are due.
	p.writeResponse(w, rc, respHeaders, respBody, respTrailer)
}

// localReply is a response the proxy makes itself (Envoy's sendLocalReply).
type localReply struct {
	headers headerMap // including :status
	body    string
	details string // response code details, for the log only
}

// newLocalReply builds the headers Envoy's Utility::prepareLocalReply
// gives a local reply: :status, then content-length and, when the body is
// not empty and nothing set a content type, text/plain.
func newLocalReply(status int, body, details string, mutate func(*headerMap)) *localReply {
	h := headerMap{{":status", strconv.Itoa(status)}}
	if mutate != nil {
		mutate(&h)
	}
	if body != "" {
		h.set("content-length", strconv.Itoa(len(body)))
		if _, ok := h.get("content-type"); !ok {
			h.set("content-type", "text/plain")
		}
	}
	return &localReply{headers: h, body: body, details: details}
}

func (p *Proxy) writeLocal(w http.ResponseWriter, rc *http.ResponseController, lr *localReply) {
	p.localReplies.Add(1)
	code, _ := lr.headers.get(":status")
	p.log.Debug("envoytest: local reply", "status", code, "details", lr.details)
	p.writeResponse(w, rc, lr.headers, io.NopCloser(strings.NewReader(lr.body)), nil)
}

// writeResponse sends headers and streams the body, flushing after every
// read so that nothing is held back (no buffering, as with body mode NONE).
func (p *Proxy) writeResponse(w http.ResponseWriter, rc *http.ResponseController, h headerMap, body io.Reader, trailer http.Header) {
	code := http.StatusBadGateway
	if s, ok := h.get(":status"); ok {
		if n, err := strconv.Atoi(s); err == nil {
			code = n
		}
	}
	out := w.Header()
	for _, e := range h {
		if !strings.HasPrefix(e.name, ":") {
			out.Add(http.CanonicalHeaderKey(e.name), e.value)
		}
	}
	for k := range trailer {
		out.Add("Trailer", k)
	}
	w.WriteHeader(code)
	_ = rc.Flush()
	buf := make([]byte, 32*1024)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			break
		}
	}
	for k, vs := range trailer {
		out[k] = vs
	}
}

// downstreamHeaders is the header map Envoy builds for a request before the
// filters run. The HTTP/1 codec turns Host into :authority and removes the
// headers the Connection header nominates, keeping TE only as "trailers"
// (Utility::sanitizeConnectionHeader, called from
// source/common/http/http1/codec_impl.cc); pseudo-headers come first
// (servers must not depend on their order, which follows the codec).
// ConnectionManagerUtility::mutateRequestHeaders
// (source/common/http/conn_manager_utility.cc) then removes connection,
// upgrade, keep-alive, proxy-connection, transfer-encoding and
// x-envoy-internal, and sets x-forwarded-proto when it is missing; the
// connection manager adds an x-request-id (UUID) when there is none
// (generate_request_id). Other names are lower-cased and, since Go does not
// keep their order, sorted.
func downstreamHeaders(r *http.Request) headerMap {
	path := r.RequestURI
	authority := r.Host
	if !strings.HasPrefix(path, "/") && path != "*" && r.URL != nil && r.URL.Host != "" {
		// absolute-form request target
		path = r.URL.RequestURI()
		authority = r.URL.Host
	}
	h := headerMap{
		{":method", r.Method},
		{":path", path},
		{":authority", authority},
		{":scheme", "http"},
	}
	hop := map[string]bool{"connection": true, "upgrade": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "x-envoy-internal": true}
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.ToLower(strings.TrimSpace(tok)); tok != "" && tok != "te" {
				hop[tok] = true
			}
		}
	}
	names := make([]string, 0, len(r.Header))
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		name := strings.ToLower(k)
		if hop[name] {
			continue
		}
		for _, v := range r.Header[k] {
			// TE may only say "trailers" on a forwarded request.
			if name == "te" && !strings.EqualFold(strings.TrimSpace(v), "trailers") {
				continue
			}
			h.add(name, v)
		}
	}
	if _, ok := h.get("x-forwarded-proto"); !ok {
		h.add("x-forwarded-proto", "http")
	}
	if id, ok := h.get("x-request-id"); !ok || id == "" {
		h.set("x-request-id", newUUID())
	}
	return h
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// responseHasNoBody decides end_of_stream for the response-headers message.
func responseHasNoBody(method string, status int, h headerMap) bool {
	if method == http.MethodHead || status == http.StatusNoContent || status == http.StatusNotModified || status < 200 {
		return true
	}
	cl, ok := h.get("content-length")
	return ok && cl == "0"
}

// exchange is the ext_proc side of one request: at most one stream, opened
// for the first message (Filter::openStream).
type exchange struct {
	p      *Proxy
	ctx    context.Context
	cancel context.CancelFunc
	stream extprocv3.ExternalProcessor_ProcessClient
	// complete is Envoy's processing_complete_: after an immediate
	// response, an error, or the server closing the stream, nothing more is
	// sent to the processor for this request.
	complete bool
	closed   bool
}

func (p *Proxy) newExchange(parent context.Context) *exchange {
	ctx, cancel := context.WithCancel(parent)
	return &exchange{p: p, ctx: ctx, cancel: cancel}
}

// close ends the stream as Filter::closeStream does: half-close, then reset.
func (x *exchange) close() {
	if x.closed {
		return
	}
	x.closed = true
	x.complete = true
	if x.stream != nil {
		_ = x.stream.CloseSend()
	}
	x.cancel()
}

type callResult int

const (
	answered callResult = iota
	// streamClosed: the server ended the stream with status OK. Envoy
	// treats that as "processing is over" and carries on with the request
	// unchanged (ExternalProcessorStreamImpl::onRemoteClose calls
	// onGrpcClose for Ok; Filter::onGrpcCloseWithStatus clears the state
	// and continues), even with failure_mode_allow false.
	streamClosed
	failed
)

// call sends one message and waits for its answer, bounded by the message
// timeout (ProcessorState::onStartProcessorCall arms the timer when the
// message is sent).
func (x *exchange) call(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, callResult, *localReply) {
	p := x.p
	// When the timer fires it cancels the stream, which ends whatever call
	// is waiting; whether it fired is decided once, by Stop.
	timer := time.AfterFunc(p.timeout, x.cancel)
	decided, expired := false, false
	timedOut := func() bool {
		if !decided {
			decided, expired = true, !timer.Stop()
		}
		return expired
	}

	fail := func(err error) (*extprocv3.ProcessingResponse, callResult, *localReply) {
		x.complete = true
		if timedOut() {
			// Filter::onMessageTimeout with failure_mode_allow false: 504
			// (500 before Envoy 1.32).
			p.timeouts.Add(1)
			return nil, failed, newLocalReply(http.StatusGatewayTimeout, "", "ext_proc_error_per-message_timeout_exceeded", nil)
		}
		// Filter::onGrpcError with failure_mode_allow false: status_on_error,
		// default 500.
		p.streamsFailed.Add(1)
		return nil, failed, newLocalReply(http.StatusInternalServerError, "", fmt.Sprintf("ext_proc_error_gRPC_error_%d{%s}", status.Code(err), status.Convert(err).Message()), nil)
	}

	if x.stream == nil {
		st, err := p.client.Process(x.ctx)
		if err != nil {
			return fail(err)
		}
		p.streams.Add(1)
		x.stream = st
		// Envoy sends its body modes with the first message of a stream
		// (Filter::encodeProtocolConfig).
		req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  extprocfilterv3.ProcessingMode_NONE,
			ResponseBodyMode: extprocfilterv3.ProcessingMode_NONE,
		}
	}
	if err := x.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		// io.EOF means the stream is over; Recv returns the reason.
		return fail(err)
	}
	for {
		resp, err := x.stream.Recv()
		if err == nil && resp.GetOverrideMessageTimeout() != nil {
			// Filter::onNewTimeout: a new timeout above max_message_timeout
			// (unset, so 0) is ignored, and so is the message.
			continue
		}
		if timedOut() {
			return fail(context.DeadlineExceeded)
		}
		if errors.Is(err, io.EOF) {
			x.complete = true
			return nil, streamClosed, nil
		}
		if err != nil {
			return fail(err)
		}
		return resp, answered, nil
	}
}

// requestPhase sends the request headers and applies the answer to h. A
// non-nil result is the local reply to send instead of forwarding.
func (x *exchange) requestPhase(h *headerMap, noBody bool, body *io.ReadCloser) *localReply {
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: h.proto(), EndOfStream: noBody},
	}}
	resp, res, lr := x.call(req)
	if res != answered {
		return lr
	}
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		return x.applyCommon(r.RequestHeaders.GetResponse(), h, body)
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return x.immediate(r.ImmediateResponse)
	default:
		return x.spurious(resp)
	}
}

// responsePhase sends response headers (with :status) and applies the
// answer to h. A non-nil result replaces the response.
func (x *exchange) responsePhase(h *headerMap, noBody bool) *localReply {
	if x.complete {
		return nil
	}
	x.p.responsePhases.Add(1)
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: h.proto(), EndOfStream: noBody},
	}}
	resp, res, lr := x.call(req)
	if res != answered {
		return lr
	}
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		return x.applyCommon(r.ResponseHeaders.GetResponse(), h, nil)
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		return x.immediate(r.ImmediateResponse)
	default:
		return x.spurious(resp)
	}
}

// applyCommon is ProcessorState::handleHeadersResponse for body mode NONE.
// clear_route_cache has nothing to do: there is one route.
func (x *exchange) applyCommon(cr *extprocv3.CommonResponse, h *headerMap, body *io.ReadCloser) *localReply {
	replacing := cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE
	if m := cr.GetHeaderMutation(); m != nil {
		if err := x.p.rules.applyMutation(m, h, replacing, func() { x.p.rejected.Add(1) }); err != nil {
			return x.errorReply(err)
		}
	}
	if replacing && body != nil && cr.GetBodyMutation() != nil {
		// CONTINUE_AND_REPLACE with a body mutation replaces the body that
		// may exist and drops content-length.
		h.remove("content-length")
		if *body != nil {
			(*body).Close()
		}
		*body = io.NopCloser(strings.NewReader(string(cr.GetBodyMutation().GetBody())))
	}
	return nil
}

// errorReply is Filter::handleErrorResponse: a 500 and the end of processing.
func (x *exchange) errorReply(err error) *localReply {
	x.complete = true
	x.cancel()
	return newLocalReply(http.StatusInternalServerError, "", err.Error(), nil)
}

// spurious handles an answer of the wrong kind. From Envoy 1.35 it fails
// closed when failure_mode_allow is false (runtime guard
// ext_proc_fail_close_spurious_resp): a 500. Earlier Envoy ignored the
// answer and let the request on unprocessed.
func (x *exchange) spurious(resp *extprocv3.ProcessingResponse) *localReply {
	x.p.spurious.Add(1)
	return x.errorReply(fmt.Errorf("spurious ext_proc message %T", resp.GetResponse()))
}

// immediate is Filter::sendImmediateResponse: status defaults to 200 and a
// status below 200 is replaced by 200 (MutationUtils::isValidHttpStatus);
// headers go through the filter's mutation rules, and a failing mutation is
// only logged (what came before it stays); the body is sent as given.
func (x *exchange) immediate(ir *extprocv3.ImmediateResponse) *localReply {
	x.complete = true
	x.cancel()
	code := http.StatusOK
	if ir.GetStatus() != nil && ir.GetStatus().GetCode() >= 200 {
		code = int(ir.GetStatus().GetCode())
	}
	var mutErr error
	lr := newLocalReply(code, string(ir.GetBody()), ir.GetDetails(), func(h *headerMap) {
		if m := ir.GetHeaders(); m != nil {
			mutErr = x.p.rules.applyMutation(m, h, false, func() { x.p.rejected.Add(1) })
		}
	})
	if mutErr != nil {
		x.p.log.Warn("envoytest: immediate response mutations failed", "err", mutErr)
	}
	return lr
}

// forward is dynamic_forward_proxy plus the router: the request goes over
// TLS to whatever :authority says now (port 443 when it names none), with SNI
// and certificate checks for that host (auto_sni, auto_san_validation), to
// the path :path says.
func (p *Proxy) forward(ctx context.Context, h headerMap, noBody bool, body io.ReadCloser) (int, headerMap, io.ReadCloser, http.Header, *localReply) {
	authority, _ := h.get(":authority")
	method, _ := h.get(":method")
	path, _ := h.get(":path")
	if authority == "" {
		return 0, nil, nil, nil, newLocalReply(http.StatusServiceUnavailable, "DNS resolution failure", "dns_resolution_failure", nil)
	}
	u := &url.URL{Scheme: "https", Host: authority}
	pathOnly, query, hasQuery := strings.Cut(path, "?")
	if strings.HasPrefix(pathOnly, "//") {
		u.Path = pathOnly // Opaque cannot start with "//"
	} else {
		u.Opaque = pathOnly
	}
	u.RawQuery, u.ForceQuery = query, hasQuery && query == ""

	out := &http.Request{
		Method:     method,
		URL:        u,
		Host:       authority,
		Header:     http.Header{"User-Agent": nil}, // send none unless the caller did
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
	}
	out = out.WithContext(ctx)
	for _, e := range h {
		switch {
		case strings.HasPrefix(e.name, ":"), e.name == "host":
			// :authority is the Host line; a literal host entry is not sent.
		case e.name == "content-length":
			if n, err := strconv.ParseInt(e.value, 10, 64); err == nil {
				out.ContentLength = n
			}
		default:
			out.Header.Add(http.CanonicalHeaderKey(e.name), e.value)
		}
	}
	if noBody {
		out.Body, out.ContentLength = http.NoBody, 0
	} else {
		out.Body = body
		if _, ok := h.get("content-length"); !ok {
			out.ContentLength = -1
		}
	}

	p.forwarded.Add(1)
	resp, err := p.upstream.RoundTrip(out)
	if err != nil {
		var dns *net.DNSError
		var df dnsFailure
		if errors.As(err, &df) || errors.As(err, &dns) {
			// ProxyFilter::onDnsResolutionFail
			return 0, nil, nil, nil, newLocalReply(http.StatusServiceUnavailable, "DNS resolution failure", "dns_resolution_failure", nil)
		}
		// Router::Filter::onUpstreamReset before response headers.
		reason := "connection termination"
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" || isTLSError(err) {
			reason = "connection failure"
		}
		body := fmt.Sprintf("upstream connect error or disconnect/reset before headers. reset reason: %s, transport failure reason: %v", reason, err)
		return 0, nil, nil, nil, newLocalReply(http.StatusServiceUnavailable, body, "upstream_reset_before_response_started", nil)
	}
	return resp.StatusCode, upstreamHeaders(resp.Header), resp.Body, resp.Trailer, nil
}

// isTLSError reports a failed TLS handshake, which Envoy counts as a
// connection failure.
func isTLSError(err error) bool {
	var cv *tls.CertificateVerificationError
	var rec tls.RecordHeaderError
	var alert tls.AlertError
	return errors.As(err, &cv) || errors.As(err, &rec) || errors.As(err, &alert)
}

// upstreamHeaders turns a provider response into the header map Envoy's
// encoder filters see: lower-case names, :status first. Envoy removes
// connection, upgrade, transfer-encoding, keep-alive and proxy-connection
// when it encodes the response for the caller
// (ConnectionManagerUtility::mutateResponseHeaders), which may be after
// ext_proc has seen them; the stand-in removes them before. Like Envoy, it
// leaves headers that a response's Connection header nominates.
func upstreamHeaders(hdr http.Header) headerMap {
	hop := map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true}
	names := make([]string, 0, len(hdr))
	for k := range hdr {
		names = append(names, k)
	}
	sort.Strings(names)
	h := headerMap{{":status", ""}}
	for _, k := range names {
		name := strings.ToLower(k)
		if hop[name] {
			continue
		}
		for _, v := range hdr[k] {
			h.add(name, v)
		}
	}
	return h
}
