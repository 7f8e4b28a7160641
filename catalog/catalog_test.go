package catalog

import (
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func mustParse(t testing.TB, y string) map[string]*Provider {
	t.Helper()
	ps, err := Parse([]byte(y), "test.yaml")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	m := map[string]*Provider{}
	for _, p := range ps {
		m[p.Name] = p
	}
	return m
}

const testCatalog = `
providers:
  - name: sf
    displayName: SF
    baseURL: https://{{.workspace}}.my.salesforce.com
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: https://{{.workspace}}.my.salesforce.com/services/oauth2/authorize
      tokenURL: https://{{.workspace}}.my.salesforce.com/services/oauth2/token
      authStyle: inParams
      refreshMargin: 10m
    metadata:
      - name: workspace
    proxy: true
  - name: whole
    baseURL: https://{{.domain}}
    authType: basic
    metadata: [{name: domain}]
    proxy: true
  - name: pathy
    baseURL: https://api.bamboohr.com/api/gateway.php/{{.subdomain}}/
    authType: apiKey
    apiKey: {query: api_key}
    metadata: [{name: subdomain}]
    proxy: true
  - name: region
    baseURL: https://{{.region}}.api.example.com:8443/v1
    authType: apiKey
    apiKey: {header: {name: X-Api-Key}}
    metadata: [{name: region, default: eu}]
    proxy: true
  - name: jira
    baseURL: https://api.atlassian.com/ex/jira/{{.cloudId}}/rest/api
    authType: basic
    metadata: [{name: cloudId}]
    proxy: true
`

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown field", `providers: [{name: a, baseURL: "https://a.com", authType: none, color: red}]`, []string{"test.yaml", "color"}},
		{"duplicate", `providers: [{name: a, baseURL: "https://a.com", authType: none}, {name: a, baseURL: "https://b.com", authType: none}]`, []string{"providers[1] (a).name: duplicate of providers[0]"}},
		{"unparsable template", `providers: [{name: a, baseURL: "https://{{workspace}.a.com", authType: none}]`, []string{"baseURL", "without"}},
		{"bad reference", `providers: [{name: a, baseURL: "https://{{.a.b}}.a.com", authType: none}]`, []string{"baseURL", "not a {{.name}} reference"}},
		{"undeclared var", `providers: [{name: a, baseURL: "https://{{.ws}}.a.com", authType: none}]`, []string{`template variable "ws" is not declared`}},
		{"oauth2 without tokenURL", `providers: [{name: a, baseURL: "https://a.com", authType: oauth2, oauth2: {grantType: clientCredentials, authStyle: inHeader}}]`, []string{"oauth2.tokenURL: is required"}},
		{"oauth2 http token URL", `providers: [{name: a, baseURL: "https://a.com", authType: oauth2, oauth2: {grantType: clientCredentials, authStyle: inHeader, tokenURL: "http://a.com/t"}}]`, []string{"must be https"}},
		{"oauth2 negative refresh margin", `providers: [{name: a, baseURL: "https://a.com", authType: oauth2, oauth2: {grantType: clientCredentials, authStyle: inHeader, tokenURL: "https://a.com/t", refreshMargin: -5m}}]`, []string{"oauth2.refreshMargin: -5m0s: want a duration from 0 to 24h0m0s"}},
		{"oauth2 refresh margin not a duration", `providers: [{name: a, baseURL: "https://a.com", authType: oauth2, oauth2: {grantType: clientCredentials, authStyle: inHeader, tokenURL: "https://a.com/t", refreshMargin: soon}}]`, []string{"test.yaml", "soon", "time.Duration"}},
		{"oauth2 auto style", `providers: [{name: a, baseURL: "https://a.com", authType: oauth2, oauth2: {grantType: clientCredentials, tokenURL: "https://a.com/t"}}]`, []string{"authStyle", "never auto-detected"}},
		{"apiKey both", `providers: [{name: a, baseURL: "https://a.com", authType: apiKey, apiKey: {query: k, header: {name: X-K}}}]`, []string{"exactly one of header and query"}},
		{"apiKey neither", `providers: [{name: a, baseURL: "https://a.com", authType: apiKey, apiKey: {}}]`, []string{"exactly one of header and query"}},
		{"templated port", `providers: [{name: a, baseURL: "https://a.com:{{.p}}", authType: none, metadata: [{name: p}]}]`, []string{"port cannot be templated"}},
		{"userinfo", `providers: [{name: a, baseURL: "https://u@a.com", authType: none}]`, []string{"baseURL"}},
		{"query in base URL", `providers: [{name: a, baseURL: "https://a.com/v1?key=x", authType: none}]`, []string{"baseURL", "must not hold a query"}},
		{"empty query in base URL", `providers: [{name: a, baseURL: "https://a.com/v1?", authType: none}]`, []string{"baseURL", "must not hold a query"}},
		{"fragment in base URL", `providers: [{name: a, baseURL: "https://a.com/v1#top", authType: none}]`, []string{"baseURL", "#"}},
		{"bad auth type", `providers: [{name: a, baseURL: "https://a.com", authType: magic}]`, []string{`authType: "magic"`}},
		{"bad reset format", `providers: [{name: a, baseURL: "https://a.com", authType: none, rateLimit: {resetHeaders: [{name: x-r, format: hours}]}}]`, []string{"resetHeaders[0].format"}},
		{"allowed value holding a URL character", `providers: [{name: a, baseURL: "https://a.{{.tld}}", authType: none, metadata: [{name: tld, allowed: [com, "evil.com/x"]}]}]`, []string{"metadata[0].allowed[1]"}},
		{"default outside allowed", `providers: [{name: a, baseURL: "https://a.{{.tld}}", authType: none, metadata: [{name: tld, default: org, allowed: [com]}]}]`, []string{"metadata[0].default", "not one of the allowed"}},
		{"api key prefix with SOH", "providers: [{name: a, baseURL: \"https://a.com\", authType: apiKey, apiKey: {header: {name: X-Key, prefix: \"Token\\x01 \"}}}]", []string{"apiKey.header.prefix", "not allowed in a header value"}},
		{"api key prefix with DEL", "providers: [{name: a, baseURL: \"https://a.com\", authType: apiKey, apiKey: {header: {name: X-Key, prefix: \"Token\\x7f\"}}}]", []string{"apiKey.header.prefix"}},
		{"api key prefix with CR", "providers: [{name: a, baseURL: \"https://a.com\", authType: apiKey, apiKey: {header: {name: X-Key, prefix: \"Token\\r\"}}}]", []string{"apiKey.header.prefix"}},
		{"oauth2 token header prefix with ESC", "providers: [{name: a, baseURL: \"https://a.com\", authType: oauth2, oauth2: {grantType: clientCredentials, authStyle: inHeader, tokenURL: \"https://a.com/t\", header: {name: X-Token, prefix: \"\\e[1m\"}}}]", []string{"oauth2.header.prefix"}},
		{"api key header name with a colon", `providers: [{name: a, baseURL: "https://a.com", authType: apiKey, apiKey: {header: {name: "X-Key:"}}}]`, []string{"apiKey.header.name"}},
		{"oauth2 token header", `providers: [{name: a, baseURL: "https://a.com", authType: oauth2, oauth2: {grantType: clientCredentials, authStyle: inHeader, tokenURL: "https://a.com/t", header: {name: "X Token"}}}]`, []string{"oauth2.header.name"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), "test.yaml")
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseReportsEveryProblemWithLine(t *testing.T) {
	y := "providers:\n" +
		"  - name: a\n    baseURL: https://{{.x}}.a.com\n    authType: none\n" +
		"  - name: b\n    baseURL: https://b.com\n    authType: apiKey\n"
	_, err := Parse([]byte(y), "over.yaml")
	if err == nil {
		t.Fatal("want errors")
	}
	for _, w := range []string{"over.yaml:2: providers[0] (a).baseURL", "over.yaml:5: providers[1] (b).apiKey: is required"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestResolve(t *testing.T) {
	ps := mustParse(t, testCatalog)
	cases := []struct {
		prov, val, path   string
		authority, upPath string
		wantErr           string
	}{
		{"sf", "acme", "/services/data/v56.0/sobjects/Account?x=1", "acme.my.salesforce.com", "/services/data/v56.0/sobjects/Account?x=1", ""},
		// Host names are case-insensitive; the forward proxy's DNS cache and
		// pools are keyed by :authority, so one host has one spelling.
		{"sf", "Acme-Corp", "/", "acme-corp.my.salesforce.com", "/", ""},
		{"whole", "API.Example.COM", "/x", "api.example.com", "/x", ""},
		{"region", "US", "/items", "us.api.example.com:8443", "/v1/items", ""},
		{"pathy", "ACME", "/x", "api.bamboohr.com", "/api/gateway.php/ACME/x", ""},
		{"sf", "a.b", "/", "a.b.my.salesforce.com", "/", ""},
		{"sf", "evil.com#", "/", "", "", "not allowed"},
		{"sf", "a.b@c", "/", "", "", "not allowed"},
		{"sf", "x/y", "/", "", "", "not allowed"},
		{"sf", "evil.com:8080", "/", "", "", "not allowed"},
		{"sf", "a%2e", "/", "", "", "not allowed"},
		{"sf", "a?b", "/", "", "", "not allowed"},
		{"sf", "", "/", "", "", "required"},
		{"sf", "a..b", "/", "", "", "empty DNS label"},
		{"sf", "-a", "/", "", "", "start or end"},
		{"sf", "a\r\nb", "/", "", "", "not allowed"},
		{"sf", "acme", "relative", "", "", "must start with /"},
		{"sf", "acme", "/a b", "", "", "not allowed"},
		{"sf", "acme", "/a#frag", "", "", "not allowed"},
		{"whole", "api.example.com", "/x", "api.example.com", "/x", ""},
		{"whole", "127.0.0.1", "/", "", "", "IP literal"},
		{"whole", "2130706433", "/", "", "", "numeric"},
		{"whole", "0x7f000001", "/", "", "", "numeric"},
		{"whole", "localhost", "/", "", "", "localhost"},
		{"whole", "a.localhost", "/", "", "", "localhost"},
		{"whole", "intranet", "/", "", "", "single-label"},
		{"whole", "10.0.0.1.nip.io", "/", "10.0.0.1.nip.io", "/", ""},
		{"pathy", "acme", "/v1/employees?x=1", "api.bamboohr.com", "/api/gateway.php/acme/v1/employees?x=1", ""},
		{"pathy", "a/b", "/x", "api.bamboohr.com", "/api/gateway.php/a%2Fb/x", ""},
		{"pathy", "...", "/x", "api.bamboohr.com", "/api/gateway.php/.../x", ""},
		{"pathy", "..", "/x", "", "", "dot segments"},
		// A server that decodes %2F would climb out of the template.
		{"pathy", "a/../b", "/x", "", "", "dot segments"},
		{"pathy", "..;", "/x", "", "", "dot segments"},
		{"pathy", `..\`, "/x", "", "", "dot segments"},
		// Escaped once more, these read as dots or a NUL to a server that
		// decodes twice.
		{"pathy", "%2e%2e", "/x", "", "", "dot segments"},
		{"pathy", "%c0%ae.", "/x", "", "", "dot segments"},
		{"pathy", "a%00", "/x", "", "", "NUL"},
		{"pathy", "100%done", "/x", "api.bamboohr.com", "/api/gateway.php/100%25done/x", ""},
		// The caller's path cannot climb out of the template's path either.
		{"pathy", "acme", "/../../other/v1", "", "", "path segment"},
		{"pathy", "acme", "/v1/./employees", "", "", "path segment"},
		{"jira", "c1", "/../../confluence/x", "", "", "path segment"},
		{"jira", "c1", "/%2e%2e/x", "", "", "path segment"},
		{"jira", "c1", "/%252e%252e/x", "", "", "path segment"},
		{"jira", "c1", "/x/..%00/y", "", "", "NUL"},
		{"jira", "c1", "/files/100%25done", "api.atlassian.com", "/ex/jira/c1/rest/api/files/100%25done", ""},
		{"jira", "c1", "/v1/.well-known/x?a=..", "api.atlassian.com", "/ex/jira/c1/rest/api/v1/.well-known/x?a=..", ""},
		{"region", "", "/items", "eu.api.example.com:8443", "/v1/items", ""},
		{"region", "us", "/items", "us.api.example.com:8443", "/v1/items", ""},
	}
	for _, c := range cases {
		t.Run(c.prov+"/"+c.val+c.path, func(t *testing.T) {
			p := ps[c.prov]
			name := p.Metadata[0].Name
			meta := map[string]string{name: c.val}
			if c.val == "" {
				meta = nil
			}
			up, err := p.Resolve(meta, c.path)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q (upstream %+v)", err, c.wantErr, up)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if up.Authority != c.authority || up.Path != c.upPath || up.Scheme != "https" {
				t.Fatalf("got %+v, want %s %s", up, c.authority, c.upPath)
			}
		})
	}
}

// TestDotSegments: every way a server may read a segment as "." or "..",
// and the look-alikes that are plain names.
func TestDotSegments(t *testing.T) {
	for _, tc := range []struct {
		path  string
		fault string
	}{
		{"/..", faultDotSegment}, {"/.", faultDotSegment}, {"/../x", faultDotSegment}, {"/a/./b", faultDotSegment},
		{"/a/..", faultDotSegment}, {"/a/..?q", faultDotSegment}, {"/..?x=1", faultDotSegment},
		{"/%2e%2e/x", faultDotSegment}, {"/%2E%2E/x", faultDotSegment}, {"/.%2e/x", faultDotSegment},
		{"/%2e./x", faultDotSegment}, {"/%2e/x", faultDotSegment}, {"/%2E", faultDotSegment},
		{"/..%2fx", faultDotSegment}, {"/..%2Fx", faultDotSegment}, {"/a%2f..%2fb", faultDotSegment},
		{"/a%2F.%2Fb", faultDotSegment}, {"/a\\..\\b", faultDotSegment}, {"/..%5cx", faultDotSegment}, {"/a%5C..", faultDotSegment},
		{"/..;/x", faultDotSegment}, {"/.;jsessionid=1/x", faultDotSegment}, {"/a/..%3b/x", faultDotSegment}, {"/a;/../b", faultDotSegment},
		// Decoded twice.
		{"/v1/%252e%252e/admin", faultDotSegment}, {"/%252e%252e/x", faultDotSegment}, {"/v1/%%32%65%%32%65/admin", faultDotSegment},
		{"/v1/..%252fadmin", faultDotSegment}, {"/v1/%25252e%25252e/admin", faultDotSegment},
		// IIS's %uXXXX.
		{"/v1/%u002e%u002e/admin", faultDotSegment}, {"/v1/%U002E./admin", faultDotSegment}, {"/v1/..%u002fadmin", faultDotSegment},
		{"/v1/..%u005cadmin", faultDotSegment}, {"/v1/%25u002e%25u002e/x", faultDotSegment},
		// Overlong UTF-8 of '.', '/' and '\'.
		{"/v1/%c0%ae%c0%ae/admin", faultDotSegment}, {"/v1/%C0%AE./admin", faultDotSegment}, {"/v1/%e0%80%ae%e0%80%ae/x", faultDotSegment},
		{"/v1/%f0%80%80%ae./x", faultDotSegment}, {"/v1/..%c0%afadmin", faultDotSegment}, {"/v1/..%e0%80%afadmin", faultDotSegment},
		{"/v1/..%c1%9cadmin", faultDotSegment}, {"/v1/%25c0%25ae%25c0%25ae/x", faultDotSegment},
		// NUL, in any form.
		{"/v1/..%00/admin", faultNUL}, {"/v1/.%00./admin", faultNUL}, {"/a%00b", faultNUL}, {"/a%2500b", faultNUL},
		{"/a%u0000", faultNUL}, {"/a%c0%80b", faultNUL},
		// Four times over.
		{"/a%2525252e", faultDeep},
	} {
		if got := pathFault(tc.path); got != tc.fault {
			t.Errorf("pathFault(%q) = %q, want %q", tc.path, got, tc.fault)
		}
		if err := checkRequestPath(tc.path); !errors.Is(err, ErrBadPath) || !strings.Contains(err.Error(), tc.fault) {
			t.Errorf("checkRequestPath(%q) = %v, want ErrBadPath: %s", tc.path, err, tc.fault)
		}
	}
	for _, p := range []string{
		"/", "/x", "/...", "/a..b", "/.well-known/x", "/a./b", "/.a/b", "/x?y=/../..", "/a.b",
		"/%2e%2e%2e", "/%2g../x", "/a%2", "/a%", "/v1.2/x", "//x", "/x?y=%00",
		"/files/100%25done", "/files/50%25%20off", "/a%252525", "/%u00", "/%uzzzz..x", "/%25u002", "/caf%c3%a9/x",
		"/%e2%80%a4%e2%80%a4/x", "/%c0", "/%c0%2e%2e", "/%e0%80",
	} {
		if f := pathFault(p); f != "" {
			t.Errorf("pathFault(%q) = %q, want none", p, f)
		}
	}
}

func TestTokenAndAuthURL(t *testing.T) {
	p := mustParse(t, testCatalog)["sf"]
	tok, err := p.TokenURL(map[string]string{"workspace": "acme"})
	if err != nil || tok != "https://acme.my.salesforce.com/services/oauth2/token" {
		t.Fatalf("TokenURL = %q, %v", tok, err)
	}
	if tok, err := p.TokenURL(map[string]string{"workspace": "ACME"}); err != nil || tok != "https://acme.my.salesforce.com/services/oauth2/token" {
		t.Fatalf("TokenURL of ACME = %q, %v; want the host in lower case", tok, err)
	}
	if _, err := p.TokenURL(map[string]string{"workspace": "evil.com/"}); err == nil {
		t.Fatal("a bad workspace must not render a token URL")
	}
	if p.OAuth2.RefreshMargin != 10*time.Minute {
		t.Errorf("RefreshMargin = %s, want 10m", p.OAuth2.RefreshMargin)
	}
	au, err := p.AuthURL(map[string]string{"workspace": "acme"})
	if err != nil || au != "https://acme.my.salesforce.com/services/oauth2/authorize" {
		t.Fatalf("AuthURL = %q, %v", au, err)
	}
}

func TestValidateMetadata(t *testing.T) {
	p := mustParse(t, testCatalog)["sf"]
	if err := p.ValidateMetadata(map[string]string{"workspace": "acme"}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []map[string]string{nil, {"workspace": "evil.com#"}, {"workspace": "acme", "other": "x"}} {
		if err := p.ValidateMetadata(m); err == nil {
			t.Errorf("ValidateMetadata(%v) = nil, want an error", m)
		}
	}
}

func TestSetQueryParam(t *testing.T) {
	cases := []struct{ path, want string }{
		{"/a", "/a?api_key=k%26%3D+%2F"},
		{"/a?", "/a?api_key=k%26%3D+%2F"},
		{"/a?x=1&y=%20", "/a?x=1&y=%20&api_key=k%26%3D+%2F"},
		{"/a?api_key=caller&x=1", "/a?x=1&api_key=k%26%3D+%2F"},
		{"/a?api%5Fkey=caller&api_key&x=1", "/a?x=1&api_key=k%26%3D+%2F"},
		{"/a?x=1&&api_key=c&api_key=d", "/a?x=1&api_key=k%26%3D+%2F"},
	}
	for _, c := range cases {
		if got := SetQueryParam(c.path, "api_key", "k&= /"); got != c.want {
			t.Errorf("SetQueryParam(%q) = %q, want %q", c.path, got, c.want)
		}
	}
}

func TestLoadOverride(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "providers.local.yaml")
	over := `providers:
  - name: salesforce
    baseURL: https://sf.internal.example
    authType: basic
    proxy: true
  - name: myApi
    baseURL: https://api.my.example
    authType: none
    proxy: true
`
	if err := os.WriteFile(f, []byte(over), 0o600); err != nil {
		t.Fatal(err)
	}
	base, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if sf, _ := c.Provider("salesforce"); sf.AuthType != AuthBasic {
		t.Errorf("override did not replace salesforce: %s", sf.AuthType)
	}
	if _, ok := c.Provider("myApi"); !ok {
		t.Error("override did not add myApi")
	}
	if got, want := len(c.Names()), len(base.Names())+1; got != want {
		t.Errorf("providers = %d, want %d", got, want)
	}
	if err := os.WriteFile(f, []byte("providers: [{name: x, baseURL: nope, authType: none}]"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(f); err == nil || !strings.Contains(err.Error(), f) {
		t.Errorf("bad override: err = %v, want one naming %s", err, f)
	}
}

// TestAllowedValues: a metadata value pinned by allowed is refused
// outside the list, wherever the template uses it, including the token
// URL that receives the app's client secret.
func TestAllowedValues(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := c.Provider("exactOnline")
	if !ok {
		t.Fatal("no exactOnline")
	}
	for _, v := range []string{"nl", "co.uk", "com"} {
		if err := p.ValidateMetadata(map[string]string{"extension": v}); err != nil {
			t.Errorf("extension %q refused: %v", v, err)
		}
	}
	up, err := p.Resolve(map[string]string{"extension": "co.uk"}, "/api/v1/current/Me")
	if err != nil || up.Authority != "start.exactonline.co.uk" {
		t.Errorf("Resolve = %+v, %v", up, err)
	}
	for _, v := range []string{"attacker.com", "nl.attacker.com", "NL", "uk"} {
		meta := map[string]string{"extension": v}
		if err := p.ValidateMetadata(meta); !errors.Is(err, ErrInvalidValue) {
			t.Errorf("extension %q: ValidateMetadata = %v, want ErrInvalidValue", v, err)
		}
		if u, err := p.TokenURL(meta); err == nil {
			t.Errorf("extension %q: token URL %s", v, u)
		}
		if up, err := p.Resolve(meta, "/"); err == nil {
			t.Errorf("extension %q: resolved to %+v", v, up)
		}
	}
}

// TestPinnedTokenHosts: where a connection's value decides the host that
// receives the provider app's client secret, the embedded catalog accepts
// the vendor's own hosts only.
func TestPinnedTokenHosts(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		provider string
		base     map[string]string // other metadata the provider needs
		name     string
		good     []string
		wantTok  string // token URL for good[0]
	}{
		{"talkdesk", map[string]string{"workspace": "acme"}, "talkdesk_token_domain",
			[]string{"talkdeskid.eu", "talkdeskid.com", "talkdeskidca.com", "talkdeskid.au"}, "https://acme.talkdeskid.eu/oauth/token"},
		{"zoho", nil, "zoho_token_domain",
			[]string{"accounts.zoho.eu", "accounts.zoho.com", "accounts.zoho.com.au", "accounts.zohocloud.ca", "accounts.zoho.com.cn"}, "https://accounts.zoho.eu/oauth/v2/token"},
		{"mercury", nil, "oauth_hostname",
			[]string{"oauth2-sandbox.mercury.com", "oauth2.mercury.com"}, "https://oauth2-sandbox.mercury.com/oauth2/token"},
		{"mercury", nil, "hostname",
			[]string{"api-sandbox.mercury.com", "api.mercury.com"}, "https://oauth2.mercury.com/oauth2/token"},
	} {
		p, ok := c.Provider(tc.provider)
		if !ok {
			t.Fatalf("no %s", tc.provider)
		}
		meta := func(v string) map[string]string {
			m := map[string]string{tc.name: v}
			for k, v := range tc.base {
				m[k] = v
			}
			return m
		}
		for i, v := range tc.good {
			if err := p.ValidateMetadata(meta(v)); err != nil {
				t.Errorf("%s %s=%s refused: %v", tc.provider, tc.name, v, err)
			}
			if i == 0 {
				if tok, err := p.TokenURL(meta(v)); err != nil || tok != tc.wantTok {
					t.Errorf("%s %s=%s: token URL %q, %v; want %s", tc.provider, tc.name, v, tok, err, tc.wantTok)
				}
			}
		}
		// Without a value the default applies, and it is one of the list.
		if err := p.ValidateMetadata(tc.base); err != nil {
			t.Errorf("%s with defaults: %v", tc.provider, err)
		}
		for _, v := range []string{"attacker.example", "talkdeskid.com.attacker.example", "accounts.zoho.com.attacker.example", "evil-mercury.com", "internal.corp"} {
			m := meta(v)
			if err := p.ValidateMetadata(m); !errors.Is(err, ErrInvalidValue) {
				t.Errorf("%s %s=%s: ValidateMetadata = %v, want ErrInvalidValue", tc.provider, tc.name, v, err)
			}
			if u, err := p.TokenURL(m); err == nil && tc.name != "hostname" {
				t.Errorf("%s %s=%s: token URL %s", tc.provider, tc.name, v, u)
			}
		}
	}
}

// TestOAuth2Header: the access token goes in Authorization as a bearer
// token unless the catalog names another header.
func TestOAuth2Header(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][2]string{
		"shopify":    {"x-shopify-access-token", ""},
		"salesforce": {"authorization", "Bearer "},
		"hubspot":    {"authorization", "Bearer "},
	} {
		p, _ := c.Provider(name)
		if h, pre := p.OAuth2Header(); h != want[0] || pre != want[1] {
			t.Errorf("%s: OAuth2Header = %q, %q; want %q, %q", name, h, pre, want[0], want[1])
		}
	}
}

func TestEmbeddedCatalog(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(c.Names()); n < 80 {
		t.Errorf("embedded catalog has %d providers, want at least 80", n)
	}
	types := map[AuthType]int{}
	for _, n := range c.Names() {
		p, _ := c.Provider(n)
		types[p.AuthType]++
	}
	for _, at := range []AuthType{AuthOAuth2, AuthAPIKey, AuthBasic, AuthNone} {
		if types[at] == 0 {
			t.Errorf("no provider with authType %s", at)
		}
	}
	for _, name := range []string{"hubspot", "slack"} {
		if _, ok := c.Provider(name); !ok {
			t.Errorf("embedded catalog lacks %s", name)
		}
	}
	// Templated providers resolve to the exact host of their
	// providers.yaml template.
	for _, tc := range []struct {
		name, path        string
		authority, upPath string
	}{
		{"salesforce", "/services/data/v56.0/sobjects/Account", "acme.my.salesforce.com", "/services/data/v56.0/sobjects/Account"},
		{"zendeskSupport", "/api/v2/tickets.json?page=2", "acme.zendesk.com", "/api/v2/tickets.json?page=2"},
		{"shopify", "/admin/api/2024-01/shop.json", "acme.myshopify.com", "/admin/api/2024-01/shop.json"},
		{"marketo", "/rest/v1/leads.json", "acme.mktorest.com", "/rest/v1/leads.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, ok := c.Provider(tc.name)
			if !ok {
				t.Fatalf("embedded catalog lacks %s", tc.name)
			}
			if !p.Proxy {
				t.Errorf("%s is not proxyable", tc.name)
			}
			up, err := p.Resolve(map[string]string{"workspace": "acme"}, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if want := (Upstream{Scheme: "https", Authority: tc.authority, Path: tc.upPath}); up != want {
				t.Errorf("Resolve = %+v, want %+v", up, want)
			}
			// A value the template cannot take is refused, not dropped.
			if up, err := p.Resolve(map[string]string{"workspace": "evil.com#"}, tc.path); err == nil {
				t.Errorf("workspace evil.com# resolved to %+v", up)
			}
		})
	}
	if mk, ok := c.Provider("marketo"); !ok || mk.OAuth2 == nil || mk.OAuth2.GrantType != GrantClientCredentials {
		t.Errorf("marketo should use the client-credentials grant")
	}
}

// FuzzResolve checks the promise of DESIGN §4: whatever a connection's value
// and a caller's path, the request goes to a host the template allows, on
// the template's port.
func FuzzResolve(f *testing.F) {
	ps := mustParse(f, testCatalog)
	for _, s := range []string{"acme", "ACME", "evil.com#", "a.b@c", "127.0.0.1", "x/y", "", "a:1", "[::1]", "a%00", "..", "xn--bcher-kva", "%2e%2e", "%c0%ae%c0%ae", "100%done"} {
		f.Add(s, "/services/data?x=1")
	}
	f.Add("acme", "//evil.com/x")
	f.Add("acme", "/@evil.com")
	for _, path := range []string{"/../x", "/a/%2e%2E/b", "/.%2e/x", "/..%2fx", "/..;/x", "/a\\..\\b", "/x?y=/..",
		"/%252e%252e/x", "/%%32%65%%32%65/x", "/%u002e%u002e/x", "/%c0%ae%c0%ae/x", "/%e0%80%ae./x", "/..%c0%afx", "/..%00/x", "/files/100%25done"} {
		f.Add("acme", path)
	}
	f.Fuzz(func(t *testing.T, val, path string) {
		for _, name := range []string{"sf", "whole", "pathy", "region", "jira"} {
			p := ps[name]
			meta := map[string]string{p.Metadata[0].Name: val}
			up, err := p.Resolve(meta, path)
			if err != nil {
				continue
			}
			checkResolvedPath(t, p, meta, up.Path)
			// The caller's path is theirs to get wrong (a stray %); only the
			// scheme and authority are ampproxy's promise.
			u, perr := url.Parse(up.Scheme + "://" + up.Authority + "/")
			if perr != nil {
				t.Fatalf("%s: resolved URL does not parse: %v (%+v)", name, perr, up)
			}
			host := u.Hostname()
			if u.User != nil || u.Fragment != "" {
				t.Fatalf("%s: userinfo or fragment in %q", name, u)
			}
			if !strings.HasPrefix(up.Path, "/") {
				t.Fatalf("%s: path %q", name, up.Path)
			}
			switch name {
			case "sf":
				if !strings.HasSuffix(host, ".my.salesforce.com") || u.Port() != "" || host != up.Authority {
					t.Fatalf("sf: %q escaped the template (authority %q)", val, up.Authority)
				}
			case "whole":
				if u.Port() != "" || net.ParseIP(host) != nil || host != up.Authority || host != strings.ToLower(val) {
					t.Fatalf("whole: %q gave authority %q", val, up.Authority)
				}
			case "pathy":
				if up.Authority != "api.bamboohr.com" || !strings.HasPrefix(up.Path, "/api/gateway.php/") {
					t.Fatalf("pathy: %q gave %+v", val, up)
				}
				seg := strings.TrimPrefix(up.Path, "/api/gateway.php/")
				if i := strings.IndexByte(seg, '/'); i >= 0 {
					seg = seg[:i]
				}
				if uv, _ := url.PathUnescape(seg); uv != val {
					t.Fatalf("pathy: segment %q does not round-trip to %q", seg, val)
				}
			case "region":
				if !strings.HasSuffix(host, ".api.example.com") || u.Port() != "8443" {
					t.Fatalf("region: %q gave %q", val, up.Authority)
				}
			case "jira":
				if up.Authority != "api.atlassian.com" || !strings.HasPrefix(up.Path, "/ex/jira/") {
					t.Fatalf("jira: %q gave %+v", val, up)
				}
			}
		}
	})
}

// FuzzResolveEmbedded holds every provider of the embedded catalog whose
// base or token URL takes a value in its host to DESIGN §4's promise: with
// every metadata value set to val, the authority is exactly the template's
// literals around val (so it keeps the template's suffix, e.g.
// <label>.my.salesforce.com), holds none of / @ ? # % and carries the
// template's port and no other.
func FuzzResolveEmbedded(f *testing.F) {
	c, err := Load("")
	if err != nil {
		f.Fatal(err)
	}
	var templated, pathed []*Provider
	for _, n := range c.Names() {
		p, _ := c.Provider(n)
		if p.base.hostVars || p.tokenURL != nil && p.tokenURL.hostVars {
			templated = append(templated, p)
		}
		if len(p.base.path) > 0 {
			pathed = append(pathed, p)
		}
	}
	if len(pathed) < 20 {
		f.Fatalf("only %d providers with a path in the base URL", len(pathed))
	}
	// The catalog has dozens of them (salesforce, zendeskSupport, shopify,
	// marketo...); a handful would mean the filter above broke.
	if len(templated) < 40 {
		f.Fatalf("only %d providers with a templated host", len(templated))
	}
	for _, s := range []string{"acme", "Acme.Example", "evil.com#", "a.b@c", "127.0.0.1", "0x7f000001", "x/y", "acme:444", "", "b\u00fccher", "a.b", "evil.com"} {
		f.Add(s, "/x?y=1")
	}
	f.Add("acme", "//evil.com/x")
	f.Add("acme", "/../../x")
	f.Add("..", "/x")
	f.Add("acme", "/%2e%2e%2fx")
	f.Add("%2e%2e", "/x")
	f.Add("acme", "/%252e%252e/x")
	f.Add("acme", "/%c0%ae%c0%ae/x")
	f.Fuzz(func(t *testing.T, val, path string) {
		for _, p := range pathed {
			meta := make(map[string]string, len(p.Metadata))
			for _, m := range p.Metadata {
				meta[m.Name] = val
			}
			if up, err := p.Resolve(meta, path); err == nil {
				checkResolvedPath(t, p, meta, up.Path)
			}
		}
		for _, p := range templated {
			meta := make(map[string]string, len(p.Metadata))
			for _, m := range p.Metadata {
				meta[m.Name] = val
			}
			get := values{meta: meta, defaults: p.defaults}
			if up, err := p.Resolve(meta, path); err == nil {
				checkTemplatedAuthority(t, p.Name+" baseURL", p.base, get, val, up.Authority)
				if up.Scheme != p.base.scheme || !strings.HasPrefix(up.Path, "/") {
					t.Fatalf("%s: %q gave %+v", p.Name, val, up)
				}
			}
			if p.tokenURL == nil {
				continue
			}
			tok, err := p.TokenURL(meta)
			if err != nil {
				continue
			}
			u, err := url.Parse(tok)
			if err != nil {
				t.Fatalf("%s: token URL %q does not parse: %v", p.Name, tok, err)
			}
			if u.User != nil || u.Fragment != "" || u.Scheme != p.tokenURL.scheme {
				t.Fatalf("%s: token URL %q", p.Name, tok)
			}
			checkTemplatedAuthority(t, p.Name+" tokenURL", p.tokenURL, get, val, u.Host)
		}
	})
}

// checkResolvedPath fails unless path starts with p's template path for
// meta and is safe by a reading independent of pathFault: each form of the
// path (up to '?'), as it is and then decoded up to three times over
// (%XX and %uXXXX by a regular expression, then every overlong UTF-8
// encoding of an ASCII character replaced by it), holds no NUL and, split
// at '/', '\' and ';', no "." or ".." segment; and a fourth decoding
// changes nothing.
func checkResolvedPath(t *testing.T, p *Provider, meta map[string]string, path string) {
	t.Helper()
	var prefix strings.Builder
	for _, s := range p.base.path {
		if s.v == "" {
			prefix.WriteString(s.lit)
			continue
		}
		v, _ := values{meta: meta, defaults: p.defaults}.get(s.v)
		prefix.WriteString(url.PathEscape(v))
	}
	if !strings.HasPrefix(path, prefix.String()+"/") && path != prefix.String() {
		t.Fatalf("%s: path %q left the template's path %q", p.Name, path, prefix.String())
	}
	form, _, _ := strings.Cut(path, "?")
	for round := 0; ; round++ {
		if strings.Contains(form, "\x00") {
			t.Fatalf("%s: path %q holds a NUL (decoded %d times: %q)", p.Name, path, round, form)
		}
		for _, seg := range strings.FieldsFunc(form, func(r rune) bool { return r == '/' || r == '\\' || r == ';' }) {
			if seg == "." || seg == ".." {
				t.Fatalf("%s: path %q holds a dot segment (decoded %d times: %q)", p.Name, path, round, form)
			}
		}
		next := overlongASCII.Replace(escapeRE.ReplaceAllStringFunc(form, func(e string) string {
			v, _ := strconv.ParseUint(strings.TrimLeft(e[1:], "uU"), 16, 32)
			if len(e) == 3 {
				return string([]byte{byte(v)})
			}
			return string(rune(v))
		}))
		if next == form {
			return
		}
		if round == 3 {
			t.Fatalf("%s: path %q still decodes after three rounds", p.Name, path)
		}
		form = next
	}
}

// escapeRE matches what checkResolvedPath decodes: %uXXXX and %XX.
var escapeRE = regexp.MustCompile(`%[uU][0-9a-fA-F]{4}|%[0-9a-fA-F]{2}`)

// overlongASCII replaces every overlong UTF-8 encoding (two, three and
// four bytes) of an ASCII character with the character, built by encoding
// rather than decoding.
var overlongASCII = func() *strings.Replacer {
	var pairs []string
	for c := range 0x80 {
		hi, lo := byte(c>>6), 0x80|byte(c&0x3f)
		pairs = append(pairs,
			string([]byte{0xc0 | hi, lo}), string(rune(c)),
			string([]byte{0xe0, 0x80 | hi, lo}), string(rune(c)),
			string([]byte{0xf0, 0x80, 0x80 | hi, lo}), string(rune(c)))
	}
	return strings.NewReplacer(pairs...)
}()

// checkTemplatedAuthority fails unless authority is what tmpl allows for
// the values of get; val is the fuzzed value, for the message.
func checkTemplatedAuthority(t *testing.T, what string, tmpl *urlTemplate, get values, val, authority string) {
	t.Helper()
	var want strings.Builder
	for _, s := range tmpl.host {
		if s.v == "" {
			want.WriteString(s.lit)
			continue
		}
		v, _ := get.get(s.v)
		want.WriteString(strings.ToLower(v))
	}
	host := want.String()
	if tmpl.port != "" {
		want.WriteString(":" + tmpl.port)
	}
	if authority != want.String() {
		t.Fatalf("%s: %q gave authority %q, want %q", what, val, authority, want.String())
	}
	if first := tmpl.host[0]; first.v == "" && !strings.HasPrefix(host, first.lit) {
		t.Fatalf("%s: %q: host %q lost the template's prefix %q", what, val, host, first.lit)
	}
	if last := tmpl.host[len(tmpl.host)-1]; last.v == "" && !strings.HasSuffix(host, last.lit) {
		t.Fatalf("%s: %q: host %q lost the template's suffix %q", what, val, host, last.lit)
	}
	if !tmpl.hostVars {
		return
	}
	if strings.ContainsAny(host, "/@?#%:\\[] ") || net.ParseIP(host) != nil {
		t.Fatalf("%s: %q gave host %q", what, val, host)
	}
	u, err := url.Parse("https://" + authority + "/")
	if err != nil || u.Hostname() != host || u.Port() != tmpl.port || u.User != nil {
		t.Fatalf("%s: %q: authority %q reads as %+v, %v", what, val, authority, u, err)
	}
}
