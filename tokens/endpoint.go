package tokens

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/ampproxy/ampproxy/catalog"
)

// This file talks to token endpoints and stores what they answer. Nothing
// here logs or returns a token, a refresh token, a client secret, or the
// body of a token response: errors are described by HTTP status and OAuth2
// error code only, since providers have been known to echo the request in
// error_description.

// refreshOutcome is the result of one refresh attempt.
type refreshOutcome struct {
	result string // resultOK, resultInvalidGrant or resultError
	token  string // the stored access token, with resultOK
	// reason explains a failure without secrets; it becomes
	// RetryError.Reason.
	reason string
	// noBackoff: the failure says nothing about the endpoint (the
	// connection changed under the refresh), so try again at once.
	noBackoff bool
	// left is the connection as this attempt left it in the store: the
	// stored result of its write, or the snapshot it started from.
	left *Connection
	// called: a request reached the network; took is how long it took.
	called bool
	took   time.Duration
	// badAt: see connRefresh.badAt.
	badAt time.Time
	// pending: see connRefresh.pending.
	pending *issuedToken
}

// issuedToken is a token endpoint's answer, as it will be stored.
type issuedToken struct {
	// from is the credential it replaces; it may be stored only over that.
	from            grantID
	access, refresh string
	expiry          time.Time
}

// grantID is what identifies a connection's credential: when any part
// changes, the connection was given new credentials.
type grantID struct {
	access, refresh, clientID, clientSecret string
}

func grantOf(c *Credential) grantID {
	return grantID{c.AccessToken, c.RefreshToken, c.ClientID, c.ClientSecret}
}

// setupError is a refresh that cannot start because of configuration:
// the catalog, the provider app, the connection's own fields. Its reason
// names what to fix, for the log; it holds no secret.
type setupError struct{ reason string }

func (e *setupError) Error() string { return e.reason }

// errCredentialChanged aborts a write: the connection's credentials were
// replaced while the refresh ran, so its result belongs to old ones.
var errCredentialChanged = errors.New("the connection's credentials changed during the refresh")

// refresh gets a new token for c and stores it, or records why not.
func (r *Refresher) refresh(c *Connection, pending *issuedToken) refreshOutcome {
	log := r.log.With("connection", c.ID, "project", c.ProjectID, "provider", c.Provider)
	if pending != nil && pending.from == grantOf(&c.Credential) {
		// The endpoint already answered; its refresh token may be the only
		// valid one now, so store that answer rather than ask again.
		out := r.save(log, c, pending)
		if out.left == nil {
			out.left = c
		}
		return out
	}
	// Both clocks, read together: expiries are on the Refresher's, and
	// x/oauth2 stamps tok.Expiry on the real one.
	issuedAt, sent := r.now(), time.Now()
	tok, err := r.fetch(c)
	took := time.Since(sent)
	var out refreshOutcome
	if err != nil {
		out = r.failed(log, c, err)
	} else if bad := checkIssued(tok); bad != nil {
		// Stored, it would break every request of the connection; the
		// endpoint may answer better after the backoff.
		log.Error("the token endpoint issued an unusable token; it is not stored", "problem", bad.Error())
		out = refreshOutcome{result: resultError, reason: "the token endpoint issued an unusable token"}
	} else {
		out = r.save(log, c, &issuedToken{
			from:    grantOf(&c.Credential),
			access:  tok.AccessToken,
			refresh: tok.RefreshToken,
			expiry:  expiryOf(tok, issuedAt, sent),
		})
	}
	var se *setupError
	if !errors.As(err, &se) {
		out.called, out.took = true, took
	}
	if out.left == nil {
		out.left = c
	}
	return out
}

// checkIssued checks the tokens of an answer before they are stored. An
// empty refresh token is none: the answer kept the old one or has none.
func checkIssued(tok *oauth2.Token) error {
	if err := CheckToken("access token", tok.AccessToken); err != nil {
		return err
	}
	if tok.RefreshToken != "" {
		return CheckToken("refresh token", tok.RefreshToken)
	}
	return nil
}

