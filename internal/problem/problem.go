// Package problem is the error body ampproxy answers with, on the data path
// and on the admin API alike: RFC 9457 application/problem+json with the
// five members DESIGN §2 fixes, always present.
//
// It owns the shape and the type URIs; it does not decide statuses, which
// belong to the callers (extproc for the proxy contract, admin for the API).
package problem

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// ContentType is the media type of every problem body.
const ContentType = "application/problem+json"

// TypePrefix starts every problem type URI; the rest is a slug listed in
// the README's "Errors" section.
const TypePrefix = "urn:ampproxy:problem:"

// Problem is one error answer. Detail never holds a secret: it is written
// from fixed text and the names of headers and fields.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	RequestID string `json:"requestId"`

	// Headers are extra response headers (Retry-After and the like), as
	// lower-case name and value pairs.
	Headers [][2]string `json:"-"`
}

// New returns a problem whose title is the status's reason phrase.
func New(status int, slug, detail string) *Problem {
	return &Problem{Type: TypePrefix + slug, Title: http.StatusText(status), Status: status, Detail: detail}
}

// WithRetryAfter adds a Retry-After header in seconds.
func (p *Problem) WithRetryAfter(seconds int) *Problem {
	p.Headers = append(p.Headers, [2]string{"retry-after", strconv.Itoa(seconds)})
	return p
}

// Slug is the type without its prefix.
func (p *Problem) Slug() string {
	if len(p.Type) >= len(TypePrefix) {
		return p.Type[len(TypePrefix):]
	}
	return p.Type
}

// JSON is the body.
func (p *Problem) JSON() []byte {
	b, err := json.Marshal(p)
	if err != nil {
		// Every member is a string or an int: Marshal cannot fail.
		panic(err)
	}
	return b
}

// Write answers an HTTP request with the problem.
func (p *Problem) Write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Cache-Control", "no-store")
	for _, kv := range p.Headers {
		h.Set(kv[0], kv[1])
	}
	w.WriteHeader(p.Status)
	w.Write(p.JSON())
}
