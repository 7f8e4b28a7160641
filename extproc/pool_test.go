package extproc

import (
	"maps"
	"slices"
	"testing"
)

// TestReusedStreamStateStartsClean runs differently shaped streams one
// after another, so that Process hands each the block the one before it
// gave back, and checks that every answer holds only its own headers.
func TestReusedStreamStateStartsClean(t *testing.T) {
	h := newHarness(t, newFixture())
	cases := []struct {
		name string
		hdrs []string
		set  []string // the exact headers set; nil: an immediate response
	}{
		{"oauth2, caller authorization, throttle mode", proxyHeaders("tokenheader-int", "g1", "authorization", "Bearer own", "x-amp-rate-limiter-mode", "throttle"),
			[]string{":authority", "x-access-token"}},
		{"api key in the query", proxyHeaders("query-int", "g1"), []string{":authority", ":path"}},
		{"api key header", proxyHeaders("key-int", "g1"), []string{":authority", "x-api-key"}},
		{"missing version", []string{"x-amp-project-id", "proj"}, nil},
		{"none", proxyHeaders("none-int", "g1"), []string{":authority"}},
	}
	for round := range 20 {
		for _, c := range cases {
			first, second := h.exchange(envoyHeaders("/x", c.hdrs...), "200")
			if c.set == nil {
				if first.GetImmediateResponse() == nil {
					t.Fatalf("round %d, %s: want an immediate response, got %v", round, c.name, first)
				}
				continue
			}
			m := flatten(t, first)
			if got := slices.Sorted(maps.Keys(m.set)); !slices.Equal(got, c.set) {
				t.Fatalf("round %d, %s: set %v, want exactly %v", round, c.name, got, c.set)
			}
			if second.GetResponseHeaders().GetResponse() != nil {
				t.Fatalf("round %d, %s: the response phase changed something: %v", round, c.name, second)
			}
		}
	}
}
