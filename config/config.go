package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ampproxy/ampproxy/catalog"
)

// Config is ampproxy.yaml as DESIGN §4 fixes it, with relative paths made
// absolute and every referenced file loaded.
type Config struct {
	GRPC     GRPC       `yaml:"grpc"`
	Admin    Admin      `yaml:"admin"`
	Storage  Storage    `yaml:"storage"`
	Catalog  Catalog    `yaml:"catalog"`
	Throttle Throttle   `yaml:"throttle"`
	Shutdown Shutdown   `yaml:"shutdown"`
	Log      Log        `yaml:"log"`
	Projects []*Project `yaml:"projects"`

	// Path is the absolute path of the file the config was read from.
	Path string `yaml:"-"`
	// Providers is the embedded catalog with the override file applied.
	Providers *catalog.Catalog `yaml:"-"`

	byID map[string]*Project
}

// GRPC is the ext_proc listener.
type GRPC struct {
	// Listen is host:port or unix:///absolute/path.sock.
	Listen string `yaml:"listen"`
	// MessageTimeout is the message_timeout of Envoy's ext_proc filter
	// (DefaultMessageTimeout, Envoy's default, when absent): Envoy answers
	// 504 when an answer takes longer. ampproxy does not set it; it keeps
	// its own waiting within half of it, counted from when each message
	// arrives: a request whose OAuth2 token is being refreshed gets 503
	// with Retry-After by then, leaving the other half for the stream and
	// the scheduler. Change it together with Envoy's setting.
	MessageTimeout Duration `yaml:"messageTimeout"`
}

// Admin is the admin API, health and metrics listener.
type Admin struct {
	Listen string `yaml:"listen"`
	// Pprof serves net/http/pprof under /debug/pprof/ on the admin
	// listener. Off by default: profiles reveal internals.
	Pprof bool `yaml:"pprof"`
}

// Storage locates the bbolt file and its encryption key.
type Storage struct {
	Path              string `yaml:"path"`
	EncryptionKeyFile string `yaml:"encryptionKeyFile"`
	CreateKey         bool   `yaml:"createKey"`
}

// Catalog points at an optional provider override file.
type Catalog struct {
	Overrides string `yaml:"overrides"`
}

// Throttle holds the lockout window bounds of DESIGN §3.
type Throttle struct {
	DefaultWindow Duration `yaml:"defaultWindow"`
	MaxWindow     Duration `yaml:"maxWindow"`
}

// Shutdown bounds what happens after SIGTERM.
type Shutdown struct {
	// DrainTimeout is how long open ext_proc streams may finish after
	// SIGTERM before they are cut; default DefaultDrainTimeout. A pod's
	// terminationGracePeriodSeconds must exceed it, or the kubelet kills
	// ampproxy while streams are still draining.
	DrainTimeout Duration `yaml:"drainTimeout"`
}

// Log sets the log format and level.
type Log struct {
	Format string `yaml:"format"` // json (default) or text
	Level  string `yaml:"level"`  // debug, info (default), warn, error
}

// Project is one tenant: its API keys, manifest and OAuth2 apps.
type Project struct {
	ID           string                 `yaml:"id"`
	APIKeys      []APIKeyRef            `yaml:"apiKeys"`
	Manifest     string                 `yaml:"manifest"`
	ProviderApps map[string]ProviderApp `yaml:"providerApps"`

	// Integrations is the loaded manifest.
	Integrations *Manifest `yaml:"-"`
	// Keys verifies the project's API keys.
	Keys *KeyRing `yaml:"-"`
}

// APIKeyRef gives one API key either by its SHA-256 or as a file holding
// the key itself.
type APIKeyRef struct {
	SHA256 string `yaml:"sha256"`
	File   string `yaml:"file"`
}

// ProviderApp is a project's OAuth2 client at one provider.
type ProviderApp struct {
	ClientID         string   `yaml:"clientID"`
	ClientSecretFile string   `yaml:"clientSecretFile"`
	Scopes           []string `yaml:"scopes"`
	RedirectURL      string   `yaml:"redirectURL"`
}

// Duration is a time.Duration written as "60s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses Go duration syntax.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		// A TypeError lets the decoder carry on and report the other
		// problems of the file too.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration such as 60s or 24h", n.Line, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// String formats like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// Defaults that apply when a field is absent.
const (
	DefaultThrottleWindow = 60 * time.Second
	DefaultThrottleMax    = 24 * time.Hour
	DefaultDrainTimeout   = 20 * time.Second
	DefaultMessageTimeout = 200 * time.Millisecond
)

// AdminShutdownTimeout bounds how long serve waits, after the ext_proc
// drain, for the admin listener's requests to finish. With the token
// requests in flight that serve also waits for (each bounded by
// tokens.DefaultTokenTimeout), it is what a pod's grace period needs on
// top of shutdown.drainTimeout.
const AdminShutdownTimeout = 5 * time.Second

