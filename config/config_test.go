package config

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Keys given by file must be MinAPIKeyLen bytes or more.
const (
	fileKey = "amp_file-key-0123456789abcdefghijklmnop"
	oldKey  = "amp_old-key-0123456789abcdefghijklmnopq"
	newKey  = "amp_new-key-longer-0123456789abcdefghijklmnopq"
)

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

const goodManifest = `specVersion: 1.0.0
integrations:
  - name: sf-sync
    displayName: Salesforce sync
    provider: salesforce
    proxy: {enabled: true}
    read:
      objects: [{objectName: account}]
`

func goodConfig(keyHash string) string {
	return `grpc:
  listen: unix:///tmp/ampproxy-test.sock
admin:
  listen: 127.0.0.1:0
storage:
  path: data/ampproxy.db
  encryptionKeyFile: data/master.key
  createKey: true
throttle:
  defaultWindow: 30s
projects:
  - id: p1
    apiKeys:
      - sha256: ` + keyHash + `
      - file: keys/primary
    manifest: amp.yaml
    providerApps:
      salesforce:
        clientID: abc
        clientSecretFile: apps/sf
        scopes: [api]
        redirectURL: https://ampproxy.example.com/v1/oauth/callback
`
}

func TestLoadGood(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "amp.yaml", goodManifest)
	write(t, dir, "keys/primary", fileKey+"\n")
	write(t, dir, "apps/sf", "secret")
	cfgPath := write(t, dir, "ampproxy.yaml", goodConfig(hash("hashed-key")))
	c, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if c.Storage.Path != filepath.Join(dir, "data/ampproxy.db") {
		t.Errorf("storage.path not made relative to the config: %s", c.Storage.Path)
	}
	if c.Throttle.DefaultWindow.String() != "30s" || c.Throttle.MaxWindow.String() != "24h0m0s" {
		t.Errorf("throttle = %v/%v", c.Throttle.DefaultWindow, c.Throttle.MaxWindow)
	}
	if c.Shutdown.DrainTimeout != Duration(DefaultDrainTimeout) {
		t.Errorf("shutdown.drainTimeout = %v, want the default %v", c.Shutdown.DrainTimeout, DefaultDrainTimeout)
	}
	// Envoy's default message_timeout, and half of it for a token wait.
	if c.GRPC.MessageTimeout.String() != "200ms" || c.GRPC.TokenWait().String() != "100ms" {
		t.Errorf("grpc.messageTimeout = %v, token wait %v; want 200ms and 100ms", c.GRPC.MessageTimeout, c.GRPC.TokenWait())
	}
	p, ok := c.Project("p1")
	if !ok {
		t.Fatal("project p1 missing")
	}
	for key, want := range map[string]bool{"hashed-key": true, fileKey: true, "": false, fileKey + "\n": false, "other": false} {
		if got := p.Keys.Check(key); got != want {
			t.Errorf("Check(%q) = %v, want %v", key, got, want)
		}
	}
	for _, tc := range []struct {
		project, key string
		want         bool
	}{
		{"p1", "hashed-key", true},
		{"p1", fileKey, true},
		{"p1", "other", false},
		{"p1", "", false},
		{"no-such-project", "hashed-key", false},
		{"no-such-project", "", false},
		{"", fileKey, false},
	} {
		got, ok := c.Authenticate(tc.project, tc.key)
		if ok != tc.want || (ok && got != p) || (!ok && got != nil) {
			t.Errorf("Authenticate(%q, %q) = %v, %v; want %v", tc.project, tc.key, got, ok, tc.want)
		}
	}
	in, ok := p.Integrations.Integration("sf-sync")
	if !ok || !in.Proxy.Enabled || in.Provider != "salesforce" {
		t.Errorf("integration = %+v", in)
	}
	if got := p.ProviderApps["salesforce"].ClientSecretFile; got != filepath.Join(dir, "apps/sf") {
		t.Errorf("clientSecretFile = %s", got)
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "amp.yaml", `specVersion: 2.0.0
integrations:
  - name: Bad Name
    provider: noSuchProvider
  - name: ok
    provider: salesforce
    colour: red
`)
	cfgPath := write(t, dir, "ampproxy.yaml", `grpc:
  listen: unix://relative.sock
  messageTimeout: 5ms
admin:
  listen: nonsense
storage:
  path: ""
  encryptionKeyFile: missing.key
throttle:
  defaultWindow: soon
shutdown:
  drainTimeout: -5s
bogus: 1
projects:
  - id: p1
    apiKeys:
      - sha256: abc
      - file: keys/none
      - {}
    manifest: amp.yaml
    providerApps:
      notAProvider: {clientID: x}
      slack: {clientSecretFile: nope}
  - id: p1
    apiKeys: []
`)
	_, err := Load(cfgPath)
	if err == nil {
		t.Fatal("want errors")
	}
	msg := err.Error()
	for _, want := range []string{
		"ampproxy.yaml:2: grpc.listen",
		"ampproxy.yaml:3: grpc.messageTimeout: 5ms: must be at least 20ms",
		"ampproxy.yaml:5: admin.listen",
		"storage.path: is required",
		"storage.encryptionKeyFile",
		"createKey: true",
		`"soon" is not a duration`,
		"ampproxy.yaml:12: shutdown.drainTimeout: must be positive",
		"bogus",
		"projects[0].apiKeys[0].sha256: must be 64 hex digits",
		"projects[0].apiKeys[1].file",
		"projects[0].apiKeys[2]: needs exactly one of sha256 and file",
		"projects[0].providerApps.notAProvider",
		"projects[0].providerApps.slack.clientID: is required",
		"projects[0].providerApps.slack.clientSecretFile",
		"projects[1].id: \"p1\" is declared twice",
		"projects[1].apiKeys: at least one API key",
		"projects[1].manifest: is required",
		"amp.yaml:1: specVersion",
		"integrations[0].name",
		`"noSuchProvider" is not in the provider catalog`,
		"colour",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("errors lack %q", want)
		}
	}
	if t.Failed() {
		t.Log(msg)
	}
}

