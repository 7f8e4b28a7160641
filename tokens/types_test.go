package tokens

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestCredentialNeverPrints: a credential, or a connection holding one,
// shows no secret however it is printed, logged, marshalled or panicked
// with.
func TestCredentialNeverPrints(t *testing.T) {
	secrets := []string{"sk-api-key-1", "user-1", "pw-1", "at-1", "rt-1", "cid-1", "cs-1"}
	cred := Credential{APIKey: secrets[0], Username: secrets[1], Password: secrets[2], AccessToken: secrets[3],
		RefreshToken: secrets[4], ClientID: secrets[5], ClientSecret: secrets[6], Expiry: time.Unix(1e9, 0)}
	conn := &Connection{ID: "c1", Provider: "hubspot", Credential: cred}

	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		out = append(out, fmt.Sprintf(verb, cred), fmt.Sprintf(verb, conn), fmt.Sprintf(verb, *conn))
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("x", "credential", cred, "connection", conn, "value", *conn)
	text := slog.New(slog.NewTextHandler(&logs, nil))
	text.Info("x", "credential", cred, "connection", conn)
	out = append(out, logs.String())
	for _, v := range []any{cred, conn} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	out = append(out, func() (msg string) {
		defer func() { msg = fmt.Sprint(recover()) }()
		panic(conn)
	}())
	out = append(out, fmt.Errorf("refresh %v: %w", conn, fmt.Errorf("%+v", cred)).Error())

	for _, o := range out {
		for _, s := range secrets {
			if strings.Contains(o, s) {
				t.Errorf("%q shows secret %q", o, s)
			}
		}
	}
	if !strings.Contains(fmt.Sprintf("%+v", conn), "hubspot") {
		t.Error("the connection's non-secret fields should still print")
	}
}

// A connection's JSON has every member the admin API promises, empty ones
// as "" and {} (never null or absent), and reads back unchanged.
func TestConnectionJSONMembers(t *testing.T) {
	for _, c := range []Connection{
		{ID: "c1", Provider: "openai"},
		{ID: "c2", Provider: "salesforce", WorkspaceRef: "na1", Metadata: map[string]string{"workspace": "na1"}},
	} {
		for _, v := range []any{c, &c} {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			var members map[string]json.RawMessage
			if err := json.Unmarshal(b, &members); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"providerWorkspaceRef": `""`, "providerMetadata": `{}`}
			if c.WorkspaceRef != "" {
				want = map[string]string{"providerWorkspaceRef": `"na1"`, "providerMetadata": `{"workspace":"na1"}`}
			}
			for m, w := range want {
				if got := string(members[m]); got != w {
					t.Errorf("%s: %s = %q, want %q", b, m, got, w)
				}
			}
			var back Connection
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if back.WorkspaceRef != c.WorkspaceRef || len(back.Metadata) != len(c.Metadata) {
				t.Errorf("round trip of %s gave %+v", b, back)
			}
		}
	}
}

// TestCheckToken: the tokens a provider issues pass; what would break a
// request header does not, with an error that names the rule, not the
// value.
func TestCheckToken(t *testing.T) {
	for _, tok := range []string{"ya29.a0Af-_~+/=", "00D5g000!AQ4AQ.x", "eyJhbGciOiJSUzI1NiJ9.e30.sig", "a b", strings.Repeat("x", MaxTokenLen)} {
		if err := CheckToken("access token", tok); err != nil {
			t.Errorf("CheckToken(%.20q) = %v, want nil", tok, err)
		}
	}
	for _, tc := range []struct{ tok, want string }{
		{"", "access token must not be empty"},
		{strings.Repeat("x", MaxTokenLen+1), "access token must be at most 16384 bytes"},
		{"tok\xff", "access token must be valid UTF-8"},
		{"tok\r\nx-evil: 1", "access token must not contain control characters"},
		{"tok\x00", "access token must not contain control characters"},
		{"tok\u0085", "access token must not contain control characters"},
		{" tok", "access token must not begin or end with whitespace"},
		{"tok ", "access token must not begin or end with whitespace"},
		{"tok\u00a0", "access token must not begin or end with whitespace"},
	} {
		err := CheckToken("access token", tc.tok)
		if err == nil || err.Error() != tc.want {
			t.Errorf("CheckToken(%.20q) = %v, want %q", tc.tok, err, tc.want)
		}
	}
}
