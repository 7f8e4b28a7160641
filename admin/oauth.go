package admin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/problem"
	"github.com/ampproxy/ampproxy/tokens"
)

// Limits of the OAuth connect flow.
const (
	// ConnectStateTTL is how long an authorization URL from
	// POST /v1/oauth-connect stays usable: long enough to log in and
	// consent, short enough that a leaked URL soon stops mattering.
	ConnectStateTTL = 10 * time.Minute
	// MaxPendingConnects bounds the unfinished connect flows of one
	// project; more answer 429 until the oldest expires. Memory stays
	// bounded by it times the number of configured projects, and one
	// project's callers cannot crowd out another's.
	MaxPendingConnects = 1000
	// ExchangeTimeout bounds the callback's token request, whatever the
	// HTTP client's own timeout.
	ExchangeTimeout = 20 * time.Second

	// CallbackPath is where providers send the browser back; a project's
	// providerApps.<provider>.redirectURL points here.
	CallbackPath = "/v1/oauth/callback"

	tokenClientTimeout = 10 * time.Second
	stateBytes         = 32
	maxErrorCodeLen    = 64
)

// defaultTokenClient has a timeout and returns a redirect as the answer
// rather than following it (see Options.HTTPClient), as the Refresher's
// does.
var defaultTokenClient = tokens.NewTokenClient(tokenClientTimeout)

// pendingConnect is what a state stands for until its callback: the flow's
// project, group and metadata, and everything of the authorization request
// the token request must repeat (RFC 6749 §4.1.3: the same client ID and
// redirect URI), so that a config reload between the two cannot make them
// disagree. The client secret is not kept; the callback reads it.
type pendingConnect struct {
	projectID   string
	provider    string
	groupRef    string
	consumerRef string
	metadata    map[string]string

	clientID    string
	redirectURL string
	scopes      []string
	tokenURL    string
	authStyle   oauth2.AuthStyle
	verifier    string // PKCE code verifier; "" without PKCE

	expires time.Time
}

// connectStates holds pending connect flows in memory, keyed by the
// SHA-256 of their state so that the map holds no usable state. They do
// not survive a restart: a flow interrupted by one is started again.
type connectStates struct {
	mu         sync.Mutex
	byState    map[[sha256.Size]byte]*pendingConnect
	perProject map[string]int
}

func newConnectStates() *connectStates {
	return &connectStates{byState: map[[sha256.Size]byte]*pendingConnect{}, perProject: map[string]int{}}
}

// add keeps pc under state. When the project already has
// MaxPendingConnects live flows it refuses and says when the oldest
// expires.
func (c *connectStates) add(state string, pc *pendingConnect, now time.Time) (retryAfter time.Duration, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.purge(now)
	if c.perProject[pc.projectID] >= MaxPendingConnects {
		oldest := now.Add(ConnectStateTTL)
		for _, p := range c.byState {
			if p.projectID == pc.projectID && p.expires.Before(oldest) {
				oldest = p.expires
			}
		}
		return oldest.Sub(now), false
	}
	c.byState[sha256.Sum256([]byte(state))] = pc
	c.perProject[pc.projectID]++
	return 0, true
}

// take removes state's flow and returns it unless it has expired: a state
// is used at most once, whatever the outcome of its callback.
func (c *connectStates) take(state string, now time.Time) (*pendingConnect, bool) {
	if state == "" {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := sha256.Sum256([]byte(state))
	pc, ok := c.byState[k]
	if !ok {
		return nil, false
	}
	c.remove(k, pc)
	if !now.Before(pc.expires) {
		return nil, false
	}
	return pc, true
}

func (c *connectStates) remove(k [sha256.Size]byte, pc *pendingConnect) {
	delete(c.byState, k)
	if c.perProject[pc.projectID]--; c.perProject[pc.projectID] <= 0 {
		delete(c.perProject, pc.projectID)
	}
}

// purge drops expired flows. It runs on every add, which bounds the map
// without a background goroutine; a scan of at most MaxPendingConnects
// entries per project is cheap next to a browser round trip.
func (c *connectStates) purge(now time.Time) {
	for k, pc := range c.byState {
		if !now.Before(pc.expires) {
			c.remove(k, pc)
		}
	}
}

// len is the number of flows held, expired ones included.
func (c *connectStates) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byState)
}