// TestBrokenOverrideStillChecksManifests: when the catalog override fails
// to load, its own errors are reported and the manifests and providerApps
// are still checked, against the embedded catalog, rather than skipped. A
// provider the broken override declares is not reported as unknown.
func TestBrokenOverrideStillChecksManifests(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "providers.local.yaml", `providers:
  - name: myApi
    baseURL: https://{{.tenant}}.example.com
    authType: apiKey
`)
	write(t, dir, "amp.yaml", `specVersion: 1.0.0
integrations:
  - {name: a, provider: noSuchProvider}
  - {name: b, provider: myApi}
  - {name: c, provider: salesforce}
`)
	cfgPath := write(t, dir, "ampproxy.yaml", `grpc: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
storage: {path: db, encryptionKeyFile: key, createKey: true}
catalog: {overrides: providers.local.yaml}
projects:
  - id: p1
    apiKeys: [{sha256: `+hash("k")+`}]
    manifest: amp.yaml
    providerApps:
      notAProvider: {clientID: x}
      accuLynx: {clientID: x}
      myApi: {clientID: x}
      salesforce: {clientID: x}
`)
	_, err := Load(cfgPath)
	if err == nil {
		t.Fatal("want errors")
	}
	msg := err.Error()
	for _, want := range []string{
		"providers.local.yaml",
		"apiKey: is required",
		`integrations[0].provider: "noSuchProvider" is not in the provider catalog`,
		`providerApps.notAProvider: "notAProvider" is not in the provider catalog`,
		"providerApps.accuLynx: provider accuLynx does not use OAuth2",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("errors lack %q", want)
		}
	}
	for _, bad := range []string{`"myApi" is not in`, "integrations[1]", "integrations[2]", "providerApps.myApi", "providerApps.salesforce"} {
		if strings.Contains(msg, bad) {
			t.Errorf("errors hold %q", bad)
		}
	}
	if t.Failed() {
		t.Log(msg)
	}
}

// TestAPIKeyFileRules: a key file left with a placeholder, or holding a key
// too short to be a secret, stops the config from loading, with an error
// naming the project and the file but not the key.
func TestAPIKeyFileRules(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          string // "" means the key is accepted
	}{
		{"placeholder", "REPLACE_ME", "placeholder"},
		{"placeholder in lower case with newline", "replace_me\n", "placeholder"},
		{"long placeholder", "REPLACE_ME_with_the_output_of_ampproxy_keys_new", "placeholder"},
		{"changeme", "ChangeMe", "placeholder"},
		{"short", "hunter2-hunter2-hunter2", "at least 32"},
		{"31 bytes and whitespace", "  " + strings.Repeat("k", 31) + "\n", "31 bytes"},
		{"empty", " \n", "empty"},
		{"32 bytes", strings.Repeat("k", 32), ""},
		{"keys new", "amp_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "amp.yaml", goodManifest)
			keyFile := write(t, dir, "keys/primary", tc.content)
			write(t, dir, "apps/sf", "secret")
			_, err := Load(write(t, dir, "ampproxy.yaml", goodConfig(hash("hashed-key"))))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("loaded")
			}
			msg := err.Error()
			for _, w := range []string{"projects[0].apiKeys[1].file", "project p1", keyFile, tc.want} {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			if k := strings.TrimSpace(tc.content); len(k) > 10 && strings.Contains(msg, k) {
				t.Errorf("error %q holds the key", msg)
			}
		})
	}
}

// TestMessageTimeout: grpc.messageTimeout mirrors Envoy's setting, and the
// token wait is half of it.
func TestMessageTimeout(t *testing.T) {
	for _, tc := range []struct {
		value, want, wait, err string
	}{
		{"1s", "1s", "500ms", ""},
		{"20ms", "20ms", "10ms", ""},
		{"19ms", "", "", "grpc.messageTimeout: 19ms: must be at least 20ms"},
		{"-1s", "", "", "grpc.messageTimeout: -1s: must be at least 20ms"},
		{"soon", "", "", `"soon" is not a duration`},
	} {
		t.Run(tc.value, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "amp.yaml", goodManifest)
			write(t, dir, "keys/primary", fileKey+"\n")
			write(t, dir, "apps/sf", "secret")
			body := strings.Replace(goodConfig(hash("k")), "admin:", "  messageTimeout: "+tc.value+"\nadmin:", 1)
			c, err := Load(write(t, dir, "ampproxy.yaml", body))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Load = %v; want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.GRPC.MessageTimeout.String() != tc.want || c.GRPC.TokenWait().String() != tc.wait {
				t.Errorf("messageTimeout %s, token wait %s; want %s and %s", c.GRPC.MessageTimeout, c.GRPC.TokenWait(), tc.want, tc.wait)
			}
		})
	}
}

