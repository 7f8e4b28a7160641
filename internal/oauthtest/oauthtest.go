// Package oauthtest runs a real OAuth2 authorization server for tests: the
// token, authorization and resource endpoints of
// github.com/go-oauth2/oauth2/v4, a maintained server library this project
// did not write, on a loopback httptest server.
//
// The server is configured the way careful providers are: every refresh
// grant issues a new refresh token and removes the used one and the old
// access token (Options.KeepRefreshToken turns rotation off), and the
// client must authenticate on every token request, in the header, in the
// body or either, as Options.ClientAuth says. On top of the library it
// counts token requests by grant type, can be taken down (503) or slowed
// down, revokes refresh tokens, records every token pair it issues, and
// mints a pair directly, as if an authorization code had been exchanged.
//
// It serves unit tests through [Start] and end-to-end suites, which start
// the built binary against it, through [New] and [Server.Close].
//
// # Caveats
//
// Token lifetimes follow the real clock: the library has no clock hook.
// Every token and secret it hands out is a test value; tests that check
// redaction may look for them in logs.
package oauthtest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-oauth2/oauth2/v4"
	"github.com/go-oauth2/oauth2/v4/generates"
	"github.com/go-oauth2/oauth2/v4/manage"
	"github.com/go-oauth2/oauth2/v4/models"
	"github.com/go-oauth2/oauth2/v4/server"
	"github.com/go-oauth2/oauth2/v4/store"
)

// ClientAuth says where the token endpoint accepts the client's ID and
// secret (RFC 6749 §2.3.1).
type ClientAuth int

const (
	// ClientAuthAny accepts HTTP Basic or client_id and client_secret in
	// the form body, not both.
	ClientAuthAny ClientAuth = iota
	// ClientAuthHeader accepts only HTTP Basic.
	ClientAuthHeader
	// ClientAuthParams accepts only client_id and client_secret in the
	// form body.
	ClientAuthParams
)

// Grant types, as sent in grant_type and counted by [Server.Requests].
const (
	GrantRefreshToken      = "refresh_token"
	GrantClientCredentials = "client_credentials"
	GrantAuthorizationCode = "authorization_code"
)

// Paths of the endpoints under [Server.URL].
const (
	TokenPath     = "/oauth/token"
	AuthorizePath = "/oauth/authorize"
	ResourcePath  = "/api/me"
)

// Options configure a Server. The zero value gives the defaults.
type Options struct {
	// ClientID and ClientSecret are the one client the server knows.
	// Defaults: "oauthtest-client" and "oauthtest-secret".
	ClientID, ClientSecret string
	// ClientAuth is where the token endpoint accepts them.
	ClientAuth ClientAuth
	// AccessTTL is the lifetime of every access token the endpoints issue
	// (expires_in). Default one hour.
	AccessTTL time.Duration
	// RefreshTTL is the lifetime of refresh tokens; zero means they do not
	// expire.
	RefreshTTL time.Duration
	// KeepRefreshToken makes the refresh grant answer without a
	// refresh_token, leaving the used one valid, like providers that do
	// not rotate.
	KeepRefreshToken bool
	// RedirectURIs are the redirect URIs the authorization endpoint and the
	// code exchange accept, compared exactly; empty accepts any.
	RedirectURIs []string
	// ForcePKCE refuses authorization requests without a code_challenge.
	// S256 and plain are supported either way.
	ForcePKCE bool
	// UserID is the resource owner the authorization endpoint approves
	// without asking. Default "oauthtest-user".
	UserID string
	// OnTokenRequest, when set, is called with the grant_type of each
	// token request as it arrives, before it is answered: a test can
	// kill a client there, after the request has left it.
	OnTokenRequest func(grant string)
	// TLS serves https with httptest's self-signed certificate; see
	// [Server.Client] and [Server.CertPEM]. Plain http on 127.0.0.1 is
	// enough for ampproxy, whose catalog accepts http token URLs on
	// loopback addresses.
	TLS bool
}

// Tokens is one access token, with the refresh token issued with it.
type Tokens struct {
	Access, Refresh string
	// ExpiresIn is the access token's lifetime as issued.
	ExpiresIn time.Duration
	// Grant is the grant that issued the pair: a Grant* constant.
	Grant string
}

// Server is a running authorization server. Its methods are safe for
// concurrent use.
type Server struct {
	opts    Options
	ts      *httptest.Server
	manager *manage.Manager
	srv     *server.Server
	closing chan struct{}
	once    sync.Once

	inflight sync.WaitGroup

	mu       sync.Mutex
	down     bool
	delay    time.Duration
	requests map[string]int
	issued   []Tokens
}

