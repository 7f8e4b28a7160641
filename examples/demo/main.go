// Command demo is what `make demo` runs: ampproxy with its bbolt store in a
// temporary directory, the envoytest data plane, and the sample TLS
// provider, wired together and driven the way a platform team would drive
// them: keys from `ampproxy keys new`, connections and installations
// through `ampproxy admin`, then real HTTP calls through the data plane.
//
// Beyond valid and refused calls it shows the two things ampproxy does on
// its own: an OAuth2 connection stored with an access token that has
// already expired is refreshed on the first call (the provider's token
// endpoint sees one refresh grant, and the connection turns "working"), and
// throttle mode: a provider 429 gains X-Amp-Retry-After and X-Amp-Retryable,
// and the next throttle-mode request is answered 429 by ampproxy without
// reaching the provider.
//
// Every request and response is printed the way `curl -v` prints them,
// with secrets masked. It exits 0 only when every step worked, and stops
// every process it started and removes its directory, also on failure and
// on Ctrl-C.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ampproxy/ampproxy/envoy/envoytest"
	"github.com/ampproxy/ampproxy/examples/sampleprovider"
)

func main() {
	bin := flag.String("ampproxy", "bin/ampproxy", "path to the ampproxy binary")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	d := &demo{bin: *bin, out: os.Stdout}
	err := func() (err error) {
		// Clean up even if a step panics; the panic is then reported as
		// the demo's failure.
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
			d.cleanup()
		}()
		return d.run(ctx)
	}()
	stop()
	if err != nil {
		fmt.Fprintf(os.Stdout, "\n%sdemo failed: %v%s\n", red, err, reset)
		os.Exit(1)
	}
}

// Colours, only when standard output is a terminal.
var bold, green, red, dim, reset string

func init() {
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("NO_COLOR") == "" {
		bold, green, red, dim, reset = "\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m"
	}
}

type demo struct {
	bin      string
	out      io.Writer
	dir      string
	secrets  []string
	provider *sampleprovider.Server
	amp      *exec.Cmd
	ampDone  chan error
	plane    *envoytest.Proxy
	admin    string
	project  string
	apiKey   string
	steps    []step
}

type step struct {
	name string
	err  error
}

func (d *demo) section(title string) {
	fmt.Fprintf(d.out, "\n%s━━ %s%s\n", bold, title, reset)
}

// issuedToken matches the tokens and codes the sample provider mints,
// including those the demo never sees (the access token ampproxy gets by
// refreshing), so that they are masked too.
var issuedToken = regexp.MustCompile(`\b(spat|sprt|spac)_[A-Za-z0-9]+`)

// mask replaces every secret the demo knows with a short masked form.
func (d *demo) mask(s string) string {
	for _, sec := range d.secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, maskValue(sec))
		}
	}
	return issuedToken.ReplaceAllStringFunc(s, maskValue)
}

func maskValue(s string) string {
	if len(s) <= 8 {
		return "****"
	}
	return s[:4] + "****"
}

