package admin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/problem"
	"github.com/ampproxy/ampproxy/tokens"

	"github.com/ampproxy/ampproxy/throttle"
)

// Store is the part of the token store the admin API uses. *tokens.Store
// implements it; the semantics the handlers rely on are:
//
//   - Connection and Installation look up by ID across projects; the
//     handlers check the project themselves.
//   - ConnectionByGroup returns the group's newest connection to a provider.
//   - List* return one page and the token of the next ("" on the last
//     page); an unreadable token is tokens.ErrBadPageToken. A Page.Size of
//     0 means the store's default. ListInstallations with integration ""
//     lists every integration of the project.
//   - PutConnection with an empty ID creates the connection and assigns
//     its ID and times.
//   - UpdateConnection hands fn a copy of the project's connection id and
//     stores it only when fn returns nil, returning fn's error as is; a
//     connection that is missing or of another project is
//     tokens.ErrNotFound. Other writers of the connection (token refresh)
//     wait while fn runs, so fn sees and keeps their latest write.
//   - DeleteConnection answers tokens.ErrInUse while installations use
//     the connection; CreateInstallation answers tokens.ErrConflict when the
//     group already has the integration and tokens.ErrNotFound when the
//     connection is gone.
type Store interface {
	Connection(id string) (*tokens.Connection, bool)
	ConnectionByGroup(projectID, provider, groupRef string) (*tokens.Connection, bool)
	Installation(id string) (*tokens.Installation, bool)
	ListConnections(projectID string, f tokens.ConnectionFilter, p tokens.Page) ([]*tokens.Connection, string, error)
	ListInstallations(projectID, integration string, p tokens.Page) ([]*tokens.Installation, string, error)
	PutConnection(c *tokens.Connection) (*tokens.Connection, error)
	UpdateConnection(projectID, id string, fn func(*tokens.Connection) error) (*tokens.Connection, error)
	DeleteConnection(projectID, id string) error
	CreateInstallation(in *tokens.Installation) (*tokens.Installation, error)
	DeleteInstallation(projectID, id string) error
}

// Options configure the admin API handler.
type Options struct {
	// Store holds connections and installations. Required.
	Store Store
	// Config returns the current configuration; it is called once per
	// request, so a reload takes effect on the next request. Required.
	Config func() *config.Config
	// Logger receives one line per request. Nil discards.
	Logger *slog.Logger
	// Now is the clock, for request durations, token expiry checks and the
	// expiry of OAuth connect states. Nil means time.Now.
	Now func() time.Time
	// HTTPClient makes the token requests of the OAuth callback. Nil means
	// a client with a 10 s timeout. Whatever its CheckRedirect, the
	// callback uses a copy that does not follow redirects
	// (tokens.WithoutRedirects): a token endpoint that redirects is
	// misconfigured, following a 307 or 308 would post the code, the
	// verifier and the client secret again to wherever Location points,
	// and a 301 to 303 would turn the POST into a GET without them. A
	// caller's client should have a timeout too; the exchange is bounded
	// by ExchangeTimeout whatever the client does.
	HTTPClient *http.Client
	// Lockouts, when set, shows a connection's open lockout window
	// (rateLimitedUntil, retryable) in GET …/connections/{id}.
	Lockouts Lockouts
}

// Lockouts reports a connection's open throttle window (throttle.Table).
type Lockouts interface {
	Check(connID string, now time.Time) (throttle.Window, bool)
}

// Limits of what a request may carry.
const (
	// MaxBodyBytes caps a request body; a larger one is a 413.
	MaxBodyBytes = 1 << 20
	// MaxPageSize is the largest pageSize a list accepts.
	MaxPageSize = tokens.MaxPageSize

	maxRequestIDLen = 128
)

// APIKeyHeader carries the project's API key on every project request.
const APIKeyHeader = "x-api-key"

// RequestIDHeader is echoed, or generated when absent, on every response.
const RequestIDHeader = "X-Request-Id"

const projectsPrefix = "/v1/projects/"

