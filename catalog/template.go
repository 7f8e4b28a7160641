package catalog

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
)

// segment is a literal run of a URL template or one {{.var}} reference.
type segment struct {
	lit string
	v   string // variable name; lit is empty when set
}

// urlTemplate is a base, token or authorization URL compiled at load time,
// so that the request path only concatenates strings: no text/template
// execution per request.
type urlTemplate struct {
	scheme string
	host   []segment // host without port
	port   string    // fixed by the template; never templated
	path   []segment // without trailing slash
	query  string    // fixed query of the template (authorization URLs)
	vars   []string

	hostVars bool // the host takes at least one value

	// authority is host[:port] of a template whose host takes no value,
	// built once so that resolving it allocates nothing.
	authority string
}

// parseSegments splits s into literals and {{.name}} references.
func parseSegments(s string) ([]segment, error) {
	var segs []segment
	for s != "" {
		i := strings.Index(s, "{{")
		if i < 0 {
			if strings.Contains(s, "}}") {
				return nil, errors.New(`unbalanced "}}"`)
			}
			segs = append(segs, segment{lit: s})
			break
		}
		if i > 0 {
			if strings.Contains(s[:i], "}}") {
				return nil, errors.New(`unbalanced "}}"`)
			}
			segs = append(segs, segment{lit: s[:i]})
		}
		rest := s[i+2:]
		j := strings.Index(rest, "}}")
		if j < 0 {
			return nil, errors.New(`"{{" without "}}"`)
		}
		name := strings.TrimSpace(rest[:j])
		if !strings.HasPrefix(name, ".") || !isIdent(name[1:]) {
			return nil, fmt.Errorf("%q is not a {{.name}} reference", "{{"+rest[:j]+"}}")
		}
		segs = append(segs, segment{v: name[1:]})
		s = rest[j+2:]
	}
	return segs, nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// compileURL parses an absolute http(s) URL template. Variables may stand in
// the host (as whole DNS labels or parts of one) and in the path; the scheme
// and port are always fixed by the template.
func compileURL(raw string) (*urlTemplate, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New("must be an absolute URL (scheme://host)")
	}
	if scheme != "https" && scheme != "http" {
		return nil, fmt.Errorf("scheme %q: only https and http are allowed", scheme)
	}
	if strings.ContainsAny(rest, "#@\\ \t\r\n") {
		return nil, errors.New(`must not contain "#", "@", "\", or whitespace`)
	}
	hostport, pathq, _ := strings.Cut(rest, "/")
	pathq = "/" + pathq
	path, query, _ := strings.Cut(pathq, "?")
	t := &urlTemplate{scheme: scheme, query: query}
	host := hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, t.port = h, p
		if strings.Contains(p, "{{") {
			return nil, errors.New("the port cannot be templated")
		}
	}
	if host == "" {
		return nil, errors.New("host is empty")
	}
	var err error
	if t.host, err = parseSegments(host); err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	if t.path, err = parseSegments(strings.TrimRight(path, "/")); err != nil {
		return nil, fmt.Errorf("path: %w", err)
	}
	if strings.Contains(query, "{{") {
		return nil, errors.New("the query cannot be templated")
	}
	for _, s := range t.host {
		if s.v != "" {
			t.vars = append(t.vars, s.v)
			t.hostVars = true
		} else if strings.ContainsAny(s.lit, ":/?%") {
			return nil, fmt.Errorf("host part %q holds a character not allowed in a host", s.lit)
		}
	}
	for _, s := range t.path {
		if s.v != "" {
			t.vars = append(t.vars, s.v)
		}
	}
	if !t.hostVars {
		var b strings.Builder
		if err := t.expandHost(&b, values{}); err != nil {
			return nil, err
		}
		t.authority = b.String()
	}
	return t, nil
}

// values looks metadata up in a connection's values, then in the
// provider's declared defaults. A struct, not a closure, so that the request
// path does not allocate for it.
type values struct {
	meta     map[string]string
	defaults map[string]string
	allowed  map[string][]string // nil for most providers
}

func (v values) get(name string) (string, bool) {
	if s, ok := v.meta[name]; ok && s != "" {
		return s, true
	}
	s, ok := v.defaults[name]
	return s, ok
}

// lookup is get, with a missing value and one outside the provider's
// allowed list as errors.
func (v values) lookup(name string) (string, error) {
	val, ok := v.get(name)
	if !ok || val == "" {
		return "", fmt.Errorf("%w: %s is required", ErrInvalidValue, name)
	}
	if a, ok := v.allowed[name]; ok && !slices.Contains(a, val) {
		return "", fmt.Errorf("%w: %s: %q is not one of %s", ErrInvalidValue, name, val, strings.Join(a, ", "))
	}
	return val, nil
}

// ErrInvalidValue is wrapped by every error about a metadata value.
var ErrInvalidValue = errors.New("invalid metadata value")

