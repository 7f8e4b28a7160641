package catalog

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Upstream is where a proxied request goes.
type Upstream struct {
	Scheme    string // https, or http for a provider the operator declared so
	Authority string // host[:port], the value for :authority
	Path      string // the value for :path: template path + request path, and the query
}

// ErrBadPath is wrapped by errors about the caller's request path.
var ErrBadPath = errors.New("invalid request path")

// Resolve turns a connection's metadata and the caller's request path (with
// its query) into the upstream. Values substituted into the host must be DNS
// labels and cannot form an IP address or localhost; values substituted into
// the path are escaped as one segment. The scheme and port always come from
// the template, so nothing a connection or a caller supplies can move the
// request to another host or port than the template allows.
func (p *Provider) Resolve(meta map[string]string, pathQuery string) (Upstream, error) {
	if err := checkRequestPath(pathQuery); err != nil {
		return Upstream{}, err
	}
	v := values{meta: meta, defaults: p.defaults, allowed: p.allowed}
	t := p.base
	var b strings.Builder
	authority := t.authority
	if t.hostVars {
		if err := t.expandHost(&b, v); err != nil {
			return Upstream{}, err
		}
		authority = b.String()
	}
	if len(t.path) == 0 {
		return Upstream{Scheme: t.scheme, Authority: authority, Path: pathQuery}, nil
	}
	b.Reset()
	b.Grow(len(pathQuery) + 32)
	if err := t.expandPath(&b, v); err != nil {
		return Upstream{}, err
	}
	b.WriteString(pathQuery)
	return Upstream{Scheme: t.scheme, Authority: authority, Path: b.String()}, nil
}

// ValidateMetadata checks a connection's metadata against the provider: every
// value the base and token URLs use must be present (or defaulted) and valid
// where it is used, and no undeclared name may be given.
func (p *Provider) ValidateMetadata(meta map[string]string) error {
	declared := make(map[string]bool, len(p.Metadata))
	for _, m := range p.Metadata {
		declared[m.Name] = true
	}
	var errs []error
	for name := range meta {
		if !declared[name] {
			errs = append(errs, fmt.Errorf("%w: %s is not a metadata field of provider %s", ErrInvalidValue, name, p.Name))
		}
	}
	if _, err := p.Resolve(meta, "/"); err != nil {
		errs = append(errs, err)
	}
	if p.tokenURL != nil {
		if _, err := p.tokenURL.expand(values{meta: meta, defaults: p.defaults, allowed: p.allowed}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// TokenURL renders the OAuth2 token endpoint for a connection.
func (p *Provider) TokenURL(meta map[string]string) (string, error) {
	if p.tokenURL == nil {
		return "", fmt.Errorf("provider %s has no token URL", p.Name)
	}
	return p.tokenURL.expand(values{meta: meta, defaults: p.defaults, allowed: p.allowed})
}

// AuthURL renders the OAuth2 authorization endpoint for a connection.
func (p *Provider) AuthURL(meta map[string]string) (string, error) {
	if p.authURL == nil {
		return "", fmt.Errorf("provider %s has no authorization URL", p.Name)
	}
	return p.authURL.expand(values{meta: meta, defaults: p.defaults, allowed: p.allowed})
}

// OAuth2Header is the header that carries the access token, in lower case
// as Envoy carries header names, and the prefix before the token:
// "authorization" and "Bearer " unless the catalog's oauth2.header says
// otherwise. Empty for providers that are not OAuth2.
func (p *Provider) OAuth2Header() (name, prefix string) { return p.tokenHeader, p.tokenPrefix }

// APIKeyHeaderLower is the API-key header name in lower case, as Envoy
// carries header names; empty unless the key goes in a header.
func (p *Provider) APIKeyHeaderLower() string { return p.apiKeyHeader }

// checkRequestPath accepts an origin-form request target. Envoy has already
// rejected most malformed paths; this keeps ampproxy safe behind anything.
// A dot segment is refused: the path is appended to the template's path
// (bamboohr's /api/gateway.php/{{.subdomain}}, jira's
// /ex/jira/{{.cloudId}}), and "/../" would climb out of it once the
// provider or a proxy in between normalises the path.
func checkRequestPath(pq string) error {
	if pq == "" || pq[0] != '/' {
		return fmt.Errorf("%w: must start with /", ErrBadPath)
	}
	for i := 0; i < len(pq); i++ {
		if c := pq[i]; c <= ' ' || c == 0x7f || c == '#' {
			return fmt.Errorf("%w: character %q is not allowed", ErrBadPath, c)
		}
	}
	if hasDotSegment(pq) {
		return fmt.Errorf("%w: a \".\" or \"..\" path segment is not allowed, percent-encoded or not", ErrBadPath)
	}
	return nil
}

// hasDotSegment reports whether the path of pq (up to a literal '?') holds
// a segment that some server reads as "." or "..". It reads the path the
// way the most lenient of them do: each %XX decoded once (%2e and %2E are
// dots, %2f a slash, %5c a backslash), and '/', '\' and ';' all ending a
// segment (Windows servers split at backslashes, Java servlet containers
// drop ";params" from a segment). So "..", ".%2e", "%2E%2e", "..%2f",
// "..\" and "..;x" are all dot segments; "...", ".well-known" and "a..b"
// are not.
func hasDotSegment(pq string) bool {
	dots := 0 // dots since the segment began; -1 once it holds anything else
	for i := 0; ; i++ {
		end := i == len(pq) || pq[i] == '?'
		var c byte
		if !end {
			c = pq[i]
			if c == '%' && i+2 < len(pq) {
				if h, l := unhex(pq[i+1]), unhex(pq[i+2]); h >= 0 && l >= 0 {
					c = byte(h<<4 | l)
					i += 2
				}
			}
		}
		switch {
		case end || c == '/' || c == '\\' || c == ';':
			if dots == 1 || dots == 2 {
				return true
			}
			if end {
				return false
			}
			dots = 0
		case c == '.' && dots >= 0:
			dots++
		default:
			dots = -1
		}
	}
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	case c >= 'A' && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// SetQueryParam returns path with every parameter called name removed and
// name=value appended, escaped. Other parameters keep their exact bytes.
func SetQueryParam(path, name, value string) string {
	p, q, _ := strings.Cut(path, "?")
	var b strings.Builder
	b.Grow(len(path) + len(name) + len(value)*3 + 2)
	b.WriteString(p)
	b.WriteByte('?')
	for part := range strings.SplitSeq(q, "&") {
		if part == "" {
			continue
		}
		k, _, _ := strings.Cut(part, "=")
		if k == name {
			continue
		}
		if uk, err := url.QueryUnescape(k); err == nil && uk == name {
			continue
		}
		b.WriteString(part)
		b.WriteByte('&')
	}
	b.WriteString(url.QueryEscape(name))
	b.WriteByte('=')
	b.WriteString(url.QueryEscape(value))
	return b.String()
}