// unauthenticated is the one 401 of the API, for an unknown project and a
// wrong or missing key alike.
func unauthenticated() *problem.Problem {
	p := problem.New(http.StatusUnauthorized, "unauthenticated", "unknown project or invalid API key")
	p.Headers = append(p.Headers, [2]string{"WWW-Authenticate", `APIKey header="x-api-key"`})
	return p
}

// oauthConnect starts a connect flow: it checks everything it can before
// the user is sent to the provider, so that a consent is not given in
// vain, and answers the authorization URL as text/plain.
func (s *server) oauthConnect(w http.ResponseWriter, r *http.Request) {
	rq := state(r)
	key := r.Header.Get(APIKeyHeader)
	if key == "" {
		s.problem(w, r, unauthenticated())
		return
	}
	var req OAuthConnectRequest
	if !s.decode(w, r, &req) {
		return
	}
	// The project is named in the body, so the key is checked only now;
	// a decoding error above tells a caller nothing about any project.
	if req.ProjectIDOrName == "" {
		s.problem(w, r, badRequest("projectIdOrName is required"))
		return
	}
	proj, ok := s.authenticate(rq.cfg, req.ProjectIDOrName, key)
	if !ok {
		s.problem(w, r, unauthenticated())
		return
	}
	rq.project = proj

	pc, p := s.planConnect(rq.cfg, proj, &req)
	if p != nil {
		s.problem(w, r, p)
		return
	}
	app, _ := proj.App(pc.provider)
	if _, err := app.ClientSecret(); err != nil {
		// The callback would fail after the user consented; say so now.
		s.internal(w, r, fmt.Errorf("providerApps.%s: %w", pc.provider, err))
		return
	}
	prov, _ := rq.cfg.Providers.Provider(pc.provider)
	authURL, err := prov.AuthURL(pc.metadata)
	if err != nil {
		if p := metadataProblem(prov, err, pc.metadata, req.ProviderMetadata); p != nil {
			s.problem(w, r, p)
		} else {
			s.internal(w, r, fmt.Errorf("authorization URL of %s: %w", prov.Name, err))
		}
		return
	}

	var b [stateBytes]byte
	rand.Read(b[:])
	st := base64.RawURLEncoding.EncodeToString(b[:])
	now := s.now()
	pc.expires = now.Add(ConnectStateTTL)
	opts := []oauth2.AuthCodeOption{oauth2.AccessTypeOffline}
	if prov.OAuth2.GrantType == catalog.GrantAuthorizationCodePKCE {
		pc.verifier = oauth2.GenerateVerifier()
		opts = append(opts, oauth2.S256ChallengeOption(pc.verifier))
	}
	if wait, ok := s.connects.add(st, pc, now); !ok {
		secs := max(1, int((wait+time.Second-1)/time.Second))
		s.problem(w, r, problem.New(http.StatusTooManyRequests, "too-many-requests",
			fmt.Sprintf("project %s has %d unfinished connect flows; try again after the oldest expires", proj.ID, MaxPendingConnects)).
			WithRetryAfter(secs))
		return
	}
	u := pc.config("", authURL).AuthCodeURL(st, opts...)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte(u + "\n"))
}

