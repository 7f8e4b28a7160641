package sampleprovider

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"time"
)

// codeTTL is how long an authorization code stays exchangeable.
const codeTTL = 10 * time.Minute

type authCode struct {
	redirectURI string
	challenge   string // empty: no PKCE
	method      string // "S256" or "plain"
	expires     time.Time
}

// tokenResponse is the RFC 6749 §5.1 answer; instance_url is Salesforce's
// extension, carried so that callers that read it can be tested.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	InstanceURL  string `json:"instance_url,omitempty"`
}

type errorBody struct {
	Error string `json:"error"`
}

// IssueTokens mints a valid access and refresh token pair, as if an
// authorization code had been exchanged. ttl <= 0 means
// [Options.AccessTokenTTL].
func (s *Server) IssueTokens(ttl time.Duration) (access, refresh string) {
	if ttl <= 0 {
		ttl = s.ttl
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issueLocked(ttl, true)
}

// RevokeRefreshToken makes refresh unusable; the token endpoint then answers
// invalid_grant for it. Unknown tokens are ignored.
func (s *Server) RevokeRefreshToken(refresh string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.refresh, refresh)
}

// RevokeAccessToken makes access unusable before it expires, so that API
// calls with it get 401 as they do when a provider revokes a token.
func (s *Server) RevokeAccessToken(access string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.access, access)
}

func (s *Server) issueLocked(ttl time.Duration, withRefresh bool) (access, refresh string) {
	access = "spat_" + rand.Text()
	s.access[access] = s.now().Add(ttl)
	if withRefresh {
		refresh = "sprt_" + rand.Text()
		s.refresh[refresh] = struct{}{}
	}
	return access, refresh
}

// validAccessToken reports whether tok is an unexpired access token.
func (s *Server) validAccessToken(tok string) bool {
	if s.external != nil && s.external(tok) {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.access[tok]
	if !ok {
		return false
	}
	if !s.now().Before(exp) {
		delete(s.access, tok)
		return false
	}
	return true
}

// handleAuthorize approves at once: there is no user to ask. An unknown
// client or a bad redirect_uri is answered here and never redirected, as
// RFC 6749 §4.1.2.1 requires; other errors go back to the redirect URI.
func (s *Server) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "invalid_request"})
		return
	}
	q := r.URL.Query()
	if s.clientID == "" || !equal(q.Get("client_id"), s.clientID) {
		s.logRequest(r, http.StatusBadRequest, "")
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "invalid_client"})
		return
	}
	redirectURI := q.Get("redirect_uri")
	target, err := url.Parse(redirectURI)
	if err != nil || !target.IsAbs() || target.Host == "" || target.Fragment != "" {
		s.logRequest(r, http.StatusBadRequest, "")
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "invalid_request"})
		return
	}
	tq := target.Query()
	if st := q.Get("state"); st != "" {
		tq.Set("state", st)
	}
	fail := func(code string) {
		tq.Set("error", code)
		target.RawQuery = tq.Encode()
		s.logRequest(r, http.StatusFound, "")
		http.Redirect(w, r, target.String(), http.StatusFound)
	}
	if q.Get("response_type") != "code" {
		fail("unsupported_response_type")
		return
	}
	challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
	if challenge != "" && method == "" {
		method = "plain" // RFC 7636 §4.3
	}
	if !validChallenge(challenge, method) {
		fail("invalid_request")
		return
	}

	code := "spac_" + rand.Text()
	s.mu.Lock()
	s.codes[code] = authCode{
		redirectURI: redirectURI,
		challenge:   challenge,
		method:      method,
		expires:     s.now().Add(codeTTL),
	}
	s.mu.Unlock()
	tq.Set("code", code)
	target.RawQuery = tq.Encode()
	s.logRequest(r, http.StatusFound, "")
	http.Redirect(w, r, target.String(), http.StatusFound)
}

