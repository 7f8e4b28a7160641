package catalog

import "time"

// AuthType says how a provider's credential travels on a proxied request.
type AuthType string

// The auth types the catalog understands.
const (
	AuthOAuth2 AuthType = "oauth2"
	AuthAPIKey AuthType = "apiKey"
	AuthBasic  AuthType = "basic"
	AuthNone   AuthType = "none"
)

// GrantType is the OAuth2 grant a provider uses to mint tokens.
type GrantType string

// The OAuth2 grants the catalog understands.
const (
	GrantAuthorizationCode     GrantType = "authorizationCode"
	GrantAuthorizationCodePKCE GrantType = "authorizationCodePKCE"
	GrantClientCredentials     GrantType = "clientCredentials"
)

// AuthStyle says where the client ID and secret go on a token request. It is
// never auto-detected: detection resends a grant, which breaks providers that
// rotate refresh tokens.
type AuthStyle string

// The two token-request styles of RFC 6749 §2.3.1.
const (
	AuthStyleInHeader AuthStyle = "inHeader"
	AuthStyleInParams AuthStyle = "inParams"
)

// ResetFormat is how a rate-limit reset header encodes its time.
type ResetFormat string

// The reset header formats providers use.
const (
	ResetEpochSeconds ResetFormat = "epochSeconds"
	ResetEpochMillis  ResetFormat = "epochMillis"
	ResetDeltaSeconds ResetFormat = "deltaSeconds"
)

// File is the shape of the embedded catalog and of an override file.
type File struct {
	Providers []Provider `yaml:"providers"`
}

// Provider is one catalog entry. Fields mirror DESIGN §4; the compiled
// templates are filled in by Load and are what the request path uses.
type Provider struct {
	Name        string          `yaml:"name"`
	DisplayName string          `yaml:"displayName"`
	BaseURL     string          `yaml:"baseURL"`
	AuthType    AuthType        `yaml:"authType"`
	OAuth2      *OAuth2         `yaml:"oauth2,omitempty"`
	APIKey      *APIKey         `yaml:"apiKey,omitempty"`
	Metadata    []MetadataInput `yaml:"metadata,omitempty"`
	RateLimit   RateLimit       `yaml:"rateLimit,omitempty"`
	Proxy       bool            `yaml:"proxy"`
	DocsURL     string          `yaml:"docsURL,omitempty"`

	base     *urlTemplate
	tokenURL *urlTemplate
	authURL  *urlTemplate

	defaults     map[string]string
	allowed      map[string][]string
	apiKeyHeader string
	tokenHeader  string // lower case; "authorization" unless oauth2.header says otherwise
	tokenPrefix  string
}

// OAuth2 describes a provider's OAuth2 endpoints.
type OAuth2 struct {
	GrantType GrantType `yaml:"grantType"`
	AuthURL   string    `yaml:"authURL,omitempty"`
	TokenURL  string    `yaml:"tokenURL"`
	AuthStyle AuthStyle `yaml:"authStyle"`
	// RefreshMargin is how long before its expiry an access token of this
	// provider is refreshed, written like "10m"; zero leaves the
	// refresher's default (5 minutes). Providers whose tokens live only
	// minutes want less, providers slow to answer want more.
	RefreshMargin time.Duration `yaml:"refreshMargin,omitempty"`
	// TokenMetadataFields names token-response fields whose values become
	// connection metadata (Salesforce's instance_url → workspace).
	TokenMetadataFields []TokenMetadataField `yaml:"tokenMetadataFields,omitempty"`
	// Header is where the access token goes on a proxied request; nil
	// means "Authorization: Bearer <token>" (RFC 6750). Shopify's Admin
	// API, for one, reads X-Shopify-Access-Token with no prefix.
	Header *APIKeyHeader `yaml:"header,omitempty"`
}

// TokenMetadataField maps a token-response field onto a metadata name.
type TokenMetadataField struct {
	Field    string `yaml:"field"`
	Metadata string `yaml:"metadata"`
	// Extract says what part of the value to keep: "" keeps it whole,
	// "subdomain" keeps the leading labels of a URL's host that, as the
	// metadata value, make baseURL name that same host (for
	// https://{{.workspace}}.my.salesforce.com, a sandbox's
	// https://acme--dev.sandbox.my.salesforce.com gives acme--dev.sandbox);
	// a host baseURL cannot name is refused.
	Extract string `yaml:"extract,omitempty"`
}

// APIKey says where an API key goes: exactly one of Header and Query.
type APIKey struct {
	Header *APIKeyHeader `yaml:"header,omitempty"`
	Query  string        `yaml:"query,omitempty"`
}

// APIKeyHeader is a header that carries a credential (an API key, or an
// OAuth2 access token) after a fixed prefix.
type APIKeyHeader struct {
	Name   string `yaml:"name"`
	Prefix string `yaml:"prefix,omitempty"`
}

// MetadataInput is a value a connection must carry, substituted into URLs.
type MetadataInput struct {
	Name        string `yaml:"name"`
	DisplayName string `yaml:"displayName,omitempty"`
	Default     string `yaml:"default,omitempty"`
	// Allowed, when given, lists the only values a connection may carry.
	// A value that ends a host (start.exactonline.{{.extension}}) decides
	// the domain the request and the token exchange go to, so it must be
	// pinned to the provider's own domains.
	Allowed []string `yaml:"allowed,omitempty"`
}

// RateLimit names the headers a provider uses to say when a 429 ends.
type RateLimit struct {
	ResetHeaders   []ResetHeader `yaml:"resetHeaders,omitempty"`
	LockoutMarkers []string      `yaml:"lockoutMarkers,omitempty"`
}

// ResetHeader is one rate-limit reset header and its encoding.
type ResetHeader struct {
	Name   string      `yaml:"name"`
	Format ResetFormat `yaml:"format"`
}
