package extproc

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/internal/problem"
	"github.com/ampproxy/ampproxy/throttle"
	"github.com/ampproxy/ampproxy/tokens"
)

// route decides where the request goes and with which credential; it
// returns either the header mutation or the problem to answer with.
func (s *Server) route(st *stream, h *extprocv3.HttpHeaders) (*extprocv3.ProcessingResponse, *Problem) {
	in, p := parseHeaders(h.GetHeaders(), st.r.remove[:0])
	st.requestID = in.requestID
	if p != nil {
		return nil, p
	}
	switch {
	case in.version == "":
		return nil, badRequest("missing-header", "x-amp-proxy-version is required")
	case in.version != "1":
		return nil, badRequest("unsupported-version", "x-amp-proxy-version must be 1")
	case in.project == "":
		return nil, badRequest("missing-header", "x-amp-project-id is required")
	case in.mode != "" && in.mode != "throttle":
		return nil, badRequest("invalid-header", "x-amp-rate-limiter-mode must be throttle when given")
	case in.installation == "" && (in.integration == "" || in.groupRef == ""):
		return nil, badRequest("missing-selector", "x-amp-installation-id, or x-amp-integration-name together with x-amp-group-ref, is required")
	}
	st.throttle = in.mode == "throttle"

	cfg := s.cfg.Load()
	// An unknown project and a wrong key give the same answer in about the
	// same time, so that a caller cannot probe for project IDs.
	proj, ok := cfg.Authenticate(in.project, in.apiKey)
	if !ok {
		return nil, unauthorized()
	}
	st.project = proj.ID

	// The installation ID wins when both selectors are given (DESIGN §2).
	var inst *tokens.Installation
	if in.installation != "" {
		inst, ok = s.store.Installation(in.installation)
		ok = ok && inst.ProjectID == proj.ID
	} else {
		inst, ok = s.store.InstallationByGroup(proj.ID, in.integration, in.groupRef)
	}
	if !ok {
		return nil, notFound("installation-not-found", "no installation matches the given selector in this project")
	}
	st.inst = inst
	st.integ = inst.Integration

	integ, ok := proj.Integrations.Integration(inst.Integration)
	if !ok {
		return nil, notFound("integration-not-found", "the installation's integration "+inst.Integration+" is no longer in the project's manifest")
	}
	if !integ.Proxy.Enabled {
		return nil, forbidden("proxy-disabled", "integration "+integ.Name+" does not have proxy.enabled: true in the manifest")
	}
	prov, ok := cfg.Providers.Provider(integ.Provider)
	if !ok || !prov.Proxy {
		return nil, forbidden("provider-not-proxyable", "provider "+integ.Provider+" cannot be proxied")
	}
	st.provider = prov

	conn, ok := s.store.Connection(inst.ConnectionID)
	if !ok || conn.ProjectID != proj.ID {
		return nil, notFound("connection-not-found", "the installation's connection no longer exists")
	}
	// The host and the way the credential travels come from the
	// integration's provider, the credential from the connection: once a
	// manifest edit moves the integration to another provider, the old
	// connection's secret would go to the new provider's host. Refused
	// before anything of the credential is read.
	if conn.Provider != integ.Provider {
		return nil, failedDependency("connection-provider-mismatch", "the installation's connection is for provider "+conn.Provider+
			" but integration "+integ.Name+" now uses provider "+integ.Provider+"; install the integration again with a connection for "+integ.Provider)
	}
	st.conn = conn
	if conn.Status == tokens.StatusBadCredentials {
		return nil, failedDependency("bad-credentials", "the connection's credentials were rejected by the provider; update or replace the connection")
	}
	// Throttle mode: a connection the provider locked out is answered
	// here and the request never reaches the provider (DESIGN §3). One
	// lock-free map read; requests without the header skip it.
	if st.throttle && s.locks != nil {
		now := s.now()
		if w, open := s.locks.Check(conn.ID, now); open {
			s.met.ShortCircuited(prov.Name)
			return nil, lockedOut(w, now)
		}
	}

	up, err := prov.Resolve(conn.Metadata, in.path)
	switch {
	case errors.Is(err, catalog.ErrBadPath):
		return nil, badRequest("invalid-path", err.Error())
	case err != nil:
		return nil, failedDependency("invalid-connection-metadata", "the connection's metadata does not fit provider "+prov.Name+": "+err.Error())
	}
	st.upstream = up.Authority

	r := &st.r
	r.setHeader(":authority", r.value(up.Authority))
	path := up.Path
	credHeader := ""
	switch prov.AuthType {
	case catalog.AuthAPIKey:
		key := conn.Credential.APIKey
		if key == "" {
			return nil, failedDependency("missing-credential", "the connection holds no API key")
		}
		if prov.APIKey.Query != "" {
			path = catalog.SetQueryParam(path, prov.APIKey.Query, key)
		} else {
			credHeader = prov.APIKeyHeaderLower()
			r.setHeader(credHeader, r.value(prov.APIKey.Header.Prefix, key))
		}
	case catalog.AuthBasic:
		c := conn.Credential
		if c.Username == "" && c.Password == "" {
			return nil, failedDependency("missing-credential", "the connection holds no basic-auth credentials")
		}
		credHeader = "authorization"
		r.setHeader(credHeader, r.basic(c.Username, c.Password))
	case catalog.AuthOAuth2:
		tok, p := s.accessToken(st, conn)
		if p != nil {
			return nil, p
		}
		st.token = tok
		var prefix string
		credHeader, prefix = prov.OAuth2Header()
		r.setHeader(credHeader, r.value(prefix, tok))
	}
	if path != in.path {
		r.setHeader(":path", r.value(path))
	}

	remove := in.remove
	// Envoy applies removals before sets, but a header that is set must not
	// also be listed for removal.
	if credHeader != "" {
		remove = without(remove, credHeader)
	}
	// The credential replaces whatever authorization the caller sent
	// (DESIGN §2), also when it travels elsewhere (a query parameter,
	// another header): only a provider without credential keeps it.
	if prov.AuthType != catalog.AuthNone && credHeader != "authorization" && in.hasAuthorization {
		remove = append(remove, "authorization")
	}
	return r.forward(remove), nil
}

