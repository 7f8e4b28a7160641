package oauthtest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

func config(s *Server, style oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID: s.ClientID(), ClientSecret: s.ClientSecret(),
		Endpoint:    oauth2.Endpoint{TokenURL: s.TokenURL(), AuthURL: s.AuthURL(), AuthStyle: style},
		RedirectURL: "http://127.0.0.1:9/callback",
	}
}

func clientCtx(t *testing.T, s *Server) context.Context {
	return context.WithValue(t.Context(), oauth2.HTTPClient, s.Client())
}

func refresh(ctx context.Context, cfg *oauth2.Config, rt string) (*oauth2.Token, error) {
	return cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
}

func errorCode(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

// resourceStatus calls the resource endpoint with token.
func resourceStatus(t *testing.T, s *Server, token string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, s.ResourceURL(), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRefreshRotates(t *testing.T) {
	s := Start(t, Options{AccessTTL: 30 * time.Minute})
	first, err := s.IssueTokens(0)
	if err != nil {
		t.Fatal(err)
	}
	if first.Access == "" || first.Refresh == "" || first.ExpiresIn != 30*time.Minute {
		t.Fatalf("IssueTokens = %+v", first)
	}
	ctx := clientCtx(t, s)
	cfg := config(s, oauth2.AuthStyleInParams)
	tok, err := refresh(ctx, cfg, first.Refresh)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == first.Access || tok.RefreshToken == first.Refresh || tok.RefreshToken == "" {
		t.Fatal("the refresh grant did not issue a new pair")
	}
	if tok.ExpiresIn != 1800 {
		t.Errorf("expires_in %d, want 1800", tok.ExpiresIn)
	}
	if s.ValidRefresh(first.Refresh) || s.ValidAccess(first.Access) || !s.ValidAccess(tok.AccessToken) || !s.ValidRefresh(tok.RefreshToken) {
		t.Error("the used pair must be removed and the new one valid")
	}
	if _, err := refresh(ctx, cfg, first.Refresh); errorCode(err) != "invalid_grant" {
		t.Errorf("reusing a rotated refresh token: %v, want invalid_grant", err)
	}
	if got := resourceStatus(t, s, tok.AccessToken); got != http.StatusOK {
		t.Errorf("resource with the new token: %d", got)
	}
	if got := resourceStatus(t, s, first.Access); got != http.StatusUnauthorized {
		t.Errorf("resource with the replaced token: %d", got)
	}
	if n := s.Requests(GrantRefreshToken); n != 2 {
		t.Errorf("%d refresh requests counted, want 2", n)
	}
	issued := s.Issued()
	if len(issued) != 2 || issued[0].Grant != GrantAuthorizationCode || issued[1].Grant != GrantRefreshToken ||
		issued[1].Access != tok.AccessToken || issued[1].Refresh != tok.RefreshToken {
		t.Errorf("issued log %+v", issued)
	}

	if err := s.Revoke(tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	if _, err := refresh(ctx, cfg, tok.RefreshToken); errorCode(err) != "invalid_grant" {
		t.Errorf("revoked refresh token: %v, want invalid_grant", err)
	}
}

func TestKeepRefreshToken(t *testing.T) {
	s := Start(t, Options{KeepRefreshToken: true})
	first, _ := s.IssueTokens(0)
	ctx := clientCtx(t, s)
	// The raw answer, not x/oauth2's, which fills the old refresh token in.
	resp, err := s.Client().PostForm(s.TokenURL(), url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {first.Refresh},
		"client_id": {s.ClientID()}, "client_secret": {s.ClientSecret()},
	})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || strings.Contains(string(body), "refresh_token") {
		t.Fatalf("answer %d %s, want a token without refresh_token", resp.StatusCode, body)
	}
	if !s.ValidRefresh(first.Refresh) {
		t.Fatal("the refresh token must stay valid")
	}
	if _, err := refresh(ctx, config(s, oauth2.AuthStyleInParams), first.Refresh); err != nil {
		t.Fatalf("second refresh with the kept token: %v", err)
	}
}

func TestClientAuth(t *testing.T) {
	cases := []struct {
		auth  ClientAuth
		style oauth2.AuthStyle
		ok    bool
	}{
		{ClientAuthAny, oauth2.AuthStyleInHeader, true},
		{ClientAuthAny, oauth2.AuthStyleInParams, true},
		{ClientAuthHeader, oauth2.AuthStyleInHeader, true},
		{ClientAuthHeader, oauth2.AuthStyleInParams, false},
		{ClientAuthParams, oauth2.AuthStyleInParams, true},
		{ClientAuthParams, oauth2.AuthStyleInHeader, false},
	}
	for _, tc := range cases {
		s := Start(t, Options{ClientAuth: tc.auth, ClientSecret: "s&e=c r%et"}) // escaping matters in Basic
		cc := &clientcredentials.Config{ClientID: s.ClientID(), ClientSecret: s.ClientSecret(), TokenURL: s.TokenURL(), AuthStyle: tc.style, Scopes: []string{"a", "b"}}
		tok, err := cc.Token(clientCtx(t, s))
		if tc.ok != (err == nil) {
			t.Errorf("ClientAuth %d, style %d: %v, want success %v", tc.auth, tc.style, err, tc.ok)
			continue
		}
		if !tc.ok && errorCode(err) != "invalid_client" {
			t.Errorf("ClientAuth %d, style %d: %v, want invalid_client", tc.auth, tc.style, err)
		}
		if tc.ok && !s.ValidAccess(tok.AccessToken) {
			t.Error("the minted token is not valid")
		}
		if n := s.Requests(GrantClientCredentials); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
	}
	s := Start(t, Options{})
	cc := &clientcredentials.Config{ClientID: s.ClientID(), ClientSecret: "wrong", TokenURL: s.TokenURL(), AuthStyle: oauth2.AuthStyleInParams}
	if _, err := cc.Token(clientCtx(t, s)); errorCode(err) != "invalid_client" {
		t.Errorf("wrong secret: %v, want invalid_client", err)
	}
	cc = &clientcredentials.Config{ClientID: "nobody", ClientSecret: "x", TokenURL: s.TokenURL(), AuthStyle: oauth2.AuthStyleInParams}
	if _, err := cc.Token(clientCtx(t, s)); errorCode(err) != "invalid_client" {
		t.Errorf("unknown client: %v, want invalid_client", err)
	}
}

func TestAuthorizationCodeWithPKCE(t *testing.T) {
	const redirect = "http://127.0.0.1:9/callback"
	s := Start(t, Options{ForcePKCE: true, RedirectURIs: []string{redirect}, TLS: true})
	cfg := config(s, oauth2.AuthStyleInHeader)
	noFollow := *s.Client()
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	authorize := func(opts ...oauth2.AuthCodeOption) *url.URL {
		t.Helper()
		resp, err := noFollow.Get(cfg.AuthCodeURL("st4te", opts...))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || err != nil {
			t.Fatalf("authorize answered %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		return loc
	}
	ctx := clientCtx(t, s)

	verifier := oauth2.GenerateVerifier()
	loc := authorize(oauth2.S256ChallengeOption(verifier))
	if loc.Query().Get("state") != "st4te" || loc.Query().Get("code") == "" || !strings.HasPrefix(loc.String(), redirect) {
		t.Fatalf("redirect %s", loc)
	}
	if _, err := cfg.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption("wrong-"+verifier)); errorCode(err) != "invalid_grant" {
		t.Errorf("wrong verifier: %v, want invalid_grant", err)
	}
	loc = authorize(oauth2.S256ChallengeOption(verifier))
	tok, err := cfg.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if !s.ValidAccess(tok.AccessToken) || tok.RefreshToken == "" {
		t.Error("the code exchange did not issue a valid pair")
	}
	if _, err := cfg.Exchange(ctx, loc.Query().Get("code"), oauth2.VerifierOption(verifier)); errorCode(err) != "invalid_grant" {
		t.Errorf("code used twice: %v, want invalid_grant", err)
	}
	// Without PKCE, ForcePKCE refuses (the library answers before it
	// trusts the redirect URI, so without a redirect).
	resp, err := noFollow.Get(cfg.AuthCodeURL("st4te"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("authorize without a challenge: %d, want 400", resp.StatusCode)
	}

	block, _ := pem.Decode(s.CertPEM())
	if block == nil {
		t.Fatal("no certificate PEM")
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		t.Fatal(err)
	}
}

func TestDownAndDelay(t *testing.T) {
	s := Start(t, Options{})
	first, _ := s.IssueTokens(0)
	ctx := clientCtx(t, s)
	cfg := config(s, oauth2.AuthStyleInParams)

	s.SetDown(true)
	_, err := refresh(ctx, cfg, first.Refresh)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response.StatusCode != http.StatusServiceUnavailable || re.ErrorCode != "temporarily_unavailable" {
		t.Fatalf("down: %v, want 503 temporarily_unavailable", err)
	}
	if !s.ValidRefresh(first.Refresh) {
		t.Fatal("a refused request must not use the refresh token")
	}
	s.SetDown(false)

	s.SetDelay(time.Hour)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := refresh(short, cfg, first.Refresh); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("delayed: %v, want the client's deadline", err)
	}
	s.SetDelay(0)
	if _, err := refresh(ctx, cfg, first.Refresh); err != nil {
		t.Fatal(err)
	}
	if n := s.Requests(""); n != 3 {
		t.Errorf("%d requests counted, want 3", n)
	}
}

// TestNewClose: the server works without a testing.TB, and Close releases
// held requests.
func TestNewClose(t *testing.T) {
	arrived := make(chan struct{})
	s, err := New(Options{OnTokenRequest: func(string) { close(arrived) }})
	if err != nil {
		t.Fatal(err)
	}
	s.SetDelay(time.Hour)
	done := make(chan error, 1)
	go func() {
		_, err := (&clientcredentials.Config{ClientID: s.ClientID(), ClientSecret: s.ClientSecret(), TokenURL: s.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader}).
			Token(context.WithValue(context.Background(), oauth2.HTTPClient, s.Client()))
		done <- err
	}()
	<-arrived // held by the delay now
	s.Close()
	s.Close()
	<-done
	if s.CertPEM() != nil {
		t.Error("CertPEM without TLS")
	}
}
