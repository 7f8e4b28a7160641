package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ampproxy/ampproxy/config"
)

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no command given"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"serve"}, 2, "serve needs --config FILE"},
		{[]string{"check", "--config", "a", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"keys"}, 2, "keys takes one subcommand"},
		{[]string{"keys", "new", "--bogus"}, 2, "keys takes one subcommand"},
		{[]string{"version", "--bogus"}, 2, "version takes no arguments"},
		// Flags a command does not know are usage mistakes too.
		{[]string{"serve", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"check", "--config", "a", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"dev", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"admin", "connections", "list", "--page-size", "2"}, 2, "flag provided but not defined: -page-size"},
		{[]string{"admin", "connections", "get", "--nope", "x"}, 2, "flag provided but not defined: -nope"},
		{[]string{"admin", "connections", "generate", "--metadata", "novalue"}, 2, `want name=value, got "novalue"`},
		{[]string{"admin", "installations", "create", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"admin", "connect", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"serve", "-h"}, 0, "-config"},
		{[]string{"admin", "connections", "get", "-h"}, 0, "Usage: ampproxy admin"},
		{[]string{"check", "--config", "/nonexistent/ampproxy.yaml"}, 1, "/nonexistent/ampproxy.yaml"},
	} {
		code, stdout, stderr := runMain(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := runMain(t, "version"); code != 0 || !strings.HasPrefix(out, "ampproxy ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	if code, out, _ := runMain(t, "help"); code != 0 || !strings.Contains(out, "ampproxy serve") {
		t.Errorf("help: exit %d, %q", code, out)
	}
}

func TestKeysNew(t *testing.T) {
	code, out, _ := runMain(t, "keys", "new")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var key, sum string
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "api key: "); ok {
			key = v
		}
		if v, ok := strings.CutPrefix(line, "sha256:  "); ok {
			sum = v
		}
	}
	h := sha256.Sum256([]byte(key))
	if !strings.HasPrefix(key, "amp_") || len(key) < 40 || sum != hex.EncodeToString(h[:]) {
		t.Fatalf("key %q sum %q do not match", key, sum)
	}
	_, out2, _ := runMain(t, "keys", "new")
	if strings.Contains(out2, key) {
		t.Fatal("two runs printed the same key")
	}
}

// TestCheckReportsEveryMistake writes a config with mistakes in the server
// config, a manifest and the catalog override, and expects every one of
// them on its own line, with file and field.
func TestCheckReportsEveryMistake(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "amp.yaml", `specVersion: 1.0.0
integrations:
  - name: crm
    provider: hubspot
  - name: "Has Spaces"
    provider: hubspot
`)
	writeFile(t, dir, "providers.local.yaml", `providers:
  - name: myApi
    baseURL: https://{{.tenant}}.example.com
    authType: apiKey
    apiKey: {header: {name: X-Key}, query: key}
`)
	cfg := writeFile(t, dir, "ampproxy.yaml", `grpc:
  listen: "not an address"
admin:
  listen: 127.0.0.1:0
storage:
  path: data/ampproxy.db
  encryptionKeyFile: data/master.key
catalog:
  overrides: providers.local.yaml
throttle:
  maxWindow: forever
projects:
  - id: demo
    apiKeys:
      - sha256: 1234
    manifest: amp.yaml
`)
	code, out, _ := runMain(t, "check", "--config", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{
		"ampproxy.yaml:2: grpc.listen",
		"storage.encryptionKeyFile",
		`throttle.maxWindow: "forever" is not a duration`,
		"projects[0].apiKeys[0].sha256",
		"providers.local.yaml",
		"tenant",
		"apiKey",
		"integrations[1].name",
		"problem(s) found",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}

func TestCheckGood(t *testing.T) {
	dir := t.TempDir()
	cfg := goodConfig(t, dir, "127.0.0.1:0")
	code, out, stderr := runMain(t, "check", "--config", cfg)
	if code != 0 || !strings.Contains(out, ": ok (1 project(s), 1 integration(s)") {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
}

// TestCheckEncryptionKey: check reads the store's key the way serve does,
// so a key file serve would refuse is a problem here, named by its field
// and without its content; a missing one that serve would create is not.
func TestCheckEncryptionKey(t *testing.T) {
	const garbage = "not-a-key-but-a-secret-all-the-same"
	for _, tc := range []struct {
		name, content string
		want          string
	}{
		{"garbage", garbage, "neither 32 raw bytes nor valid standard base64"},
		{"short base64", "c2hvcnQ=\n", "decodes to 5 bytes"},
		{"empty", "\n", "is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := goodConfig(t, dir, "127.0.0.1:0")
			key := writeFile(t, dir, "data/master.key", tc.content)
			code, out, _ := runMain(t, "check", "--config", cfg)
			if code != 1 || !strings.Contains(out, "storage.encryptionKeyFile") || !strings.Contains(out, tc.want) || !strings.Contains(out, key) {
				t.Fatalf("exit %d, output:\n%s\nwant exit 1, storage.encryptionKeyFile, %s and %q", code, out, key, tc.want)
			}
			if strings.Contains(out, garbage) {
				t.Errorf("check printed the key file's content:\n%s", out)
			}
			if b, _ := os.ReadFile(key); string(b) != tc.content {
				t.Error("check changed the key file")
			}
		})
	}
	// createKey: true and no file yet: serve will create it; check does not.
	dir := t.TempDir()
	cfg := goodConfig(t, dir, "127.0.0.1:0")
	if code, out, _ := runMain(t, "check", "--config", cfg); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "master.key")); !os.IsNotExist(err) {
		t.Errorf("check created the key file: %v", err)
	}
}

