package envoytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestMain fails the run when a test leaves goroutines behind: every proxy,
// server and client must be closed by its test's cleanups.
func TestMain(m *testing.M) {
	before := runtime.NumGoroutine()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			fmt.Fprintf(os.Stderr, "%d goroutines left behind (started with %d):\n%s\n", n-before, before, buf)
			code = 1
		}
	}
	os.Exit(code)
}

// ---- fake ext_proc server -------------------------------------------------

// processor is a fake ext_proc server. answer returns the reply to each
// message; a nil reply means "never answer" (the handler waits for the
// stream to end). process, when set, replaces the loop entirely.
type processor struct {
	extprocv3.UnimplementedExternalProcessorServer
	answer  func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse
	process func(extprocv3.ExternalProcessor_ProcessServer) error

	mu      sync.Mutex
	seen    []*extprocv3.ProcessingRequest
	streams int
}

func (f *processor) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	f.mu.Lock()
	f.streams++
	f.mu.Unlock()
	if f.process != nil {
		return f.process(srv)
	}
	for {
		req, err := srv.Recv()
		if err != nil {
			return nil
		}
		f.mu.Lock()
		f.seen = append(f.seen, req)
		f.mu.Unlock()
		resp := f.answer(req)
		if resp == nil {
			<-srv.Context().Done()
			return nil
		}
		if err := srv.Send(resp); err != nil {
			return nil
		}
	}
}

func (f *processor) messages() []*extprocv3.ProcessingRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*extprocv3.ProcessingRequest(nil), f.seen...)
}

func (f *processor) streamCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.streams
}

func startProcessor(t *testing.T, f *processor) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, f)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return lis.Addr().String()
}

// pass answers every message with an empty CONTINUE of the matching kind.
func pass(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return requestHeaders(nil)
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return responseHeaders(nil)
	}
	return nil
}

func requestHeaders(m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: m}},
	}}
}

func responseHeaders(m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
		ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: m}},
	}}
}

func immediate(code typev3.StatusCode, body string, m *extprocv3.HeaderMutation) *extprocv3.ProcessingResponse {
	ir := &extprocv3.ImmediateResponse{Body: []byte(body), Headers: m}
	if code != 0 {
		ir.Status = &typev3.HttpStatus{Code: code}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: ir}}
}

// onRequest answers the request headers with resp and passes the response.
func onRequest(resp *extprocv3.ProcessingResponse) func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	return func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetRequestHeaders() != nil {
			return resp
		}
		return pass(req)
	}
}

func raw(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)}}
}

func headerValue(hm *corev3.HeaderMap, key string) (string, bool) {
	for _, h := range hm.GetHeaders() {
		if h.GetKey() == key {
			return string(h.GetRawValue()), true
		}
	}
	return "", false
}

// box passes a value from a handler goroutine to the test.
type box[T any] struct {
	mu sync.Mutex
	v  T
}

func (b *box[T]) set(v T) { b.mu.Lock(); b.v = v; b.mu.Unlock() }
func (b *box[T]) get() T  { b.mu.Lock(); defer b.mu.Unlock(); return b.v }

// ---- fake provider --------------------------------------------------------

type seenRequest struct {
	method, host, sni, uri string
	header                 http.Header
}

type provider struct {
	srv  *httptest.Server
	pool *x509.CertPool
	hits atomic.Int64

	mu   sync.Mutex
	last *seenRequest
}

// startProvider starts a TLS server whose certificate is valid for
// example.com and *.example.com. handle may be nil (200 "ok").
func startProvider(t *testing.T, handle http.HandlerFunc) *provider {
	t.Helper()
	pr := &provider{}
	pr.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr.hits.Add(1)
		pr.mu.Lock()
		pr.last = &seenRequest{method: r.Method, host: r.Host, sni: r.TLS.ServerName, uri: r.RequestURI, header: r.Header.Clone()}
		pr.mu.Unlock()
		if handle != nil {
			handle(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "ok")
	}))
	pr.srv.StartTLS()
	t.Cleanup(pr.srv.Close)
	pr.pool = x509.NewCertPool()
	pr.pool.AddCert(pr.srv.Certificate())
	return pr
}

func (pr *provider) lastRequest(t *testing.T) *seenRequest {
	t.Helper()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.last == nil {
		t.Fatal("the provider received no request")
	}
	return pr.last
}

// ---- proxy and client -----------------------------------------------------

type setup struct {
	proxy    *Proxy
	proc     *processor
	provider *provider
	client   *http.Client

	mu       sync.Mutex
	resolved []string
}

type option func(*Config)

func newSetup(t *testing.T, answer func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse, handle http.HandlerFunc, opts ...option) *setup {
	t.Helper()
	return newSetupWith(t, &processor{answer: answer}, handle, opts...)
}