// New starts a server on a random loopback port.
func New(opts Options) (*Server, error) {
	if opts.ClientID == "" {
		opts.ClientID = "oauthtest-client"
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = "oauthtest-secret"
	}
	if opts.AccessTTL <= 0 {
		opts.AccessTTL = time.Hour
	}
	if opts.UserID == "" {
		opts.UserID = "oauthtest-user"
	}
	s := &Server{opts: opts, closing: make(chan struct{}), requests: map[string]int{}}

	m := manage.NewDefaultManager()
	m.SetAuthorizeCodeTokenCfg(&manage.Config{AccessTokenExp: opts.AccessTTL, RefreshTokenExp: opts.RefreshTTL, IsGenerateRefresh: true})
	m.SetClientTokenCfg(&manage.Config{AccessTokenExp: opts.AccessTTL})
	m.SetRefreshTokenCfg(&manage.RefreshingConfig{
		AccessTokenExp:     opts.AccessTTL,
		RefreshTokenExp:    opts.RefreshTTL,
		IsGenerateRefresh:  !opts.KeepRefreshToken,
		IsRemoveAccess:     true,
		IsRemoveRefreshing: true,
	})
	tokenStore, err := store.NewMemoryTokenStore()
	if err != nil {
		return nil, fmt.Errorf("oauthtest: token store: %w", err)
	}
	m.MapTokenStorage(tokenStore)
	clients := store.NewClientStore()
	clients.Set(opts.ClientID, &models.Client{ID: opts.ClientID, Secret: opts.ClientSecret, Domain: "http://127.0.0.1"})
	m.MapClientStorage(clients)
	m.MapAccessGenerate(&recordingGenerate{s: s, next: generates.NewAccessGenerate()})
	m.SetValidateURIHandler(func(_, redirectURI string) error {
		u, err := url.Parse(redirectURI)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("oauthtest: redirect URI %q is not an http(s) URL", redirectURI)
		}
		if len(opts.RedirectURIs) > 0 && !slices.Contains(opts.RedirectURIs, redirectURI) {
			return fmt.Errorf("oauthtest: redirect URI %q is not registered", redirectURI)
		}
		return nil
	})
	s.manager = m

	cfg := server.NewConfig()
	cfg.ForcePKCE = opts.ForcePKCE
	srv := server.NewServer(cfg, m)
	// The token handler has authenticated the client before the library
	// sees the request (the library checks the secret only for some
	// grants, and answers 500 for an unknown client).
	srv.ClientInfoHandler = func(*http.Request) (string, string, error) {
		return opts.ClientID, opts.ClientSecret, nil
	}
	srv.UserAuthorizationHandler = func(http.ResponseWriter, *http.Request) (string, error) {
		return opts.UserID, nil
	}
	s.srv = srv

	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TokenPath, s.token)
	mux.HandleFunc(AuthorizePath, func(w http.ResponseWriter, r *http.Request) {
		if err := srv.HandleAuthorizeRequest(w, r); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("GET "+ResourcePath, s.resource)
	s.ts = httptest.NewUnstartedServer(mux)
	if opts.TLS {
		s.ts.StartTLS()
	} else {
		s.ts.Start()
	}
	return s, nil
}

// Start starts a server and closes it when the test ends.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Close stops the server, releasing requests held by SetDelay first, and
// waits for the requests in progress.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.closing)
		s.ts.Close()
	})
}

// URL is the server's base URL, such as http://127.0.0.1:41234.
func (s *Server) URL() string { return s.ts.URL }

// TokenURL is the token endpoint.
func (s *Server) TokenURL() string { return s.ts.URL + TokenPath }

// AuthURL is the authorization endpoint: it approves every valid request
// for Options.UserID and redirects with a code at once.
func (s *Server) AuthURL() string { return s.ts.URL + AuthorizePath }

// ResourceURL is an API endpoint that answers 200 with a JSON body for a
// valid bearer access token and 401 otherwise.
func (s *Server) ResourceURL() string { return s.ts.URL + ResourcePath }

// ClientID is the client's ID.
func (s *Server) ClientID() string { return s.opts.ClientID }

// ClientSecret is the client's secret.
func (s *Server) ClientSecret() string { return s.opts.ClientSecret }

// Client is an HTTP client that trusts the server's certificate.
func (s *Server) Client() *http.Client { return s.ts.Client() }

// CertPEM is the server's certificate in PEM, to trust in another
// process; nil without Options.TLS.
func (s *Server) CertPEM() []byte {
	if !s.opts.TLS {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ts.Certificate().Raw})
}

// SetDown makes the token endpoint answer 503 temporarily_unavailable
// (true) or work again (false). Requests are counted either way.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// SetDelay holds every token request for d before answering (or until the
// client gives up or the server closes); zero answers at once.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Requests counts the token requests received with that grant_type,
// whatever their outcome; "" counts them all.
func (s *Server) Requests(grant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if grant != "" {
		return s.requests[grant]
	}
	n := 0
	for _, v := range s.requests {
		n += v
	}
	return n
}

// WaitIdle waits until no token request is being handled. A client
// killed mid-request leaves the server still answering it (and rotating
// the refresh token); a test judging the client's store must wait for
// that to finish first.
func (s *Server) WaitIdle() { s.inflight.Wait() }

// Issued lists every token pair the server has issued, oldest first.
func (s *Server) Issued() []Tokens {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.issued)
}

