package sampleprovider

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// BodySHA256Header carries, on a GET /v1/big answer, the hex SHA-256 of the
// body that follows, computed before the body is sent.
const BodySHA256Header = "X-Body-Sha256"

// MaxBigBytes is the largest body GET /v1/big serves.
const MaxBigBytes = 1 << 30

// Auth modes recorded in [Seen.Auth]: the first credential the API accepted,
// checked in this order.
const (
	AuthBearer      = "bearer"      // Authorization: Bearer <access token>
	AuthAPIKey      = "apiKey"      // X-Api-Key header
	AuthAPIKeyQuery = "apiKeyQuery" // api_key query parameter
	AuthBasic       = "basic"       // Authorization: Basic
)

// Seen is what the server recorded about one API request.
type Seen struct {
	Method      string
	Host        string // as the client sent it, port included if any
	Path        string // decoded URL path
	RawQuery    string
	Header      http.Header
	BodyLen     int64
	BodySHA256  string // hex
	ContentType string
	Auth        string // one of the Auth* constants; empty when rejected with 401
	Status      int    // the status the server answered
}

// Echo is the JSON body of a successful API call (other than GET /v1/big).
type Echo struct {
	Method string `json:"method"`
	Host   string `json:"host"`
	Path   string `json:"path"`
	Query  string `json:"query"`
	// Headers holds every request header under its lower-case name; repeated
	// headers are joined with ", ". Credentials are not masked.
	Headers     map[string]string `json:"headers"`
	BodyBytes   int64             `json:"bodyBytes"`
	BodySHA256  string            `json:"bodySha256"`
	ContentType string            `json:"contentType"`
	// Workspace is the first DNS label of the host, when it is not "api"
	// (acme.sample.test → "acme"); absent for "api.…" and IP addresses.
	Workspace string `json:"workspace,omitempty"`
}

// handleAPI serves /v1/...: authenticate, read the whole body through
// SHA-256, count, then answer 401, the rate-limit status, or the echo.
func (s *Server) handleAPI(w http.ResponseWriter, r *http.Request) {
	seen := &Seen{
		Method:      r.Method,
		Host:        r.Host,
		Path:        r.URL.Path,
		RawQuery:    r.URL.RawQuery,
		Header:      r.Header.Clone(),
		ContentType: r.Header.Get("Content-Type"),
		Auth:        s.authenticate(r),
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	seen.BodyLen, seen.BodySHA256 = n, hex.EncodeToString(h.Sum(nil))

	var (
		status  = http.StatusOK
		body    any
		limit   rateLimit
		bigSize int64 = -1
	)
	switch {
	case err != nil:
		status, body = http.StatusBadRequest, errorBody{Error: "bad_request"}
	case seen.Auth == "":
		status, body = http.StatusUnauthorized, errorBody{Error: "unauthorized"}
	default:
		var limited bool
		if limit, limited = s.takeRateLimit(r.URL.Path); limited {
			status, body = limit.status, errorBody{Error: "rate_limited"}
		} else if r.Method == http.MethodGet && r.URL.Path == "/v1/big" {
			bigSize, err = strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
			if err != nil || bigSize < 0 || bigSize > MaxBigBytes {
				bigSize = -1
				status, body = http.StatusBadRequest, errorBody{Error: "invalid_bytes"}
			}
		} else {
			body = echoOf(r, seen)
		}
	}
	seen.Status = status
	gate := s.held(r.URL.Path)
	s.record(seen)
	s.logRequest(r, status, seen.Auth)
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}

	// delay_ms holds the answer back, for tests of requests in flight.
	if ms, err := strconv.Atoi(r.URL.Query().Get("delay_ms")); err == nil && ms > 0 {
		select {
		case <-time.After(time.Duration(min(ms, 30_000)) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}

	switch {
	case limit.status != 0:
		for k, v := range limit.headers {
			w.Header().Set(k, v)
		}
	case status == http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="sampleprovider"`)
	case bigSize >= 0:
		s.serveBig(w, bigSize)
		return
	}
	writeJSON(w, status, body)
}

// authenticate returns the first accepted credential's mode, or "".
func (s *Server) authenticate(r *http.Request) string {
	if v, ok := single(r.Header.Values("Authorization")); ok {
		scheme, cred, _ := strings.Cut(v, " ")
		switch {
		case strings.EqualFold(scheme, "Bearer"):
			if s.validAccessToken(strings.TrimSpace(cred)) {
				return AuthBearer
			}
		case strings.EqualFold(scheme, "Basic") && (s.basicUser != "" || s.basicPass != ""):
			if u, p, ok := r.BasicAuth(); ok && equal(u, s.basicUser) && equal(p, s.basicPass) {
				return AuthBasic
			}
		}
	}
	if s.apiKey == "" {
		return ""
	}
	if v, ok := single(r.Header.Values("X-Api-Key")); ok && equal(v, s.apiKey) {
		return AuthAPIKey
	}
	if v, ok := single(r.URL.Query()["api_key"]); ok && equal(v, s.apiKey) {
		return AuthAPIKeyQuery
	}
	return ""
}

// single returns the only value of vs; a credential given twice counts as
// absent.
func single(vs []string) (string, bool) {
	if len(vs) != 1 {
		return "", false
	}
	return vs[0], true
}

func (s *Server) record(seen *Seen) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hits[seen.Path]++
	s.total++
	s.last = seen
}

func echoOf(r *http.Request, seen *Seen) Echo {
	e := Echo{
		Method:      seen.Method,
		Host:        seen.Host,
		Path:        seen.Path,
		Query:       seen.RawQuery,
		Headers:     make(map[string]string, len(r.Header)),
		BodyBytes:   seen.BodyLen,
		BodySHA256:  seen.BodySHA256,
		ContentType: seen.ContentType,
		Workspace:   workspace(r.Host),
	}
	for k, v := range r.Header {
		e.Headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	return e
}

func workspace(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || net.ParseIP(host) != nil {
		return ""
	}
	label, _, _ := strings.Cut(host, ".")
	if label == "api" {
		return ""
	}
	return label
}

// bigData returns the deterministic stream GET /v1/big serves. ChaCha8 is
// specified by its algorithm, so the bytes do not change between Go releases.
func bigData(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte([]byte("sampleprovider big body seed 001"))), n)
}

func (s *Server) serveBig(w http.ResponseWriter, n int64) {
	h := sha256.New()
	_, _ = io.Copy(h, bigData(n)) // reading from memory does not fail
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.Header().Set(BodySHA256Header, hex.EncodeToString(h.Sum(nil)))
	w.WriteHeader(http.StatusOK)
	// A write error means the client went away; there is nobody to tell.
	_, _ = io.Copy(w, bigData(n))
}

func (s *Server) logRequest(r *http.Request, status int, auth string) {
	s.log.LogAttrs(r.Context(), slog.LevelDebug, "sampleprovider request",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", status), slog.String("auth", auth))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