// newSetupWith starts proc (configured before it serves), a provider and a
// proxy between them.
func newSetupWith(t *testing.T, proc *processor, handle http.HandlerFunc, opts ...option) *setup {
	t.Helper()
	s := &setup{proc: proc}
	addr := startProcessor(t, s.proc)
	s.provider = startProvider(t, handle)
	s.start(t, addr, opts...)
	return s
}

func (s *setup) start(t *testing.T, extProcAddr string, opts ...option) {
	t.Helper()
	upstreamAddr := s.provider.srv.Listener.Addr().String()
	cfg := Config{
		ExtProcAddr: extProcAddr,
		RootCAs:     s.provider.pool,
		Resolve: func(hostport string) (string, error) {
			s.mu.Lock()
			s.resolved = append(s.resolved, hostport)
			s.mu.Unlock()
			return upstreamAddr, nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// Generous, so that a loaded machine running -race cannot turn a
		// slow answer into a 504; the timeout tests set their own.
		MessageTimeout: 10 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := Start(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	s.proxy = p
	s.client = newClient(t, false)
}

func newClient(t *testing.T, h2c bool) *http.Client {
	protocols := new(http.Protocols)
	if h2c {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: protocols, Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// do sends a request to the proxy as the application would, with Host set
// to authority, and returns the response with its body read.
func (s *setup) do(t *testing.T, method, path, authority string, body io.Reader, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.proxy.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = authority
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func (s *setup) resolvedHosts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.resolved...)
}

func expectStatus(t *testing.T, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		t.Fatalf("status = %d, want %d", resp.StatusCode, want)
	}
}

func expectNotForwarded(t *testing.T, s *setup) {
	t.Helper()
	if n := s.provider.hits.Load(); n != 0 {
		t.Errorf("provider got %d requests, want none", n)
	}
	if n := s.proxy.Forwarded(); n != 0 {
		t.Errorf("Forwarded() = %d, want 0", n)
	}
}

// ---- tests ----------------------------------------------------------------

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// Request headers reach the processor as Envoy sends them.
func TestRequestHeadersAsEnvoySends(t *testing.T) {
	s := newSetup(t, pass, nil)
	resp, body := s.do(t, http.MethodGet, "/services/data?q=1", "api.example.com", nil, map[string]string{
		"X-Amp-Project-Id": "p1",
		"Connection":       "keep-alive, X-Hop",
		"X-Hop":            "secret-hop",
		"Keep-Alive":       "timeout=5",
	})
	expectStatus(t, resp, http.StatusOK)
	if body != "ok" {
		t.Errorf("body = %q", body)
	}
	msgs := s.proc.messages()
	if len(msgs) != 2 || msgs[0].GetRequestHeaders() == nil || msgs[1].GetResponseHeaders() == nil {
		t.Fatalf("processor saw %v, want request headers then response headers", msgs)
	}
	rh := msgs[0].GetRequestHeaders()
	if !rh.GetEndOfStream() {
		t.Error("end_of_stream is false for a GET without a body")
	}
	hs := rh.GetHeaders().GetHeaders()
	var keys []string
	for _, h := range hs {
		keys = append(keys, h.GetKey())
		if h.GetValue() != "" {
			t.Errorf("%s: value %q set; Envoy sends raw_value only", h.GetKey(), h.GetValue())
		}
		if h.GetKey() != strings.ToLower(h.GetKey()) {
			t.Errorf("header name %q is not lower case", h.GetKey())
		}
	}
	if len(keys) < 4 || strings.Join(keys[:4], " ") != ":method :path :authority :scheme" {
		t.Errorf("first headers = %v, want :method :path :authority :scheme", keys)
	}
	for k, want := range map[string]string{":method": "GET", ":path": "/services/data?q=1", ":authority": "api.example.com", ":scheme": "http", "x-amp-project-id": "p1", "x-forwarded-proto": "http"} {
		if got, _ := headerValue(rh.GetHeaders(), k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"connection", "x-hop", "keep-alive", "host"} {
		if _, ok := headerValue(rh.GetHeaders(), k); ok {
			t.Errorf("%s was sent to the processor", k)
		}
	}
	if id, _ := headerValue(rh.GetHeaders(), "x-request-id"); !uuidRE.MatchString(id) {
		t.Errorf("x-request-id = %q, want a generated UUID", id)
	}
	pc := msgs[0].GetProtocolConfig()
	if pc == nil || pc.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE || pc.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE {
		t.Errorf("protocol_config = %v, want body modes NONE", pc)
	}
	if msgs[1].GetProtocolConfig() != nil {
		t.Error("protocol_config sent again on the second message")
	}
	if hop := s.provider.lastRequest(t).header.Get("X-Hop"); hop != "" {
		t.Errorf("hop-by-hop header reached the provider: %q", hop)
	}

	// A second request opens a second stream, and keeps the caller's id.
	s.do(t, http.MethodGet, "/", "api.example.com", nil, map[string]string{"X-Request-Id": "caller-id"})
	if n := s.proc.streamCount(); n != 2 {
		t.Errorf("streams = %d after two requests, want 2", n)
	}
	if n := s.proxy.Stats().Streams; n != 2 {
		t.Errorf("Stats().Streams = %d, want 2", n)
	}
	if id, _ := headerValue(s.proc.messages()[2].GetRequestHeaders().GetHeaders(), "x-request-id"); id != "caller-id" {
		t.Errorf("x-request-id = %q, want the caller's", id)
	}
}

// The listener speaks h2c as well as HTTP/1.1, and bodies are never sent
// to the processor.
func TestH2CAndBodiesNotSent(t *testing.T) {
	var got box[string]
	s := newSetup(t, pass, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.set(string(b))
		_, _ = io.WriteString(w, "reply body")
	})
	s.client = newClient(t, true)
	resp, body := s.do(t, http.MethodPost, "/upload", "api.example.com", strings.NewReader("request body"), nil)
	expectStatus(t, resp, http.StatusOK)
	if resp.ProtoMajor != 2 {
		t.Errorf("client spoke %s, want HTTP/2", resp.Proto)
	}
	if got.get() != "request body" || body != "reply body" {
		t.Errorf("provider got %q, client got %q", got.get(), body)
	}
	msgs := s.proc.messages()
	if len(msgs) != 2 {
		t.Fatalf("processor saw %d messages, want 2 (headers only)", len(msgs))
	}
	if msgs[0].GetRequestHeaders().GetEndOfStream() {
		t.Error("request end_of_stream is true for a request with a body")
	}
	if msgs[1].GetResponseHeaders().GetEndOfStream() {
		t.Error("response end_of_stream is true for a response with a body")
	}
	for _, m := range msgs {
		if m.GetRequestBody() != nil || m.GetResponseBody() != nil || m.GetRequestTrailers() != nil || m.GetResponseTrailers() != nil {
			t.Errorf("processor got %T; body and trailer modes are NONE/SKIP", m.GetRequest())
		}
	}
}

// Header mutations in the request phase follow Envoy's rules.
func TestRequestMutationRules(t *testing.T) {
	type want struct {
		status   int
		header   map[string][]string // expected provider headers (nil slice: absent)
		host     string
		sni      string
		uri      string
		method   string
		rejected int64
	}
	cases := []struct {
		name     string
		mutation *extprocv3.HeaderMutation
		noRoute  bool
		want     want
	}{
		{"raw_value sets the header",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("authorization", "Bearer provider")}},
			false, want{status: 200, header: map[string][]string{"Authorization": {"Bearer provider"}}}},
		{"value alone sets an empty header",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-token", Value: "lost"}}}},
			false, want{status: 200, header: map[string][]string{"X-Token": {""}}}},
		{"value and raw_value both set fail the request",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-token", Value: "a", RawValue: []byte("a")}}}},
			false, want{status: 500, rejected: 1}},
		{"set overwrites every value the caller sent",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("x-multi", "ours")}},
			false, want{status: 200, header: map[string][]string{"X-Multi": {"ours"}}}},
		{"append false overwrites",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-multi", RawValue: []byte("ours")}, Append: wrapperspb.Bool(false)}}},
			false, want{status: 200, header: map[string][]string{"X-Multi": {"ours"}}}},
		{"append_action is not read",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-multi", RawValue: []byte("ours")}, AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD}}},
			false, want{status: 200, header: map[string][]string{"X-Multi": {"ours"}}}},
		{"append true adds a value",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-multi", RawValue: []byte("ours")}, Append: wrapperspb.Bool(true)}}},
			false, want{status: 200, header: map[string][]string{"X-Multi": {"a", "b", "ours"}}}},
		{"x-envoy headers are not changed",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("x-envoy-retry-on", "5xx")}, RemoveHeaders: []string{"x-envoy-caller"}},
			false, want{status: 200, header: map[string][]string{"X-Envoy-Retry-On": nil, "X-Envoy-Caller": {"kept"}}, rejected: 2}},
		{"pseudo-headers and host cannot be removed",
			&extprocv3.HeaderMutation{RemoveHeaders: []string{":path", ":authority", "host", ":method"}},
			false, want{status: 200, uri: "/v1/items?x=1", host: "api.example.com", rejected: 4}},
		{"removal of an ordinary header",
			&extprocv3.HeaderMutation{RemoveHeaders: []string{"X-Api-Key", "x-amp-project-id"}},
			false, want{status: 200, header: map[string][]string{"X-Api-Key": nil, "X-Amp-Project-Id": nil}}},
		{":authority change routes the request",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":authority", "acme.example.com")}},
			false, want{status: 200, host: "acme.example.com", sni: "acme.example.com"}},
		{":authority change is dropped without allow_all_routing",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":authority", "acme.example.com"), raw(":method", "DELETE"), raw("host", "acme.example.com"), raw(":scheme", "https")}},
			true, want{status: 200, host: "api.example.com", sni: "api.example.com", method: "GET", rejected: 4}},
		{":method change with allow_all_routing",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":method", "PATCH")}},
			false, want{status: 200, method: "PATCH"}},
		{":path change sets path and query",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":path", "/v2/items?api_key=k&x=1")}},
			false, want{status: 200, uri: "/v2/items?api_key=k&x=1"}},
		{"appending to a pseudo-header is ignored",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: ":path", RawValue: []byte("/other")}, Append: wrapperspb.Bool(true)}}},
			false, want{status: 200, uri: "/v1/items?x=1", rejected: 1}},
		{"invalid :authority is ignored",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":authority", "evil.example.com/path")}},
			false, want{status: 200, host: "api.example.com", rejected: 1}},
		{"CR LF in a value fails the request",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("x-token", "a\r\nx-injected: 1")}},
			false, want{status: 500, rejected: 1}},
		{"NUL in a value fails the request",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("x-token", "a\x00b")}},
			false, want{status: 500, rejected: 1}},
		{"CR LF in :path fails the request",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":path", "/a\r\n")}},
			false, want{status: 500, rejected: 1}},
		{"invalid header name fails the request",
			&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw("bad name", "v")}},
			false, want{status: 500, rejected: 1}},
		{"invalid name in remove_headers fails the request",
			&extprocv3.HeaderMutation{RemoveHeaders: []string{"bad\nname"}},
			false, want{status: 500, rejected: 1}},
		{"more than 100 headers to set fails the request",
			&extprocv3.HeaderMutation{SetHeaders: manyHeaders(101)},
			false, want{status: 500, rejected: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var opts []option
			if tc.noRoute {
				opts = append(opts, func(c *Config) { c.AllowAllRouting = new(bool) })
			}
			s := newSetup(t, onRequest(requestHeaders(tc.mutation)), nil, opts...)
			req, _ := http.NewRequest(http.MethodGet, s.proxy.URL()+"/v1/items?x=1", nil)
			req.Host = "api.example.com"
			req.Header.Add("X-Multi", "a")
			req.Header.Add("X-Multi", "b")
			req.Header.Set("X-Envoy-Caller", "kept")
			req.Header.Set("X-Api-Key", "caller-key")
			req.Header.Set("X-Amp-Project-Id", "p1")
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			expectStatus(t, resp, tc.want.status)
			if got := s.proxy.Stats().RejectedMutations; got != tc.want.rejected {
				t.Errorf("rejected mutations = %d, want %d", got, tc.want.rejected)
			}
			if tc.want.status != 200 {
				expectNotForwarded(t, s)
				return
			}
			got := s.provider.lastRequest(t)
			for k, vs := range tc.want.header {
				if g := got.header.Values(k); fmt.Sprint(g) != fmt.Sprint(vs) || (vs == nil) != (g == nil) {
					t.Errorf("provider header %s = %q, want %q", k, g, vs)
				}
			}
			if tc.want.host != "" && got.host != tc.want.host {
				t.Errorf("provider Host = %q, want %q", got.host, tc.want.host)
			}
			if tc.want.sni != "" && got.sni != tc.want.sni {
				t.Errorf("SNI = %q, want %q", got.sni, tc.want.sni)
			}
			if tc.want.uri != "" && got.uri != tc.want.uri {
				t.Errorf("provider request URI = %q, want %q", got.uri, tc.want.uri)
			}
			if tc.want.method != "" && got.method != tc.want.method {
				t.Errorf("provider method = %q, want %q", got.method, tc.want.method)
			}
		})
	}
}

