package catalog

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/net/http/httpguts"
)

//go:embed providers.yaml
var embedded []byte

// Catalog is an immutable set of providers, safe for concurrent use.
type Catalog struct {
	byName map[string]*Provider
	names  []string
}

// Load returns the embedded catalog with the override file applied: an
// override entry replaces the embedded entry of the same name or adds a new
// provider. An empty overridePath means no override. Every problem found in
// either file is returned at once, each with its file, line and field.
func Load(overridePath string) (*Catalog, error) {
	base, err := Parse(embedded, "providers.yaml (embedded)")
	if err != nil {
		return nil, err
	}
	c := &Catalog{byName: make(map[string]*Provider, len(base))}
	for _, p := range base {
		c.byName[p.Name] = p
	}
	if overridePath != "" {
		data, err := os.ReadFile(overridePath)
		if err != nil {
			return nil, fmt.Errorf("catalog override: %w", err)
		}
		over, err := Parse(data, overridePath)
		if err != nil {
			return nil, err
		}
		for _, p := range over {
			c.byName[p.Name] = p
		}
	}
	for name := range c.byName {
		c.names = append(c.names, name)
	}
	slices.Sort(c.names)
	return c, nil
}

// Provider returns the named provider.
func (c *Catalog) Provider(name string) (*Provider, bool) {
	p, ok := c.byName[name]
	return p, ok
}

// Names lists every provider name in order.
func (c *Catalog) Names() []string { return slices.Clone(c.names) }

// maxRefreshMargin bounds oauth2.refreshMargin: beyond a day a margin
// says more about a typo than about a provider.
const maxRefreshMargin = 24 * time.Hour

var nameRE = regexp.MustCompile(`^[a-z][A-Za-z0-9]{0,63}$`)

// Parse decodes and validates a catalog file strictly. source names the file
// in error messages.
func Parse(data []byte, source string) ([]*Provider, error) {
	var errs []error
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		for _, e := range te.Errors {
			errs = append(errs, fmt.Errorf("%s: %s", source, e))
		}
	}
	lines := itemLines(data)
	seen := map[string]int{}
	out := make([]*Provider, 0, len(f.Providers))
	for i := range f.Providers {
		p := &f.Providers[i]
		where := fmt.Sprintf("%s: providers[%d]", source, i)
		if i < len(lines) {
			where = fmt.Sprintf("%s:%d: providers[%d]", source, lines[i], i)
		}
		if p.Name != "" {
			where += " (" + p.Name + ")"
		}
		if j, dup := seen[p.Name]; dup && p.Name != "" {
			errs = append(errs, fmt.Errorf("%s.name: duplicate of providers[%d]", where, j))
		}
		seen[p.Name] = i
		for _, e := range p.compile() {
			errs = append(errs, fmt.Errorf("%s.%w", where, e))
		}
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// itemLines finds the line of each entry under providers:, for messages.
func itemLines(data []byte) []int {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "providers" {
			var lines []int
			for _, it := range m.Content[i+1].Content {
				lines = append(lines, it.Line)
			}
			return lines
		}
	}
	return nil
}