// expandHost builds host[:port], validating every substituted value.
func (t *urlTemplate) expandHost(b *strings.Builder, get values) error {
	start := b.Len()
	for _, s := range t.host {
		if s.v == "" {
			b.WriteString(s.lit)
			continue
		}
		val, err := get.lookup(s.v)
		if err != nil {
			return err
		}
		upper, err := checkHostValue(val)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidValue, s.v, err)
		}
		// Host names are case-insensitive, but the forward proxy keys its
		// DNS cache and connection pools by :authority as given: ACME and
		// acme would be two upstreams. A stored value keeps its case; the
		// host gets it in lower case, at no cost for a value already so.
		if !upper {
			b.WriteString(val)
			continue
		}
		for i := 0; i < len(val); i++ {
			c := val[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			b.WriteByte(c)
		}
	}
	// A host the template fixes is the operator's choice; only a host that
	// took values from a connection is checked as a whole.
	if t.hostVars {
		if err := checkHost(b.String()[start:]); err != nil {
			return fmt.Errorf("%w: resulting host: %v", ErrInvalidValue, err)
		}
	}
	if t.port != "" {
		b.WriteByte(':')
		b.WriteString(t.port)
	}
	return nil
}

// expandPath writes the template's path (no trailing slash).
func (t *urlTemplate) expandPath(b *strings.Builder, get values) error {
	for _, s := range t.path {
		if s.v == "" {
			b.WriteString(s.lit)
			continue
		}
		val, err := get.lookup(s.v)
		if err != nil {
			return err
		}
		esc := url.PathEscape(val)
		if err := checkPathValue(val, esc); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalidValue, s.v, err)
		}
		b.WriteString(esc)
	}
	return nil
}

// expand renders the whole URL (token and authorization URLs).
func (t *urlTemplate) expand(get values) (string, error) {
	var b strings.Builder
	b.WriteString(t.scheme)
	b.WriteString("://")
	if err := t.expandHost(&b, get); err != nil {
		return "", err
	}
	if err := t.expandPath(&b, get); err != nil {
		return "", err
	}
	if b.Len() == 0 || !strings.Contains(b.String()[len(t.scheme)+3:], "/") {
		b.WriteByte('/')
	}
	if t.query != "" {
		b.WriteByte('?')
		b.WriteString(t.query)
	}
	return b.String(), nil
}

// checkHostValue accepts DNS labels separated by dots and nothing else, so
// that a value cannot add a port, userinfo, path, query or fragment. It
// reports whether v holds an upper-case letter.
func checkHostValue(v string) (upper bool, err error) {
	if len(v) > 253 {
		return false, errors.New("longer than 253 characters")
	}
	for label := range strings.SplitSeq(v, ".") {
		if label == "" {
			return false, errors.New("empty DNS label")
		}
		if len(label) > 63 {
			return false, errors.New("DNS label longer than 63 characters")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-':
			case c >= 'A' && c <= 'Z':
				upper = true
			default:
				return false, fmt.Errorf("character %q is not allowed (DNS labels only: letters, digits, '-')", c)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return false, errors.New("a DNS label cannot start or end with '-'")
		}
	}
	if isIP(v) {
		return false, errors.New("IP literals are not allowed")
	}
	return upper, nil
}

// isIP reports whether s is an IP literal as net.ParseIP reads them. It
// calls ParseIP only for strings made of the characters an address can
// hold, because a failed parse allocates its error and ordinary host names
// are checked on every request.
func isIP(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '.' || c == ':') {
			return false
		}
	}
	return net.ParseIP(s) != nil
}

// checkHost rejects hosts that name an address rather than a domain, even
// when each value was a valid label: an all-numeric or hex last label is how
// resolvers accept IPv4 in disguise (2130706433, 0x7f000001), and localhost
// names the machine itself.
func checkHost(h string) error {
	if isIP(h) {
		return errors.New("IP literals are not allowed")
	}
	lower := strings.ToLower(h)
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") {
		return errors.New("localhost is not allowed")
	}
	last := lower[strings.LastIndexByte(lower, '.')+1:]
	if strings.HasPrefix(last, "0x") || strings.Trim(last, "0123456789") == "" {
		return errors.New("the last DNS label cannot be numeric")
	}
	if !strings.Contains(lower, ".") {
		return errors.New("a single-label host is not allowed")
	}
	return nil
}

// checkPathValue allows anything printable that stays one path segment once
// escaped (esc); dot segments would climb out of the template's path, also
// ones a lenient server reads into the escaped form ("a/../b" escapes to
// a%2F..%2Fb, and some servers decode %2F), as pathFault reads them.
func checkPathValue(v, esc string) error {
	if f := pathFault(esc); f != "" {
		return errors.New(f)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return errors.New("control characters are not allowed")
		}
	}
	return nil
}
