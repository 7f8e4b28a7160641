package extproc

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/encoding/prototext"
)

// mutation is a request-phase answer flattened for assertions.
type mutation struct {
	set    map[string]string
	remove []string
	clear  bool
}

func flatten(t testing.TB, r *extprocv3.ProcessingResponse) mutation {
	t.Helper()
	rh := r.GetRequestHeaders()
	if rh == nil {
		t.Fatalf("want a request-headers answer, got %s", prototext.Format(r))
	}
	cr := rh.GetResponse()
	m := mutation{set: map[string]string{}, clear: cr.GetClearRouteCache()}
	for _, o := range cr.GetHeaderMutation().GetSetHeaders() {
		// DESIGN §6: raw_value only, append unset.
		if o.GetHeader().GetValue() != "" {
			t.Errorf("header %s set through value, which Envoy ignores", o.GetHeader().GetKey())
		}
		if o.Append != nil {
			t.Errorf("header %s has append set", o.GetHeader().GetKey())
		}
		if o.AppendAction != 0 {
			t.Errorf("header %s has append_action set", o.GetHeader().GetKey())
		}
		if _, dup := m.set[o.GetHeader().GetKey()]; dup {
			t.Errorf("header %s set twice", o.GetHeader().GetKey())
		}
		m.set[o.GetHeader().GetKey()] = string(o.GetHeader().GetRawValue())
	}
	m.remove = cr.GetHeaderMutation().GetRemoveHeaders()
	if len(m.set)+len(m.remove) > 0 && !m.clear {
		t.Error("a mutation without clear_route_cache keeps the caller's route")
	}
	return m
}

// apply applies a mutation to the request headers as Envoy does (removals,
// then sets) and returns what the provider would receive.
func apply(req *corev3.HeaderMap, m mutation) map[string]string {
	out := map[string]string{}
	for _, h := range req.Headers {
		out[h.Key] = string(h.RawValue)
	}
	for _, k := range m.remove {
		delete(out, k)
	}
	for k, v := range m.set {
		out[k] = v
	}
	return out
}

func TestForwarding(t *testing.T) {
	h := newHarness(t, newFixture())
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("user:"+basicPass))
	cases := []struct {
		name string
		path string
		hdrs []string
		want map[string]string // headers the provider must receive
		gone []string          // headers it must not receive
	}{
		{"api key header with prefix", "/v1/items?limit=5", proxyHeaders("key-int", "g1"),
			map[string]string{":authority": "api.key.test", ":path": "/v1/items?limit=5", "x-api-key": "Token " + providerKey}, nil},
		{"api key in query merged and replacing the caller's", "/items?api_key=caller&q=a%20b", proxyHeaders("query-int", "g1"),
			map[string]string{":authority": "api.query.test", ":path": "/v2/items?q=a%20b&api_key=" + providerKey}, []string{"x-api-key"}},
		{"api key in query removes the caller's authorization", "/items", proxyHeaders("query-int", "g1", "authorization", "Bearer caller-own"),
			map[string]string{":authority": "api.query.test", ":path": "/v2/items?api_key=" + providerKey}, []string{"authorization", "x-api-key"}},
		{"basic", "/x", proxyHeaders("basic-int", "g1", "authorization", "Bearer caller-own"),
			map[string]string{":authority": "api.basic.test", "authorization": basic}, []string{"x-api-key"}},
		{"oauth2 bearer on templated host", "/services/data/v56.0/sobjects/Account", proxyHeaders("oauth-int", "g1"),
			map[string]string{":authority": "acme.oauth.test", "authorization": "Bearer " + accessToken, ":path": "/services/data/v56.0/sobjects/Account"}, []string{"x-api-key"}},
		{"oauth2 token in the catalog's header, caller authorization removed", "/admin/api/shop.json", proxyHeaders("tokenheader-int", "g1", "authorization", "Bearer caller-own"),
			map[string]string{":authority": "api.tokenheader.test", "x-access-token": accessToken}, []string{"authorization", "x-api-key"}},
		{"none keeps the caller's authorization", "/x", proxyHeaders("none-int", "g1", "authorization", "Bearer caller-own"),
			map[string]string{":authority": "api.none.test", "authorization": "Bearer caller-own"}, []string{"x-api-key"}},
		{"api key header replaces caller authorization", "/x", proxyHeaders("key-int", "g1", "authorization", "Bearer caller-own"),
			map[string]string{"x-api-key": "Token " + providerKey}, []string{"authorization"}},
		{"installation id wins over integration and group", "/x",
			proxyHeaders("key-int", "g1", "x-amp-installation-id", "i-key-g2"),
			map[string]string{"x-api-key": "Token second-key"}, nil},
		{"installation id alone", "/x",
			[]string{"x-amp-proxy-version", "1", "x-amp-project-id", "proj", "x-api-key", callerKey, "x-amp-installation-id", "i-basic"},
			map[string]string{":authority": "api.basic.test", "authorization": basic}, nil},
		{"throttle mode accepted", "/x", proxyHeaders("key-int", "g1", "x-amp-rate-limiter-mode", "throttle"),
			map[string]string{":authority": "api.key.test"}, nil},
		{"unknown x-amp headers removed too", "/x", proxyHeaders("key-int", "g1", "x-amp-future-thing", "1", "x-amp-", "2"),
			map[string]string{":authority": "api.key.test"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := envoyHeaders(c.path, c.hdrs...)
			first, second := h.exchange(req, "200")
			m := flatten(t, first)
			got := apply(req, m)
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			for _, k := range c.gone {
				if _, ok := got[k]; ok {
					t.Errorf("%s reached the provider", k)
				}
			}
			for k, v := range got {
				if strings.HasPrefix(k, "x-amp-") {
					t.Errorf("control header %s reached the provider", k)
				}
				if strings.Contains(v, callerKey) {
					t.Errorf("the caller's API key reached the provider in %s", k)
				}
			}
			if got := second.GetResponseHeaders(); got == nil {
				t.Errorf("response phase answered %s", prototext.Format(second))
			}
		})
	}
}