func (d *demo) check(name string, err error) error {
	d.steps = append(d.steps, step{name, err})
	if err != nil {
		fmt.Fprintf(d.out, "%s✗ %s: %v%s\n", red, name, err, reset)
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Fprintf(d.out, "%s✓ %s%s\n", green, name, reset)
	return nil
}

func (d *demo) run(ctx context.Context) error {
	if _, err := os.Stat(d.bin); err != nil {
		return fmt.Errorf("ampproxy binary: %w (run make build)", err)
	}
	dir, err := os.MkdirTemp("", "ampproxy-demo")
	if err != nil {
		return err
	}
	d.dir = dir

	d.section("1. A sample SaaS provider (local TLS API with OAuth2 and API keys)")
	provKey := randomSecret("sk_live_")
	clientSecret := randomSecret("cs_")
	p, err := sampleprovider.Start(sampleprovider.Options{
		Hosts:        []string{"api.sample.test", "*.sample.test"},
		APIKey:       provKey,
		ClientID:     "demo-client",
		ClientSecret: clientSecret,
		// The token endpoint is also reachable over plain HTTP on
		// loopback, which the catalog allows for token URLs, so that the
		// ampproxy process need not trust the demo's certificate authority.
		PlainHTTP: true,
	})
	if err != nil {
		return err
	}
	d.provider = p
	// An access token that has already expired, as a connection holds when
	// nobody used it for a while: the provider no longer accepts it.
	access, refresh := p.IssueTokens(time.Nanosecond)
	d.secrets = append(d.secrets, provKey, clientSecret, access, refresh)
	fmt.Fprintf(d.out, "listening on %s, certificate for api.sample.test and *.sample.test\n", p.Addr())
	fmt.Fprintf(d.out, "OAuth2 token endpoint also at http://%s/oauth/token (loopback)\n", p.HTTPAddr())

	d.section("2. ampproxy: config, a project API key, serve")
	var keyOut bytes.Buffer
	if err := d.cli(&keyOut, "keys", "new"); err != nil {
		return d.check("ampproxy keys new", err)
	}
	m := regexp.MustCompile(`api key: (\S+)\nsha256:  ([0-9a-f]{64})`).FindStringSubmatch(keyOut.String())
	if m == nil {
		return d.check("ampproxy keys new", errors.New("unexpected output"))
	}
	d.apiKey = m[1]
	d.secrets = append(d.secrets, d.apiKey)
	fmt.Fprint(d.out, d.mask(keyOut.String()))
	d.project = "demo"
	if err := d.writeConfig(m[2], "http://"+p.HTTPAddr()+"/oauth/token", clientSecret); err != nil {
		return err
	}
	if err := d.cli(d.out, "check", "--config", filepath.Join(d.dir, "ampproxy.yaml")); err != nil {
		return d.check("ampproxy check", err)
	}
	if err := d.check("ampproxy serve", d.startAmpproxy(ctx)); err != nil {
		return err
	}

	d.section("3. A data plane (envoytest, following Envoy's ext_proc rules)")
	plane, err := envoytest.Start(envoytest.Config{
		ExtProcAddr: "unix://" + filepath.Join(d.dir, "extproc.sock"),
		RootCAs:     p.CACertPool(),
		// Stands in for DNS: every *.sample.test name is the provider.
		Resolve: func(string) (string, error) { return p.Addr(), nil },
	}, "127.0.0.1:0")
	if err != nil {
		return d.check("envoytest", err)
	}
	d.plane = plane
	fmt.Fprintf(d.out, "callers send requests to %s\n", plane.URL())

	d.section("4. Connections and installations, through the admin API")
	tokenFile := filepath.Join(d.dir, "access-token")
	refreshFile := filepath.Join(d.dir, "refresh-token")
	keyFile := filepath.Join(d.dir, "provider-key")
	for f, v := range map[string]string{tokenFile: access, refreshFile: refresh, keyFile: provKey} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			return err
		}
	}
	expired := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	fmt.Fprintf(d.out, "%s$ ampproxy admin connections generate --provider sampleCRM --group-ref acme --consumer-ref alice --access-token @%s --refresh-token @%s --expires-at %s -o json%s\n",
		dim, tokenFile, refreshFile, expired, reset)
	var genOut bytes.Buffer
	err = d.cli(io.MultiWriter(d.out, &genOut), "admin", "connections", "generate", "--provider", "sampleCRM",
		"--group-ref", "acme", "--consumer-ref", "alice", "--access-token", "@"+tokenFile,
		"--refresh-token", "@"+refreshFile, "--expires-at", expired, "-o", "json")
	var crm struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err == nil {
		if jerr := json.Unmarshal(genOut.Bytes(), &crm); jerr != nil || crm.ID == "" {
			err = fmt.Errorf("unexpected output (%v)", jerr)
		}
	}
	if err := d.check("OAuth2 connection for group acme, access token expired a minute ago", err); err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"API-key connection with workspace acme-eu", []string{"admin", "connections", "generate", "--provider", "sampleTickets",
			"--group-ref", "acme", "--consumer-ref", "alice", "--workspace", "acme-eu", "--provider-key", "@" + keyFile}},
		{"install crm for acme", []string{"admin", "installations", "create", "--integration", "crm", "--group-ref", "acme"}},
		{"install tickets for acme", []string{"admin", "installations", "create", "--integration", "tickets", "--group-ref", "acme"}},
		{"install archive for acme (proxy not enabled)", []string{"admin", "installations", "create", "--integration", "archive", "--group-ref", "acme"}},
	} {
		fmt.Fprintf(d.out, "%s$ ampproxy %s%s\n", dim, strings.Join(c.args, " "), reset)
		if err := d.check(c.name, d.cli(d.out, c.args...)); err != nil {
			return err
		}
	}

	d.section("5. Calls through the data plane")
	calls := []struct {
		name     string
		method   string
		path     string
		headers  map[string]string
		body     string
		status   int
		verifies func(h http.Header, echo map[string]any) error
	}{
		{
			name: "GET contacts with the OAuth2 installation: ampproxy refreshes the expired token first", method: "GET", path: "/v1/contacts?limit=2",
			headers: d.proxyHeaders("crm"), status: 200,
			verifies: func(_ http.Header, e map[string]any) error {
				h, _ := e["headers"].(map[string]any)
				got, _ := h["authorization"].(string)
				if !strings.HasPrefix(got, "Bearer ") || got == "Bearer "+access {
					return errors.New("the provider did not receive a new bearer token")
				}
				return expectHeader(e, "authorization", got)
			},
		},
		{
			name: "POST a ticket with the API-key installation (templated host)", method: "POST", path: "/v1/tickets",
			headers: merge(d.proxyHeaders("tickets"), map[string]string{"content-type": "application/json"}),
			body:    `{"subject":"Printer on fire","priority":"high"}`, status: 200,
			verifies: func(_ http.Header, e map[string]any) error {
				if e["host"] != "acme-eu.sample.test" {
					return fmt.Errorf("provider saw host %v", e["host"])
				}
				return expectHeader(e, "x-api-key", provKey)
			},
		},
		{
			name: "wrong project API key is refused by ampproxy", method: "GET", path: "/v1/contacts",
			headers: merge(d.proxyHeaders("crm"), map[string]string{"x-api-key": "amp_not_the_key"}), status: 401,
		},
		{
			name: "integration without proxy.enabled is refused", method: "GET", path: "/v1/archive",
			headers: d.proxyHeaders("archive"), status: 403,
		},
	}
	for i, c := range calls {
		fmt.Fprintf(d.out, "\n%s%s%s\n", bold, c.name, reset)
		err := d.call(ctx, c.method, c.path, c.headers, c.body, c.status, c.verifies)
		if err := d.check(c.name, err); err != nil {
			return err
		}
		if i == 0 {
			if err := d.showRefresh(crm.ID); err != nil {
				return err
			}
		}
	}

	if err := d.throttle(ctx); err != nil {
		return err
	}

	// ampproxy buffers its log and writes it out every second and when it
	// stops; stopping it first also shows the graceful shutdown.
	d.section("Stopping ampproxy (SIGTERM): it drains its streams and exits 0")
	if err := d.check("ampproxy stopped cleanly", d.stopAmpproxy()); err != nil {
		return err
	}

	d.section("ampproxy's log: one line per proxied request and per token refresh, no secrets")
	log, _ := os.ReadFile(filepath.Join(d.dir, "ampproxy.log"))
	var refreshed, shortCircuited bool
	for _, line := range strings.Split(string(log), "\n") {
		isRefresh := strings.Contains(line, `msg="access token refreshed"`)
		if isRefresh || strings.Contains(line, "msg=request") {
			fmt.Fprintln(d.out, d.mask(line))
		}
		refreshed = refreshed || isRefresh
		shortCircuited = shortCircuited || strings.Contains(line, "outcome=short-circuited")
	}
	var logErr error
	if !refreshed || !shortCircuited {
		logErr = fmt.Errorf("refresh logged: %v, short-circuit logged: %v", refreshed, shortCircuited)
	}
	if err := d.check("the log shows the refresh and the short-circuited request", logErr); err != nil {
		return err
	}

	d.section("Summary")
	fmt.Fprintf(d.out, "%s%d steps, all passed.%s The provider saw %d API requests and %d refresh grant: the requests ampproxy refused or held back never left the data plane.\n",
		green, len(d.steps), reset, p.TotalHits(), p.TokenGrants("refresh_token"))
	return nil
}