// planConnect validates a connect request and returns the flow it starts,
// without its state, expiry and verifier.
func (s *server) planConnect(cfg *config.Config, proj *config.Project, req *OAuthConnectRequest) (*pendingConnect, *problem.Problem) {
	for _, f := range []struct{ name, v string }{
		{"groupRef", req.GroupRef},
		{"consumerRef", req.ConsumerRef},
		{"provider", req.Provider},
	} {
		if p := checkRef(f.name, f.v); p != nil {
			return nil, p
		}
	}
	var prov *catalog.Provider
	if cfg.Providers != nil {
		prov, _ = cfg.Providers.Provider(req.Provider)
	}
	if prov == nil {
		return nil, badRequest("provider %q is not in the provider catalog", req.Provider)
	}
	if prov.AuthType != catalog.AuthOAuth2 || prov.OAuth2 == nil {
		return nil, badRequest("provider %s uses authType %s, and the connect flow is for OAuth2 authorization-code providers; store its credential with connections:generate",
			prov.Name, prov.AuthType)
	}
	switch prov.OAuth2.GrantType {
	case catalog.GrantAuthorizationCode, catalog.GrantAuthorizationCodePKCE:
	case catalog.GrantClientCredentials:
		return nil, badRequest("provider %s uses the clientCredentials grant, which involves no user consent; store the client ID and secret with connections:generate and oauth2ClientCredentials",
			prov.Name)
	default:
		return nil, badRequest("provider %s uses grantType %s, which the connect flow does not support", prov.Name, prov.OAuth2.GrantType)
	}
	app, ok := proj.App(prov.Name)
	switch {
	case !ok:
		return nil, badRequest("provider: project %s has no providerApps.%s, the OAuth2 client the connect flow needs; add it to the server config",
			proj.ID, prov.Name)
	case app.ClientID == "":
		return nil, badRequest("provider: providerApps.%s.clientID of project %s is empty", prov.Name, proj.ID)
	case app.RedirectURL == "":
		// Without it the provider would send the browser to whatever
		// redirect it has registered, which may not be this server.
		return nil, badRequest("provider: providerApps.%s.redirectURL of project %s is not set; set it to this server's %s URL, as registered with the provider",
			prov.Name, proj.ID, CallbackPath)
	}

	deferred := map[string]bool{}
	for _, f := range prov.OAuth2.TokenMetadataFields {
		deferred[f.Metadata] = true
	}
	meta, p := metadata(prov, req.ProviderWorkspaceRef, req.ProviderMetadata, deferred)
	if p != nil {
		return nil, p
	}
	// The token URL is needed before the token response arrives, so none
	// of its values can wait for it.
	tokenURL, err := prov.TokenURL(meta)
	if err != nil {
		if p := metadataProblem(prov, err, meta, req.ProviderMetadata); p != nil {
			return nil, p
		}
		return nil, badRequest("provider %s: %v", prov.Name, err)
	}
	style := oauth2.AuthStyleInHeader
	if prov.OAuth2.AuthStyle == catalog.AuthStyleInParams {
		style = oauth2.AuthStyleInParams
	}
	return &pendingConnect{
		projectID:   proj.ID,
		provider:    prov.Name,
		groupRef:    req.GroupRef,
		consumerRef: req.ConsumerRef,
		metadata:    meta,
		clientID:    app.ClientID,
		redirectURL: app.RedirectURL,
		scopes:      slices.Clone(app.Scopes),
		tokenURL:    tokenURL,
		authStyle:   style,
	}, nil
}

// config is the flow's x/oauth2 client. The auth style always comes from
// the catalog: auto-detection resends the grant, which fails with a
// single-use code and breaks providers that rotate refresh tokens.
func (pc *pendingConnect) config(secret, authURL string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     pc.clientID,
		ClientSecret: secret,
		Endpoint:     oauth2.Endpoint{AuthURL: authURL, TokenURL: pc.tokenURL, AuthStyle: pc.authStyle},
		RedirectURL:  pc.redirectURL,
		Scopes:       pc.scopes,
	}
}

