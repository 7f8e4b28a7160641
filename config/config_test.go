package config

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	write(t, dir, "keys/primary", "file-key\n")
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
	// Envoy's default message_timeout, and half of it for a token wait.
	if c.GRPC.MessageTimeout.String() != "200ms" || c.GRPC.TokenWait().String() != "100ms" {
		t.Errorf("grpc.messageTimeout = %v, token wait %v; want 200ms and 100ms", c.GRPC.MessageTimeout, c.GRPC.TokenWait())
	}
	p, ok := c.Project("p1")
	if !ok {
		t.Fatal("project p1 missing")
	}
	for key, want := range map[string]bool{"hashed-key": true, "file-key": true, "": false, "file-key\n": false, "other": false} {
		if got := p.Keys.Check(key); got != want {
			t.Errorf("Check(%q) = %v, want %v", key, got, want)
		}
	}
	for _, tc := range []struct {
		project, key string
		want         bool
	}{
		{"p1", "hashed-key", true},
		{"p1", "file-key", true},
		{"p1", "other", false},
		{"p1", "", false},
		{"no-such-project", "hashed-key", false},
		{"no-such-project", "", false},
		{"", "file-key", false},
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
			write(t, dir, "keys/primary", "file-key\n")
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
	f := write(t, dir, "key", "old-key")
	k := newKeyRing(nil, []string{f})
	if !k.Check("old-key") {
		t.Fatal("old key rejected")
	}
	// Kubernetes swaps the file; a new inode and size mark the change even
	// within the same mtime granularity.
	tmp := write(t, dir, "key.new", "new-key-longer")
	if err := os.Rename(tmp, f); err != nil {
		t.Fatal(err)
	}
	if !k.Refresh() {
		t.Fatal("Refresh saw no change")
	}
	if k.Check("old-key") || !k.Check("new-key-longer") {
		t.Fatal("rotation not applied")
	}
	// A file that disappears mid-rotation keeps the last key.
	os.Remove(f)
	k.Refresh()
	if !k.Check("new-key-longer") {
		t.Fatal("key lost while its file was missing")
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
