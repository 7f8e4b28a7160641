package loadgen

import (
	"crypto/rand"
	"encoding/hex"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// messages are one worker's ext_proc requests, built once and reused for
// every stream. Per request only three things change, in place: the bytes
// of x-request-id, and which shared value the selector headers point at.
// That is safe because a message is changed only after the stream that
// sent it has ended (grpc-go encodes a message inside SendMsg, and the
// generator installs no stats handler that could read it later).
type messages struct {
	request     *extprocv3.ProcessingRequest
	ok, tooMany *extprocv3.ProcessingRequest

	requestID []byte // the value of x-request-id, rewritten per request
	// sel are the selector headers (x-amp-installation-id, or
	// x-amp-integration-name and x-amp-group-ref) whose values follow
	// the installation chosen for each request.
	sel  []*corev3.HeaderValue
	vals [][][]byte // per installation, the values for sel in order
	next int        // the next installation to use
	seq  uint64     // request counter, the tail of x-request-id
}

// selectors turns the installations into header names and, per
// installation, values. Installations are validated by Options.check.
func selectors(insts []Installation) (names []string, vals [][][]byte) {
	if insts[0].ID != "" {
		names = []string{"x-amp-installation-id"}
	} else {
		names = []string{"x-amp-group-ref", "x-amp-integration-name"}
	}
	vals = make([][][]byte, len(insts))
	for i, in := range insts {
		if in.ID != "" {
			vals[i] = [][]byte{[]byte(in.ID)}
		} else {
			vals[i] = [][]byte{[]byte(in.GroupRef), []byte(in.Integration)}
		}
	}
	return names, vals
}

// newMessages builds a worker's messages. vals is shared between workers
// and only read; start staggers the workers through the installations.
func newMessages(o *Options, selNames []string, vals [][][]byte, start int) *messages {
	m := &messages{vals: vals, next: start % len(vals), requestID: newRequestID()}

	// What Envoy's HTTP connection manager hands the ext_proc filter for a
	// plain HTTP/1.1 request from a client such as curl: pseudo-headers
	// first, then the rest lower-cased (Envoy's HeaderMap keys are
	// LowerCaseString), x-forwarded-proto and x-request-id added by the
	// connection manager. Every value is in raw_value, none in value
	// (MutationUtils::headersToProto since Envoy 1.27).
	other := map[string][]byte{
		"accept":              []byte("*/*"),
		"user-agent":          []byte("curl/8.5.0"),
		"x-amp-proxy-version": []byte("1"),
		"x-amp-project-id":    []byte(o.ProjectID),
		"x-api-key":           []byte(o.APIKey),
		"x-forwarded-proto":   []byte("http"),
		"x-request-id":        m.requestID,
	}
	if o.ThrottleMode {
		other["x-amp-rate-limiter-mode"] = []byte("throttle")
	}
	for _, n := range selNames {
		other[n] = nil // filled per request
	}
	names := make([]string, 0, len(other))
	for n := range other {
		names = append(names, n)
	}
	sort.Strings(names)
	hs := []*corev3.HeaderValue{
		{Key: ":method", RawValue: []byte(o.Method)},
		{Key: ":path", RawValue: []byte(o.Path)},
		{Key: ":authority", RawValue: []byte(o.Authority)},
		{Key: ":scheme", RawValue: []byte("http")},
	}
	for _, n := range names {
		hv := &corev3.HeaderValue{Key: n, RawValue: other[n]}
		hs = append(hs, hv)
		for _, s := range selNames {
			if s == n {
				m.sel = append(m.sel, hv)
			}
		}
	}
	// sel must follow selNames' order, which sorting kept: both lists are
	// sorted (group-ref before integration-name).
	m.request = &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: hs},
			// A GET without a body: the headers end the request.
			EndOfStream: o.Method == "GET" || o.Method == "HEAD",
		}},
		// Envoy sends its body modes with the first message of every
		// stream (Filter::encodeProtocolConfig).
		ProtocolConfig: &extprocv3.ProtocolConfiguration{
			RequestBodyMode:  extprocfilterv3.ProcessingMode_NONE,
			ResponseBodyMode: extprocfilterv3.ProcessingMode_NONE,
		},
	}
	m.ok = responseHeaders(200, o.RetryAfter)
	m.tooMany = responseHeaders(429, o.RetryAfter)
	return m
}

// responseHeaders is what Envoy sends for an upstream response with a
// JSON body: :status first, then the upstream's headers as received.
func responseHeaders(status, retryAfter int) *extprocv3.ProcessingRequest {
	hs := []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte(strconv.Itoa(status))},
		{Key: "content-type", RawValue: []byte("application/json")},
		{Key: "content-length", RawValue: []byte("512")},
		{Key: "date", RawValue: []byte("Wed, 25 Nov 2026 12:00:00 GMT")},
	}
	if status == 429 {
		hs = append(hs, &corev3.HeaderValue{Key: "retry-after", RawValue: []byte(strconv.Itoa(retryAfter))})
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: hs}},
	}}
}

// newRequestID returns a random version 4 UUID as Envoy generates for
// x-request-id; advance rewrites its last 12 hex digits per request.
func newRequestID() []byte {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	b := make([]byte, 36)
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return b
}

const hexDigits = "0123456789abcdef"

// advance prepares the request message for the next stream: a fresh
// x-request-id and the next installation.
func (m *messages) advance() {
	m.seq++
	v := m.seq
	for i := 35; i >= 24; i-- {
		m.requestID[i] = hexDigits[v&0xf]
		v >>= 4
	}
	for i, hv := range m.sel {
		hv.RawValue = m.vals[m.next][i]
	}
	m.next++
	if m.next == len(m.vals) {
		m.next = 0
	}
}

// DecodeAllocs is how many heap objects protobuf-go allocates to decode
// the two messages of one stream as a server receives them: the request
// headers of o's first request and the :status 200 response headers,
// each into a new ProcessingRequest, as grpc-go's generated server code
// does. It is the part of a server's allocations per request that
// decoding alone accounts for, whatever the server then does. It counts
// with the calling process's counters, so nothing else in the process
// should allocate meanwhile.
func DecodeAllocs(o Options) (float64, error) {
	if err := o.check(); err != nil {
		return 0, err
	}
	o.defaults()
	names, vals := selectors(o.Installations)
	m := newMessages(&o, names, vals, 0)
	m.advance()
	var wire [][]byte
	for _, msg := range []*extprocv3.ProcessingRequest{m.request, m.ok} {
		b, err := proto.Marshal(msg)
		if err != nil {
			return 0, err
		}
		wire = append(wire, b)
	}
	const rounds = 1000
	decode := func() error {
		for _, b := range wire {
			if err := proto.Unmarshal(b, new(extprocv3.ProcessingRequest)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := decode(); err != nil { // warm protobuf-go's lazy tables
		return 0, err
	}
	before, _ := ProcessCounters()
	for range rounds {
		decode()
	}
	after, _ := ProcessCounters()
	return float64(after.Allocs-before.Allocs) / rounds, nil
}
