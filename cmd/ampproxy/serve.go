package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/extproc"
	"github.com/ampproxy/ampproxy/internal/datapath"
	"github.com/ampproxy/ampproxy/internal/logbuf"
	"github.com/ampproxy/ampproxy/internal/metrics"
	"github.com/ampproxy/ampproxy/tokens"
)

// The store serves both the data path and the admin API.
var (
	_ extproc.Store = (*tokens.Store)(nil)
	_ admin.Store   = (*tokens.Store)(nil)
)

// reloadInterval is how often the config, manifest, catalog-override and
// API-key files are checked for changes. Kubernetes updates mounted
// ConfigMaps and Secrets in place, so polling is what notices them.
const reloadInterval = 2 * time.Second

// serve runs the ext_proc server and the admin listener until ctx ends.
func serve(ctx context.Context, path string, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	// One line per request would be one write per request, under the
	// handler's lock; buffered, a line waits at most a second, an error
	// none, and shutdown writes out the rest when serve returns.
	logw := logbuf.New(stderr, logbuf.Options{})
	defer logw.Close()
	log := slog.New(logw.Handler(newLogger(cfg.Log, logw).Handler()))
	key, err := tokens.LoadKey(cfg.Storage.EncryptionKeyFile, cfg.Storage.CreateKey)
	if err != nil {
		return err
	}
	// A warning, not a refusal: see LooseKeyPermissions.
	if mode, loose, err := tokens.LooseKeyPermissions(cfg.Storage.EncryptionKeyFile); err == nil && loose {
		log.Warn("the encryption key file is open to more than its owner; make it 0600 (or 0400), unless its directory keeps others out",
			"path", cfg.Storage.EncryptionKeyFile, "mode", mode.String())
	}
	store, err := tokens.Open(cfg.Storage.Path, key, tokens.Options{})
	if err != nil {
		return err
	}
	defer store.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	met := metrics.New(buildVersion())
	met.GaugeFunc("ampproxy_store_connections", "Connections in the store.", func() float64 { return float64(store.Stats().Connections) })
	met.GaugeFunc("ampproxy_store_installations", "Installations in the store.", func() float64 { return float64(store.Stats().Installations) })
	met.GaugeFunc("ampproxy_store_file_bytes", "Size of the bbolt file.", func() float64 { return float64(store.Stats().FileBytes) })
	logMetrics(met, logw)

	var current atomic.Pointer[config.Config]
	current.Store(cfg)
	dp, err := datapath.New(datapath.Options{Config: current.Load, Store: store, Logger: log, Metrics: met})
	if err != nil {
		return err
	}
	refresher, locks, ep := dp.Refresher, dp.Lockouts, dp.ExtProc
	refreshDone := make(chan struct{})
	go func() { defer close(refreshDone); refresher.Run(ctx) }()
	met.GaugeFunc("ampproxy_lockout_windows_open", "Open lockout windows.", func() float64 { return float64(locks.Open()) })
	// The lockout writer outlives the drain: a 429 answered while streams
	// finish is still committed before its answer leaves.
	lockCtx, lockCancel := context.WithCancel(context.Background())
	defer lockCancel()
	lockDone := make(chan struct{})
	go func() { defer close(lockDone); locks.Run(lockCtx) }()
	g := grpc.NewServer(datapath.ServerOptions(log)...)
	ep.Register(g)
	glis, err := listen(cfg.GRPC.Listen)
	if err != nil {
		return fmt.Errorf("grpc.listen: %w", err)
	}
	alis, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		glis.Close()
		return fmt.Errorf("admin.listen: %w", err)
	}

	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/v1/", admin.New(admin.Options{
		Store:    store,
		Config:   current.Load,
		Logger:   log,
		Lockouts: locks,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// Ready: the store is open and a config is loaded (both hold
		// once serving starts) and shutdown has not begun.
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", met.Handler())
	if cfg.Admin.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- g.Serve(glis) }()
	go func() { errc <- hs.Serve(alis) }()
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		watchConfig(ctx, path, log, &current, ep.SetConfig)
	}()
	ready.Store(true)
	log.Info("ampproxy serving", "grpc", listenAddr(glis), "admin", alis.Addr().String(), "version", buildVersion(), "pprof", cfg.Admin.Pprof)
	// Whoever watches for this line (an operator, a test harness) need not
	// wait for the interval.
	logw.Flush()

	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error("listener failed", "err", err)
	}
	// Not ready first, so that Envoy and Kubernetes stop sending new
	// streams; then let the open ones finish, bounded by
	// shutdown.drainTimeout of the config in force (a reload changes it).
	ready.Store(false)
	cancel()
	ep.Shutdown()
	drain := time.Duration(current.Load().Shutdown.DrainTimeout)
	log.Info("ampproxy draining", "timeout", drain.String())
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		log.Warn("drain timeout: closing open streams")
		g.Stop()
	}
	sctx, scancel := context.WithTimeout(context.Background(), config.AdminShutdownTimeout)
	defer scancel()
	hs.Shutdown(sctx)
	<-reloaded
	<-refreshDone
	refresher.Close()
	lockCancel()
	<-lockDone
	log.Info("ampproxy stopped")
	return err
}