// oauthCallback finishes a connect flow. It is protected by the state
// alone (the browser carries no API key), answers small HTML pages, and
// stores a connection only when every step worked.
func (s *server) oauthCallback(w http.ResponseWriter, r *http.Request) {
	rq := state(r)
	if r.Method != http.MethodGet {
		// ServeMux routes HEAD here too; a link checker's HEAD must not use
		// up the state and the code.
		p := problem.New(http.StatusMethodNotAllowed, "method-not-allowed", "the OAuth callback answers GET only")
		p.Headers = append(p.Headers, [2]string{"Allow", http.MethodGet})
		s.problem(w, r, p)
		return
	}
	q := r.URL.Query()
	pc, ok := s.connects.take(q.Get("state"), s.now())
	if !ok {
		rq.reason = "connect state unknown, expired or already used"
		s.page(w, r, http.StatusBadRequest, pageData{
			Title:   "This connect link is no longer valid",
			Message: "The link is unknown, has expired or was already used. Nothing was stored.",
			Next:    "Start the connection again to get a new link.",
		})
		return
	}
	if p, ok := rq.cfg.Project(pc.projectID); ok {
		rq.project = p
	}
	details := []pageDetail{{"Provider", pc.provider}, {"Group", pc.groupRef}}
	if q.Has("error") {
		code := safeCode(q.Get("error"))
		rq.reason = "provider answered the authorization request with error " + code
		s.page(w, r, http.StatusBadRequest, pageData{
			Title:   "The provider did not grant access",
			Message: "The provider answered with an error. Nothing was stored.",
			Details: append(details, pageDetail{"Error code", code}),
			Next:    "Start the connection again; if it keeps failing, the error code tells the provider's documentation what went wrong.",
		})
		return
	}
	code := q.Get("code")
	if code == "" {
		rq.reason = "callback without code"
		s.page(w, r, http.StatusBadRequest, pageData{
			Title:   "The provider sent no authorization code",
			Message: "Nothing was stored.",
			Details: details,
			Next:    "Start the connection again.",
		})
		return
	}
	proj, prov, app, why := currentApp(rq.cfg, pc)
	if why != "" {
		rq.reason = why
		s.page(w, r, http.StatusConflict, pageData{
			Title:   "The server's configuration changed during the connection",
			Message: why + ". Nothing was stored.",
			Details: details,
			Next:    "Ask the operator to check the configuration, then start the connection again.",
		})
		return
	}
	secret, err := app.ClientSecret()
	if err != nil {
		rq.err = fmt.Errorf("providerApps.%s: %w", pc.provider, err)
		s.page(w, r, http.StatusInternalServerError, internalPage(rq.id, details))
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), ExchangeTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, s.http)
	var opts []oauth2.AuthCodeOption
	if pc.verifier != "" {
		opts = append(opts, oauth2.VerifierOption(pc.verifier))
	}
	tok, err := pc.config(secret, "").Exchange(ctx, code, opts...)
	if err != nil {
		status, shown, reason := exchangeFailure(err)
		rq.reason = "provider " + pc.provider + ": " + redact(reason, code, pc.verifier, secret, q.Get("state"))
		d := details
		if shown != "" {
			d = append(d, pageDetail{"Error code", shown})
		}
		s.page(w, r, status, pageData{
			Title:     "The provider did not accept the authorization",
			Message:   "Exchanging the authorization code for a token failed. Nothing was stored.",
			Details:   d,
			Next:      "Start the connection again; if it keeps failing, ask the operator to look up the request ID in the server log.",
			RequestID: rq.id,
		})
		return
	}
	cred, meta, why := s.connectionFromToken(prov, pc, tok)
	if why != "" {
		rq.reason = why
		s.page(w, r, http.StatusBadGateway, pageData{
			Title:     "The provider's answer cannot be used",
			Message:   "The provider issued a token, but " + why + ". Nothing was stored.",
			Details:   details,
			Next:      "Ask the operator to look up the request ID in the server log.",
			RequestID: rq.id,
		})
		return
	}
	out, err := s.store.PutConnection(&tokens.Connection{
		ProjectID:    proj.ID,
		Provider:     prov.Name,
		GroupRef:     pc.groupRef,
		ConsumerRef:  pc.consumerRef,
		WorkspaceRef: meta[workspaceKey],
		Metadata:     meta,
		AuthScheme:   tokens.SchemeOAuth2AuthorizationCode,
		// The provider has just issued the token: the credential works.
		Status:     tokens.StatusWorking,
		Credential: cred,
	})
	if err != nil {
		rq.err = fmt.Errorf("storing connection: %w", err)
		s.page(w, r, http.StatusInternalServerError, internalPage(rq.id, details))
		return
	}
	s.page(w, r, http.StatusOK, pageData{
		Title:   "Connected",
		Message: "The connection is stored; you can close this window.",
		Details: append(details, pageDetail{"Connection ID", out.ID}),
		Success: true,
	})
}

