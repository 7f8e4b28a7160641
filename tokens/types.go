package tokens

import (
	"encoding/json"
	"errors"
	"log/slog"
	"time"
)

// AuthScheme says which kind of credential a connection holds.
type AuthScheme string

// The credential kinds a connection can hold.
const (
	SchemeNone                    AuthScheme = "none"
	SchemeAPIKey                  AuthScheme = "apiKey"
	SchemeBasic                   AuthScheme = "basic"
	SchemeOAuth2AuthorizationCode AuthScheme = "oauth2AuthorizationCode"
	SchemeOAuth2ClientCredentials AuthScheme = "oauth2ClientCredentials"
)

// Status is a connection's health as DESIGN §5 names it.
type Status string

// Connection statuses.
const (
	StatusCreated        Status = "created"
	StatusWorking        Status = "working"
	StatusBadCredentials Status = "bad_credentials"
)

// Sentinel errors of the store. Callers match them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict: the group already has an installation of that integration.
	ErrConflict = errors.New("conflict")
	// ErrInUse: a connection still has installations that point at it.
	ErrInUse = errors.New("in use")
	// ErrLocked: another process holds the bbolt file.
	ErrLocked = errors.New("store file is locked by another process")
	// ErrInvalid: a connection or installation handed to the store lacks a
	// required field or has a value the store does not know; the message
	// names the field.
	ErrInvalid = errors.New("invalid")
)

// Credential is the secret part of a connection. It lives decrypted in
// memory only; on disk it is sealed with AES-256-GCM. Its String, GoString,
// LogValue and MarshalJSON never reveal a secret.
type Credential struct {
	APIKey string `json:"apiKey,omitempty"`

	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	AccessToken  string    `json:"accessToken,omitempty"`
	RefreshToken string    `json:"refreshToken,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`

	ClientID     string   `json:"clientId,omitempty"`
	ClientSecret string   `json:"clientSecret,omitempty"`
	Scopes       []string `json:"scopes,omitempty"`
}

const redacted = "[REDACTED]"

// String hides every secret.
func (Credential) String() string { return redacted }

// GoString hides every secret, also under %#v.
func (Credential) GoString() string { return redacted }

// LogValue hides every secret from log/slog.
func (Credential) LogValue() slog.Value { return slog.StringValue(redacted) }

// Connection is a provider credential of one group of one project.
// Values returned by the store are shared snapshots: never modify them.
type Connection struct {
	ID           string            `json:"id"`
	ProjectID    string            `json:"projectId"`
	Provider     string            `json:"provider"`
	GroupRef     string            `json:"groupRef"`
	ConsumerRef  string            `json:"consumerRef"`
	WorkspaceRef string            `json:"providerWorkspaceRef"`
	Metadata     map[string]string `json:"providerMetadata"` // nil marshals as {}
	AuthScheme   AuthScheme        `json:"authScheme"`
	Status       Status            `json:"status"`
	CreateTime   time.Time         `json:"createTime"`
	UpdateTime   time.Time         `json:"updateTime"`

	// Credential is never serialised with the connection; the store seals it
	// separately.
	Credential Credential `json:"-"`
}

// MarshalJSON writes every member DESIGN §5 lists for a Connection, an
// empty providerWorkspaceRef as "" and no metadata as {}, never null, so
// that clients need not tell a missing member from an empty one.
func (c Connection) MarshalJSON() ([]byte, error) {
	type fields Connection // without this method
	if c.Metadata == nil {
		c.Metadata = map[string]string{}
	}
	return json.Marshal(fields(c))
}

// Installation binds an integration of a project, for one group, to a
// connection. Values returned by the store are shared snapshots.
type Installation struct {
	ID           string    `json:"id"`
	ProjectID    string    `json:"projectId"`
	Integration  string    `json:"integration"`
	GroupRef     string    `json:"groupRef"`
	ConnectionID string    `json:"connectionId"`
	CreateTime   time.Time `json:"createTime"`
}

// MarshalJSON hides every secret; the store seals credentials through its
// own unexported type, never through this method.
func (Credential) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