// showRefresh proves the first OAuth2 call refreshed the token: the
// provider's token endpoint saw exactly one refresh grant, and the admin
// API now shows the connection working.
func (d *demo) showRefresh(connID string) error {
	n := d.provider.TokenGrants("refresh_token")
	fmt.Fprintf(d.out, "the sample provider's token endpoint saw %d refresh_token grant(s)\n", n)
	var err error
	if n != 1 {
		err = fmt.Errorf("%d refresh grants, want 1", n)
	}
	if err := d.check("exactly one refresh before the call went out", err); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "%s$ ampproxy admin connections get %s%s\n", dim, connID, reset)
	var out bytes.Buffer
	err = d.cli(io.MultiWriter(d.out, &out), "admin", "connections", "get", connID)
	if err == nil && !regexp.MustCompile(`\bworking\b`).Match(out.Bytes()) {
		err = errors.New("status is not working")
	}
	return d.check("the connection's status is now working", err)
}

// throttle shows throttle mode: the provider answers 429 with Retry-After;
// ampproxy adds X-Amp-Retry-After and X-Amp-Retryable, then answers the
// next throttle-mode request itself, which never reaches the provider.
func (d *demo) throttle(ctx context.Context) error {
	d.section("6. Throttle mode: a provider 429 locks the connection out")
	const path = "/v1/tickets"
	d.provider.SetRateLimit(path, http.StatusTooManyRequests, map[string]string{"Retry-After": "30"}, 1)
	fmt.Fprintf(d.out, "the sample provider will answer the next %s with 429 and Retry-After: 30\n", path)
	headers := merge(d.proxyHeaders("tickets"), map[string]string{"x-amp-rate-limiter-mode": "throttle"})
	ampHeaders := func(h http.Header) error {
		if _, err := time.Parse("Mon, 02 Jan 2006 15:04:05 UTC", h.Get("X-Amp-Retry-After")); err != nil {
			return fmt.Errorf("X-Amp-Retry-After %q: %v", h.Get("X-Amp-Retry-After"), err)
		}
		if h.Get("X-Amp-Retryable") != "true" {
			return fmt.Errorf("X-Amp-Retryable %q, want true", h.Get("X-Amp-Retryable"))
		}
		return nil
	}

	name := "the provider's 429 passes through, with X-Amp-Retry-After and X-Amp-Retryable added"
	fmt.Fprintf(d.out, "\n%s%s%s\n", bold, name, reset)
	err := d.call(ctx, "GET", path, headers, "", http.StatusTooManyRequests, func(h http.Header, e map[string]any) error {
		if e["error"] != "rate_limited" {
			return fmt.Errorf("body %v is not the provider's", e)
		}
		return ampHeaders(h)
	})
	if err := d.check(name, err); err != nil {
		return err
	}

	hits := d.provider.Hits(path)
	name = "the next throttle-mode request is answered 429 by ampproxy, not the provider"
	fmt.Fprintf(d.out, "\n%s%s%s\n", bold, name, reset)
	err = d.call(ctx, "GET", path, headers, "", http.StatusTooManyRequests, func(h http.Header, e map[string]any) error {
		if ct := h.Get("Content-Type"); ct != "application/problem+json" {
			return fmt.Errorf("content type %q, want application/problem+json", ct)
		}
		if h.Get("Retry-After") == "" {
			return errors.New("no Retry-After")
		}
		return ampHeaders(h)
	})
	if err == nil {
		fmt.Fprintf(d.out, "provider requests to %s: %d before, %d after\n", path, hits, d.provider.Hits(path))
		if after := d.provider.Hits(path); after != hits {
			err = fmt.Errorf("the provider's count moved from %d to %d", hits, after)
		}
	}
	return d.check(name, err)
}