func goodConfig(t *testing.T, dir, grpcListen string) string {
	t.Helper()
	writeFile(t, dir, "amp.yaml", `specVersion: 1.0.0
integrations:
  - name: crm
    provider: hubspot
    proxy: {enabled: true}
`)
	h := sha256.Sum256([]byte("test-key"))
	return writeFile(t, dir, "ampproxy.yaml", `grpc:
  listen: `+grpcListen+`
admin:
  listen: 127.0.0.1:0
storage:
  path: data/ampproxy.db
  encryptionKeyFile: data/master.key
  createKey: true
log:
  format: json
projects:
  - id: demo
    apiKeys:
      - sha256: `+hex.EncodeToString(h[:])+`
    manifest: amp.yaml
`)
}

// syncBuffer lets the test read what serve logs while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServe starts serve on TCP and on a unix socket, checks the gRPC
// health service and the admin health endpoints, then stops it the way
// SIGTERM does (context cancel) and expects a clean exit and no socket
// file left behind.
func TestServe(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"tcp", "127.0.0.1:0"},
		{"unix", "unix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			listen, dial := tc.listen, ""
			if tc.listen == "unix" {
				// Socket paths are limited to ~104 bytes; TempDir can be long.
				sdir, err := os.MkdirTemp("", "amp")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(sdir) })
				sock := filepath.Join(sdir, "x.sock")
				listen, dial = "unix://"+sock, "unix://"+sock
			} else {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				listen = l.Addr().String()
				l.Close()
				dial = listen
			}
			cfg := goodConfig(t, dir, listen)
			ctx, cancel := context.WithCancel(context.Background())
			logs := &syncBuffer{}
			done := make(chan int, 1)
			go func() { done <- Main(ctx, []string{"serve", "--config", cfg}, io.Discard, logs) }()
			t.Cleanup(func() {
				cancel()
				select {
				case <-done:
				case <-time.After(30 * time.Second):
					t.Error("serve did not stop")
				}
			})

			admin := waitForLog(t, logs, `"admin":"`, done)
			conn, err := grpc.NewClient(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
			defer hcancel()
			resp, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("grpc health: %v %v", resp, err)
			}
			for _, path := range []string{"/healthz", "/readyz"} {
				r, err := http.Get("http://" + admin + path)
				if err != nil {
					t.Fatal(err)
				}
				r.Body.Close()
				if r.StatusCode != 200 {
					t.Errorf("%s: %d", path, r.StatusCode)
				}
			}
			// Process-level figures are registered.
			if r, err := http.Get("http://" + admin + "/metrics"); err != nil {
				t.Fatal(err)
			} else {
				body, _ := io.ReadAll(r.Body)
				r.Body.Close()
				for _, want := range []string{"ampproxy_store_connections ", "ampproxy_log_dropped_bytes_total 0\n"} {
					if !strings.Contains(string(body), want) {
						t.Errorf("/metrics lacks %q", want)
					}
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "data", "master.key")); err != nil {
				t.Errorf("createKey: %v", err)
			}
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("serve exit %d; logs:\n%s", code, logs)
			}
			done <- 0 // for the cleanup
			// The log is buffered; shutdown writes out its last lines.
			if !strings.Contains(logs.String(), `"msg":"ampproxy stopped"`) {
				t.Errorf("the last log line is missing after shutdown:\n%s", logs)
			}
			if path, ok := strings.CutPrefix(dial, "unix://"); ok {
				if _, err := os.Stat(path); !os.IsNotExist(err) {
					t.Errorf("socket %s left behind: %v", path, err)
				}
			}
		})
	}
}