// handleToken is the token endpoint (RFC 6749 §3.2).
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.tokenRequests.Add(1)
	w.Header().Set("Cache-Control", "no-store")
	status, body := s.token(w, r)
	if status == http.StatusUnauthorized && r.Header.Get("Authorization") != "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="sampleprovider"`)
	}
	s.logRequest(r, status, "")
	writeJSON(w, status, body)
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) (int, any) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, errorBody{Error: "invalid_request"}
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		return http.StatusBadRequest, errorBody{Error: "invalid_request"}
	}
	form := r.PostForm
	switch g := form.Get("grant_type"); g {
	case "authorization_code", "refresh_token", "client_credentials":
		s.mu.Lock()
		s.grants[g]++
		s.mu.Unlock()
	}

	// Client authentication: exactly one style (RFC 6749 §2.3.1). x/oauth2
	// url-encodes the ID and secret before Basic-encoding them, as the RFC
	// asks, so decode them here.
	var id, secret, style string
	if u, p, ok := r.BasicAuth(); ok {
		if form.Has("client_secret") {
			return http.StatusBadRequest, errorBody{Error: "invalid_request"}
		}
		id, secret, style = unescape(u), unescape(p), AuthStyleInHeader
	} else if form.Has("client_id") {
		id, secret, style = form.Get("client_id"), form.Get("client_secret"), AuthStyleInParams
	}
	if style == "" || (s.clientAuthStyle != "" && style != s.clientAuthStyle) ||
		s.clientID == "" || !equal(id, s.clientID) || !equal(secret, s.clientSecret) {
		return http.StatusUnauthorized, errorBody{Error: "invalid_client"}
	}

	invalidGrant := errorBody{Error: "invalid_grant"}
	instanceURL := "https://" + r.Host
	if r.TLS == nil {
		instanceURL = "http://" + r.Host // the PlainHTTP listener
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch form.Get("grant_type") {
	case "authorization_code":
		code := form.Get("code")
		ac, ok := s.codes[code]
		// A code is single-use even when the exchange fails (RFC 6749 §4.1.2).
		delete(s.codes, code)
		if !ok || !s.now().Before(ac.expires) || form.Get("redirect_uri") != ac.redirectURI ||
			!pkceOK(ac, form.Get("code_verifier")) {
			return http.StatusBadRequest, invalidGrant
		}
		access, refresh := s.issueLocked(s.ttl, true)
		return http.StatusOK, s.tokenBody(access, refresh, instanceURL)
	case "refresh_token":
		old := form.Get("refresh_token")
		if _, ok := s.refresh[old]; !ok {
			return http.StatusBadRequest, invalidGrant
		}
		delete(s.refresh, old) // rotation: the old token is spent
		access, refresh := s.issueLocked(s.ttl, true)
		return http.StatusOK, s.tokenBody(access, refresh, instanceURL)
	case "client_credentials":
		access, _ := s.issueLocked(s.ttl, false)
		return http.StatusOK, s.tokenBody(access, "", instanceURL)
	case "":
		return http.StatusBadRequest, errorBody{Error: "invalid_request"}
	default:
		return http.StatusBadRequest, errorBody{Error: "unsupported_grant_type"}
	}
}

func (s *Server) tokenBody(access, refresh, instanceURL string) tokenResponse {
	return tokenResponse{
		AccessToken:  access,
		TokenType:    "Bearer",
		ExpiresIn:    int64(s.ttl / time.Second),
		RefreshToken: refresh,
		InstanceURL:  instanceURL,
	}
}

// pkceOK checks the verifier against the code's challenge (RFC 7636 §4.6).
// A verifier sent for a code issued without a challenge is refused, as
// OAuth 2.1 requires, so that a mixed-up flow shows up in tests.
func pkceOK(ac authCode, verifier string) bool {
	if ac.challenge == "" {
		return verifier == ""
	}
	if !validVerifier(verifier) {
		return false
	}
	if ac.method == "plain" {
		return equal(verifier, ac.challenge)
	}
	sum := sha256.Sum256([]byte(verifier))
	return equal(base64.RawURLEncoding.EncodeToString(sum[:]), ac.challenge)
}

// validChallenge reports whether an authorization request's PKCE parameters
// are well formed; both empty means no PKCE.
func validChallenge(challenge, method string) bool {
	switch method {
	case "":
		return challenge == ""
	case "plain":
		return validVerifier(challenge)
	case "S256":
		sum, err := base64.RawURLEncoding.DecodeString(challenge)
		return err == nil && len(sum) == sha256.Size
	default:
		return false
	}
}

// validVerifier reports whether v is 43 to 128 unreserved characters
// (RFC 7636 §4.1).
func validVerifier(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~':
		default:
			return false
		}
	}
	return true
}

func unescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// equal compares secrets in constant time.
func equal(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