// IssueTokens mints an access and refresh token pair for Options.UserID,
// as if an authorization code had been exchanged: the library's manager
// issues a code and exchanges it. ttl <= 0 means Options.AccessTTL.
func (s *Server) IssueTokens(ttl time.Duration) (Tokens, error) {
	if ttl <= 0 {
		ttl = s.opts.AccessTTL
	}
	ctx := context.Background()
	code, err := s.manager.GenerateAuthToken(ctx, oauth2.Code, &oauth2.TokenGenerateRequest{
		ClientID: s.opts.ClientID, UserID: s.opts.UserID, AccessTokenExp: ttl,
	})
	if err != nil {
		return Tokens{}, fmt.Errorf("oauthtest: issue code: %w", err)
	}
	ti, err := s.manager.GenerateAccessToken(ctx, oauth2.AuthorizationCode, &oauth2.TokenGenerateRequest{
		ClientID: s.opts.ClientID, ClientSecret: s.opts.ClientSecret, Code: code.GetCode(), AccessTokenExp: ttl,
	})
	if err != nil {
		return Tokens{}, fmt.Errorf("oauthtest: exchange code: %w", err)
	}
	return Tokens{Access: ti.GetAccess(), Refresh: ti.GetRefresh(), ExpiresIn: ti.GetAccessExpiresIn(), Grant: GrantAuthorizationCode}, nil
}

// Revoke makes a refresh token unusable: the token endpoint then answers
// invalid_grant for it.
func (s *Server) Revoke(refresh string) error {
	return s.manager.RemoveRefreshToken(context.Background(), refresh)
}

// ValidAccess reports whether the server accepts token as an access token
// now: issued, not expired, not replaced by a refresh.
func (s *Server) ValidAccess(token string) bool {
	_, err := s.manager.LoadAccessToken(context.Background(), token)
	return err == nil
}

// ValidRefresh reports whether the refresh grant would accept token now.
func (s *Server) ValidRefresh(token string) bool {
	_, err := s.manager.LoadRefreshToken(context.Background(), token)
	return err == nil
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.inflight.Add(1)
	defer s.inflight.Done()
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	grant := r.PostForm.Get("grant_type")
	s.mu.Lock()
	s.requests[grant]++
	down, delay := s.down, s.delay
	s.mu.Unlock()
	if s.opts.OnTokenRequest != nil {
		s.opts.OnTokenRequest(grant)
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-s.closing:
			t.Stop()
		}
	}
	if down {
		writeError(w, http.StatusServiceUnavailable, "temporarily_unavailable")
		return
	}
	if !s.authenticate(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="oauthtest"`)
		writeError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	if err := s.srv.HandleTokenRequest(w, r); err != nil {
		writeError(w, http.StatusInternalServerError, "server_error")
	}
}

// authenticate checks the client's credentials where Options.ClientAuth
// allows them. RFC 6749 §2.3.1 form-encodes both parts of HTTP Basic.
func (s *Server) authenticate(r *http.Request) bool {
	hid, hsecret, inHeader := r.BasicAuth()
	_, inParams := r.PostForm["client_id"]
	var id, secret string
	switch {
	case inHeader && inParams, inHeader && s.opts.ClientAuth == ClientAuthParams, inParams && s.opts.ClientAuth == ClientAuthHeader:
		return false
	case inHeader:
		var err1, err2 error
		id, err1 = url.QueryUnescape(hid)
		secret, err2 = url.QueryUnescape(hsecret)
		if err1 != nil || err2 != nil {
			return false
		}
	case inParams:
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	default:
		return false
	}
	return subtle.ConstantTimeCompare([]byte(id), []byte(s.opts.ClientID)) == 1 &&
		subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) == 1
}

func (s *Server) resource(w http.ResponseWriter, r *http.Request) {
	ti, err := s.srv.ValidationBearerToken(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "invalid_token")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"user": ti.GetUserID(), "clientId": ti.GetClientID(), "path": r.URL.Path})
}

func writeError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code})
}

// recordingGenerate issues tokens with the library's generator and
// records each pair.
type recordingGenerate struct {
	s    *Server
	next oauth2.AccessGenerate
}

func (g *recordingGenerate) Token(ctx context.Context, data *oauth2.GenerateBasic, isGenRefresh bool) (string, string, error) {
	access, refresh, err := g.next.Token(ctx, data, isGenRefresh)
	if err != nil {
		return "", "", err
	}
	t := Tokens{Access: access, Refresh: refresh, ExpiresIn: data.TokenInfo.GetAccessExpiresIn()}
	switch {
	case data.TokenInfo.GetRefresh() != "":
		// Only the refresh grant generates for a token info that already
		// holds a refresh token: the one being used.
		t.Grant = GrantRefreshToken
		if refresh == "" {
			t.Refresh = data.TokenInfo.GetRefresh()
		}
	case data.UserID == "":
		t.Grant = GrantClientCredentials
	default:
		t.Grant = GrantAuthorizationCode
	}
	g.s.mu.Lock()
	g.s.issued = append(g.s.issued, t)
	g.s.mu.Unlock()
	return access, refresh, nil
}

var _ oauth2.AccessGenerate = (*recordingGenerate)(nil)
