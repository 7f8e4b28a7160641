package throttle

import (
	"net/http"
	"strings"
	"time"

	"github.com/ampproxy/ampproxy/catalog"
)

// Headers gives read access to a provider response's headers. Names are
// asked for in lower case, as ext_proc delivers them; when a header is
// repeated, Get returns the first value.
type Headers interface {
	Get(lowerName string) (value string, ok bool)
}

// Pairs adapts a list of name/value pairs with lower-case names, such as
// the ones ext_proc delivers, to Headers.
type Pairs [][2]string

// Get returns the value of the first pair named name.
func (p Pairs) Get(name string) (string, bool) {
	for _, kv := range p {
		if kv[0] == name {
			return kv[1], true
		}
	}
	return "", false
}

// HeaderFunc adapts a function to Headers.
type HeaderFunc func(lowerName string) (string, bool)

// Get calls f.
func (f HeaderFunc) Get(name string) (string, bool) { return f(name) }

// RetryAfterLayout is the layout of X-Amp-Retry-After (DESIGN §3).
const RetryAfterLayout = "Mon, 02 Jan 2006 15:04:05 UTC"

// FormatRetryAfter formats t for X-Amp-Retry-After: RetryAfterLayout, in
// UTC. A fraction of a second rounds up, so that a caller who waits until
// the time shown finds the window closed.
func FormatRetryAfter(t time.Time) string {
	return ceilSecond(t).UTC().Format(RetryAfterLayout)
}

