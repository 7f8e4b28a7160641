package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Log messages of the reload loop (cmd/ampproxy/serve.go).
const (
	msgReloaded = `"msg":"config reloaded"`
	msgRejected = `"msg":"config reload rejected; the running config stays in force"`
	msgRestart  = `"msg":"config reload: these settings change only on restart; their running values stay"`
)

// TestReload changes each file ampproxy watches while it serves and sends
// requests through the data plane: what a good change adds is forwarded
// (so the ext_proc server, not only the admin API, has the new config), a
// broken file is rejected with a log line naming it while the config in
// force keeps serving, and SIGHUP reloads a change the file poll cannot
// see.
func TestReload(t *testing.T) {
	e := newEnv(t, planeEnvoytest)
	f := e.setup()
	ctx := context.Background()
	reloads, rejects := 0, 0
	reloaded := func() {
		t.Helper()
		reloads++
		e.waitLog(msgReloaded, reloads)
	}
	rejected := func(names ...string) {
		t.Helper()
		rejects++
		line := e.waitLog(msgRejected, rejects)
		for _, n := range names {
			if !strings.Contains(line, n) {
				t.Errorf("rejection does not name %q: %s", n, line)
			}
		}
	}
	manifestV1 := manifest + workspaceIntegration

	// A manifest.
	{
		h := proxyHeaders("key2", "acme")
		if resp, body := e.do(call{path: "/v1/contacts", headers: h}); resp.StatusCode != 404 {
			t.Fatalf("before the reload: %d %s", resp.StatusCode, body)
		}
		e.replace("amp.yaml", manifestV1+"  - {name: key2, provider: sampleKey, proxy: {enabled: true}}\n")
		reloaded()
		if _, err := e.admin.CreateInstallation(ctx, "key2", "acme", f.keyConn.ID); err != nil {
			t.Fatal(err)
		}
		if got := e.forward(call{path: "/v1/contacts", headers: h}); got.Headers["x-api-key"] != providerAPIKey {
			t.Errorf("provider saw %+v", got.Headers)
		}

		e.replace("amp.yaml", manifestV1+"  - {name: Not Valid, provider: sampleKey}\n")
		rejected("amp.yaml", "integrations[")
		e.forward(call{path: "/v1/contacts", headers: h})
	}
	// Every later reload reads the manifest again; it must be good.
	manifestV2 := manifestV1 + "  - {name: key2, provider: sampleKey, proxy: {enabled: true}}\n"
	e.replace("amp.yaml", manifestV2)
	reloaded()

	// The catalog override file.
	{
		h := proxyHeaders("noproxy", "acme")
		resp, body := e.do(call{path: "/v1/contacts", headers: h})
		checkProblem(t, resp, body, 403, "provider-not-proxyable")
		provs := readFile(t, filepath.Join(e.dir, "providers.local.yaml"))
		proxied := strings.Replace(provs, "    apiKey: {header: {name: X-Api-Key}}\n    proxy: false\n", "    apiKey: {header: {name: X-Api-Key}}\n    proxy: true\n", 1)
		if proxied == provs {
			t.Fatal("sampleNoProxy not found in the override file")
		}
		e.replace("providers.local.yaml", proxied)
		reloaded()
		e.forward(call{path: "/v1/contacts", headers: h})

		e.replace("providers.local.yaml", proxied+"    colour: red\n")
		rejected("providers.local.yaml", "colour")
		e.forward(call{path: "/v1/contacts", headers: h})
		e.replace("providers.local.yaml", proxied)
		reloaded()
	}

	// ampproxy.yaml itself.
	{
		const newKey = "amp_e2e_SECOND_KEY_must_not_leak"
		e.tokens = append(e.tokens, newKey)
		h := proxyHeaders("key", "acme")
		h["x-api-key"] = newKey
		resp, body := e.do(call{path: "/v1/contacts", headers: h})
		checkProblem(t, resp, body, 401, "unauthenticated")
		cfg := readFile(t, e.config)
		sum := sha256.Sum256([]byte(newKey))
		first := "      - sha256: "
		withKey := strings.Replace(cfg, first, first+hex.EncodeToString(sum[:])+"\n"+first, 1)
		// The log level is read only at start: the reload says so.
		withKey = strings.Replace(withKey, "  level: debug\n", "  level: info\n", 1)
		if withKey == cfg || !strings.Contains(withKey, "level: info") {
			t.Fatal("config template changed: no sha256 key or log level to edit")
		}
		e.replace("ampproxy.yaml", withKey)
		reloaded()
		e.forward(call{path: "/v1/contacts", headers: h})
		warn := e.waitLog(msgRestart, 1)
		var w struct{ Settings []string }
		if err := json.Unmarshal([]byte(warn), &w); err != nil || strings.Join(w.Settings, ",") != "log" {
			t.Errorf("restart warning %s: want settings [log]", warn)
		}

		e.replace("ampproxy.yaml", withKey+"bogus: 1\n")
		rejected("ampproxy.yaml", "bogus")
		e.forward(call{path: "/v1/contacts", headers: h})
		e.replace("ampproxy.yaml", withKey)
		reloaded()
	}

	// SIGHUP.
	{
		// A change the poll cannot see: same size, same inode, and the
		// old modification time put back. Only SIGHUP reloads it.
		path := filepath.Join(e.dir, "amp.yaml")
		before, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		next := strings.Replace(manifestV2, "name: key-other,", "name: key-third,", 1)
		if next == manifestV2 || len(next) != len(manifestV2) {
			t.Fatal("manifest template changed: no key-other to rename")
		}
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, werr := w.WriteAt([]byte(next), 0)
		cerr := w.Close()
		if err := os.Chtimes(path, time.Now(), before.ModTime()); werr != nil || cerr != nil || err != nil {
			t.Fatal(werr, cerr, err)
		}
		after, err := os.Stat(path)
		if err != nil || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
			t.Fatalf("the rewrite changed the file's stamp: %v", err)
		}
		if _, err := e.admin.CreateInstallation(ctx, "key-third", "acme", f.keyConn.ID); status(err) != 404 {
			t.Fatalf("key-third installed before the reload: %v", err)
		}
		if err := e.amp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		reloaded()
		if _, err := e.admin.CreateInstallation(ctx, "key-third", "acme", f.keyConn.ID); err != nil {
			t.Fatal(err)
		}
		e.forward(call{path: "/v1/contacts", headers: proxyHeaders("key-third", "acme")})
	}
	e.checkLogs()
}

// replace swaps a file in e.dir for a new one in a single rename, as
// Kubernetes does with mounted ConfigMaps, so that the file poll never
// reads it half-written.
func (e *env) replace(name, body string) {
	e.t.Helper()
	tmp := e.write(name+".tmp", body)
	if err := os.Rename(tmp, filepath.Join(e.dir, name)); err != nil {
		e.t.Fatal(err)
	}
}

// waitLog waits until ampproxy has logged n lines holding s and returns
// the n-th.
func (e *env) waitLog(s string, n int) string {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var found []string
		for _, line := range strings.Split(e.amp.logs.String(), "\n") {
			if strings.Contains(line, s) {
				found = append(found, line)
			}
		}
		if len(found) >= n {
			return found[n-1]
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("ampproxy logged %d lines with %s, want %d:\n%s", len(found), s, n, e.amp.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