// fetch asks the provider's token endpoint for a new token with
// golang.org/x/oauth2, on a context of its own that carries the HTTP
// client and the timeout.
func (r *Refresher) fetch(c *Connection) (*oauth2.Token, error) {
	cat := r.providers()
	if cat == nil {
		return nil, &setupError{"no provider catalog is loaded"}
	}
	p, ok := cat.Provider(c.Provider)
	if !ok || p.AuthType != catalog.AuthOAuth2 || p.OAuth2 == nil {
		return nil, &setupError{"provider " + c.Provider + " is not an OAuth2 provider in the catalog"}
	}
	tokenURL, err := p.TokenURL(c.Metadata)
	if err != nil {
		return nil, &setupError{"token URL of provider " + c.Provider + ": " + err.Error()}
	}
	var style oauth2.AuthStyle
	switch p.OAuth2.AuthStyle {
	case catalog.AuthStyleInHeader:
		style = oauth2.AuthStyleInHeader
	case catalog.AuthStyleInParams:
		style = oauth2.AuthStyleInParams
	default:
		// Auto-detection resends the grant, which a provider that rotates
		// refresh tokens answers with invalid_grant.
		return nil, &setupError{"provider " + c.Provider + " has no authStyle"}
	}

	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, r.client)

	switch c.AuthScheme {
	case SchemeOAuth2AuthorizationCode:
		if r.apps == nil {
			return nil, &setupError{"no OAuth2 apps are configured"}
		}
		id, secret, ok, err := r.apps(c.ProjectID, c.Provider)
		if err != nil {
			return nil, &setupError{"OAuth2 app of project " + c.ProjectID + " for provider " + c.Provider + ": " + err.Error()}
		}
		if !ok {
			return nil, &setupError{"project " + c.ProjectID + " has no OAuth2 app (providerApps) for provider " + c.Provider}
		}
		cfg := &oauth2.Config{ClientID: id, ClientSecret: secret, Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: style}}
		// A token source for this one call, dropped afterwards: the caller
		// stores the result, and no source outlives the context above.
		// x/oauth2 keeps the old refresh token when the answer has none.
		return cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: c.Credential.RefreshToken}).Token()
	case SchemeOAuth2ClientCredentials:
		if c.Credential.ClientID == "" {
			return nil, &setupError{"the connection holds no client ID"}
		}
		cfg := &clientcredentials.Config{
			ClientID: c.Credential.ClientID, ClientSecret: c.Credential.ClientSecret,
			TokenURL: tokenURL, Scopes: c.Credential.Scopes, AuthStyle: style,
		}
		return cfg.Token(ctx)
	}
	return nil, &setupError{"the connection's authScheme " + string(c.AuthScheme) + " is not OAuth2"}
}

// failed classifies a failed token request.
func (r *Refresher) failed(log *slog.Logger, c *Connection, err error) refreshOutcome {
	var se *setupError
	var re *oauth2.RetrieveError
	switch {
	case errors.As(err, &se):
		// The details (file names, project settings) are for the operator;
		// the caller learns only that it is not the provider's doing.
		log.Error("cannot refresh the access token", "reason", se.reason)
		return refreshOutcome{result: resultError, reason: "the token cannot be refreshed with the current configuration (see the server log)"}

	case errors.As(err, &re):
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		code := safeCode(re.ErrorCode)
		reason := "the token endpoint answered HTTP " + strconv.Itoa(status)
		if code != "" {
			reason += " " + code
		}
		// invalid_client and unauthorized_client are about the client
		// (RFC 6749 §5.2): for a client-credentials connection that is the
		// connection's own; for an authorization-code refresh it is the
		// project's app, shared by every connection of the provider.
		clientRefused := code == "invalid_client" || code == "unauthorized_client"
		switch {
		case code == "invalid_grant" || (clientRefused && c.AuthScheme == SchemeOAuth2ClientCredentials):
			return r.markBad(log, c, code, status)
		case clientRefused:
			// The project's app, not the connection, was refused (Google
			// answers unauthorized_client once the app's client ID has
			// changed): marking every connection of the provider bad would
			// take an operator's mistake out on the users. Back off and say
			// so loudly.
			log.Error("the token endpoint rejected the project's OAuth2 app; check providerApps clientID and clientSecretFile",
				"status", status, "code", code)
		case status >= 500 || status == 429 || status == 408:
			log.Warn("token endpoint unavailable", "status", status, "code", code)
		case status >= 300 && status < 400:
			// Not followed: it would carry the secret and the grant to
			// another URL (see NewTokenClient).
			log.Error("the token endpoint answered a redirect, which is not followed; check the provider's tokenURL",
				"status", status)
		default:
			log.Error("token endpoint refused the refresh", "status", status, "code", code)
		}
		return refreshOutcome{result: resultError, reason: reason}

	case isTimeout(err):
		log.Warn("token endpoint did not answer in time", "timeout", r.timeout)
		return refreshOutcome{result: resultError, reason: "the token endpoint did not answer within " + r.timeout.String()}
	}
	log.Warn("token endpoint unreachable or its answer unreadable", "error", describe(err))
	return refreshOutcome{result: resultError, reason: "the token endpoint is unreachable or its answer unreadable"}
}