func TestKeyFileRotation(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "key", oldKey)
	k := newKeyRing(nil, []string{f})
	if !k.Check(oldKey) {
		t.Fatal("old key rejected")
	}
	// Kubernetes swaps the file; a new inode and size mark the change even
	// within the same mtime granularity.
	tmp := write(t, dir, "key.new", newKey)
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
	if changed, problems := k.Refresh(); !changed || problems != nil {
		t.Fatalf("Refresh = %v, %v; want a change and no problem", changed, problems)
	}
	if k.Check(oldKey) || !k.Check(newKey) {
		t.Fatal("rotation not applied")
	}
	// A file that disappears mid-rotation keeps the last key, and says so
	// once, not on every Refresh while it lasts.
	os.Remove(f)
	changed, problems := k.Refresh()
	if changed || len(problems) != 1 || !strings.Contains(problems[0].Error(), f) {
		t.Fatalf("Refresh of a missing file = %v, %v; want one problem naming %s", changed, problems, f)
	}
	if !k.Check(newKey) {
		t.Fatal("key lost while its file was missing")
	}
	if _, problems := k.Refresh(); problems != nil {
		t.Fatalf("the same problem reported again: %v", problems)
	}
}

// TestKeyFileTurnsBad: a key file that turns empty, short or a placeholder
// at a rotation keeps the previous key in force; each new problem is
// reported once, without the key, and a good key afterwards is taken.
func TestKeyFileTurnsBad(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "key", oldKey)
	k := newKeyRing(nil, []string{f})
	swap := func(content string) {
		t.Helper()
		tmp := write(t, dir, "key.new", content)
		if err := os.Rename(tmp, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ content, want string }{
		{"", "empty"},
		{"short-but-not-empty", "at least 32"},
		{"REPLACE_ME", "placeholder"},
	} {
		swap(tc.content)
		changed, problems := k.Refresh()
		if changed || len(problems) != 1 {
			t.Fatalf("%q: Refresh = %v, %v; want no change and one problem", tc.content, changed, problems)
		}
		msg := problems[0].Error()
		if !strings.Contains(msg, f) || !strings.Contains(msg, tc.want) {
			t.Errorf("%q: problem %q lacks the file or %q", tc.content, msg, tc.want)
		}
		if tc.content != "" && strings.Contains(msg, tc.content) && tc.content != "REPLACE_ME" {
			t.Errorf("problem %q holds the key", msg)
		}
		if !k.Check(oldKey) {
			t.Fatalf("%q: the previous key was dropped", tc.content)
		}
		if _, again := k.Refresh(); again != nil {
			t.Fatalf("%q: reported again: %v", tc.content, again)
		}
	}
	swap(newKey)
	if changed, problems := k.Refresh(); !changed || problems != nil || !k.Check(newKey) || k.Check(oldKey) {
		t.Fatalf("good key after bad ones: Refresh = %v, %v", changed, problems)
	}
}

func TestManifestDefaultsProxyOff(t *testing.T) {
	m, errs := parseManifest([]byte("specVersion: 1.0.0\nintegrations: [{name: a, provider: salesforce}]\n"), "amp.yaml", nil)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if in, _ := m.Integration("a"); in.Proxy.Enabled {
		t.Fatal("proxy.enabled must default to false")
	}
}

func TestDrainTimeout(t *testing.T) {
	for _, tc := range []struct {
		yaml string // the shutdown section, or none
		want time.Duration
		err  string
	}{
		{"", DefaultDrainTimeout, ""},
		{"shutdown: {drainTimeout: 7s}\n", 7 * time.Second, ""},
		{"shutdown: {drainTimeout: 0s}\n", DefaultDrainTimeout, ""},
		{"shutdown: {drainTimeout: -1s}\n", 0, "shutdown.drainTimeout: must be positive"},
		{"shutdown: {drainTimeout: later}\n", 0, `"later" is not a duration`},
		{"shutdown: {drain: 5s}\n", 0, "drain"},
	} {
		dir := t.TempDir()
		write(t, dir, "amp.yaml", goodManifest)
		write(t, dir, "keys/primary", fileKey+"\n")
		write(t, dir, "apps/sf", "secret")
		c, err := Load(write(t, dir, "ampproxy.yaml", goodConfig(hash("k"))+tc.yaml))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.err == "" && time.Duration(c.Shutdown.DrainTimeout) != tc.want:
			t.Errorf("%q: drainTimeout %v, want %v", tc.yaml, c.Shutdown.DrainTimeout, tc.want)
		}
	}
}