// problemOf checks the immediate response's shape and returns its body.
func problemOf(t *testing.T, r *extprocv3.ProcessingResponse) Problem {
	t.Helper()
	ir := r.GetImmediateResponse()
	if ir == nil {
		t.Fatalf("want an immediate response, got %s", prototext.Format(r))
	}
	ct := ""
	for _, o := range ir.GetHeaders().GetSetHeaders() {
		if o.GetHeader().GetKey() == "content-type" {
			ct = string(o.GetHeader().GetRawValue())
		}
	}
	if ct != "application/problem+json" {
		t.Errorf("content-type = %q", ct)
	}
	var raw map[string]any
	if err := json.Unmarshal(ir.Body, &raw); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, ir.Body)
	}
	for _, k := range []string{"type", "title", "status", "detail", "requestId"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("problem lacks %q: %s", k, ir.Body)
		}
	}
	if len(raw) != 5 {
		t.Errorf("problem has %d members, want 5: %s", len(raw), ir.Body)
	}
	var p Problem
	json.Unmarshal(ir.Body, &p)
	if int(ir.GetStatus().GetCode()) != p.Status {
		t.Errorf("HTTP status %d but body status %d", ir.GetStatus().GetCode(), p.Status)
	}
	if !strings.HasPrefix(p.Type, ProblemTypePrefix) || p.Title == "" || p.Detail == "" {
		t.Errorf("problem fields empty: %+v", p)
	}
	return p
}