type server struct {
	store    Store
	config   func() *config.Config
	log      *slog.Logger
	now      func() time.Time
	http     *http.Client
	connects *connectStates
	mux      *http.ServeMux
	locks    Lockouts
}

// New returns the admin API handler. It answers every path it does not
// serve with a problem+json 404 (or 405 with Allow), so it can be mounted
// at "/v1/" of a larger mux.
func New(opts Options) http.Handler {
	s := &server{store: opts.Store, config: opts.Config, log: opts.Logger, now: opts.Now, http: opts.HTTPClient,
		connects: newConnectStates(), locks: opts.Lockouts}
	if s.http == nil {
		s.http = defaultTokenClient
	} else {
		s.http = tokens.WithoutRedirects(s.http)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	m := http.NewServeMux()
	// A literal ':' is fine inside a ServeMux segment: only a whole
	// "{name}" segment is a wildcard, so "connections:generate" is a plain
	// literal and cannot collide with "connections/{id}".
	m.HandleFunc("POST /v1/projects/{project}/connections:generate", s.generateConnection)
	m.HandleFunc("GET /v1/projects/{project}/connections", s.listConnections)
	m.HandleFunc("GET /v1/projects/{project}/connections/{id}", s.getConnection)
	m.HandleFunc("PATCH /v1/projects/{project}/connections/{id}", s.updateConnection)
	m.HandleFunc("DELETE /v1/projects/{project}/connections/{id}", s.deleteConnection)
	m.HandleFunc("POST /v1/projects/{project}/integrations/{integration}/installations", s.createInstallation)
	m.HandleFunc("GET /v1/projects/{project}/integrations/{integration}/installations", s.listInstallations)
	m.HandleFunc("GET /v1/projects/{project}/integrations/{integration}/installations/{id}", s.getInstallation)
	m.HandleFunc("DELETE /v1/projects/{project}/integrations/{integration}/installations/{id}", s.deleteInstallation)
	m.HandleFunc("GET /v1/projects/{project}/installations", s.listInstallations)
	m.HandleFunc("POST /v1/oauth-connect", s.oauthConnect)
	m.HandleFunc("GET /v1/oauth/callback", s.oauthCallback)
	s.mux = m
	return s
}

// request is what the edge learns about a request before a handler runs.
type request struct {
	id      string
	cfg     *config.Config
	project *config.Project // set once the API key is checked
	err     error           // an internal failure, for the log line
	// reason says why a request failed for a cause outside ampproxy (a
	// provider's token endpoint), for a warning log line. It never holds
	// a secret.
	reason string
}

type requestKey struct{}

func state(r *http.Request) *request { return r.Context().Value(requestKey{}).(*request) }

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	rq := &request{id: requestID(r.Header.Get(RequestIDHeader))}
	w.Header().Set(RequestIDHeader, rq.id)
	sw := &statusWriter{ResponseWriter: w}
	r = r.WithContext(context.WithValue(r.Context(), requestKey{}, rq))

	s.serve(sw, r, rq)

	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("route", routeName(r.Pattern)),
		slog.Int("status", sw.status()),
		slog.Duration("duration", s.now().Sub(start)),
		slog.String("requestId", rq.id),
	}
	if rq.project != nil {
		attrs = append(attrs, slog.String("project", rq.project.ID))
	}
	level := slog.LevelInfo
	if rq.reason != "" {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("reason", rq.reason))
	}
	if rq.err != nil {
		level = slog.LevelError
		attrs = append(attrs, slog.String("err", rq.err.Error()))
	}
	s.log.LogAttrs(r.Context(), level, "admin request", attrs...)
}

func routeName(p string) string {
	if p == "" {
		return "unmatched"
	}
	return p
}