// logMetrics registers the log writer's figures on met: lines the
// destination refused are lost, and only this counter says so, since the
// log cannot.
func logMetrics(met *metrics.Metrics, logw *logbuf.Writer) {
	met.CounterFunc("ampproxy_log_dropped_bytes_total", "Bytes of log output the log's destination (stderr) refused; they are lost.",
		func() float64 { return float64(logw.Dropped()) })
}

// watchConfig reloads the config when SIGHUP arrives or one of its files
// changes, and re-reads API-key files. A new config is applied whole or
// not at all: a file with problems is rejected with a log line and the
// old config stays in force.
func watchConfig(ctx context.Context, path string, log *slog.Logger, current *atomic.Pointer[config.Config], apply func(*config.Config)) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(reloadInterval)
	defer tick.Stop()
	seen := fileStamps(current.Load().Files())
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-hup:
			force = true
		case <-tick.C:
		}
		cfg := current.Load()
		refreshKeys(cfg, log)
		now := fileStamps(cfg.Files())
		if !force && now == seen {
			continue
		}
		seen = now
		next, err := config.Load(path)
		if err != nil {
			log.Error("config reload rejected; the running config stays in force", "err", err)
			continue
		}
		if changed := restartOnly(cfg, next); len(changed) > 0 {
			log.Warn("config reload: these settings change only on restart; their running values stay", "settings", changed)
		}
		seen = fileStamps(next.Files())
		current.Store(next)
		apply(next)
		log.Info("config reloaded", "projects", len(next.Projects))
	}
}

// restartOnly names the settings that differ between the running config
// and a reloaded one but are read only at start: the listeners, the store,
// the lockout table, the token waits and the logger are built once.
func restartOnly(running, next *config.Config) []string {
	var changed []string
	for _, s := range []struct {
		name string
		same bool
	}{
		{"grpc.listen", next.GRPC.Listen == running.GRPC.Listen},
		// The refresher's and the request path's token waits are derived
		// from it when the data path is built.
		{"grpc.messageTimeout", next.GRPC.MessageTimeout == running.GRPC.MessageTimeout},
		{"admin.listen", next.Admin.Listen == running.Admin.Listen},
		{"admin.pprof", next.Admin.Pprof == running.Admin.Pprof},
		{"storage", next.Storage == running.Storage},
		{"throttle", next.Throttle == running.Throttle},
		{"log", next.Log == running.Log},
	} {
		if !s.same {
			changed = append(changed, s.name)
		}
	}
	return changed
}

// refreshKeys re-reads the projects' API key files. A file that turns
// missing, unreadable or unacceptable keeps its previous key (Kubernetes
// swaps a Secret's files, and a rotation in progress must not lock callers
// out), with one warning per problem, naming the file and never a key.
func refreshKeys(cfg *config.Config, log *slog.Logger) {
	for _, p := range cfg.Projects {
		changed, problems := p.Keys.Refresh()
		for _, err := range problems {
			log.Warn("API key file unusable; its previous key stays in force", "project", p.ID, "err", err)
		}
		if changed {
			log.Info("API keys re-read", "project", p.ID)
		}
	}
}

// fileStamps fingerprints files by modification time, size and inode; a
// missing file has its own stamp, so its return is noticed too.
func fileStamps(files []string) string {
	var b strings.Builder
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			fmt.Fprintf(&b, "%s:missing;", f)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d:%d;", f, fi.ModTime().UnixNano(), fi.Size(), inode(fi))
	}
	return b.String()
}

// listen opens a TCP address or a unix:///path socket. A stale socket file
// left by a killed process is removed first; a live one is not, and
// neither is anything at the path that is not a socket (a mistyped path
// must not cost a file).
func listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket (mode %s); it is left alone: remove it or listen elsewhere", path, fi.Mode())
	default:
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process is serving on this socket", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Envoy runs as another user in the pod; both share the socket's group.
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// listenAddr names a listener the way the config does, with the port the
// kernel chose when the config said :0.
func listenAddr(l net.Listener) string {
	if l.Addr().Network() == "unix" {
		return "unix://" + l.Addr().String()
	}
	return l.Addr().String()
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	lvl := slog.LevelInfo
	switch c.Level {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