// CONTINUE_AND_REPLACE may change :method even without allow_all_routing,
// and its body mutation replaces the request body.
func TestContinueAndReplace(t *testing.T) {
	var got box[string]
	s := newSetup(t, onRequest(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{
		RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{
			Status:         extprocv3.CommonResponse_CONTINUE_AND_REPLACE,
			HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":method", "POST")}},
			BodyMutation:   &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("replacement")}},
		}},
	}}), func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.set(r.Method + " " + string(b))
	}, func(c *Config) { c.AllowAllRouting = new(bool) })
	resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusOK)
	if g := got.get(); g != "POST replacement" {
		t.Errorf("provider got %q, want %q", g, "POST replacement")
	}
}

func manyHeaders(n int) []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	for i := 0; i < n; i++ {
		out = append(out, raw(fmt.Sprintf("x-h%d", i), "v"))
	}
	return out
}

// An ImmediateResponse answers the caller directly; the provider is never
// contacted and there is no response phase.
func TestImmediateResponse(t *testing.T) {
	s := newSetup(t, onRequest(immediate(typev3.StatusCode_TooManyRequests, `{"status":429}`, &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{raw("content-type", "application/problem+json"), raw("retry-after", "30"), raw("x-envoy-ignored", "1")},
	})), nil)
	resp, body := s.do(t, http.MethodPost, "/x", "api.example.com", strings.NewReader("never sent"), nil)
	expectStatus(t, resp, http.StatusTooManyRequests)
	if body != `{"status":429}` {
		t.Errorf("body = %q", body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("content-type = %q", ct)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "30" {
		t.Errorf("retry-after = %q", ra)
	}
	if resp.Header.Get("X-Envoy-Ignored") != "" {
		t.Error("an x-envoy header was set on an immediate response")
	}
	expectNotForwarded(t, s)
	if n := len(s.proc.messages()); n != 1 {
		t.Errorf("processor saw %d messages, want 1 (no response phase)", n)
	}

	// No status: 200, and a body without content-type is text/plain.
	s2 := newSetup(t, onRequest(immediate(0, "plain", nil)), nil)
	resp, body = s2.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusOK)
	if body != "plain" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("got %q with content-type %q", body, resp.Header.Get("Content-Type"))
	}
	expectNotForwarded(t, s2)
}

