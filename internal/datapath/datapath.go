// Package datapath assembles ampproxy's request path from its parts: the
// OAuth2 refresher, the lockout table and the ext_proc server over one
// store, with the gRPC server options they are served with. `ampproxy
// serve` runs it, and so does the benchmark suite (cmd/ampbench), so that
// what is measured is what is deployed.
//
// It does not own the store, the config files, the admin API or the
// listeners: the caller opens, watches and serves those.
package datapath

import (
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/extproc"
	"github.com/ampproxy/ampproxy/internal/metrics"
	"github.com/ampproxy/ampproxy/throttle"
	"github.com/ampproxy/ampproxy/tokens"
)

// Options configure New. Config and Store are required.
type Options struct {
	// Config returns the config in force; a reload swaps what it returns
	// and calls Path.SetConfig.
	Config func() *config.Config
	Store  *tokens.Store
	// Logger defaults to slog.Default(); Metrics nil records nothing.
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Path is the assembled request path. The caller runs the refresher's
// background loop and the lockout writer (Refresher.Run, Lockouts.Run) for
// as long as it serves, and registers ExtProc on its gRPC server.
type Path struct {
	ExtProc   *extproc.Server
	Refresher *tokens.Refresher
	Lockouts  *throttle.Table
}

// New builds the request path as serve runs it.
func New(o Options) (*Path, error) {
	cfg := o.Config()
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	refresher := tokens.NewRefresher(tokens.RefresherOptions{
		Store:     o.Store,
		Providers: func() *catalog.Catalog { return o.Config().Providers },
		Apps: func(projectID, provider string) (string, string, bool, error) {
			p, ok := o.Config().Project(projectID)
			if !ok {
				return "", "", false, nil
			}
			app, ok := p.App(provider)
			if !ok {
				return "", "", false, nil
			}
			secret, err := app.ClientSecret()
			return app.ClientID, secret, true, err
		},
		// The request path sets its own deadline (TokenWait below); this
		// bounds any other caller the same way.
		Wait:      cfg.GRPC.TokenWait(),
		Logger:    log,
		OnRefresh: o.Metrics.Refresh,
	})
	locks, err := throttle.New(throttle.Options{
		DefaultWindow:    time.Duration(cfg.Throttle.DefaultWindow),
		MaxWindow:        time.Duration(cfg.Throttle.MaxWindow),
		Persist:          throttle.StorePersister(o.Store),
		Logger:           log,
		OnOpen:           o.Metrics.LockoutOpened,
		OnExtend:         o.Metrics.LockoutExtended,
		OnPersistFailure: o.Metrics.LockoutPersistFailed,
	})
	if err != nil {
		refresher.Close()
		return nil, err
	}
	ep := extproc.New(extproc.Options{Store: o.Store, Config: cfg, Logger: log, Metrics: o.Metrics, Tokens: refresher,
		TokenWait: cfg.GRPC.TokenWait(), Lockouts: locks})
	return &Path{ExtProc: ep, Refresher: refresher, Lockouts: locks}, nil
}

// ServerOptions are the gRPC server options of the ext_proc listener: a
// handler that panics ends its own stream with codes.Internal (Envoy then
// fails the request closed, 500) instead of taking down every other
// stream of the process, and Stop returns only once every handler has
// returned. log receives one line per panic; nil means slog.Default().
func ServerOptions(log *slog.Logger) []grpc.ServerOption {
	if log == nil {
		log = slog.Default()
	}
	// grpc.NumStreamWorkers is deliberately absent: serving streams from
	// 256 reused goroutines instead of one new goroutine each saved no
	// allocation and cost the no-op server and ampproxy alike about 8%
	// more CPU per request under load in interleaved runs.
	return []grpc.ServerOption{
		grpc.ChainStreamInterceptor(recoverStream(log)),
		// Without it Stop, which serve calls when the drain times out,
		// returns once the connections are closed, while handlers may
		// still log or commit a lockout; serve then closes the refresher,
		// the lockout table, the store and the log under them. Handlers
		// end promptly once Stop cancels their streams' contexts.
		grpc.WaitForHandlers(true),
	}
}

// recoverStream is the interceptor of ServerOptions. The log line carries
// the panic value's type and the stack, never the value itself: a value
// could hold a header or a credential, and a stack trace prints only
// function names and machine words.
func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if v := recover(); v != nil {
				log.Error("ext_proc stream panicked", "method", info.FullMethod, "panic", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(srv, ss)
	}
}
