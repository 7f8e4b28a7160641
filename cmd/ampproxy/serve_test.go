package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/logbuf"
	"github.com/ampproxy/ampproxy/internal/metrics"
)

// startServe runs `ampproxy serve` in-process until the test ends and
// returns its admin address and log.
func startServe(t *testing.T, cfg string) (string, *syncBuffer) {
	t.Helper()
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
	return waitForLog(t, logs, `"admin":"`, done), logs
}

// TestPprof: /debug/pprof/ exists on the admin listener only when
// admin.pprof is on.
func TestPprof(t *testing.T) {
	for _, tc := range []struct {
		pprof bool
		want  int
	}{
		{false, http.StatusNotFound},
		{true, http.StatusOK},
	} {
		dir := t.TempDir()
		cfg := goodConfig(t, dir, "127.0.0.1:0")
		if tc.pprof {
			writeFile(t, dir, "ampproxy.yaml", strings.Replace(readFile(t, cfg), "admin:\n", "admin:\n  pprof: true\n", 1))
		}
		admin, _ := startServe(t, cfg)
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline"} {
			resp, err := http.Get("http://" + admin + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("pprof %v: GET %s = %d, want %d", tc.pprof, path, resp.StatusCode, tc.want)
			}
		}
	}
}

// TestRestartOnly names every setting a reload cannot apply, and nothing
// a reload does apply.
func TestRestartOnly(t *testing.T) {
	base := config.Config{
		GRPC:     config.GRPC{Listen: "unix:///run/a.sock"},
		Admin:    config.Admin{Listen: "127.0.0.1:8081"},
		Storage:  config.Storage{Path: "/data/a.db", EncryptionKeyFile: "/k"},
		Throttle: config.Throttle{DefaultWindow: config.Duration(time.Minute), MaxWindow: config.Duration(time.Hour)},
		Shutdown: config.Shutdown{DrainTimeout: config.Duration(20 * time.Second)},
		Log:      config.Log{Format: "json", Level: "info"},
	}
	for _, tc := range []struct {
		edit func(*config.Config)
		want []string
	}{
		{func(*config.Config) {}, nil},
		{func(c *config.Config) { c.GRPC.Listen = "127.0.0.1:1" }, []string{"grpc.listen"}},
		{func(c *config.Config) { c.GRPC.MessageTimeout = config.Duration(time.Second) }, []string{"grpc.messageTimeout"}},
		{func(c *config.Config) {
			c.GRPC.Listen = "127.0.0.1:1"
			c.GRPC.MessageTimeout = config.Duration(time.Second)
		},
			[]string{"grpc.listen", "grpc.messageTimeout"}},
		{func(c *config.Config) { c.Admin.Listen = "127.0.0.1:2" }, []string{"admin.listen"}},
		{func(c *config.Config) { c.Admin.Pprof = true }, []string{"admin.pprof"}},
		{func(c *config.Config) { c.Storage.CreateKey = true }, []string{"storage"}},
		{func(c *config.Config) { c.Throttle.MaxWindow = config.Duration(2 * time.Hour) }, []string{"throttle"}},
		{func(c *config.Config) { c.Log.Level = "debug" }, []string{"log"}},
		{func(c *config.Config) { c.Log.Format = "text"; c.Admin.Listen = "x:1" }, []string{"admin.listen", "log"}},
		// Read at shutdown from the config in force: a reload applies it.
		{func(c *config.Config) { c.Shutdown.DrainTimeout = config.Duration(time.Second) }, nil},
	} {
		next := base
		tc.edit(&next)
		if got := restartOnly(&base, &next); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("restartOnly = %v, want %v", got, tc.want)
		}
	}
}

// brokenPipe refuses every write, as stderr does once its reader is gone.
type brokenPipe struct{}

func (brokenPipe) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestLogDroppedMetric: bytes of log the destination refused are counted
// on /metrics, since the log itself cannot tell.
func TestLogDroppedMetric(t *testing.T) {
	logw := logbuf.New(brokenPipe{}, logbuf.Options{})
	t.Cleanup(func() { logw.Close() })
	met := metrics.New("test")
	logMetrics(met, logw)
	logw.Write([]byte("twelve bytes"))
	logw.Flush()
	rec := httptest.NewRecorder()
	met.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := "# TYPE ampproxy_log_dropped_bytes_total counter\nampproxy_log_dropped_bytes_total 12\n"; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("/metrics lacks %q", want)
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