// The response phase sees the provider's headers and its answer is applied.
func TestResponsePhase(t *testing.T) {
	var respMsg *extprocv3.HttpHeaders
	var mu sync.Mutex
	answer := func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if rh := req.GetResponseHeaders(); rh != nil {
			mu.Lock()
			respMsg = rh
			mu.Unlock()
			return responseHeaders(&extprocv3.HeaderMutation{
				SetHeaders:    []*corev3.HeaderValueOption{raw("x-amp-retryable", "true"), raw(":status", "299")},
				RemoveHeaders: []string{"x-provider-internal"},
			})
		}
		return pass(req)
	}
	s := newSetup(t, answer, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-RateLimit-Reset", "1700000000")
		w.Header().Set("X-Provider-Internal", "1")
		w.Header().Set("Connection", "X-Private")
		w.Header().Set("X-Private", "hop")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, "slow down")
	})
	resp, body := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, 299)
	if body != "slow down" {
		t.Errorf("body = %q", body)
	}
	if resp.Header.Get("X-Amp-Retryable") != "true" || resp.Header.Get("X-Provider-Internal") != "" {
		t.Errorf("response headers = %v", resp.Header)
	}
	if resp.Header.Get("X-Ratelimit-Reset") != "1700000000" {
		t.Error("provider header lost")
	}
	mu.Lock()
	defer mu.Unlock()
	hs := respMsg.GetHeaders().GetHeaders()
	if len(hs) == 0 || hs[0].GetKey() != ":status" || string(hs[0].GetRawValue()) != "429" {
		t.Fatalf("response headers message = %v, want :status 429 first", hs)
	}
	for _, h := range hs {
		if h.GetKey() != strings.ToLower(h.GetKey()) || h.GetValue() != "" {
			t.Errorf("header %q: want a lower-case name and raw_value only", h.GetKey())
		}
		if h.GetKey() == "connection" {
			t.Error("connection reached the processor")
		}
	}
	if v, _ := headerValue(respMsg.GetHeaders(), "x-ratelimit-reset"); v != "1700000000" {
		t.Errorf("x-ratelimit-reset = %q", v)
	}
}