// randomSecret makes a demo credential; it is random so that the masking
// is shown working on values nobody typed.
func randomSecret(prefix string) string {
	b := make([]byte, 18)
	rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func merge(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func expectHeader(e map[string]any, name, want string) error {
	h, _ := e["headers"].(map[string]any)
	if h[name] != want {
		return fmt.Errorf("provider did not receive the expected %s header", name)
	}
	for k := range h {
		if strings.HasPrefix(k, "x-amp-") {
			return fmt.Errorf("control header %s reached the provider", k)
		}
	}
	return nil
}

func (d *demo) proxyHeaders(integration string) map[string]string {
	return map[string]string{
		"x-amp-proxy-version":    "1",
		"x-amp-project-id":       d.project,
		"x-api-key":              d.apiKey,
		"x-amp-integration-name": integration,
		"x-amp-group-ref":        "acme",
	}
}

// call sends one request through the data plane and prints it like curl -v.
func (d *demo) call(ctx context.Context, method, path string, headers map[string]string, body string, status int, verify func(http.Header, map[string]any) error) error {
	req, err := http.NewRequestWithContext(ctx, method, d.plane.URL()+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	fmt.Fprintf(d.out, "%s> %s %s HTTP/1.1\n> Host: %s\n", dim, method, path, req.URL.Host)
	printHeaders(d.out, "> ", req.Header, d.mask)
	if body != "" {
		fmt.Fprintf(d.out, ">\n> %s\n", body)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprint(d.out, reset)
		return err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		fmt.Fprint(d.out, reset)
		return err
	}
	fmt.Fprintf(d.out, "< HTTP/1.1 %s\n", resp.Status)
	printHeaders(d.out, "< ", resp.Header, d.mask)
	fmt.Fprintf(d.out, "<\n%s%s\n", reset, d.mask(pretty(rb)))
	if resp.StatusCode != status {
		return fmt.Errorf("status %d, want %d", resp.StatusCode, status)
	}
	if verify != nil {
		var e map[string]any
		if err := json.Unmarshal(rb, &e); err != nil {
			return fmt.Errorf("answer: %w", err)
		}
		return verify(resp.Header, e)
	}
	return nil
}

func printHeaders(w io.Writer, prefix string, h http.Header, mask func(string) string) {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, v := range h[k] {
			fmt.Fprintf(w, "%s%s: %s\n", prefix, k, mask(v))
		}
	}
}

func pretty(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return string(out)
}

// cli runs the ampproxy binary with args, its output to w.
func (d *demo) cli(w io.Writer, args ...string) error {
	cmd := exec.Command(d.bin, args...)
	cmd.Env = append(os.Environ(),
		"AMPPROXY_SERVER=http://"+d.admin,
		"AMPPROXY_PROJECT="+d.project,
		"AMPPROXY_API_KEY="+d.apiKey,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Fprint(w, d.mask(out.String()))
	return err
}

const overrides = `providers:
  - name: sampleCRM
    displayName: Sample CRM (OAuth2)
    baseURL: https://api.sample.test
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: https://api.sample.test/oauth/authorize
      tokenURL: TOKEN_URL
      authStyle: inParams
    proxy: true
  - name: sampleTickets
    displayName: Sample Tickets (API key, one host per workspace)
    baseURL: https://{{.workspace}}.sample.test
    authType: apiKey
    apiKey: {header: {name: X-Api-Key}}
    metadata: [{name: workspace, displayName: Workspace}]
    proxy: true
`

const manifest = `specVersion: 1.0.0
integrations:
  - {name: crm, displayName: Sample CRM, provider: sampleCRM, proxy: {enabled: true}}
  - {name: tickets, displayName: Sample Tickets, provider: sampleTickets, proxy: {enabled: true}}
  - {name: archive, displayName: Ticket archive, provider: sampleTickets}
`

// writeConfig writes ampproxy.yaml, the manifest and the catalog override,
// with tokenURL for sampleCRM and the project's OAuth2 app for it, whose
// client secret is in a file beside the config.
func (d *demo) writeConfig(keySHA, tokenURL, clientSecret string) error {
	admin, err := freePort()
	if err != nil {
		return err
	}
	d.admin = admin
	cfg := fmt.Sprintf(`grpc:
  listen: unix://%s
admin:
  listen: %s
storage:
  path: data/ampproxy.db
  encryptionKeyFile: data/master.key
  createKey: true
catalog:
  overrides: providers.local.yaml
log:
  format: text
projects:
  - id: %s
    apiKeys:
      - sha256: %s
    manifest: amp.yaml
    providerApps:
      sampleCRM:
        clientID: demo-client
        clientSecretFile: client-secret
        redirectURL: http://%s/v1/oauth/callback
`, filepath.Join(d.dir, "extproc.sock"), admin, d.project, keySHA, admin)
	for name, body := range map[string]string{"ampproxy.yaml": cfg, "amp.yaml": manifest,
		"providers.local.yaml": strings.Replace(overrides, "TOKEN_URL", tokenURL, 1), "client-secret": clientSecret} {
		if err := os.WriteFile(filepath.Join(d.dir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	fmt.Fprintf(d.out, "%s$ cat %s%s\n%s", dim, filepath.Join(d.dir, "ampproxy.yaml"), reset, cfg)
	return nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (d *demo) startAmpproxy(ctx context.Context) error {
	logf, err := os.Create(filepath.Join(d.dir, "ampproxy.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(d.bin, "serve", "--config", filepath.Join(d.dir, "ampproxy.yaml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	d.amp = cmd
	d.ampDone = make(chan error, 1)
	go func() { d.ampDone <- cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + d.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				fmt.Fprintf(d.out, "ampproxy serving: ext_proc on %s, admin API on %s\n", filepath.Join(d.dir, "extproc.sock"), d.admin)
				return nil
			}
		}
		select {
		case err := <-d.ampDone:
			d.ampDone <- err
			log, _ := os.ReadFile(filepath.Join(d.dir, "ampproxy.log"))
			return fmt.Errorf("ampproxy exited (%v):\n%s", err, d.mask(string(log)))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("ampproxy did not become ready within 20s")
}

// stopAmpproxy sends ampproxy SIGTERM and waits for it to exit, which it
// must do with status 0 once its streams have drained.
func (d *demo) stopAmpproxy() error {
	cmd := d.amp
	d.amp = nil
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.ampDone:
		if err != nil {
			return fmt.Errorf("ampproxy exited: %v", err)
		}
		return nil
	case <-time.After(25 * time.Second):
		cmd.Process.Kill()
		<-d.ampDone
		return errors.New("ampproxy did not exit within 25s of SIGTERM")
	}
}

// cleanup stops everything the demo started and removes its directory.
func (d *demo) cleanup() {
	if d.plane != nil {
		d.plane.Close()
	}
	if d.amp != nil {
		d.amp.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.ampDone:
		case <-time.After(25 * time.Second):
			d.amp.Process.Kill()
			<-d.ampDone
		}
	}
	if d.provider != nil {
		d.provider.Close()
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}