func without(list []string, name string) []string {
	out := list[:0]
	for _, s := range list {
		if s != name {
			out = append(out, s)
		}
	}
	return out
}

// lockedOut is the 429 of a short-circuited throttle-mode request.
func lockedOut(w throttle.Window, now time.Time) *Problem {
	secs := throttle.RetryAfterSeconds(w.Until, now)
	if secs < 1 {
		secs = 1
	}
	until := throttle.FormatRetryAfter(w.Until)
	detail := "the provider rate-limited this connection; retry after " + until
	if !w.Retryable {
		detail = "the provider locked this connection out until " + until + "; retrying earlier will not help"
	}
	p := problem.New(429, "rate-limited", detail).WithRetryAfter(int(secs))
	p.Headers = append(p.Headers,
		[2]string{"x-amp-retry-after", until},
		[2]string{"x-amp-retryable", strconv.FormatBool(w.Retryable)})
	return p
}

// responseHeaders records the provider's status for the stream. On a
// provider 429 it opens or extends the connection's lockout window and
// tells the caller when to retry (DESIGN §3).
func (s *Server) responseHeaders(st *stream, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	for _, hv := range h.GetHeaders().GetHeaders() {
		if hv.Key == ":status" {
			v := hv.RawValue
			if len(v) == 0 {
				v = []byte(hv.Value)
			}
			st.status, _ = strconv.Atoi(string(v))
			break
		}
	}
	if st.provider != nil && st.outcome == "forwarded" {
		s.met.ProviderResponse(st.provider.Name, st.status)
		// A 401 to a request that carried an OAuth2 token: the provider
		// no longer takes it, so the next request refreshes first.
		if st.status == 401 && st.token != "" && s.tokens != nil {
			s.tokens.MarkStale(st.conn.ID, st.token)
		}
		if st.status == 429 && s.locks != nil {
			return s.observe429(st, h.GetHeaders())
		}
	}
	return st.r.pass()
}