// An invalid :status is ignored; an ImmediateResponse in the response
// phase replaces the provider's response.
func TestResponsePhaseStatusAndImmediate(t *testing.T) {
	s := newSetup(t, func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetResponseHeaders() != nil {
			return responseHeaders(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{raw(":status", "99")}})
		}
		return pass(req)
	}, nil)
	resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusOK)
	if n := s.proxy.Stats().RejectedMutations; n != 1 {
		t.Errorf("rejected = %d, want 1", n)
	}

	s2 := newSetup(t, func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetResponseHeaders() != nil {
			return immediate(typev3.StatusCode_BadGateway, "replaced", nil)
		}
		return pass(req)
	}, nil)
	resp, body := s2.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusBadGateway)
	if body != "replaced" {
		t.Errorf("body = %q", body)
	}
	if s2.provider.hits.Load() != 1 {
		t.Error("provider was not called")
	}
}

// A processor that never answers gets a 504 after the message timeout.
func TestMessageTimeout(t *testing.T) {
	never := func(*extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse { return nil }
	s := newSetup(t, never, nil, func(c *Config) { c.MessageTimeout = 20 * time.Millisecond })
	resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusGatewayTimeout)
	expectNotForwarded(t, s)
	if n := s.proxy.Stats().MessageTimeouts; n != 1 {
		t.Errorf("MessageTimeouts = %d, want 1", n)
	}

	// The same bound applies in the response phase.
	silentOnResponse := func(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
		if req.GetResponseHeaders() != nil {
			return nil
		}
		return pass(req)
	}
	// Long enough for the request phase to be answered in time even on a
	// loaded machine; the response phase is never answered.
	s2 := newSetup(t, silentOnResponse, nil, func(c *Config) { c.MessageTimeout = time.Second })
	resp, _ = s2.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusGatewayTimeout)
	if n := s2.provider.hits.Load(); n != 1 {
		t.Errorf("provider got %d requests, want 1 (the timeout was to be in the response phase)", n)
	}
}