func (s *server) serve(w http.ResponseWriter, r *http.Request, rq *request) {
	// A path ServeMux would redirect to its clean form gets a 404 instead:
	// a redirect is not a problem+json answer and helps no API client.
	if r.URL.Path == "" || path.Clean(r.URL.Path) != r.URL.Path {
		s.problem(w, r, problem.New(http.StatusNotFound, "not-found", "no admin API endpoint at this path"))
		return
	}
	if s.config != nil {
		rq.cfg = s.config()
	}
	if rq.cfg == nil || s.store == nil {
		s.problem(w, r, problem.New(http.StatusServiceUnavailable, "unavailable", "the admin API is not ready: configuration or store not loaded"))
		return
	}
	// The route is found first for the log line only; authentication comes
	// before anything is answered from it, so that a caller without a key
	// learns nothing about the project, not even which routes exist.
	h, pattern := s.mux.Handler(r)
	r.Pattern = pattern
	if seg, ok := strings.CutPrefix(r.URL.EscapedPath(), projectsPrefix); ok {
		id, _, _ := strings.Cut(seg, "/")
		project, err := url.PathUnescape(id)
		if err != nil {
			project = ""
		}
		p, ok := s.authenticate(rq.cfg, project, r.Header.Get(APIKeyHeader))
		if !ok {
			s.problem(w, r, unauthenticated())
			return
		}
		rq.project = p
	}
	if pattern == "" {
		s.unrouted(w, r, h)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// authenticate checks the API key; an unknown project and a wrong key are
// indistinguishable to the caller.
func (s *server) authenticate(cfg *config.Config, projectID, key string) (*config.Project, bool) {
	return cfg.Authenticate(projectID, key)
}

// unrouted turns ServeMux's plain-text 404 and 405 into problems, keeping
// the Allow header of a 405.
func (s *server) unrouted(w http.ResponseWriter, r *http.Request, h http.Handler) {
	c := &capture{h: http.Header{}}
	h.ServeHTTP(c, r)
	if c.code == http.StatusMethodNotAllowed {
		allow := c.h.Get("Allow")
		p := problem.New(http.StatusMethodNotAllowed, "method-not-allowed",
			fmt.Sprintf("method %s is not allowed here; allowed: %s", sanitizeMethod(r.Method), allow))
		p.Headers = append(p.Headers, [2]string{"Allow", allow})
		s.problem(w, r, p)
		return
	}
	s.problem(w, r, problem.New(http.StatusNotFound, "not-found", "no admin API endpoint at this path"))
}

// sanitizeMethod keeps a method token printable in a detail.
func sanitizeMethod(m string) string {
	if len(m) > 16 {
		return "(method)"
	}
	for i := 0; i < len(m); i++ {
		if m[i] <= ' ' || m[i] >= 0x7f {
			return "(method)"
		}
	}
	return m
}

// capture records the status and headers of ServeMux's own answers.
type capture struct {
	h    http.Header
	code int
}

func (c *capture) Header() http.Header { return c.h }
func (c *capture) Write(b []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	return len(b), nil
}
func (c *capture) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
}

// statusWriter remembers the status for the log line.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// requestID keeps a caller's X-Request-Id when it is a sane token and
// makes a random one otherwise.
func requestID(in string) string {
	if n := len(in); n > 0 && n <= maxRequestIDLen {
		ok := true
		for i := 0; i < n; i++ {
			if c := in[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
				ok = false
				break
			}
		}
		if ok {
			return in
		}
	}
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// problem writes p with the request's ID.
func (s *server) problem(w http.ResponseWriter, r *http.Request, p *problem.Problem) {
	p.RequestID = state(r).id
	w.Header().Set("X-Content-Type-Options", "nosniff")
	p.Write(w)
}

// internal answers 500 and keeps err for the log line. The detail points at
// the log rather than carrying err, which the caller has no use for.
func (s *server) internal(w http.ResponseWriter, r *http.Request, err error) {
	rq := state(r)
	rq.err = err
	s.problem(w, r, problem.New(http.StatusInternalServerError, "internal",
		"internal error; the server log has the cause under request ID "+rq.id))
}

func badRequest(format string, args ...any) *problem.Problem {
	return problem.New(http.StatusBadRequest, "invalid-argument", fmt.Sprintf(format, args...))
}

func notFound(format string, args ...any) *problem.Problem {
	return problem.New(http.StatusNotFound, "not-found", fmt.Sprintf(format, args...))
}

func conflict(format string, args ...any) *problem.Problem {
	return problem.New(http.StatusConflict, "conflict", fmt.Sprintf(format, args...))
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the API's own types come here; they always marshal.
		panic(err)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// decode reads a JSON body strictly into v. It answers the problem itself
// and reports false when the body is unusable. Its details name fields
// and positions, never echo values, since bodies carry secrets.
func (s *server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(innermost(w), r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One object and nothing else: trailing data is a client bug.
		var extra json.RawMessage
		switch err2 := dec.Decode(&extra); {
		case errors.Is(err2, io.EOF):
		case isTooLarge(err2):
			err = err2
		default:
			s.problem(w, r, badRequest("request body must hold exactly one JSON object"))
			return false
		}
	}
	if err == nil {
		return true
	}
	var (
		syn  *json.SyntaxError
		typ  *json.UnmarshalTypeError
		tErr *time.ParseError
	)
	switch {
	case isTooLarge(err):
		s.problem(w, r, problem.New(http.StatusRequestEntityTooLarge, "body-too-large",
			fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)))
	case errors.Is(err, io.EOF):
		s.problem(w, r, badRequest("request body is required: a JSON object"))
	case errors.Is(err, io.ErrUnexpectedEOF):
		s.problem(w, r, badRequest("request body is truncated JSON"))
	case errors.As(err, &syn):
		s.problem(w, r, badRequest("request body is not valid JSON (at byte %d)", syn.Offset))
	case errors.As(err, &typ):
		if typ.Field == "" {
			s.problem(w, r, badRequest("request body must be a JSON object"))
		} else {
			s.problem(w, r, badRequest("%s must be %s", typ.Field, jsonKind(typ.Type.Kind().String())))
		}
	case errors.As(err, &tErr), strings.HasPrefix(err.Error(), "Time.UnmarshalJSON"):
		s.problem(w, r, badRequest("%s.accessToken.expiresAt must be an RFC 3339 time such as 2026-01-02T15:04:05Z", fieldAuthorizationCode))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		if len(name) > 64 || !printable(name) {
			name = "(unprintable)"
		}
		s.problem(w, r, badRequest("unknown field %q in request body", name))
	default:
		// Unreachable with encoding/json today; the text of an unknown
		// error might quote input, so it is logged, not answered.
		state(r).err = fmt.Errorf("decoding body: %T", err)
		s.problem(w, r, badRequest("request body is not a valid JSON object of the expected shape"))
	}
	return false
}

// innermost unwraps w to the server's own writer, which MaxBytesReader
// tells to close the connection after a too-large body instead of
// draining it.
func innermost(w http.ResponseWriter) http.ResponseWriter {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return w
		}
		w = u.Unwrap()
	}
}