// accessToken returns the OAuth2 access token to send, refreshed if
// needed, or the problem that stops the request. The token endpoint's
// troubles map to DESIGN §2: rejected credentials are 424, an endpoint that
// is down or slow is 503 with Retry-After.
func (s *Server) accessToken(st *stream, conn *tokens.Connection) (string, *Problem) {
	if s.tokens == nil {
		// Without a token source the token is used as stored.
		c := conn.Credential
		if c.AccessToken == "" {
			return "", failedDependency("missing-credential", "the connection holds no OAuth2 access token")
		}
		if !c.Expiry.IsZero() && !s.now().Before(c.Expiry) {
			return "", failedDependency("token-expired", "the connection's OAuth2 access token expired at "+c.Expiry.UTC().Format(time.RFC3339)+" and no token source is configured")
		}
		return c.AccessToken, nil
	}
	if tok, ok := s.tokens.Cached(conn); ok {
		return tok, nil
	}
	// A refresh may be needed. Envoy's message_timeout has been running
	// since it sent the request headers, so the wait for the refresh ends
	// TokenWait after they arrived, not after it began: a request that
	// gives up then gets 503 with Retry-After well before Envoy's 504.
	arrived := st.arrived
	if arrived.IsZero() {
		// Not set by Process: the phase was called directly.
		arrived = time.Now()
	}
	ctx, cancel := context.WithDeadline(st.ctx, arrived.Add(s.wait))
	defer cancel()
	tok, err := s.tokens.AccessToken(ctx, conn)
	if err == nil {
		return tok, nil
	}
	var re *tokens.RetryError
	switch {
	case errors.As(err, &re):
		n := re.RetryAfterSeconds()
		return "", problem.New(503, "token-unavailable", "the provider's token endpoint could not issue a token ("+re.Reason+"); retry after "+strconv.FormatInt(n, 10)+" s").WithRetryAfter(int(n))
	case errors.Is(err, tokens.ErrBadCredentials):
		return "", failedDependency("bad-credentials", "the provider's token endpoint rejected the connection's credentials; update or replace the connection")
	case errors.Is(err, tokens.ErrTokenExpired):
		return "", failedDependency("token-expired", "the connection's OAuth2 access token has expired and it holds no refresh token; update or replace the connection")
	case errors.Is(err, tokens.ErrNotFound):
		return "", notFound("connection-not-found", "the installation's connection no longer exists")
	default:
		s.log.Error("access token", "connection", conn.ID, "err", err)
		return "", problem.New(503, "token-unavailable", "no access token could be obtained; retry after 1 s").WithRetryAfter(1)
	}
}

// observe429 records the provider's 429 for the connection (durably
// before this answer leaves, unless the store fails; see the throttle
// package's Durability) and adds X-Amp-Retry-After and X-Amp-Retryable to
// the response.
func (s *Server) observe429(st *stream, hm *corev3.HeaderMap) *extprocv3.ProcessingResponse {
	get := throttle.HeaderFunc(func(name string) (string, bool) {
		for _, hv := range hm.GetHeaders() {
			if hv.Key == name {
				if len(hv.RawValue) > 0 {
					return string(hv.RawValue), true
				}
				return hv.Value, true
			}
		}
		return "", false
	})
	// The stream's context ends the wait for the disk when Envoy gives up
	// on the stream; the window is committed all the same.
	w, err := s.locks.Observe429(st.ctx, st.conn.ID, st.provider.Name, get, st.provider.RateLimit, s.now())
	switch {
	case errors.Is(err, throttle.ErrCommitPending):
		// Expected when Envoy gives up on a stream during a slow commit.
		// A warning, not an error: the log writes errors out at once, and
		// a burst of abandoned 429s would be a write per stream.
		s.log.Warn("lockout window applies; its commit continues after the stream ended", "connection", st.conn.ID, "err", err)
	case err != nil:
		// The window applies in memory all the same, and the table retries
		// its persistence.
		s.log.Error("lockout window not persisted yet", "connection", st.conn.ID, "err", err)
	}
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				header("x-amp-retry-after", throttle.FormatRetryAfter(w.Until)),
				header("x-amp-retryable", strconv.FormatBool(w.Retryable)),
			}}},
		}},
	}
}

// finish counts the request and writes its log line, once per stream.
func (s *Server) finish(st *stream) {
	if st.start.IsZero() || st.finished {
		return
	}
	st.finished = true
	provider := ""
	if st.provider != nil {
		provider = st.provider.Name
	}
	s.met.Request(st.project, st.integ, provider, st.outcome)
	s.logRequest(st)
}

// logRequest writes the one line per request. It carries names and IDs,
// never a header value that could be a secret.
func (s *Server) logRequest(st *stream) {
	ctx := context.Background()
	h := s.log.Handler()
	if st.start.IsZero() || !h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	// The record is built here rather than through Logger.LogAttrs, which
	// captures the caller's program counter for every line; no handler of
	// ampproxy's reports the source, and the capture was a sixth of the
	// line's cost.
	r := slog.NewRecord(s.now(), slog.LevelInfo, "request", 0)
	var buf [11]slog.Attr
	attrs := append(buf[:0],
		slog.String("requestId", st.requestID),
		slog.String("project", st.project),
		slog.String("integration", st.integ),
		slog.String("outcome", st.outcome),
		slog.Int("status", st.status),
		// latency is ampproxy's own processing time; total adds the
		// provider's time between the two phases.
		slog.Duration("latency", st.own),
		slog.Duration("total", r.Time.Sub(st.start)),
	)
	if st.provider != nil {
		attrs = append(attrs, slog.String("provider", st.provider.Name))
	}
	if st.inst != nil {
		attrs = append(attrs, slog.String("installation", st.inst.ID))
	}
	if st.upstream != "" {
		attrs = append(attrs, slog.String("upstream", st.upstream))
	}
	r.AddAttrs(attrs...)
	// As with Logger, a failed log write is not the request's failure.
	_ = h.Handle(ctx, r)
}
