package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/envoy"
	"github.com/ampproxy/ampproxy/examples/sampleprovider"
)

// minEnvoy is the oldest Envoy the shipped bootstrap supports: from 1.32
// Envoy reads header mutations from raw_value only and answers a slow
// processor with 504 (envoy/doc.go).
var minEnvoy = [3]int{1, 32, 0}

var (
	envoyOnce    sync.Once
	envoyBin     string // the usable envoy, or ""
	envoySkipped string // why the real-envoy half does not run
)

// envoyPath is the real envoy binary, or "" when none is on PATH or it is
// older than minEnvoy; then the suite runs against envoytest alone and
// envoyNote says why.
func envoyPath() string {
	envoyOnce.Do(func() { envoyBin, envoySkipped = findEnvoy() })
	return envoyBin
}

// envoyNote is the reason the real-envoy half is skipped, or "".
func envoyNote() string {
	envoyPath()
	return envoySkipped
}

func findEnvoy() (path, skipped string) {
	p, err := exec.LookPath("envoy")
	if err != nil {
		return "", "no envoy binary on PATH: the e2e suite ran against envoy/envoytest only"
	}
	out, err := exec.Command(p, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Sprintf("%s --version failed (%v): the e2e suite ran against envoy/envoytest only", p, err)
	}
	v, ok := parseEnvoyVersion(string(out))
	want := fmt.Sprintf("%d.%d", minEnvoy[0], minEnvoy[1])
	switch {
	case !ok:
		return "", fmt.Sprintf("cannot read the version of %s from %q: the real-envoy half needs Envoy %s or newer and was skipped", p, strings.TrimSpace(string(out)), want)
	case olderThan(v, minEnvoy):
		return "", fmt.Sprintf("%s is Envoy %d.%d.%d; the real-envoy half needs %s or newer (raw_value header mutations, 504 on a slow processor) and was skipped", p, v[0], v[1], v[2], want)
	}
	return p, ""
}

// envoyVersionRE finds the version in `envoy --version` output, e.g.
// "envoy  version: 6b9d…/1.32.1/Clean/RELEASE/BoringSSL".
var envoyVersionRE = regexp.MustCompile(`/(\d+)\.(\d+)\.(\d+)(?:-[^/\s]*)?/`)

func parseEnvoyVersion(out string) ([3]int, bool) {
	m := envoyVersionRE.FindStringSubmatch(out)
	if m == nil {
		return [3]int{}, false
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, true
}

func olderThan(v, min [3]int) bool {
	for i := range v {
		if v[i] != min[i] {
			return v[i] < min[i]
		}
	}
	return false
}

// reportRealEnvoy tells, on stderr, when the real-envoy half will not run.
// TestMain calls it so that the note shows without -v (go test hides a
// skip message unless verbose).
func reportRealEnvoy() {
	if note := envoyNote(); note != "" {
		fmt.Fprintln(os.Stderr, "e2e: note:", note)
	}
}

// realEnvoy is an envoy process running envoy/envoy.yaml with test ports.
type realEnvoy struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{}
}

func (r *realEnvoy) URL() string { return r.url }

func (r *realEnvoy) Close() error {
	r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
	return nil
}

func freePort(t *testing.T) uint32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port)
}

// startEnvoy runs the shipped bootstrap, changed only in its ports, the
// ext_proc socket and the CA that provider certificates are checked
// against.
func startEnvoy(t *testing.T, dir, sock string, p *sampleprovider.Server) dataPlane {
	t.Helper()
	ca := filepath.Join(dir, "provider-ca.pem")
	if err := os.WriteFile(ca, p.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	listen, adminPort := freePort(t), freePort(t)
	cfg, err := envoy.TestBootstrap(envoy.TestBootstrapOptions{
		ListenAddress:  "127.0.0.1",
		ListenPort:     listen,
		AdminPort:      adminPort,
		ExtProcAddress: "unix://" + sock,
		UpstreamCAFile: ca,
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	// Without hot restart Envoy needs no shared memory, which containers
	// often lack, and concurrent envoys need no distinct --base-id.
	cmd := exec.Command(envoyPath(), "-c", path, "--disable-hot-restart", "-l", "warning")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &realEnvoy{cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", listen), done: make(chan struct{})}
	go func() { cmd.Wait(); close(r.done) }()
	ready := fmt.Sprintf("http://127.0.0.1:%d/ready", adminPort)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return r
			}
		}
		select {
		case <-r.done:
			t.Fatalf("envoy exited:\n%s", logs)
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.Close()
	t.Fatalf("envoy not ready:\n%s", logs)
	return nil
}