// currentApp finds the flow's project, provider and app in the current
// configuration; why says what a reload took away.
func currentApp(cfg *config.Config, pc *pendingConnect) (*config.Project, *catalog.Provider, config.ProviderApp, string) {
	var app config.ProviderApp
	proj, ok := cfg.Project(pc.projectID)
	if !ok {
		return nil, nil, app, "project " + pc.projectID + " is no longer configured"
	}
	var prov *catalog.Provider
	if cfg.Providers != nil {
		prov, _ = cfg.Providers.Provider(pc.provider)
	}
	if prov == nil || prov.AuthType != catalog.AuthOAuth2 || prov.OAuth2 == nil || prov.OAuth2.GrantType == catalog.GrantClientCredentials {
		return nil, nil, app, "provider " + pc.provider + " is no longer an OAuth2 authorization-code provider in the catalog"
	}
	app, ok = proj.App(pc.provider)
	if !ok {
		return nil, nil, app, "project " + pc.projectID + " no longer has providerApps." + pc.provider
	}
	return proj, prov, app, ""
}

// connectionFromToken turns a token response into the stored credential
// and metadata; why, when not empty, says what makes it unusable, without
// quoting a token.
func (s *server) connectionFromToken(prov *catalog.Provider, pc *pendingConnect, tok *oauth2.Token) (cred tokens.Credential, meta map[string]string, why string) {
	if err := tokens.CheckToken("access token", tok.AccessToken); err != nil {
		return cred, nil, "it is unusable: " + err.Error()
	}
	if tok.RefreshToken != "" {
		if err := tokens.CheckToken("refresh token", tok.RefreshToken); err != nil {
			return cred, nil, "it is unusable: " + err.Error()
		}
	}
	cred.AccessToken, cred.RefreshToken = tok.AccessToken, tok.RefreshToken
	switch {
	case tok.ExpiresIn > 0:
		// x/oauth2 computes Expiry from the wall clock; the server's clock
		// is the one every other expiry decision uses.
		cred.Expiry = s.now().UTC().Add(time.Duration(tok.ExpiresIn) * time.Second)
	case !tok.Expiry.IsZero():
		cred.Expiry = tok.Expiry.UTC()
	}
	// RFC 6749 §5.1: the response names the granted scopes when they
	// differ from the requested ones.
	cred.Scopes = slices.Clone(pc.scopes)
	if sc, ok := tok.Extra("scope").(string); ok && sc != "" {
		if granted := strings.Fields(sc); checkScopes("scope", granted) == nil {
			cred.Scopes = granted
		}
	}

	meta = maps.Clone(pc.metadata)
	for _, f := range prov.OAuth2.TokenMetadataFields {
		raw := tok.Extra(f.Field)
		if raw == nil {
			continue
		}
		v, ok := raw.(string)
		if !ok {
			return cred, nil, "its token response field " + f.Field + " is not a string"
		}
		if f.Extract == "subdomain" {
			var err error
			if v, err = subdomain(prov, meta, f.Metadata, v); err != nil {
				return cred, nil, "its token response field " + f.Field + " " + err.Error()
			}
		}
		if v == "" {
			continue
		}
		if checkValue(f.Metadata, v) != nil {
			return cred, nil, "its token response field " + f.Field + " is not a usable " + f.Metadata + " value"
		}
		// The token response names where the account lives; it wins over
		// a value given when the flow started.
		if meta == nil {
			meta = map[string]string{}
		}
		meta[f.Metadata] = v
	}
	if err := prov.ValidateMetadata(meta); err != nil {
		return cred, nil, "the connection's metadata is invalid: " + err.Error()
	}
	return cred, meta, ""
}

