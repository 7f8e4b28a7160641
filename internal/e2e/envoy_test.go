package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/envoy"
	"github.com/ampproxy/ampproxy/examples/sampleprovider"
)

// envoyPath is the real envoy binary, or "" when none is on PATH; then
// the suite runs against envoytest alone (TestRealEnvoyPresence says so).
func envoyPath() string {
	p, err := exec.LookPath("envoy")
	if err != nil {
		return ""
	}
	return p
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
	cmd := exec.Command(envoyPath(), "-c", path, "--base-id", strconv.Itoa(int(listen)), "-l", "warning")
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
