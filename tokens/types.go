package tokens

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
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

// MaxTokenLen is the longest access or refresh token CheckToken accepts.
const MaxTokenLen = 16 << 10

// CheckToken returns why t cannot be stored as an access or refresh token
// (name says which, for the message), or nil. A token is sent in a
// request header as it is: a control character makes Envoy refuse the
// header, and leading or trailing whitespace makes it a malformed HTTP/2
// field (RFC 9113 §8.2.1), so either would fail every request of the
// connection. The error never quotes t.
func CheckToken(name, t string) error {
	switch {
	case t == "":
		return errors.New(name + " must not be empty")
	case len(t) > MaxTokenLen:
		return fmt.Errorf("%s must be at most %d bytes", name, MaxTokenLen)
	case !utf8.ValidString(t):
		return errors.New(name + " must be valid UTF-8")
	case strings.IndexFunc(t, unicode.IsControl) >= 0:
		return errors.New(name + " must not contain control characters")
	case strings.TrimSpace(t) != t:
		return errors.New(name + " must not begin or end with whitespace")
	}
	return nil
}

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
