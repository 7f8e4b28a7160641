package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/extproc"
	"github.com/ampproxy/ampproxy/tokens"
)

// The store serves both the data path and the admin API.
var (
	_ extproc.Store = (*tokens.Store)(nil)
	_ admin.Store   = (*tokens.Store)(nil)
)

// drainTimeout bounds how long open streams may finish after SIGTERM.
const drainTimeout = 20 * time.Second

// keyPollInterval is how often API-key files are checked for rotation.
const keyPollInterval = 5 * time.Second

// serve runs the ext_proc server and the admin listener until ctx ends.
func serve(ctx context.Context, path string, stderr io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	key, err := tokens.LoadKey(cfg.Storage.EncryptionKeyFile, cfg.Storage.CreateKey)
	if err != nil {
		return err
	}
	store, err := tokens.Open(cfg.Storage.Path, key, tokens.Options{})
	if err != nil {
		return err
	}
	defer store.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, p := range cfg.Projects {
		go p.Keys.Watch(ctx, keyPollInterval)
	}

	ep := extproc.New(extproc.Options{Store: store, Config: cfg, Logger: log})
	g := grpc.NewServer()
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
	mux := http.NewServeMux()
	mux.Handle("/v1/", admin.New(admin.Options{
		Store:  store,
		Config: func() *config.Config { return cfg },
		Logger: log,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ctx.Err() != nil {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- g.Serve(glis) }()
	go func() { errc <- hs.Serve(alis) }()
	log.Info("ampproxy serving", "grpc", listenAddr(glis), "admin", alis.Addr().String(), "version", buildVersion())

	select {
	case <-ctx.Done():
	case err = <-errc:
		log.Error("listener failed", "err", err)
	}
	// Not ready first, so that Envoy and Kubernetes stop sending new
	// streams; then let the open ones finish, bounded by drainTimeout.
	cancel()
	ep.Shutdown()
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(drainTimeout):
		g.Stop()
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	hs.Shutdown(sctx)
	log.Info("ampproxy stopped")
	return err
}

// listen opens a TCP address or a unix:///path socket. A stale socket file
// left by a killed process is removed first; a live one is not.
func listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: another process is serving on this socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
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
