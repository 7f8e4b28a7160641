package catalog

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
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
	if f := pathFault(pq); f != "" {
		return fmt.Errorf("%w: %s", ErrBadPath, f)
	}
	return nil
}

// What pathFault finds wrong with a path.
const (
	faultDotSegment = `"." and ".." path segments (dot segments) are not allowed, however percent-encoded`
	faultNUL        = "a NUL character (%00) is not allowed, however percent-encoded"
	faultDeep       = "a path percent-encoded more than 3 times over is not allowed"
)

// maxDecodeRounds is how many times pathFault decodes a path. Servers that
// decode twice exist (the classic %252e attacks); one more round is a
// margin. A path that would still change in a further round is refused
// rather than read short.
const maxDecodeRounds = 3

// pathFault returns why the path of pq (up to a literal '?') cannot be
// appended to a template's path, or "" when it can. It reads the path as
// every server along the way might, and refuses what any of them would
// read as a dot segment:
//
//   - the path as it is, then decoded again and again until it no longer
//     changes, at most maxDecodeRounds times; each form is checked, so a
//     dot encoded twice (%252e, or %%32%65) counts as one;
//   - a round decodes %XX, IIS's %uXXXX, and overlong UTF-8 encodings of
//     ASCII, which lenient decoders accept (%c0%ae and %e0%80%ae are '.',
//     %c0%af is '/', %c1%9c is '\');
//   - '/', '\' and ';' all end a segment (Windows servers split at
//     backslashes, Java servlet containers drop ";params" from a
//     segment).
//
// A NUL in any form is refused outright rather than read as the end of a
// segment: servers written in C cut the path there ("..%00" reads ".."),
// others drop it (".%00." reads ".."), and a provider path never holds
// one. "...", ".well-known", "a..b" and "100%25done" pass.
func pathFault(pq string) string {
	p, _, _ := strings.Cut(pq, "?")
	if !mayDecode(p) {
		return scanSegments(p)
	}
	cur := []byte(p)
	for round := 0; ; round++ {
		if f := scanSegments(cur); f != "" {
			return f
		}
		next := decodeRound(cur)
		if string(next) == string(cur) {
			return ""
		}
		if round == maxDecodeRounds {
			return faultDeep
		}
		cur = next
	}
}

// mayDecode reports whether a decoding round could change p; the common
// path, plain ASCII without escapes, is scanned once without allocating.
func mayDecode(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] == '%' || p[i] >= 0xc0 {
			return true
		}
	}
	return false
}

// scanSegments checks one form of a path, taken literally.
func scanSegments[T string | []byte](p T) string {
	dots := 0 // dots since the segment began; -1 once it holds anything else
	for i := 0; ; i++ {
		end := i == len(p)
		var c byte
		if !end {
			c = p[i]
		}
		switch {
		case end || c == '/' || c == '\\' || c == ';':
			if dots == 1 || dots == 2 {
				return faultDotSegment
			}
			if end {
				return ""
			}
			dots = 0
		case c == 0:
			return faultNUL
		case c == '.' && dots >= 0:
			dots++
		default:
			dots = -1
		}
	}
}

// decodeRound decodes p once: %XX, %uXXXX (as UTF-8), and overlong UTF-8
// sequences that encode an ASCII character, including those the %XX of
// this round produced.
func decodeRound(p []byte) []byte {
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' {
			if i+2 < len(p) {
				if h, l := unhex(p[i+1]), unhex(p[i+2]); h >= 0 && l >= 0 {
					out = append(out, byte(h<<4|l))
					i += 2
					continue
				}
			}
			if i+5 < len(p) && (p[i+1] == 'u' || p[i+1] == 'U') {
				if r, ok := unhex4(p[i+2 : i+6]); ok {
					out = utf8.AppendRune(out, r)
					i += 5
					continue
				}
			}
		}
		out = append(out, c)
	}
	return foldOverlong(out)
}

// unhex4 reads four hex digits.
func unhex4(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		d := unhex(c)
		if d < 0 {
			return 0, false
		}
		r = r<<4 | rune(d)
	}
	return r, true
}

// foldOverlong replaces, in place, every overlong UTF-8 sequence of two to
// four bytes that encodes an ASCII character (C0 AE, E0 80 AE, F0 80 80 AE
// for '.') with that character; strict decoders refuse them, lenient ones
// (the IIS %c0%af bug) read the character.
func foldOverlong(b []byte) []byte {
	out := b[:0]
	for i := 0; i < len(b); i++ {
		c := b[i]
		n := 0
		switch {
		case c&0xe0 == 0xc0:
			n = 2
		case c&0xf0 == 0xe0:
			n = 3
		case c&0xf8 == 0xf0:
			n = 4
		}
		if n > 0 && i+n <= len(b) {
			v := rune(c) & (0x7f >> n)
			ok := true
			for _, x := range b[i+1 : i+n] {
				if x&0xc0 != 0x80 {
					ok = false
					break
				}
				v = v<<6 | rune(x&0x3f)
			}
			if ok && v < 0x80 {
				out = append(out, byte(v))
				i += n - 1
				continue
			}
		}
		out = append(out, c)
	}
	return out
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
