package admin

import (
	"encoding/json"
	"log/slog"
	"time"

	"github.com/ampproxy/ampproxy/tokens"
)

// GenerateConnectionRequest is the body of
// POST /v1/projects/{project}/connections:generate. At most one credential
// field is set, the one the provider's authType calls for (none for a
// provider with authType none).
//
// Its String, GoString and LogValue show which credential is present, never
// its value.
type GenerateConnectionRequest struct {
	GroupRef    string `json:"groupRef"`
	ConsumerRef string `json:"consumerRef"`
	Provider    string `json:"provider"`
	// ProviderWorkspaceRef is the provider's "workspace" metadata value,
	// given on its own as in Ampersand's API. It may also be given as
	// ProviderMetadata["workspace"], but not twice with different values.
	ProviderWorkspaceRef string            `json:"providerWorkspaceRef,omitempty"`
	ProviderMetadata     map[string]string `json:"providerMetadata,omitempty"`

	APIKey                  string                   `json:"apiKey,omitempty"`
	BasicAuth               *BasicAuth               `json:"basicAuth,omitempty"`
	OAuth2ClientCredentials *OAuth2ClientCredentials `json:"oauth2ClientCredentials,omitempty"`
	OAuth2AuthorizationCode *OAuth2AuthorizationCode `json:"oauth2AuthorizationCode,omitempty"`
}

// BasicAuth is an HTTP Basic credential. Password may be empty: several
// providers take an API key as the user name and no password.
type BasicAuth struct {
	Username string `json:"username"`
	Password string `json:"password,omitempty"`
}

// OAuth2ClientCredentials is an OAuth2 client of the provider; ampproxy
// mints access tokens with it through the client-credentials grant.
type OAuth2ClientCredentials struct {
	ClientID     string   `json:"clientId"`
	ClientSecret string   `json:"clientSecret"`
	Scopes       []string `json:"scopes,omitempty"`
}

// OAuth2AuthorizationCode is a token pair obtained elsewhere through the
// authorization-code grant (with or without PKCE). A refresh token needs
// the project's providerApps entry for the provider to be used. A token
// with an empty Token counts as absent.
type OAuth2AuthorizationCode struct {
	AccessToken  AccessToken  `json:"accessToken,omitzero"`
	RefreshToken RefreshToken `json:"refreshToken,omitzero"`
	Scopes       []string     `json:"scopes,omitempty"`
}

// AccessToken is an OAuth2 access token and, when known, its expiry.
type AccessToken struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// RefreshToken is an OAuth2 refresh token.
type RefreshToken struct {
	Token string `json:"token"`
}

// UpdateConnectionRequest is the body of
// PATCH /v1/projects/{project}/connections/{id}. Every field is optional,
// but the body must change something. A credential replaces the stored
// one whole and must be the kind the provider's authType calls for, as in
// GenerateConnectionRequest. Metadata is merged into the connection's: a
// name given with a value sets it, a name given as null or "" removes it,
// a name not given keeps its value; the merged metadata is then validated
// as a whole.
//
// Its String, GoString and LogValue show which credential is present, never
// its value.
type UpdateConnectionRequest struct {
	ProviderWorkspaceRef string            `json:"providerWorkspaceRef,omitempty"`
	ProviderMetadata     map[string]string `json:"providerMetadata,omitempty"`

	APIKey                  string                   `json:"apiKey,omitempty"`
	BasicAuth               *BasicAuth               `json:"basicAuth,omitempty"`
	OAuth2ClientCredentials *OAuth2ClientCredentials `json:"oauth2ClientCredentials,omitempty"`
	OAuth2AuthorizationCode *OAuth2AuthorizationCode `json:"oauth2AuthorizationCode,omitempty"`
}

// credentials is the request's credential part in the form generate
// validates.
func (r UpdateConnectionRequest) credentials() GenerateConnectionRequest {
	return GenerateConnectionRequest{
		APIKey:                  r.APIKey,
		BasicAuth:               r.BasicAuth,
		OAuth2ClientCredentials: r.OAuth2ClientCredentials,
		OAuth2AuthorizationCode: r.OAuth2AuthorizationCode,
	}
}

// String shows the kind of credential only.
func (r UpdateConnectionRequest) String() string {
	return "UpdateConnectionRequest{credential=" + kindsString(r.credentials().credentialKinds()) + "}"
}

// GoString is String, so that %#v hides secrets too.
func (r UpdateConnectionRequest) GoString() string { return r.String() }

// LogValue shows the kind of credential.
func (r UpdateConnectionRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("credential", kindsString(r.credentials().credentialKinds())))
}

// OAuthConnectRequest is the body of POST /v1/oauth-connect. It carries no
// secret: the credential comes from the provider through the callback.
type OAuthConnectRequest struct {
	// ProjectIDOrName names the project the connection is for; the API key
	// must be one of its keys. ampproxy's projects have only an ID, so it is
	// matched against the ID.
	ProjectIDOrName string `json:"projectIdOrName"`
	Provider        string `json:"provider"`
	GroupRef        string `json:"groupRef"`
	ConsumerRef     string `json:"consumerRef"`
	// ProviderWorkspaceRef and ProviderMetadata are validated as in
	// GenerateConnectionRequest, except that values the provider's token
	// response supplies (the catalog's oauth2.tokenMetadataFields) may be
	// left out.
	ProviderWorkspaceRef string            `json:"providerWorkspaceRef,omitempty"`
	ProviderMetadata     map[string]string `json:"providerMetadata,omitempty"`
}