// markBad stores the bad_credentials status, unless the credentials
// changed meanwhile.
func (r *Refresher) markBad(log *slog.Logger, c *Connection, code string, status int) refreshOutcome {
	from := grantOf(&c.Credential)
	stored, err := r.store.UpdateConnection(c.ProjectID, c.ID, func(w *Connection) error {
		if grantOf(&w.Credential) != from {
			return errCredentialChanged
		}
		w.Status = StatusBadCredentials
		return nil
	})
	badAt := c.UpdateTime
	switch {
	case errors.Is(err, errCredentialChanged), errors.Is(err, ErrNotFound):
		return refreshOutcome{result: resultError, reason: errCredentialChanged.Error(), noBackoff: true}
	case err != nil:
		// Remembered in memory instead; a restart will try once more.
		log.Error("could not store status bad_credentials", "error", err)
	default:
		badAt = stored.UpdateTime
	}
	log.Warn("the token endpoint rejected the connection's credentials; it is bad_credentials until they are updated",
		"status", status, "code", code)
	return refreshOutcome{result: resultInvalidGrant, badAt: badAt, left: stored}
}

// save stores it over c's credential and returns the token only once the
// write has reached the disk: a rotated refresh token is never used, or
// lost, before it is stored.
func (r *Refresher) save(log *slog.Logger, c *Connection, it *issuedToken) refreshOutcome {
	stored, err := r.store.UpdateConnection(c.ProjectID, c.ID, func(w *Connection) error {
		if grantOf(&w.Credential) != it.from {
			return errCredentialChanged
		}
		w.Credential.AccessToken = it.access
		if it.refresh != "" {
			w.Credential.RefreshToken = it.refresh
		}
		w.Credential.Expiry = it.expiry
		w.Status = StatusWorking
		return nil
	})
	switch {
	case errors.Is(err, errCredentialChanged), errors.Is(err, ErrNotFound):
		log.Info("discarded a refreshed token: the connection's credentials were replaced meanwhile")
		return refreshOutcome{result: resultError, reason: errCredentialChanged.Error(), noBackoff: true}
	case err != nil:
		log.Error("could not store the refreshed token; it is kept to be stored on the next attempt, and not used before", "error", err)
		return refreshOutcome{result: resultError, reason: "the refreshed token could not be stored", pending: it}
	}
	attrs := []any{"rotated", it.refresh != "" && it.refresh != it.from.refresh}
	if !it.expiry.IsZero() {
		attrs = append(attrs, "expiry", it.expiry)
	}
	log.Info("access token refreshed", attrs...)
	return refreshOutcome{result: resultOK, token: stored.Credential.AccessToken, left: stored}
}

// expiryOf turns the answer's expires_in into an expiry on the
// Refresher's clock, counted from issuedAt, that clock's time before the
// request was sent; sent is the real time read with it.
func expiryOf(tok *oauth2.Token, issuedAt, sent time.Time) time.Time {
	secs := tok.ExpiresIn
	if secs <= 0 {
		// clientcredentials does not copy ExpiresIn; the raw answer has it.
		switch v := tok.Extra("expires_in").(type) {
		case float64:
			secs = int64(v)
		case int64:
			secs = v
		case string:
			secs, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	const maxSecs = 10 * 365 * 24 * 3600
	switch {
	case secs > 0:
		return issuedAt.Add(time.Duration(min(secs, maxSecs)) * time.Second).UTC().Round(0)
	case !tok.Expiry.IsZero():
		// x/oauth2 set Expiry to time.Now() plus the lifetime when the
		// answer came; measured from sent on that same clock, the lifetime
		// moves to the Refresher's clock whatever that clock reads.
		return issuedAt.Add(tok.Expiry.Sub(sent)).UTC().Round(0)
	}
	return time.Time{}
}

// safeCode keeps an OAuth2 error code fit for logs and problem details:
// RFC 6749 codes are short and plain, anything else is not repeated.
func safeCode(code string) string {
	if len(code) > 64 {
		return "unrecognised"
	}
	for i := 0; i < len(code); i++ {
		c := code[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return "unrecognised"
		}
	}
	return code
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// describe is a transport error without the request URL.
func describe(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
