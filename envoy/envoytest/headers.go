package envoytest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/net/http/httpguts"
)

// header is one entry of a header map. Names are lower case, as in Envoy's
// HeaderMap (envoy/http/header_map.h: keys are LowerCaseString).
type header struct{ name, value string }

// headerMap is an ordered multimap like Envoy's HeaderMapImpl: a name may
// occur more than once, and pseudo-headers (":"-names) stay in front of the
// others (source/common/http/header_map_impl.h, HeaderList::insert keeps
// pseudo_headers_end_).
type headerMap []header

func (h headerMap) get(name string) (string, bool) {
	for _, e := range h {
		if e.name == name {
			return e.value, true
		}
	}
	return "", false
}

func (h headerMap) values(name string) []string {
	var vs []string
	for _, e := range h {
		if e.name == name {
			vs = append(vs, e.value)
		}
	}
	return vs
}

// add appends an entry (HeaderMapImpl::addCopy).
func (h *headerMap) add(name, value string) {
	e := header{name, value}
	if !strings.HasPrefix(name, ":") {
		*h = append(*h, e)
		return
	}
	i := 0
	for i < len(*h) && strings.HasPrefix((*h)[i].name, ":") {
		i++
	}
	*h = append(*h, header{})
	copy((*h)[i+1:], (*h)[i:])
	(*h)[i] = e
}

// set replaces every entry of name with one entry. Current Envoy's
// HeaderMapImpl::setCopy is remove(key) followed by addCopy(key, value).
func (h *headerMap) set(name, value string) {
	h.remove(name)
	h.add(name, value)
}

func (h *headerMap) remove(name string) {
	out := (*h)[:0]
	for _, e := range *h {
		if e.name != name {
			out = append(out, e)
		}
	}
	*h = out
}

// byteSize is HeaderMap::byteSize: the sum of key and value lengths.
func (h headerMap) byteSize() int {
	n := 0
	for _, e := range h {
		n += len(e.name) + len(e.value)
	}
	return n
}

// proto renders h as Envoy sends it to the processor: every entry in order,
// the value in raw_value and value left empty. Envoy 1.27 introduced this
// behind envoy.reloadable_features.send_header_raw_value; 1.32 removed the
// guard (MutationUtils::headersToProto in
// source/extensions/filters/http/ext_proc/mutation_utils.cc).
func (h headerMap) proto() *corev3.HeaderMap {
	out := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(h))}
	for _, e := range h {
		out.Headers = append(out.Headers, &corev3.HeaderValue{Key: e.name, RawValue: []byte(e.value)})
	}
	return out
}

// Limits Envoy checks a mutation against (MutationUtils::responseHeaderSizeCheck
// and headerMutationResultCheck): the HTTP connection manager's defaults for
// max_headers_count (100) and max_request_headers_kb (60).
const (
	maxHeadersCount = 100
	maxHeadersBytes = 60 * 1024
)

// errMutation is returned when Envoy would fail the request over a mutation;
// ext_proc then answers the client with a 500 (Filter::handleErrorResponse in
// source/extensions/filters/http/ext_proc/ext_proc.cc; status_on_error
// defaults to 500).
var errMutation = errors.New("invalid header mutation")

// checker is Envoy's HeaderMutationRules checker
// (source/extensions/filters/common/mutation_rules/mutation_rules.cc) for
// the rules envoy.yaml sets: allow_all_routing as configured, everything else
// at its default (allow_envoy, disallow_system, disallow_all false, no
// expressions, disallow_is_error false).
type checker struct {
	allowAllRouting bool
}

type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

// routingHeaders are the headers only allow_all_routing lets a processor
// change (Checker's ExtraRoutingHeaders: Host, HostLegacy, Method, Scheme).
var routingHeaders = map[string]bool{":authority": true, "host": true, ":method": true, ":scheme": true}

// ok reports Checker::check(op, name, value) == OK. With disallow_is_error
// false every other outcome is IGNORE: the mutation is skipped, counted in
// rejected_header_mutations, and the request goes on.
func (c checker) ok(op checkOp, name, value string) bool {
	return c.allowed(op, name) && (op == opRemove || validMutationValue(name, value))
}

// allowed is Checker::isAllowed.
func (c checker) allowed(op checkOp, name string) bool {
	// "No matter what, you can't remove the "host" or any ":" headers."
	// (HeaderUtility::isModifiableHeader.)
	if op == opRemove && (strings.HasPrefix(name, ":") || name == "host") {
		return false
	}
	if !c.allowAllRouting && routingHeaders[name] {
		return false
	}
	// System headers hold one value, so appending to one is refused.
	if strings.HasPrefix(name, ":") && op == opAppend {
		return false
	}
	// allow_envoy false: "x-envoy" is Envoy's header prefix (Headers::prefix()).
	if strings.HasPrefix(name, "x-envoy") {
		return false
	}
	return true
}