// override_message_timeout does not extend the timeout (no
// max_message_timeout is configured) and is otherwise ignored.
func TestOverrideMessageTimeoutIgnored(t *testing.T) {
	s := newSetupWith(t, &processor{process: func(srv extprocv3.ExternalProcessor_ProcessServer) error {
		if _, err := srv.Recv(); err != nil {
			return nil
		}
		_ = srv.Send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(time.Hour)})
		<-srv.Context().Done()
		return nil
	}}, nil, func(c *Config) { c.MessageTimeout = 200 * time.Millisecond })
	// The 504 must come from the 200ms timeout, not from the hour the
	// override asks for; the client's bound only tells the two apart, far
	// above the one and far below the other, so load cannot trip it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.proxy.URL()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "api.example.com"
	resp, err := s.client.Do(req)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("no answer within 5s: the override extended the message timeout")
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	expectStatus(t, resp, http.StatusGatewayTimeout)
	expectNotForwarded(t, s)
	if n := s.proxy.Stats().MessageTimeouts; n != 1 {
		t.Errorf("MessageTimeouts = %d, want 1", n)
	}
}

// Fail closed: a gRPC error, a broken connection or an unreachable
// processor gives 500 and the provider is never contacted.
func TestProcessorFailuresFailClosed(t *testing.T) {
	t.Run("error status", func(t *testing.T) {
		s := newSetupWith(t, &processor{process: func(srv extprocv3.ExternalProcessor_ProcessServer) error {
			_, _ = srv.Recv()
			return status.Error(codes.Internal, "boom")
		}}, nil)
		resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
		expectStatus(t, resp, http.StatusInternalServerError)
		expectNotForwarded(t, s)
		if n := s.proxy.Stats().StreamsFailed; n != 1 {
			t.Errorf("StreamsFailed = %d, want 1", n)
		}
	})
	t.Run("error in the response phase", func(t *testing.T) {
		s := newSetupWith(t, &processor{process: func(srv extprocv3.ExternalProcessor_ProcessServer) error {
			if _, err := srv.Recv(); err != nil {
				return nil
			}
			_ = srv.Send(requestHeaders(nil))
			_, _ = srv.Recv()
			return status.Error(codes.Unavailable, "gone")
		}}, nil)
		resp, body := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
		expectStatus(t, resp, http.StatusInternalServerError)
		if body == "ok" {
			t.Error("the provider's body reached the caller")
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := lis.Addr().String()
		lis.Close()
		s := &setup{provider: startProvider(t, nil)}
		s.start(t, addr)
		resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
		expectStatus(t, resp, http.StatusInternalServerError)
		expectNotForwarded(t, s)
	})
	t.Run("connection broken", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		t.Cleanup(func() { lis.Close(); <-done })
		s := &setup{provider: startProvider(t, nil)}
		s.start(t, lis.Addr().String())
		resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
		expectStatus(t, resp, http.StatusInternalServerError)
		expectNotForwarded(t, s)
	})
}