// CreateInstallationRequest is the body of
// POST /v1/projects/{project}/integrations/{integrationName}/installations.
type CreateInstallationRequest struct {
	GroupRef string `json:"groupRef"`
	// ConnectionID is optional: without it the group's newest connection to
	// the integration's provider is used.
	ConnectionID string `json:"connectionId,omitempty"`
}

// ConnectionFilter narrows a connection listing; an empty field matches
// any value.
type ConnectionFilter = tokens.ConnectionFilter

// ConnectionView is GET …/connections/{id}: the connection and, while
// the provider has it locked out (throttle mode, DESIGN §3), when the
// window ends and whether retrying then will help. Both fields are absent
// (nil) when no window is open.
type ConnectionView struct {
	*tokens.Connection
	RateLimitedUntil *time.Time `json:"rateLimitedUntil,omitempty"`
	Retryable        *bool      `json:"retryable,omitempty"`
}

// MarshalJSON writes the connection's members, then the lockout ones.
// Without it the embedded Connection's MarshalJSON would be promoted and
// leave rateLimitedUntil and retryable out.
func (v ConnectionView) MarshalJSON() ([]byte, error) {
	lock, err := json.Marshal(struct {
		RateLimitedUntil *time.Time `json:"rateLimitedUntil,omitempty"`
		Retryable        *bool      `json:"retryable,omitempty"`
	}{v.RateLimitedUntil, v.Retryable})
	if err != nil || v.Connection == nil {
		return lock, err
	}
	conn, err := json.Marshal(v.Connection)
	if err != nil || len(lock) == 2 { // no lockout: {}
		return conn, err
	}
	// Both are objects with members (a Connection always has an id):
	// join them into one.
	return append(append(conn[:len(conn)-1:len(conn)-1], ','), lock[1:]...), nil
}

// ConnectionList is one page of GET …/connections. NextPageToken is
// absent on the last page.
type ConnectionList struct {
	Items         []*tokens.Connection `json:"items"`
	NextPageToken string               `json:"nextPageToken,omitempty"`
}

// InstallationList is one page of GET …/installations. NextPageToken is
// empty on the last page.
type InstallationList struct {
	Items         []*tokens.Installation `json:"items"`
	NextPageToken string                 `json:"nextPageToken,omitempty"`
}

const redacted = "[REDACTED]"

// credentialKinds names the credential fields the request carries, in
// field order; an empty apiKey counts as absent.
func (r GenerateConnectionRequest) credentialKinds() []string {
	var kinds []string
	if r.APIKey != "" {
		kinds = append(kinds, fieldAPIKey)
	}
	if r.BasicAuth != nil {
		kinds = append(kinds, fieldBasicAuth)
	}
	if r.OAuth2ClientCredentials != nil {
		kinds = append(kinds, fieldClientCredentials)
	}
	if r.OAuth2AuthorizationCode != nil {
		kinds = append(kinds, fieldAuthorizationCode)
	}
	return kinds
}

// String shows the non-secret fields and the kind of credential.
func (r GenerateConnectionRequest) String() string {
	return "GenerateConnectionRequest{provider=" + r.Provider + " groupRef=" + r.GroupRef +
		" consumerRef=" + r.ConsumerRef + " credential=" + kindsString(r.credentialKinds()) + "}"
}

// GoString is String, so that %#v hides secrets too.
func (r GenerateConnectionRequest) GoString() string { return r.String() }

// LogValue shows the non-secret fields and the kind of credential.
func (r GenerateConnectionRequest) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("provider", r.Provider),
		slog.String("groupRef", r.GroupRef),
		slog.String("consumerRef", r.ConsumerRef),
		slog.String("credential", kindsString(r.credentialKinds())),
	)
}

func kindsString(k []string) string {
	if len(k) == 0 {
		return "none"
	}
	s := k[0]
	for _, x := range k[1:] {
		s += "," + x
	}
	return s
}

// String hides the user name too: several providers take the API key as
// the user name.
func (BasicAuth) String() string { return "BasicAuth{" + redacted + "}" }

// GoString hides both fields.
func (b BasicAuth) GoString() string { return b.String() }

// LogValue hides both fields.
func (b BasicAuth) LogValue() slog.Value { return slog.StringValue(b.String()) }

// String hides the secret.
func (c OAuth2ClientCredentials) String() string {
	return "OAuth2ClientCredentials{clientId=" + c.ClientID + " clientSecret=" + redacted + "}"
}

// GoString hides the secret.
func (c OAuth2ClientCredentials) GoString() string { return c.String() }

// LogValue hides the secret.
func (c OAuth2ClientCredentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// String hides both tokens.
func (OAuth2AuthorizationCode) String() string { return "OAuth2AuthorizationCode{" + redacted + "}" }

// GoString hides both tokens.
func (c OAuth2AuthorizationCode) GoString() string { return c.String() }

// LogValue hides both tokens.
func (c OAuth2AuthorizationCode) LogValue() slog.Value { return slog.StringValue(c.String()) }

// String hides the token.
func (AccessToken) String() string { return redacted }

// GoString hides the token.
func (AccessToken) GoString() string { return redacted }

// LogValue hides the token.
func (AccessToken) LogValue() slog.Value { return slog.StringValue(redacted) }

// String hides the token.
func (RefreshToken) String() string { return redacted }

// GoString hides the token.
func (RefreshToken) GoString() string { return redacted }

// LogValue hides the token.
func (RefreshToken) LogValue() slog.Value { return slog.StringValue(redacted) }