func TestErrors(t *testing.T) {
	h := newHarness(t, newFixture())
	base := func(skip ...string) []string {
		kv := []string{"x-amp-proxy-version", "1", "x-amp-project-id", "proj", "x-api-key", callerKey,
			"x-amp-integration-name", "key-int", "x-amp-group-ref", "g1"}
		var out []string
		for i := 0; i < len(kv); i += 2 {
			if !slices.Contains(skip, kv[i]) {
				out = append(out, kv[i], kv[i+1])
			}
		}
		return out
	}
	long := strings.Repeat("a", 513)
	type errCase struct {
		name   string
		path   string
		hdrs   []string
		status int
		slug   string
		detail string // a word the detail must hold
	}
	cases := []errCase{
		{"missing version", "/x", base("x-amp-proxy-version"), 400, "missing-header", "x-amp-proxy-version"},
		{"wrong version", "/x", append(base("x-amp-proxy-version"), "x-amp-proxy-version", "2"), 400, "unsupported-version", "x-amp-proxy-version"},
		{"missing project", "/x", base("x-amp-project-id"), 400, "missing-header", "x-amp-project-id"},
		{"missing selector", "/x", base("x-amp-integration-name", "x-amp-group-ref"), 400, "missing-selector", "x-amp-installation-id"},
		{"integration without group", "/x", base("x-amp-group-ref"), 400, "missing-selector", "x-amp-group-ref"},
		{"group without integration", "/x", base("x-amp-integration-name"), 400, "missing-selector", "x-amp-integration-name"},
		{"bad rate limiter mode", "/x", append(base(), "x-amp-rate-limiter-mode", "queue"), 400, "invalid-header", "x-amp-rate-limiter-mode"},
		{"duplicate control header", "/x", append(base(), "x-amp-group-ref", "g2"), 400, "duplicate-header", "x-amp-group-ref"},
		{"CRLF in header", "/x", append(base("x-amp-group-ref"), "x-amp-group-ref", "g1\r\nx-evil: 1"), 400, "invalid-header", "x-amp-group-ref"},
		{"NUL in header", "/x", append(base("x-amp-group-ref"), "x-amp-group-ref", "g\x001"), 400, "invalid-header", "x-amp-group-ref"},
		{"oversized header", "/x", append(base("x-amp-group-ref"), "x-amp-group-ref", long), 400, "invalid-header", "512"},
		{"empty header", "/x", append(base("x-amp-group-ref"), "x-amp-group-ref", ""), 400, "invalid-header", "empty"},
		{"relative path", "relative", base(), 400, "invalid-path", "/"},
		{"dot segment in path", "/v1/../admin", base(), 400, "invalid-path", "segment"},
		{"encoded dot segment in path", "/v1/%2E%2e/admin", base(), 400, "invalid-path", "segment"},
		{"unknown project", "/x", append(base("x-amp-project-id"), "x-amp-project-id", "nope"), 401, "unauthenticated", "API key"},
		{"wrong key", "/x", append(base("x-api-key"), "x-api-key", "wrong"), 401, "unauthenticated", "API key"},
		{"other project's key", "/x", append(base("x-api-key"), "x-api-key", otherKey), 401, "unauthenticated", "API key"},
		{"missing key", "/x", base("x-api-key"), 401, "unauthenticated", "API key"},
		{"proxy disabled", "/x", append(base("x-amp-integration-name"), "x-amp-integration-name", "disabled-int"), 403, "proxy-disabled", "proxy.enabled"},
		{"provider not proxyable", "/x", append(base("x-amp-integration-name"), "x-amp-integration-name", "noproxy-int"), 403, "provider-not-proxyable", "testNoProxy"},
		{"installation not found", "/x", append(base("x-amp-group-ref"), "x-amp-group-ref", "nobody"), 404, "installation-not-found", "installation"},
		{"installation id of another project", "/x", append(base(), "x-amp-installation-id", "i-other"), 404, "installation-not-found", "installation"},
		{"unknown installation id", "/x", append(base(), "x-amp-installation-id", "i-nope"), 404, "installation-not-found", "installation"},
		{"bad credentials", "/x", append(base("x-amp-group-ref"), "x-amp-group-ref", "g-bad"), 424, "bad-credentials", "credentials"},
		{"expired token", "/x", append(base("x-amp-group-ref", "x-amp-integration-name"), "x-amp-integration-name", "oauth-int", "x-amp-group-ref", "g-expired"), 424, "token-expired", "expired"},
	}
	// A stored workspace the templated host cannot take is the
	// connection's fault, never a request to another host (DESIGN §4).
	for i, ws := range hostileWorkspaces {
		cases = append(cases, errCase{fmt.Sprintf("workspace %q", ws), "/services/data", proxyHeaders("oauth-int", fmt.Sprintf("g-ws-%d", i)), 424, "invalid-connection-metadata", "workspace"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			first, _ := h.exchange(envoyHeaders(c.path, c.hdrs...), "200")
			p := problemOf(t, first)
			if p.Status != c.status {
				t.Errorf("status = %d, want %d (%+v)", p.Status, c.status, p)
			}
			if p.Type != ProblemTypePrefix+c.slug {
				t.Errorf("type = %q, want slug %q", p.Type, c.slug)
			}
			if !strings.Contains(p.Detail, c.detail) {
				t.Errorf("detail %q does not mention %q", p.Detail, c.detail)
			}
			if p.RequestID != requestID {
				t.Errorf("requestId = %q", p.RequestID)
			}
			body := string(first.GetImmediateResponse().Body)
			for _, s := range append(secrets, "wrong", long) {
				if strings.Contains(body, s) {
					t.Errorf("problem body echoes input %q: %s", s, body)
				}
			}
		})
	}
}