func isTooLarge(err error) bool {
	var mb *http.MaxBytesError
	return errors.As(err, &mb)
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "struct", "map", "ptr":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "a boolean"
	case "int", "int64", "float64":
		return "a number"
	}
	return "of another type"
}

func printable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f || c == 0xfffd {
			return false
		}
	}
	return true
}

// project returns the authenticated project, checking that the route's
// {project} is the one authenticated (ServeMux unescapes a wildcard, and
// the edge read the same segment).
func (s *server) project(w http.ResponseWriter, r *http.Request) (*config.Project, bool) {
	p := state(r).project
	if p == nil || r.PathValue("project") != p.ID {
		s.problem(w, r, problem.New(http.StatusUnauthorized, "unauthenticated", "unknown project or invalid API key"))
		return nil, false
	}
	return p, true
}

// page reads pageSize and pageToken.
func page(q url.Values) (tokens.Page, *problem.Problem) {
	var p tokens.Page
	if v := q.Get("pageSize"); v != "" || q.Has("pageSize") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			return p, badRequest("pageSize must be an integer from 1 to %d", MaxPageSize)
		}
		p.Size = n
	}
	p.Token = q.Get("pageToken")
	if len(p.Token) > 1024 {
		return p, badRequest("pageToken is not a token this server issued")
	}
	return p, nil
}

func badPageToken() *problem.Problem {
	return badRequest("pageToken is not a token this server issued (or it belongs to another filter)")
}