// compile validates p and prepares its templates; each error starts with
// the field it concerns.
func (p *Provider) compile() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if !nameRE.MatchString(p.Name) {
		bad("name", "%q must be camelCase letters and digits, starting with a lower-case letter", p.Name)
	}
	declared := map[string]bool{}
	defaults := map[string]string{}
	var allowed map[string][]string
	for i, m := range p.Metadata {
		if !isIdent(m.Name) {
			bad(fmt.Sprintf("metadata[%d].name", i), "%q is not a valid name", m.Name)
		}
		if declared[m.Name] {
			bad(fmt.Sprintf("metadata[%d].name", i), "%q declared twice", m.Name)
		}
		declared[m.Name] = true
		if m.Default != "" {
			defaults[m.Name] = m.Default
		}
		for j, a := range m.Allowed {
			if a == "" || strings.ContainsAny(a, "/:@?#%\\ \t\r\n") {
				bad(fmt.Sprintf("metadata[%d].allowed[%d]", i, j), "%q is not a value a URL can hold", a)
			}
		}
		if len(m.Allowed) > 0 {
			if allowed == nil {
				allowed = map[string][]string{}
			}
			allowed[m.Name] = m.Allowed
			if m.Default != "" && !slices.Contains(m.Allowed, m.Default) {
				bad(fmt.Sprintf("metadata[%d].default", i), "%q is not one of the allowed values", m.Default)
			}
		}
	}
	p.defaults = defaults
	p.allowed = allowed
	compile := func(field, raw string) *urlTemplate {
		t, err := compileURL(raw)
		if err != nil {
			bad(field, "%q: %v", raw, err)
			return nil
		}
		for _, v := range t.vars {
			if !declared[v] {
				bad(field, "template variable %q is not declared under metadata", v)
			}
		}
		return t
	}
	switch {
	case p.BaseURL == "":
		bad("baseURL", "is required")
	case strings.Contains(p.BaseURL, "?"):
		// Resolve builds the query from the caller's alone, so a fixed
		// one would be dropped without a word.
		bad("baseURL", "%q: must not hold a query; the caller's request brings its own", p.BaseURL)
	default:
		p.base = compile("baseURL", p.BaseURL)
	}
	switch p.AuthType {
	case AuthOAuth2:
		o := p.OAuth2
		if o == nil {
			bad("oauth2", "is required when authType is oauth2")
			break
		}
		switch o.GrantType {
		case GrantAuthorizationCode, GrantAuthorizationCodePKCE:
			if o.AuthURL == "" {
				bad("oauth2.authURL", "is required for grantType %s", o.GrantType)
			} else {
				p.authURL = compile("oauth2.authURL", o.AuthURL)
			}
		case GrantClientCredentials:
		default:
			bad("oauth2.grantType", "%q: want authorizationCode, authorizationCodePKCE or clientCredentials", o.GrantType)
		}
		if o.TokenURL == "" {
			bad("oauth2.tokenURL", "is required when authType is oauth2")
		} else if t := compile("oauth2.tokenURL", o.TokenURL); t != nil {
			if t.scheme != "https" && !isLoopback(t) {
				bad("oauth2.tokenURL", "%q: must be https (http only on loopback addresses)", o.TokenURL)
			}
			p.tokenURL = t
		}
		if o.AuthStyle != AuthStyleInHeader && o.AuthStyle != AuthStyleInParams {
			bad("oauth2.authStyle", "%q: want inHeader or inParams (never auto-detected)", o.AuthStyle)
		}
		if o.RefreshMargin < 0 || o.RefreshMargin > maxRefreshMargin {
			bad("oauth2.refreshMargin", "%s: want a duration from 0 to %s", o.RefreshMargin, maxRefreshMargin)
		}
		for i, f := range o.TokenMetadataFields {
			if f.Field == "" || !declared[f.Metadata] {
				bad(fmt.Sprintf("oauth2.tokenMetadataFields[%d]", i), "needs a field and a metadata name declared under metadata")
			}
			if f.Extract != "" && f.Extract != "subdomain" {
				bad(fmt.Sprintf("oauth2.tokenMetadataFields[%d].extract", i), "%q: want empty or subdomain", f.Extract)
			}
		}
		p.tokenHeader, p.tokenPrefix = "authorization", "Bearer "
		if h := o.Header; h != nil {
			switch {
			case !validHeaderName(h.Name):
				bad("oauth2.header.name", "%q is not a valid header name", h.Name)
			case !httpguts.ValidHeaderFieldValue(h.Prefix):
				bad("oauth2.header.prefix", "holds a character not allowed in a header value (a control character)")
			default:
				p.tokenHeader, p.tokenPrefix = strings.ToLower(h.Name), h.Prefix
			}
		}
		if p.APIKey != nil {
			bad("apiKey", "only allowed when authType is apiKey")
		}
	case AuthAPIKey:
		k := p.APIKey
		switch {
		case k == nil:
			bad("apiKey", "is required when authType is apiKey")
		case (k.Header != nil) == (k.Query != ""):
			bad("apiKey", "needs exactly one of header and query")
		case k.Header != nil && !validHeaderName(k.Header.Name):
			bad("apiKey.header.name", "%q is not a valid header name", k.Header.Name)
		case k.Header != nil && !httpguts.ValidHeaderFieldValue(k.Header.Prefix):
			bad("apiKey.header.prefix", "holds a character not allowed in a header value (a control character)")
		case k.Query != "" && url.QueryEscape(k.Query) != k.Query:
			bad("apiKey.query", "%q must be a plain parameter name", k.Query)
		}
		if p.OAuth2 != nil {
			bad("oauth2", "only allowed when authType is oauth2")
		}
	case AuthBasic, AuthNone:
		if p.OAuth2 != nil || p.APIKey != nil {
			bad("authType", "%s takes neither oauth2 nor apiKey", p.AuthType)
		}
	default:
		bad("authType", "%q: want oauth2, apiKey, basic or none", p.AuthType)
	}
	for i, h := range p.RateLimit.ResetHeaders {
		if !validHeaderName(h.Name) {
			bad(fmt.Sprintf("rateLimit.resetHeaders[%d].name", i), "%q is not a valid header name", h.Name)
		}
		switch h.Format {
		case ResetEpochSeconds, ResetEpochMillis, ResetDeltaSeconds:
		default:
			bad(fmt.Sprintf("rateLimit.resetHeaders[%d].format", i), "%q: want epochSeconds, epochMillis or deltaSeconds", h.Format)
		}
		// Envoy hands response headers over in lower case.
		p.RateLimit.ResetHeaders[i].Name = strings.ToLower(h.Name)
	}
	for i, h := range p.RateLimit.LockoutMarkers {
		if !validHeaderName(h) {
			bad(fmt.Sprintf("rateLimit.lockoutMarkers[%d]", i), "%q is not a valid header name", h)
		}
		p.RateLimit.LockoutMarkers[i] = strings.ToLower(h)
	}
	if p.APIKey != nil && p.APIKey.Header != nil {
		p.apiKeyHeader = strings.ToLower(p.APIKey.Header.Name)
	}
	return errs
}

func isLoopback(t *urlTemplate) bool {
	if len(t.host) != 1 || t.host[0].v != "" {
		return false
	}
	h := t.host[0].lit
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}

// validHeaderName reports whether s is an RFC 9110 token, the rule Envoy
// and net/http apply to header names.
func validHeaderName(s string) bool { return httpguts.ValidHeaderFieldName(s) }