// minMessageTimeout keeps half of grpc.messageTimeout long enough for a
// token refresh on a nearby endpoint to finish within it.
const minMessageTimeout = 20 * time.Millisecond

// TokenWait is how long a request may wait for an OAuth2 token refresh,
// counted from when its request headers arrived: half of
// grpc.messageTimeout.
func (g GRPC) TokenWait() time.Duration { return time.Duration(g.MessageTimeout) / 2 }

// Project returns the project with the given ID.
func (c *Config) Project(id string) (*Project, bool) {
	p, ok := c.byID[id]
	return p, ok
}

// Load reads the config file, the catalog with its overrides, every
// project's manifest and key files, and returns every problem at once, each
// naming its file, line and field.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(data, abs)
}

func parse(data []byte, file string) (*Config, error) {
	c := &Config{Path: file}
	root, errs := decodeStrict(data, file, c)
	if root == nil && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	p := &problems{loc: locator{file: file, root: root}, errs: errs}
	dir := filepath.Dir(file)
	rel := func(s string) string {
		if s == "" || filepath.IsAbs(s) {
			return s
		}
		return filepath.Join(dir, s)
	}

	checkListen(p, "grpc.listen", c.GRPC.Listen, true)
	if c.GRPC.MessageTimeout == 0 {
		c.GRPC.MessageTimeout = Duration(DefaultMessageTimeout)
	}
	if time.Duration(c.GRPC.MessageTimeout) < minMessageTimeout {
		p.add("grpc.messageTimeout", "%s: must be at least %s (Envoy's ext_proc message_timeout; ampproxy waits at most half of it for a token refresh)",
			c.GRPC.MessageTimeout, minMessageTimeout)
	}
	checkListen(p, "admin.listen", c.Admin.Listen, false)
	if c.Storage.Path == "" {
		p.add("storage.path", "is required")
	}
	if c.Storage.EncryptionKeyFile == "" {
		p.add("storage.encryptionKeyFile", "is required")
	}
	c.Storage.Path = rel(c.Storage.Path)
	c.Storage.EncryptionKeyFile = rel(c.Storage.EncryptionKeyFile)
	if c.Storage.EncryptionKeyFile != "" && !c.Storage.CreateKey {
		if _, err := os.Stat(c.Storage.EncryptionKeyFile); err != nil {
			p.add("storage.encryptionKeyFile", "%v (set storage.createKey: true to create it)", err)
		}
	}

	if c.Throttle.DefaultWindow == 0 {
		c.Throttle.DefaultWindow = Duration(DefaultThrottleWindow)
	}
	if c.Throttle.MaxWindow == 0 {
		c.Throttle.MaxWindow = Duration(DefaultThrottleMax)
	}
	if c.Throttle.DefaultWindow < 0 {
		p.add("throttle.defaultWindow", "must be positive")
	}
	if c.Throttle.MaxWindow < c.Throttle.DefaultWindow {
		p.add("throttle.maxWindow", "must not be shorter than throttle.defaultWindow")
	}
	if c.Shutdown.DrainTimeout == 0 {
		c.Shutdown.DrainTimeout = Duration(DefaultDrainTimeout)
	}
	if c.Shutdown.DrainTimeout < 0 {
		p.add("shutdown.drainTimeout", "must be positive")
	}
	switch c.Log.Format {
	case "", "json", "text":
	default:
		p.add("log.format", "%q: want json or text", c.Log.Format)
	}
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		p.add("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}

	c.Catalog.Overrides = rel(c.Catalog.Overrides)
	cat, err := catalog.Load(c.Catalog.Overrides)
	if err != nil {
		for _, e := range unjoin(err) {
			p.errs = append(p.errs, fmt.Errorf("%s: %w", p.loc.at("catalog.overrides"), e))
		}
	}
	c.Providers = cat
	provs := lookupIn(cat, c.Catalog.Overrides)

	if len(c.Projects) == 0 {
		p.add("projects", "at least one project is required")
	}
	c.byID = make(map[string]*Project, len(c.Projects))
	for i, pr := range c.Projects {
		at := fmt.Sprintf("projects[%d]", i)
		if pr == nil {
			p.add(at, "is empty")
			continue
		}
		if pr.ID == "" {
			p.add(at+".id", "is required")
		} else if strings.ContainsAny(pr.ID, "/?#% \t\r\n") {
			p.add(at+".id", "%q must not hold '/', '?', '#', '%%' or whitespace", pr.ID)
		} else if _, dup := c.byID[pr.ID]; dup {
			p.add(at+".id", "%q is declared twice", pr.ID)
		}
		c.byID[pr.ID] = pr

		if len(pr.APIKeys) == 0 {
			p.add(at+".apiKeys", "at least one API key is required")
		}
		var hashes [][32]byte
		var files []string
		for j, k := range pr.APIKeys {
			kat := fmt.Sprintf("%s.apiKeys[%d]", at, j)
			switch {
			case (k.SHA256 == "") == (k.File == ""):
				p.add(kat, "needs exactly one of sha256 and file")
			case k.SHA256 != "":
				b, err := hex.DecodeString(k.SHA256)
				if err != nil || len(b) != 32 {
					p.add(kat+".sha256", "must be 64 hex digits (the SHA-256 of the key; `ampproxy keys new` prints one)")
					continue
				}
				hashes = append(hashes, [32]byte(b))
			default:
				f := rel(k.File)
				if _, err := readKeyFile(f); err != nil {
					p.add(kat+".file", "project %s: %v", pr.ID, err)
					continue
				}
				files = append(files, f)
			}
		}
		pr.Keys = newKeyRing(hashes, files)

		if pr.Manifest == "" {
			p.add(at+".manifest", "is required")
		} else {
			pr.Manifest = rel(pr.Manifest)
			m, errs := loadManifest(pr.Manifest, provs.known())
			if len(errs) > 0 {
				for _, e := range errs {
					p.errs = append(p.errs, fmt.Errorf("%s: %w", p.loc.at(at+".manifest"), e))
				}
			}
			pr.Integrations = m
		}

		for name, app := range pr.ProviderApps {
			aat := fmt.Sprintf("%s.providerApps.%s", at, name)
			if provs.ok() {
				prov, ok := provs.provider(name)
				switch {
				case !ok:
					p.add(aat, "%q is not in the provider catalog", name)
				case prov != nil && prov.AuthType != catalog.AuthOAuth2:
					p.add(aat, "provider %s does not use OAuth2", name)
				}
			}
			if app.ClientID == "" {
				p.add(aat+".clientID", "is required")
			}
			if app.ClientSecretFile != "" {
				app.ClientSecretFile = rel(app.ClientSecretFile)
				if _, err := os.Stat(app.ClientSecretFile); err != nil {
					p.add(aat+".clientSecretFile", "%v", err)
				}
			}
			if app.RedirectURL != "" {
				if u, err := url.Parse(app.RedirectURL); err != nil || !u.IsAbs() || u.Host == "" {
					p.add(aat+".redirectURL", "%q must be an absolute URL", app.RedirectURL)
				}
			}
			pr.ProviderApps[name] = app
		}
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return c, nil
}

func checkListen(p *problems, path, v string, unixOK bool) {
	if v == "" {
		p.add(path, "is required")
		return
	}
	if rest, ok := strings.CutPrefix(v, "unix://"); ok {
		if !unixOK {
			p.add(path, "%q: a unix socket is not supported here", v)
		} else if !filepath.IsAbs(rest) {
			p.add(path, "%q: the socket path must be absolute (unix:///run/ampproxy/extproc.sock)", v)
		}
		return
	}
	if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
		p.add(path, "%q: want host:port%s", v, map[bool]string{true: " or unix:///path.sock"}[unixOK])
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// providerLookup answers the cross-checks of manifests and providerApps
// against the catalog. When the override file fails to load (its own
// errors are reported), they still run against the embedded catalog, so
// that `ampproxy check` does not hide the mistakes behind it; a name the
// broken override declares can then be neither confirmed nor refused, and
// passes unchecked.
type providerLookup struct {
	cat      *catalog.Catalog
	override map[string]bool // names in an override that did not load
}

func lookupIn(cat *catalog.Catalog, overridePath string) providerLookup {
	if cat != nil {
		return providerLookup{cat: cat}
	}
	embedded, err := catalog.Load("")
	if err != nil {
		return providerLookup{}
	}
	return providerLookup{cat: embedded, override: overrideNames(overridePath)}
}

// ok reports whether there is a catalog to check against at all.
func (l providerLookup) ok() bool { return l.cat != nil }

// provider returns the named provider; ok with a nil provider means a
// name of the broken override, whose entry is unknown.
func (l providerLookup) provider(name string) (*catalog.Provider, bool) {
	if l.override[name] {
		return nil, true
	}
	return l.cat.Provider(name)
}

// known is provider for the manifest check, nil when there is no catalog.
func (l providerLookup) known() func(string) bool {
	if !l.ok() {
		return nil
	}
	return func(name string) bool {
		_, ok := l.provider(name)
		return ok
	}
}

// overrideNames reads the provider names of an override file that failed
// to load, as far as its YAML can be read.
func overrideNames(path string) map[string]bool {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var f struct {
		Providers []struct {
			Name string `yaml:"name"`
		} `yaml:"providers"`
	}
	// A type error elsewhere in the file still leaves the names decoded.
	_ = yaml.Unmarshal(data, &f)
	names := make(map[string]bool, len(f.Providers))
	for _, p := range f.Providers {
		names[p.Name] = true
	}
	return names
}