// TestConnectionProviderMismatch: an installation whose connection is for
// another provider than its integration's is refused before the
// connection's credential is read, so the credential never reaches the
// integration's provider.
func TestConnectionProviderMismatch(t *testing.T) {
	h := newHarness(t, newFixture())
	first, _ := h.exchange(envoyHeaders("/x", proxyHeaders("key-int", "g-mismatch")...), "200")
	p := problemOf(t, first)
	if p.Status != 424 || p.Type != ProblemTypePrefix+"connection-provider-mismatch" {
		t.Fatalf("got %+v, want 424 connection-provider-mismatch", p)
	}
	for _, name := range []string{"testQuery", "testKey"} {
		if !strings.Contains(p.Detail, name) {
			t.Errorf("detail %q does not name provider %s", p.Detail, name)
		}
	}
	body := string(first.GetImmediateResponse().Body)
	if strings.Contains(body, mismatchKey) || strings.Contains(h.logs.String(), mismatchKey) {
		t.Error("the connection's credential was echoed")
	}
}

// TestUnknownProjectAndWrongKeyLookAlike: a caller cannot tell whether a
// project exists.
func TestUnknownProjectAndWrongKeyLookAlike(t *testing.T) {
	h := newHarness(t, newFixture())
	a, _ := h.exchange(envoyHeaders("/x", "x-amp-proxy-version", "1", "x-amp-project-id", "nope", "x-api-key", callerKey, "x-amp-installation-id", "i-key"), "200")
	b, _ := h.exchange(envoyHeaders("/x", "x-amp-proxy-version", "1", "x-amp-project-id", "proj", "x-api-key", "bad", "x-amp-installation-id", "i-key"), "200")
	if string(a.GetImmediateResponse().Body) != string(b.GetImmediateResponse().Body) {
		t.Fatalf("answers differ:\n%s\n%s", a.GetImmediateResponse().Body, b.GetImmediateResponse().Body)
	}
}

func TestNoSecretInLogs(t *testing.T) {
	h := newHarness(t, newFixture())
	// What the caller sends of its own: a key in the query, an
	// Authorization and a Cookie.
	const (
		queryKey   = "caller-query-key-6a7b8c"
		callerAuth = "Bearer caller-auth-9d8e7f"
		cookie     = "session=caller-cookie-1a2b3c"
	)
	own := []string{"authorization", callerAuth, "cookie", cookie}
	for _, integ := range []string{"key-int", "query-int", "basic-int", "oauth-int", "none-int"} {
		h.exchange(envoyHeaders("/x?api_key="+queryKey, proxyHeaders(integ, "g1", own...)...), "401")
		h.exchange(envoyHeaders("/x?api_key="+queryKey, proxyHeaders(integ, "nobody", own...)...), "200")
	}
	h.exchange(envoyHeaders("/x", append([]string{"x-amp-proxy-version", "1", "x-amp-project-id", "proj", "x-api-key", callerKey + "x", "x-amp-installation-id", "i-key"}, own...)...), "200")
	logs := h.logs.String()
	if !strings.Contains(logs, `"outcome":"forwarded"`) || !strings.Contains(logs, requestID) {
		t.Fatalf("expected request lines, got:\n%s", logs)
	}
	for _, s := range append(secrets, queryKey, callerAuth, cookie, "caller-auth-9d8e7f", "caller-cookie-1a2b3c") {
		if strings.Contains(logs, s) {
			t.Errorf("log holds secret %q", s)
		}
	}
}