// validMutationValue is Checker::isValidValue: values Envoy would behave
// badly with are refused (IGNORE, not an error).
func validMutationValue(name, value string) bool {
	if !strings.HasPrefix(name, ":") && !validHeaderValue(value) {
		return false
	}
	switch name {
	case ":authority", "host":
		return validAuthority(value)
	case ":scheme":
		// Http::Utility::schemeIsValid
		return value == "http" || value == "https"
	case ":status":
		n, err := strconv.ParseUint(value, 10, 32)
		return err == nil && n >= 200
	}
	return true
}

// applyMutation is MutationUtils::applyHeaderMutations: removals first, then
// sets, each checked by c. It returns errMutation (wrapped) where Envoy
// returns an error status, after applying what came before, as Envoy does.
// rejected counts the mutations the rules ignored. replacing is true for a
// CONTINUE_AND_REPLACE answer, which may change :method regardless of the
// rules.
func (c checker) applyMutation(m *extprocv3.HeaderMutation, h *headerMap, replacing bool, rejected func()) error {
	if len(m.GetRemoveHeaders()) > maxHeadersCount || len(m.GetSetHeaders()) > maxHeadersCount {
		rejected()
		return fmt.Errorf("%w: more than %d headers to remove or set", errMutation, maxHeadersCount)
	}
	for _, name := range m.GetRemoveHeaders() {
		if !validHeaderName(name) {
			rejected()
			return fmt.Errorf("%w: invalid character in remove_headers", errMutation)
		}
		name = strings.ToLower(name)
		if !c.ok(opRemove, name, "") {
			rejected()
			continue
		}
		h.remove(name)
	}
	for _, sh := range m.GetSetHeaders() {
		hv := sh.GetHeader()
		if hv == nil {
			continue
		}
		// "Only one of value or raw_value in the HeaderValue message should be set."
		if hv.GetValue() != "" && len(hv.GetRawValue()) != 0 {
			rejected()
			return fmt.Errorf("%w: both value and raw_value set for %q", errMutation, hv.GetKey())
		}
		// Only raw_value is read (1.32 removed the value path). A header
		// given through value alone is therefore set to "".
		value := string(hv.GetRawValue())
		if !validHeaderName(hv.GetKey()) || !validHeaderValue(value) {
			rejected()
			return fmt.Errorf("%w: invalid character in set_headers", errMutation)
		}
		name := strings.ToLower(hv.GetKey())
		// append_action is not read by ext_proc; only the deprecated append
		// flag is, defaulting to false: overwrite.
		appendValue := sh.GetAppend().GetValue()
		_, exists := h.get(name)
		op := opSet
		if appendValue && exists {
			op = opAppend
		}
		allowed := c.ok(op, name, value)
		if replacing && name == ":method" {
			allowed = true
		}
		if !allowed {
			rejected()
			continue
		}
		if appendValue {
			h.add(name, value)
		} else {
			h.set(name, value)
		}
	}
	if len(*h) > maxHeadersCount || h.byteSize() > maxHeadersBytes {
		rejected()
		return fmt.Errorf("%w: headers exceed %d entries or %d bytes after mutation", errMutation, maxHeadersCount, maxHeadersBytes)
	}
	return nil
}

// validHeaderName is HeaderUtility::headerNameIsValid: a pseudo-header name
// uses HTTP/2 rules (":" then lower-case token characters, as
// nghttp2_check_header_name), any other name HTTP/1 token rules.
func validHeaderName(name string) bool {
	if rest, ok := strings.CutPrefix(name, ":"); ok {
		if rest == "" {
			return false
		}
		for i := 0; i < len(rest); i++ {
			b := rest[i]
			if b >= 'A' && b <= 'Z' || !httpguts.IsTokenRune(rune(b)) {
				return false
			}
		}
		return true
	}
	return httpguts.ValidHeaderFieldName(name)
}

// validHeaderValue is HeaderUtility::headerValueIsValid
// (http2::adapter::HeaderValidator::IsValidHeaderValue with obs-text
// allowed): HTAB, visible ASCII, space and bytes 0x80-0xFF. NUL, CR, LF and
// the other controls are refused.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		b := v[i]
		if b != '\t' && (b < 0x20 || b == 0x7f) {
			return false
		}
	}
	return true
}

// validAuthority is HeaderUtility::authorityIsValid: the characters oghttp2
// allows in an authority, plus "@" (1.32 changelog).
func validAuthority(v string) bool {
	for i := 0; i < len(v); i++ {
		b := v[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:[]%@", b) >= 0:
		default:
			return false
		}
	}
	return true
}
