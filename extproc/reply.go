package extproc

import (
	"encoding/base64"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// maxSet is how many headers a forwarded request's mutation sets at most:
// :authority, the credential and :path.
const maxSet = 3

// reply holds the answers of one stream's common case, a forwarded
// request and its response phase, as one block allocated with the stream.
// Building them from separate allocations cost about twenty objects per
// request (every message of the nesting, each header option, value and
// value bytes); here they are fields, and the header values are appended
// to buf. grpc-go encodes a message inside Send, so nothing of the block
// is read once the stream's last Send has returned, and Process gives the
// block back to a pool for the next stream then (see the package's
// Caveats).
type reply struct {
	req    extprocv3.ProcessingResponse
	reqRH  extprocv3.ProcessingResponse_RequestHeaders
	reqHR  extprocv3.HeadersResponse
	reqCR  extprocv3.CommonResponse
	reqHM  extprocv3.HeaderMutation
	set    [maxSet]*corev3.HeaderValueOption
	opts   [maxSet]corev3.HeaderValueOption
	vals   [maxSet]corev3.HeaderValue
	remove [8]string // names of control headers to remove; grows past 8 by append
	buf    [128]byte // header values; grows past 128 by append
	vb     []byte

	resp   extprocv3.ProcessingResponse
	respRH extprocv3.ProcessingResponse_ResponseHeaders
	respHR extprocv3.HeadersResponse
}

// setHeader adds a header to the request mutation, the value in raw_value
// only and append unset (DESIGN §6).
func (r *reply) setHeader(name string, value []byte) {
	i := len(r.reqHM.SetHeaders)
	if r.reqHM.SetHeaders == nil {
		r.reqHM.SetHeaders = r.set[:0]
	}
	var o *corev3.HeaderValueOption
	if i < maxSet {
		o, r.vals[i].Key, r.vals[i].RawValue = &r.opts[i], name, value
		o.Header = &r.vals[i]
	} else {
		o = &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, RawValue: value}}
	}
	r.reqHM.SetHeaders = append(r.reqHM.SetHeaders, o)
}

// value returns the concatenation of parts as bytes of buf. The result is
// capped at its length, so later values never write into it.
func (r *reply) value(parts ...string) []byte {
	if r.vb == nil {
		r.vb = r.buf[:0]
	}
	start := len(r.vb)
	for _, p := range parts {
		r.vb = append(r.vb, p...)
	}
	return r.vb[start:len(r.vb):len(r.vb)]
}

// forward returns the request-phase answer: the mutation with the headers
// set so far, removals, and clear_route_cache.
func (r *reply) forward(remove []string) *extprocv3.ProcessingResponse {
	r.reqHM.RemoveHeaders = remove
	r.reqCR.HeaderMutation = &r.reqHM
	// The route was chosen on the caller's :authority; the new one must
	// pick the dynamic-forward-proxy route again. Envoy honours this only
	// together with a mutation, which this answer always carries.
	r.reqCR.ClearRouteCache = true
	r.reqHR.Response = &r.reqCR
	r.reqRH.RequestHeaders = &r.reqHR
	r.req.Response = &r.reqRH
	return &r.req
}

// pass returns the response-phase answer that changes nothing.
func (r *reply) pass() *extprocv3.ProcessingResponse {
	r.respRH.ResponseHeaders = &r.respHR
	r.resp.Response = &r.respRH
	return &r.resp
}

// view returns b as a string without copying it. It is used for header
// values of a decoded request message: protobuf-go copies bytes out of
// gRPC's buffer when it decodes, and nothing writes to a received message,
// so the bytes stay as they are for as long as the string is reachable.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// basic returns "Basic " and the base64 of user:password (RFC 7617) as
// bytes of buf, without building the joined string.
func (r *reply) basic(user, password string) []byte {
	if r.vb == nil {
		r.vb = r.buf[:0]
	}
	start := len(r.vb)
	r.vb = append(r.vb, "Basic "...)
	var tmp [128]byte
	raw := append(append(append(tmp[:0], user...), ':'), password...)
	r.vb = base64.StdEncoding.AppendEncode(r.vb, raw)
	clear(tmp[:])
	return r.vb[start:len(r.vb):len(r.vb)]
}
