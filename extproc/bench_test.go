package extproc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/throttle"
	"github.com/ampproxy/ampproxy/tokens"
)

var respHeaders = &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
	{Key: ":status", RawValue: []byte("200")},
	{Key: "content-type", RawValue: []byte("application/json")},
}}}

// realStore copies newFixture's records into a tokens.Store, so that a
// benchmark looks records up as serve does: in the store's in-memory
// indexes, under its read lock, rather than in the fake's scanned map.
func realStore(b *testing.B) *tokens.Store {
	b.Helper()
	key := make([]byte, tokens.KeySize)
	s, err := tokens.Open(filepath.Join(b.TempDir(), "store.db"), key, tokens.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	f := newFixture()
	for _, in := range f.insts {
		c := *f.conns[in.ConnectionID]
		c.ID, c.AuthScheme = "", tokens.SchemeAPIKey
		if c.Credential.AccessToken != "" {
			c.AuthScheme = tokens.SchemeOAuth2AuthorizationCode
		}
		nc, err := s.PutConnection(&c)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.CreateInstallation(&tokens.Installation{ProjectID: in.ProjectID, Integration: in.Integration, GroupRef: in.GroupRef, ConnectionID: nc.ID}); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkHandlers measures ampproxy's own work for one request: the
// request phase and the response phase, without gRPC, with the records
// in a real tokens.Store. oauth-int uses the stored token as it is (no
// token source); oauth-refresher asks a tokens.Refresher, as serve does,
// for a token that is valid, which it answers from memory.
func BenchmarkHandlers(b *testing.B) {
	store := realStore(b)
	for _, name := range []string{"key-int", "query-int", "oauth-int", "oauth-refresher"} {
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, store)
			integ := name
			if name == "oauth-refresher" {
				integ = "oauth-int"
				h.srv.tokens = benchRefresher(b, h.srv.cfg.Load().Providers)
			}
			req := &extprocv3.HttpHeaders{Headers: envoyHeaders("/services/data/v56.0/sobjects/Account?limit=10", proxyHeaders(integ, "g1")...), EndOfStream: true}
			h.srv.log = discardLogger
			b.ReportAllocs()
			// Process takes the stream's block from a pool and clears it
			// after the stream; so does the benchmark.
			st := new(stream)
			for b.Loop() {
				*st = stream{ctx: context.Background()}
				if r := h.srv.requestHeaders(st, req); r.GetRequestHeaders() == nil {
					b.Fatal(r)
				}
				h.srv.responseHeaders(st, respHeaders)
				h.srv.logRequest(st)
			}
		})
	}
}

// BenchmarkHandlersThrottle measures ampproxy's own work for a
// throttle-mode request with a real throttle.Table holding 10,000 windows
// of other connections: "unlocked" is forwarded and its response phase
// runs (Check finds no window for its connection; compare with
// BenchmarkHandlers/key-int, the same request without the header, which
// skips Check); "locked" is answered 429 by ampproxy in the request phase
// (Check finds one), the problem+json body and headers included.
func BenchmarkHandlersThrottle(b *testing.B) {
	for _, c := range []struct {
		name   string
		locked bool
	}{{"unlocked", false}, {"locked", true}} {
		b.Run(c.name, func(b *testing.B) {
			tab, err := throttle.New(throttle.Options{})
			if err != nil {
				b.Fatal(err)
			}
			for i := range 10_000 {
				if _, err := tab.Observe429(context.Background(), fmt.Sprint("other-", i), "testKey", nil, catalog.RateLimit{}, now); err != nil {
					b.Fatal(err)
				}
			}
			if c.locked {
				if _, err := tab.Observe429(context.Background(), "c-key", "testKey", nil, catalog.RateLimit{}, now); err != nil {
					b.Fatal(err)
				}
			}
			h := newHarnessWith(b, Options{Store: newFixture(), Lockouts: tab})
			h.srv.log = discardLogger
			req := &extprocv3.HttpHeaders{Headers: envoyHeaders("/v1/items", proxyHeaders("key-int", "g1", "x-amp-rate-limiter-mode", "throttle")...), EndOfStream: true}
			b.ReportAllocs()
			for b.Loop() {
				st := &stream{ctx: context.Background()}
				r := h.srv.requestHeaders(st, req)
				if got := r.GetImmediateResponse() != nil; got != c.locked {
					b.Fatalf("short-circuited = %t, want %t", got, c.locked)
				}
				if !c.locked {
					h.srv.responseHeaders(st, respHeaders)
				}
				h.srv.logRequest(st)
			}
		})
	}
}

// benchRefresher is a Refresher on the fixture's clock, with no network.
// The request path hands it the connection from extproc's store; with a
// valid token it reads nothing else, so its own store stays empty.
func benchRefresher(b *testing.B, cat *catalog.Catalog) *tokens.Refresher {
	b.Helper()
	dir := b.TempDir()
	key, err := tokens.LoadKey(filepath.Join(dir, "key"), true)
	if err != nil {
		b.Fatal(err)
	}
	store, err := tokens.Open(filepath.Join(dir, "db"), key, tokens.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	r := tokens.NewRefresher(tokens.RefresherOptions{
		Store:     store,
		Providers: func() *catalog.Catalog { return cat },
		Now:       func() time.Time { return now },
		Logger:    discardLogger,
	})
	b.Cleanup(r.Close)
	return r
}

// BenchmarkStream measures one full ext_proc stream as Envoy drives it
// (open, request headers, response headers, close) over an in-process gRPC
// connection. Allocations include the client side of the benchmark.
func BenchmarkStream(b *testing.B) {
	h := newHarness(b, newFixture())
	h.srv.log = discardLogger
	req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: envoyHeaders("/v1/items", proxyHeaders("key-int", "g1")...), EndOfStream: true}}}
	resp := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: respHeaders}}
	b.ReportAllocs()
	for b.Loop() {
		st, err := h.cli.Process(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		st.Send(req)
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		st.Send(resp)
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
		st.CloseSend()
		st.Recv()
	}
}

// BenchmarkRequestLog measures the one log line per request as serve
// writes it by default (JSON, info), to a writer that discards it.
func BenchmarkRequestLog(b *testing.B) {
	h := newHarness(b, newFixture())
	h.srv.log = slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	req := &extprocv3.HttpHeaders{Headers: envoyHeaders("/v1/items", proxyHeaders("key-int", "g1")...), EndOfStream: true}
	st := &stream{ctx: context.Background()}
	h.srv.requestHeaders(st, req)
	h.srv.responseHeaders(st, respHeaders)
	st.start = time.Now()
	b.ReportAllocs()
	for b.Loop() {
		h.srv.logRequest(st)
	}
}