// A stream that breaks after the processor has the request headers, while
// the request waits for the answer, fails the request with 500 and nothing
// reaches the provider: the processor's server stops, or its connection is
// cut as when its process dies.
func TestStreamBrokenMidRequest(t *testing.T) {
	for _, how := range []string{"server stopped", "connection cut"} {
		t.Run(how, func(t *testing.T) {
			got := make(chan struct{})
			var once sync.Once
			proc := &processor{process: func(srv extprocv3.ExternalProcessor_ProcessServer) error {
				if _, err := srv.Recv(); err != nil {
					return nil
				}
				once.Do(func() { close(got) })
				<-srv.Context().Done() // never answers
				return nil
			}}
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer()
			extprocv3.RegisterExternalProcessorServer(g, proc)
			served := make(chan struct{})
			go func() { defer close(served); _ = g.Serve(lis) }()
			t.Cleanup(func() { g.Stop(); <-served })
			addr := lis.Addr().String()
			var r *relay
			if how == "connection cut" {
				r = startRelay(t, addr)
				addr = r.addr()
			}
			s := &setup{provider: startProvider(t, nil)}
			s.start(t, addr)

			ended := make(chan struct{})
			t.Cleanup(func() { close(ended) })
			go func() {
				select {
				case <-got:
				case <-ended:
					return
				}
				if r != nil {
					r.cut()
				} else {
					g.Stop()
				}
			}()
			resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, map[string]string{"X-Api-Key": "caller-key"})
			expectStatus(t, resp, http.StatusInternalServerError)
			expectNotForwarded(t, s)
			if n := s.proxy.Stats().StreamsFailed; n != 1 {
				t.Errorf("StreamsFailed = %d, want 1", n)
			}
			if n := s.proxy.Stats().MessageTimeouts; n != 0 {
				t.Errorf("MessageTimeouts = %d: the failure was to be the broken stream", n)
			}
		})
	}
}

// relay forwards TCP connections to a backend until cut, which resets
// every connection it carries, as a process that dies does.
type relay struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startRelay(t *testing.T, backend string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, b)
			r.mu.Unlock()
			r.wg.Add(2)
			go func() { defer r.wg.Done(); _, _ = io.Copy(b, c); b.Close() }()
			go func() { defer r.wg.Done(); _, _ = io.Copy(c, b); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.cut(); r.wg.Wait() })
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		c.Close()
	}
	r.conns = nil
}

// An answer of the wrong kind fails the request (Envoy 1.35 and later).
func TestSpuriousAnswer(t *testing.T) {
	s := newSetup(t, onRequest(responseHeaders(nil)), nil)
	resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusInternalServerError)
	expectNotForwarded(t, s)
	if n := s.proxy.Stats().SpuriousMessages; n != 1 {
		t.Errorf("SpuriousMessages = %d, want 1", n)
	}
}

// A processor that ends the stream with status OK before answering lets
// the request through unchanged: Envoy treats it as done. This is why the
// ext_proc server must never return early without an error.
func TestStreamClosedOKForwardsUnchanged(t *testing.T) {
	s := newSetupWith(t, &processor{process: func(srv extprocv3.ExternalProcessor_ProcessServer) error {
		_, _ = srv.Recv()
		return nil
	}}, nil)
	resp, _ := s.do(t, http.MethodGet, "/", "api.example.com", nil, map[string]string{"X-Api-Key": "caller-key"})
	expectStatus(t, resp, http.StatusOK)
	if got := s.provider.lastRequest(t).header.Get("X-Api-Key"); got != "caller-key" {
		t.Errorf("provider x-api-key = %q; Envoy forwards the request unprocessed", got)
	}
	if n := s.proxy.Stats().ResponsePhases; n != 0 {
		t.Errorf("ResponsePhases = %d after the stream closed, want 0", n)
	}
}

// Forwarding: TLS with SNI and certificate checks for the :authority host,
// port 443 unless :authority names one.
func TestForwardingTLS(t *testing.T) {
	s := newSetup(t, pass, nil)
	s.do(t, http.MethodGet, "/a", "api.example.com", nil, nil)
	s.do(t, http.MethodGet, "/b", "api.example.com:8443", nil, nil)
	if got := s.resolvedHosts(); fmt.Sprint(got) != "[api.example.com:443 api.example.com:8443]" {
		t.Errorf("dialled %v, want api.example.com:443 then api.example.com:8443", got)
	}
	last := s.provider.lastRequest(t)
	if last.sni != "api.example.com" || last.host != "api.example.com:8443" {
		t.Errorf("SNI %q, Host %q; want the host without port as SNI and :authority as Host", last.sni, last.host)
	}

	// A certificate not valid for the host fails like a connection failure.
	resp, body := s.do(t, http.MethodGet, "/", "api.other.test", nil, nil)
	expectStatus(t, resp, http.StatusServiceUnavailable)
	if !strings.HasPrefix(body, "upstream connect error or disconnect/reset before headers. reset reason: connection failure") {
		t.Errorf("body = %q", body)
	}

	// So does a certificate from a CA the proxy does not trust.
	s2 := newSetup(t, pass, nil, func(c *Config) { c.RootCAs = x509.NewCertPool() })
	resp, _ = s2.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusServiceUnavailable)
	if n := s2.provider.hits.Load(); n != 0 {
		t.Errorf("provider served %d requests over an untrusted connection", n)
	}
}