// RetryAfterSeconds is the value of a standard Retry-After header for a
// window ending at until: whole seconds from now, rounded up, and at least
// 1 so that it never invites an immediate retry; 0 when the window is
// already over.
func RetryAfterSeconds(until, now time.Time) int64 {
	d := until.Sub(now)
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

func ceilSecond(t time.Time) time.Time {
	if t.Nanosecond() == 0 {
		return t
	}
	return t.Truncate(time.Second).Add(time.Second)
}

// MinWindow is the shortest window a Retry-After opens. A provider that
// says "retry now" (Retry-After: 0, or an HTTP-date not after the 429)
// gave a usable hint, not none: it gets this window rather than the
// default one, and so does a fraction of a second.
const MinWindow = time.Second

// windowEnd decides when the window opened by a 429 with headers h ends,
// and whether the caller may retry after it; see the package comment for
// the rules. def must not exceed maxWin.
func windowEnd(h Headers, rl catalog.RateLimit, now time.Time, def, maxWin time.Duration) (end time.Time, retryable bool) {
	consider := func(t time.Time, ok bool) {
		if ok && t.After(now) && t.After(end) {
			end = t
		}
	}
	if h != nil {
		if v, ok := h.Get("retry-after"); ok {
			t, ok := parseRetryAfter(v, now)
			if ok && t.Before(now.Add(MinWindow)) {
				t = now.Add(MinWindow)
			}
			consider(t, ok)
		}
		for _, rh := range rl.ResetHeaders {
			name := strings.ToLower(rh.Name)
			v, ok := h.Get(name)
			if !ok {
				continue
			}
			t, ok := parseReset(v, rh.Format, now)
			if ok && t.After(end) && otherBucket(h, name) {
				continue
			}
			consider(t, ok)
		}
	}
	retryable = true
	if h != nil {
		for _, m := range rl.LockoutMarkers {
			if _, ok := h.Get(strings.ToLower(m)); ok {
				retryable = false
				break
			}
		}
	}
	if end.IsZero() {
		end = now.Add(def)
	}
	if end.Sub(now) > maxWin {
		end, retryable = now.Add(maxWin), false
	}
	return end, retryable
}

// otherBucket reports whether the reset header named resetName (lower
// case) belongs to a bucket the 429 did not exhaust: its name contains
// "reset" and the response also carries the matching remaining header
// (the name with "reset" replaced by "remaining") with a value above
// zero. Providers send the reset headers of several buckets on every
// response (GitHub's primary limit beside a secondary-limit 429, Exact
// Online's daily limit beside its minutely one); without this, the
// longest bucket's reset would lock the connection out. It runs only for
// a reset hint that would lengthen the window, so it allocates the
// remaining header's name at most once per such header of a 429.
func otherBucket(h Headers, resetName string) bool {
	if !strings.Contains(resetName, "reset") {
		return false
	}
	v, ok := h.Get(strings.ReplaceAll(resetName, "reset", "remaining"))
	if !ok {
		return false
	}
	whole, nanos, ok := parseDecimal(strings.TrimSpace(v))
	return ok && (whole > 0 || nanos > 0)
}

// httpDateLayouts are the HTTP-dates Retry-After is read in beyond the
// three of RFC 9110 (net/http.ParseTime): senders that write the zone as
// UTC (as X-Amp-Retry-After itself does) or as a numeric offset.
var httpDateLayouts = [...]string{RetryAfterLayout, time.RFC1123Z}

// parseRetryAfter reads Retry-After (RFC 9110 §10.2.3): delta-seconds, or
// an HTTP-date in any of the three formats HTTP allows, or with the zone
// written UTC or as a numeric offset (+0000), which some senders use. A
// fraction of a second is accepted in the delta form, which some
// providers send.
func parseRetryAfter(v string, now time.Time) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if whole, nanos, ok := parseDecimal(v); ok {
		return addDelta(now, whole, nanos), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return t, true
	}
	for _, layout := range httpDateLayouts {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// Magnitudes that tell the numeric encodings apart. 1e9 seconds is 31
// years, far beyond any delta a provider means, and as an epoch it is
// September 2001; 1e12 as epoch milliseconds is that same moment, and as
// epoch seconds it is 31,000 years away.
const (
	epochSecondsFrom = 1_000_000_000
	epochMillisFrom  = 1_000_000_000_000
)

// parseReset reads a reset header in the format the catalog names,
// correcting formats a value's magnitude shows to be wrong:
//
//   - 1e12 and above is epoch milliseconds, whatever the catalog says;
//   - from 1e9 up to 1e12 is epoch seconds (as milliseconds it would be
//     January 1970);
//   - below 1e9 is seconds to wait under deltaSeconds and epochSeconds
//     (providers documented as epoch sometimes send the delta), and epoch
//     milliseconds under epochMillis, that is a moment in 1970, which the
//     caller ignores as past.
//
// A fraction is accepted in every form.
func parseReset(v string, f catalog.ResetFormat, now time.Time) (time.Time, bool) {
	whole, nanos, ok := parseDecimal(strings.TrimSpace(v))
	if !ok {
		return time.Time{}, false
	}
	switch {
	case whole >= epochMillisFrom, f == catalog.ResetEpochMillis && whole < epochSecondsFrom:
		return time.Unix(whole/1000, (whole%1000)*1e6+nanos/1000), true
	case whole >= epochSecondsFrom:
		return time.Unix(whole, nanos), true
	default:
		return addDelta(now, whole, nanos), true
	}
}

// maxWhole bounds the whole part parseDecimal accepts: as epoch
// milliseconds it is year 33,000, so any larger value only ever ends up
// capped at the maximum window, and products stay far from overflow.
const maxWhole = 1e15

// parseDecimal reads digits with an optional fraction ("12", "12.5"): no
// sign, exponent or spaces. A whole part beyond maxWhole is clamped to it;
// fraction digits past nanoseconds are dropped.
func parseDecimal(s string) (whole, nanos int64, ok bool) {
	if s == "" || len(s) > 64 {
		return 0, 0, false
	}
	i := 0
	for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		if whole < maxWhole {
			whole = whole*10 + int64(s[i]-'0')
		}
	}
	if i == 0 {
		return 0, 0, false
	}
	whole = min(whole, maxWhole)
	if i == len(s) {
		return whole, 0, true
	}
	if s[i] != '.' || i+1 == len(s) {
		return 0, 0, false
	}
	scale := int64(1e8)
	for i++; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, 0, false
		}
		nanos += int64(c-'0') * scale
		scale /= 10
	}
	return whole, nanos, true
}

// addDelta returns now plus whole seconds and nanos, saturating far in the
// future instead of overflowing.
func addDelta(now time.Time, whole, nanos int64) time.Time {
	if whole > int64(maxDuration/time.Second)-1 {
		return now.Add(maxDuration)
	}
	return now.Add(time.Duration(whole)*time.Second + time.Duration(nanos))
}

const maxDuration = time.Duration(1<<63 - 1)
