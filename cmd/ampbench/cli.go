package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/ampproxy/ampproxy/internal/datapath"
	"github.com/ampproxy/ampproxy/internal/loadgen"
)

const usage = `ampbench — load generator and benchmark suite for ampproxy's ext_proc server

Usage:
  ampbench noop  --listen ADDR          serve the no-op ext_proc server (the protocol's floor)
  ampbench load  --target ADDR [flags]  play Envoy's side against an ext_proc server; --json for JSON
  ampbench suite --out FILE [flags]     micro-benchmarks, no-op vs ampproxy, latency and scale
                                        figures, written as markdown (make bench)
  ampbench server --kind KIND ...       one server process of the suite (used by suite); with
                                        --profile DIR it writes CPU, allocation and mutex profiles
  ampbench fixture --dir DIR [-n N]     write the suite's ampproxy config and a store with N
                                        installations, for profiling with server and load

ADDR is host:port or unix:///path.sock. Run a command with -h for its flags.
`

var errUsage = errors.New("usage")

// Main runs one command and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if err := run(ctx, args, stdin, stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "ampbench:", err)
		if errors.Is(err, errUsage) {
			fmt.Fprint(stderr, "\n"+usage)
			return 2
		}
		return 1
	}
	return 0
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "noop":
		return noopCmd(ctx, rest, stdout, stderr)
	case "load":
		return loadCmd(ctx, rest, stdout, stderr)
	case "suite":
		return suiteCmd(ctx, rest, stdout, stderr)
	case "server":
		return serverCmd(ctx, rest, stdin, stdout, stderr)
	case "fixture":
		return fixtureCmd(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

// parse parses flags and refuses leftover arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}

func noopCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("noop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:50051", "address to serve on: host:port or unix:///path.sock")
	if err := parse(fs, args); err != nil {
		return err
	}
	l, err := loadgen.Listen(*listen)
	if err != nil {
		return err
	}
	// The same gRPC server options as ampproxy's ext_proc listener, so
	// that the floor is measured on the same transport settings.
	g := grpc.NewServer(datapath.ServerOptions(nil)...)
	loadgen.NoopServer{}.Register(g)
	fmt.Fprintf(stdout, "no-op ext_proc server on %s\n", loadgen.Addr(l))
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(l) }()
	select {
	case <-ctx.Done():
		g.Stop()
		return nil
	case err := <-errc:
		return err
	}
}

// The fixture's caller credentials and selectors, which load uses by
// default so that it runs against the suite's ampproxy and the no-op
// server without flags.
const (
	benchProject = "bench"
	benchAPIKey  = "amp_bench_key_not_secret"
	keyIntegr    = "key-int"
	oauthIntegr  = "oauth-int"
)

func loadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o loadgen.Options
	fs.StringVar(&o.Target, "target", "", "ext_proc server: host:port or unix:///path.sock (required)")
	fs.IntVar(&o.Workers, "workers", 8, "concurrent streams (closed loop) or pacing workers (open loop)")
	fs.IntVar(&o.Conns, "conns", 1, "client connections; workers share them round-robin")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "length of the measured phase (0: until --requests)")
	fs.Uint64Var(&o.Requests, "requests", 0, "streams to run; 0 means no limit")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "unmeasured load before the measured phase")
	fs.Float64Var(&o.TargetRate, "rate", 0, "open loop at this many requests/s in total; 0 is a closed loop at full speed")
	fs.Float64Var(&o.Share429, "share429", 0, "share (0-1) of response phases that carry :status 429")
	fs.IntVar(&o.RetryAfter, "retry-after", 30, "retry-after seconds on those 429s")
	fs.StringVar(&o.ProjectID, "project", benchProject, "x-amp-project-id")
	fs.StringVar(&o.APIKey, "api-key", benchAPIKey, "x-api-key")
	integ := fs.String("integration", keyIntegr, "x-amp-integration-name")
	groups := fs.String("group-ref", "g000001", "x-amp-group-ref; a comma-separated list is used in turn")
	ids := fs.String("installation-id", "", "x-amp-installation-id instead of integration and group; a comma-separated list is used in turn")
	fs.StringVar(&o.Path, "path", "/v1/items?limit=10", ":path")
	fs.StringVar(&o.Method, "method", "GET", ":method")
	fs.BoolVar(&o.ThrottleMode, "throttle", false, "send x-amp-rate-limiter-mode: throttle")
	fs.BoolVar(&o.ExpectImmediate, "expect-immediate", false, "an immediate response to the request headers is a success")
	metricsURL := fs.String("metrics", "", "the server's Prometheus endpoint (ampproxy: http://ADMIN/metrics), read before and after the run to report its allocations and CPU per request")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *metricsURL != "" {
		if !strings.HasPrefix(*metricsURL, "http://") && !strings.HasPrefix(*metricsURL, "https://") {
			return fmt.Errorf("%w: --metrics %q: want an http:// or https:// URL", errUsage, *metricsURL)
		}
		o.ServerStats = loadgen.MetricsStats(*metricsURL)
	}
	if *ids != "" {
		for _, id := range strings.Split(*ids, ",") {
			o.Installations = append(o.Installations, loadgen.Installation{ID: id})
		}
	} else {
		for _, g := range strings.Split(*groups, ",") {
			o.Installations = append(o.Installations, loadgen.Installation{Integration: *integ, GroupRef: g})
		}
	}
	r, err := loadgen.Run(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, r)
	}
	return r.WriteText(stdout)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