func TestUnrequestedPhasesGetNeutralAnswers(t *testing.T) {
	h := newHarness(t, newFixture())
	ctx := t.Context()
	st, err := h.cli.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("x")}}})
	r, err := st.Recv()
	if err != nil || r.GetRequestBody() == nil {
		t.Fatalf("body answer = %v, %v", r, err)
	}
	st.CloseSend()
}

// TestConcurrentStreams: 200 streams at once, over four integrations, each
// get their own integration's host, credential and path, so that state
// shared between streams by mistake shows.
func TestConcurrentStreams(t *testing.T) {
	h := newHarness(t, newFixture())
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("user:"+basicPass))
	type want struct{ authority, credHeader, cred, pathSuffix string }
	integs := []string{"key-int", "query-int", "basic-int", "oauth-int"}
	wants := map[string]want{
		"key-int":   {"api.key.test", "x-api-key", "Token " + providerKey, ""},
		"query-int": {"api.query.test", "", "", "?api_key=" + providerKey},
		"basic-int": {"api.basic.test", "authorization", basic, ""},
		"oauth-int": {"acme.oauth.test", "authorization", "Bearer " + accessToken, ""},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200*4)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			integ := integs[i%len(integs)]
			w := wants[integ]
			path := fmt.Sprintf("/item/%d", i)
			req := envoyHeaders(path, proxyHeaders(integ, "g1")...)
			first, second := h.exchange(req, "200")
			rh := first.GetRequestHeaders()
			if rh == nil || second.GetResponseHeaders() == nil {
				errs <- fmt.Errorf("stream %d: %v", i, first)
				return
			}
			// What the provider receives: the caller's headers, less the
			// removals, with the sets applied.
			got := map[string]string{}
			for _, hv := range req.GetHeaders() {
				got[hv.Key] = string(hv.RawValue)
			}
			hm := rh.GetResponse().GetHeaderMutation()
			for _, k := range hm.GetRemoveHeaders() {
				delete(got, k)
			}
			for _, o := range hm.GetSetHeaders() {
				got[o.GetHeader().GetKey()] = string(o.GetHeader().GetRawValue())
			}
			wantPath := path + w.pathSuffix
			if integ == "query-int" {
				wantPath = "/v2" + wantPath
			}
			if got[":authority"] != w.authority {
				errs <- fmt.Errorf("stream %d (%s) went to %s, want %s", i, integ, got[":authority"], w.authority)
			}
			if got[":path"] != wantPath {
				errs <- fmt.Errorf("stream %d (%s) got path %s, want %s", i, integ, got[":path"], wantPath)
			}
			if w.credHeader != "" && got[w.credHeader] != w.cred {
				errs <- fmt.Errorf("stream %d (%s) got %s %q, want %q", i, integ, w.credHeader, got[w.credHeader], w.cred)
			}
			for _, k := range []string{"authorization", "x-api-key"} {
				if _, ok := got[k]; ok && k != w.credHeader {
					errs <- fmt.Errorf("stream %d (%s) carries %s, which its provider does not take", i, integ, k)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// FuzzParseHeaders: whatever Envoy hands over, parsing never panics, and a
// value it accepts is one Envoy could carry on to the provider.
func FuzzParseHeaders(f *testing.F) {
	f.Add("x-amp-group-ref", []byte("g1"), "x-api-key", []byte("k"))
	f.Add("x-amp-group-ref", []byte("g\r\n1"), "x-amp-x", []byte(""))
	f.Add("X-AMP-PROJECT-ID", []byte("p"), ":path", []byte("/\x00"))
	f.Fuzz(func(t *testing.T, k1 string, v1 []byte, k2 string, v2 []byte) {
		hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: k1, RawValue: v1}, {Key: k2, RawValue: v2}}}
		in, p := parseHeaders(hm, nil)
		if p != nil {
			return
		}
		for _, v := range []string{in.version, in.project, in.apiKey, in.installation, in.integration, in.groupRef, in.mode} {
			if strings.ContainsAny(v, "\r\n\x00") || len(v) > maxControlHeader {
				t.Fatalf("accepted %q", v)
			}
		}
		for _, k := range in.remove {
			if k != "x-api-key" && !strings.HasPrefix(k, "x-amp-") {
				t.Fatalf("would remove %q", k)
			}
		}
	})
}