// waitForLog waits until serve logs its listening line and returns the
// admin address from it.
func waitForLog(t *testing.T, logs *syncBuffer, marker string, done chan int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s := logs.String()
		if i := strings.Index(s, marker); i >= 0 {
			rest := s[i+len(marker):]
			if j := strings.IndexAny(rest, "\" \n"); j >= 0 {
				return rest[:j]
			}
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d:\n%s", code, s)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("serve did not start:\n%s", logs.String())
	return ""
}

// TestRefreshKeysWarnsOnce: an API key file that turns bad at a rotation
// keeps the previous key in force, and serve says so once per problem,
// naming the file and not the key.
func TestRefreshKeysWarnsOnce(t *testing.T) {
	dir := t.TempDir()
	const key = "amp_refresh-test-key-0123456789abcdefghij"
	keyFile := writeFile(t, dir, "keys/primary", key+"\n")
	cfgPath := goodConfig(t, dir, "127.0.0.1:0")
	body, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "ampproxy.yaml", strings.Replace(string(body), "    apiKeys:\n", "    apiKeys:\n      - file: keys/primary\n", 1))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	const bad = "too-short-key"
	writeFile(t, dir, "keys/primary.new", bad)
	if err := os.Rename(filepath.Join(dir, "keys/primary.new"), keyFile); err != nil {
		t.Fatal(err)
	}
	refreshKeys(cfg, log)
	refreshKeys(cfg, log)
	out := logs.String()
	if n := strings.Count(out, "API key file unusable"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, keyFile) || !strings.Contains(out, `"level":"WARN"`) {
		t.Errorf("warning lacks the file or its level:\n%s", out)
	}
	if strings.Contains(out, bad) || strings.Contains(out, key) {
		t.Errorf("a key reached the log:\n%s", out)
	}
	if _, ok := cfg.Authenticate("demo", key); !ok {
		t.Error("the previous key was dropped")
	}
}

// TestUnixListenerLeavesOtherFiles: only a stale socket at grpc.listen's
// path is removed. A regular file, a directory or a symlink there survives,
// and serve fails with an error naming the path.
func TestUnixListenerLeavesOtherFiles(t *testing.T) {
	sdir, err := os.MkdirTemp("", "amp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })

	file := filepath.Join(sdir, "file.sock")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sdir, "link.sock")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(sdir, "dir.sock")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link, dir} {
		l, err := listen("unix://" + p)
		if err == nil {
			l.Close()
			t.Errorf("%s: listen succeeded over something that is not a socket", p)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("%s: error %q does not name the path and the reason", p, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("the file at the socket path was changed: %q, %v", b, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Errorf("the symlink at the socket path was changed: %v", err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("the directory at the socket path was changed: %v", err)
	}

	// serve refuses to start over the file, naming it.
	cfg := goodConfig(t, t.TempDir(), "unix://"+file)
	code, _, stderr := runMain(t, "serve", "--config", cfg)
	if code == 0 || !strings.Contains(stderr, file) {
		t.Errorf("serve over a regular file: exit %d, stderr %q", code, stderr)
	}
	if b, _ := os.ReadFile(file); string(b) != "precious" {
		t.Fatal("serve changed the file at the socket path")
	}

	// A stale socket, left by a process that died without removing it,
	// is replaced.
	stale := filepath.Join(sdir, "stale.sock")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	l, err := listen("unix://" + stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()
}

// TestServeWarnsOfOpenKeyFile: serve starts with an encryption key file
// that group or others may read, and says so once, with its path and mode;
// a 0600 key file gets no warning.
func TestServeWarnsOfOpenKeyFile(t *testing.T) {
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o600, false}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			cfg := goodConfig(t, dir, "127.0.0.1:0")
			key := writeFile(t, dir, "data/master.key", base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n")
			if err := os.Chmod(key, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, logs := startServe(t, cfg)
			out := logs.String()
			warned := strings.Contains(out, "encryption key file is open to more than its owner")
			if warned != tc.warn {
				t.Fatalf("warned = %v, want %v:\n%s", warned, tc.warn, out)
			}
			if tc.warn && (!strings.Contains(out, key) || !strings.Contains(out, `"mode":"-rw-r--r--"`)) {
				t.Errorf("warning lacks the path or the mode:\n%s", out)
			}
		})
	}
}