// subdomain is the leading part of a URL's host (or of a bare host) that,
// given as metadata name (with the rest of meta), makes the provider's
// base URL point at that very host: the labels in front of those the
// template fixes. For https://{{.workspace}}.my.salesforce.com,
// Salesforce's instance_url https://acme.my.salesforce.com gives acme, and
// a sandbox's https://acme--dev.sandbox.my.salesforce.com gives
// acme--dev.sandbox, which the host rules accept (DNS labels under the
// template's fixed suffix). A host that the base URL cannot be made to
// name is refused: the connection's requests would go somewhere other
// than where the provider said the account lives.
func subdomain(prov *catalog.Provider, meta map[string]string, name, v string) (string, error) {
	if !strings.Contains(v, "://") {
		v = "https://" + v
	}
	u, err := url.Parse(v)
	if err != nil || u.Hostname() == "" {
		return "", errors.New("is not a URL")
	}
	host := u.Hostname()
	labels := strings.Split(host, ".")
	if len(labels) < 2 || labels[0] == "" {
		return "", errors.New("has no subdomain")
	}
	try := maps.Clone(meta)
	if try == nil {
		try = map[string]string{}
	}
	for n := 1; n < len(labels); n++ {
		try[name] = strings.Join(labels[:n], ".")
		up, err := prov.Resolve(try, "/")
		if err != nil {
			continue
		}
		got := up.Authority
		if h, _, err := net.SplitHostPort(got); err == nil {
			got = h
		}
		if strings.EqualFold(got, host) {
			return try[name], nil
		}
	}
	return "", fmt.Errorf("names host %s, which the base URL of provider %s cannot be made to point at", host, prov.Name)
}

// exchangeFailure classifies a failed token request: the status of the
// page, the provider's error code to show (if any), and a log reason. A
// provider that refused the code (an OAuth error in a 4xx answer) is a
// 400, as the flow has to start again; anything else is the provider
// failing, a 502. Neither the page nor the reason quotes the response
// body, which may echo the request.
func exchangeFailure(err error) (status int, shown, reason string) {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		st := 0
		if re.Response != nil {
			st = re.Response.StatusCode
		}
		reason = "token exchange: token endpoint answered HTTP " + strconv.Itoa(st)
		if re.ErrorCode != "" {
			shown = safeCode(re.ErrorCode)
			reason += " with error " + shown
			if st >= 400 && st < 500 {
				return http.StatusBadRequest, shown, reason
			}
		}
		return http.StatusBadGateway, shown, reason
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return http.StatusBadGateway, "", "token exchange: the token endpoint did not answer in time"
	}
	return http.StatusBadGateway, "", "token exchange: " + err.Error()
}

// safeCode keeps an OAuth error code printable and short; it is shown on
// a page (escaped) and logged.
func safeCode(c string) string {
	if c == "" {
		return "(empty)"
	}
	if len(c) > maxErrorCodeLen {
		return "(invalid error code)"
	}
	for i := 0; i < len(c); i++ {
		// RFC 6749 §4.1.2.1: error is %x20-21 / %x23-5B / %x5D-7E.
		if ch := c[i]; ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\' {
			return "(invalid error code)"
		}
	}
	return c
}

// redact removes every secret from s, for log lines built from errors of
// libraries that might quote their input.
func redact(s string, secrets ...string) string {
	for _, x := range secrets {
		if x != "" {
			s = strings.ReplaceAll(s, x, redacted)
		}
	}
	return s
}