// An unreachable provider gives Envoy's 503 local reply, which still goes
// through ext_proc's response phase.
func TestUpstreamUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	s := newSetup(t, pass, nil, func(c *Config) {
		c.Resolve = func(string) (string, error) { return closed, nil }
	})
	resp, body := s.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusServiceUnavailable)
	if !strings.HasPrefix(body, "upstream connect error or disconnect/reset before headers. reset reason: connection failure") {
		t.Errorf("body = %q", body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain" {
		t.Errorf("content-type = %q", ct)
	}
	msgs := s.proc.messages()
	if len(msgs) != 2 || msgs[1].GetResponseHeaders() == nil {
		t.Fatalf("processor saw %d messages, want request and response headers", len(msgs))
	}
	if st, _ := headerValue(msgs[1].GetResponseHeaders().GetHeaders(), ":status"); st != "503" {
		t.Errorf("response phase :status = %q, want 503", st)
	}

	s2 := newSetup(t, pass, nil, func(c *Config) {
		c.Resolve = func(string) (string, error) { return "", errors.New("no such host") }
	})
	resp, body = s2.do(t, http.MethodGet, "/", "api.example.com", nil, nil)
	expectStatus(t, resp, http.StatusServiceUnavailable)
	if body != "DNS resolution failure" {
		t.Errorf("body = %q", body)
	}
}

// Bodies stream both ways: the provider sees request bytes before the
// caller has finished sending, and the caller sees response bytes before
// the provider has finished, with 20 MiB each way arriving intact.
func TestBodiesStream(t *testing.T) {
	const size = 20 << 20
	const first = 1 << 20
	providerGotBytes := make(chan struct{})
	callerGotBytes := make(chan struct{})
	var reqSum box[[32]byte]
	s := newSetup(t, pass, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		buf := make([]byte, 64*1024)
		n, err := r.Body.Read(buf)
		if n == 0 {
			t.Errorf("provider read nothing: %v", err)
			return
		}
		h.Write(buf[:n])
		close(providerGotBytes)
		if _, err := io.Copy(h, r.Body); err != nil {
			t.Errorf("provider reading body: %v", err)
			return
		}
		reqSum.set([32]byte(h.Sum(nil)))

		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(pattern(0, first))
		w.(http.Flusher).Flush()
		select {
		case <-callerGotBytes:
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
			t.Error("caller got no response bytes before the provider finished: the proxy buffers responses")
			return
		}
		_, _ = w.Write(pattern(first, size-first))
	})

	pr, pw := io.Pipe()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		if _, err := pw.Write(pattern(0, first)); err != nil {
			return
		}
		select {
		case <-providerGotBytes:
		case <-time.After(30 * time.Second):
			pw.CloseWithError(errors.New("provider got no request bytes before the body ended: the proxy buffers requests"))
			return
		}
		_, err := pw.Write(pattern(first, size-first))
		pw.CloseWithError(err)
	}()
	t.Cleanup(func() { pr.Close(); <-writerDone })

	req, _ := http.NewRequest(http.MethodPost, s.proxy.URL()+"/bulk", pr)
	req.Host = "api.example.com"
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	expectStatus(t, resp, http.StatusOK)
	h := sha256.New()
	buf := make([]byte, 64*1024)
	n, err := resp.Body.Read(buf)
	if n == 0 {
		t.Fatalf("no response bytes: %v", err)
	}
	h.Write(buf[:n])
	close(callerGotBytes)
	got, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if int(got)+n != size {
		t.Errorf("caller got %d bytes, want %d", int(got)+n, size)
	}
	want := sha256.Sum256(pattern(0, size))
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Error("response body corrupted")
	}
	if reqSum.get() != want {
		t.Error("request body corrupted")
	}
}

// pattern returns n deterministic bytes starting at offset off.
func pattern(off, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		x := off + i
		b[i] = byte(x*31 + x>>11)
	}
	return b
}

func TestStartAndClose(t *testing.T) {
	if _, err := Start(Config{}, "127.0.0.1:0"); err == nil {
		t.Error("Start without ExtProcAddr succeeded")
	}
	if _, err := Start(Config{ExtProcAddr: "127.0.0.1:1", MessageTimeout: -1}, "127.0.0.1:0"); err == nil {
		t.Error("Start with a negative timeout succeeded")
	}
	p, err := Start(Config{ExtProcAddr: "unix:///nonexistent/extproc.sock"}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if p.timeout != DefaultMessageTimeout || DefaultMessageTimeout != 200*time.Millisecond {
		t.Errorf("message timeout = %v, want Envoy's default 200ms", p.timeout)
	}
	if !p.rules.allowAllRouting {
		t.Error("allow_all_routing is not on by default")
	}
	if !strings.HasPrefix(p.URL(), "http://127.0.0.1:") {
		t.Errorf("URL = %q", p.URL())
	}
	addr := p.Addr()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("listener still accepts after Close")
	}
}
