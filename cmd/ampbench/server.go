package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/datapath"
	"github.com/ampproxy/ampproxy/internal/loadgen"
	"github.com/ampproxy/ampproxy/internal/logbuf"
	"github.com/ampproxy/ampproxy/internal/metrics"
	"github.com/ampproxy/ampproxy/tokens"
)

// The suite runs every server in a process of its own (this binary, as
// "ampbench server"), for two reasons. The server's allocation and CPU
// counters then describe the server alone: read in the generator's
// process they would include the generator's own work, which is as large
// as the server's. And the two compete for the cores as Envoy and ampproxy
// do, as separate processes.
//
// The child talks to the suite over its stdin and stdout: it prints one
// JSON line (ready) once it serves, then answers each "stats" or "gc" line
// with a JSON line of counters; it stops when stdin closes, so that it
// never outlives the suite.

// ready is the child's first line.
type ready struct {
	Addrs []string `json:"addrs"`
	// Startup is from the start of the command to serving: config,
	// encryption key, store, ext_proc server, listeners. Open is the
	// tokens.Open part of it.
	Startup  time.Duration          `json:"startupNs"`
	Open     time.Duration          `json:"openNs"`
	Counters loadgen.ServerCounters `json:"counters"`
	Records  tokens.Stats           `json:"records"`
	// GOGC and MemoryLimit are the collector's settings the process runs
	// with (/gc/gogc:percent, 0 meaning off, and /gc/gomemlimit:bytes,
	// math.MaxInt64 meaning none): Go's defaults unless the environment
	// set GOGC or GOMEMLIMIT.
	GOGC        uint64 `json:"gogc"`
	MemoryLimit uint64 `json:"memoryLimitBytes"`
}

// statsLine answers "stats" and "gc".
type statsLine struct {
	loadgen.ServerCounters
	// HeapLive is the live heap after a forced collection ("gc" only).
	HeapLive uint64 `json:"heapLiveBytes,omitempty"`
	Error    string `json:"error,omitempty"`
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func serverCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	start := time.Now()
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("kind", "noop", "noop or ampproxy")
	cfgPath := fs.String("config", "", "ampproxy.yaml (kind ampproxy)")
	logMode := fs.String("log", "off", "ampproxy's request log: off, or json (as serve logs by default, buffered as serve buffers it, written to "+os.DevNull+")")
	profile := fs.String("profile", "", "directory for pprof profiles of the server: cpu.prof over its life, allocs.prof and mutex.prof at exit")
	var listens listFlag
	fs.Var(&listens, "listen", "address to serve on; repeat for more")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *profile != "" {
		stop, err := startProfiles(*profile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if len(listens) == 0 {
		return fmt.Errorf("%w: server needs --listen", errUsage)
	}

	g := grpc.NewServer(datapath.ServerOptions(nil)...)
	var rd ready
	switch *kind {
	case "noop":
		loadgen.NoopServer{}.Register(g)
	case "ampproxy":
		store, open, err := wireAmpproxy(ctx, g, *cfgPath, *logMode)
		if err != nil {
			return err
		}
		defer store.Close()
		rd.Open = open
		rd.Records = store.Stats()
	default:
		return fmt.Errorf("%w: --kind %q: want noop or ampproxy", errUsage, *kind)
	}
	var ls []net.Listener
	for _, a := range listens {
		l, err := loadgen.Listen(a)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return err
		}
		ls = append(ls, l)
		rd.Addrs = append(rd.Addrs, loadgen.Addr(l))
	}
	for _, l := range ls {
		go g.Serve(l)
	}
	defer g.Stop()
	rd.Startup = time.Since(start)
	rd.Counters, _ = loadgen.ProcessCounters()
	gc := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	rtmetrics.Read(gc)
	rd.GOGC, rd.MemoryLimit = gc[0].Value.Uint64(), gc[1].Value.Uint64()
	enc := json.NewEncoder(stdout)
	if err := enc.Encode(rd); err != nil {
		return err
	}

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case line, ok := <-lines:
			if !ok {
				return nil
			}
			var s statsLine
			switch line {
			case "stats":
			case "gc":
				runtime.GC()
				m := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
				rtmetrics.Read(m)
				s.HeapLive = m[0].Value.Uint64()
			default:
				s.Error = fmt.Sprintf("unknown request %q", line)
			}
			s.ServerCounters, _ = loadgen.ProcessCounters()
			if err := enc.Encode(s); err != nil {
				return err
			}
		}
	}
}

// wireAmpproxy builds ampproxy's ext_proc server into g as
// cmd/ampproxy/serve.go does: config, encryption key, store, metrics,
// datapath.New (refresher, lockout table, ext_proc server), Register.
// The admin API, config reload and key-file polling
// are left out: none of them is on the request path.
func wireAmpproxy(ctx context.Context, g *grpc.Server, cfgPath, logMode string) (*tokens.Store, time.Duration, error) {
	if cfgPath == "" {
		return nil, 0, fmt.Errorf("%w: --kind ampproxy needs --config", errUsage)
	}
	var log *slog.Logger
	switch logMode {
	case "off":
		log = slog.New(slog.DiscardHandler)
	case "json":
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return nil, 0, err
		}
		// Buffered as serve buffers its log (internal/logbuf); the
		// process ends with the suite, so the writer is never closed.
		w := logbuf.New(f, logbuf.Options{})
		log = slog.New(w.Handler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})))
	default:
		return nil, 0, fmt.Errorf("%w: --log %q: want off or json", errUsage, logMode)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return nil, 0, err
	}
	key, err := tokens.LoadKey(cfg.Storage.EncryptionKeyFile, cfg.Storage.CreateKey)
	if err != nil {
		return nil, 0, err
	}
	t0 := time.Now()
	store, err := tokens.Open(cfg.Storage.Path, key, tokens.Options{})
	if err != nil {
		return nil, 0, err
	}
	open := time.Since(t0)
	// Per-request metrics are on the request path, so they are on here as
	// in serve; the store gauges are read only on a scrape and are left
	// out.
	met := metrics.New("bench")
	dp, err := datapath.New(datapath.Options{Config: func() *config.Config { return cfg }, Store: store, Logger: log, Metrics: met})
	if err != nil {
		store.Close()
		return nil, 0, err
	}
	dp.ExtProc.Register(g)
	// The refresher's background loop and the lockout writer run as in
	// serve; neither has work while the bench's token stays valid and no
	// 429 arrives, but their timers are part of the process.
	go dp.Refresher.Run(ctx)
	go dp.Lockouts.Run(ctx)
	return store, open, nil
}

// child is the suite's handle on one server process.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	ready ready

	mu sync.Mutex
}

// startChild starts "ampbench server args..." and waits for it to serve.
func startChild(ctx context.Context, name string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, append([]string{"server"}, args...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	if err := c.readLine(&c.ready, 5*time.Minute); err != nil {
		c.stop()
		return nil, fmt.Errorf("%s did not start: %w", name, err)
	}
	return c, nil
}

// readLine decodes the child's next line into v, waiting at most timeout.
func (c *child) readLine(v any, timeout time.Duration) error {
	type result struct {
		line []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		line, err := c.out.ReadBytes('\n')
		done <- result{line, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return r.err
		}
		return json.Unmarshal(r.line, v)
	case <-time.After(timeout):
		// The reader goroutine ends when stop closes the pipe.
		return errors.New("no answer")
	}
}

func (c *child) ask(req string) (statsLine, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s statsLine
	if _, err := io.WriteString(c.stdin, req+"\n"); err != nil {
		return s, fmt.Errorf("%s: %w", c.name, err)
	}
	if err := c.readLine(&s, 30*time.Second); err != nil {
		return s, fmt.Errorf("%s: %w", c.name, err)
	}
	if s.Error != "" {
		return s, fmt.Errorf("%s: %s", c.name, s.Error)
	}
	return s, nil
}

// stats is the child's loadgen.ServerStats.
func (c *child) stats() (loadgen.ServerCounters, error) {
	s, err := c.ask("stats")
	return s.ServerCounters, err
}

// addr returns the child's address on network ("tcp" or "unix").
func (c *child) addr(network string) string {
	for _, a := range c.ready.Addrs {
		if strings.HasPrefix(a, "unix://") == (network == "unix") {
			return a
		}
	}
	return ""
}

// stop closes the child's stdin, which ends it, and waits; a child that
// does not stop within 10 s is killed.
func (c *child) stop() {
	c.stdin.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// startProfiles starts a CPU profile and mutex sampling; the returned
// function stops them and writes the allocation and mutex profiles.
func startProfiles(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, "cpu.prof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	runtime.SetMutexProfileFraction(5)
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		for _, name := range []string{"allocs", "mutex"} {
			if out, err := os.Create(filepath.Join(dir, name+".prof")); err == nil {
				pprof.Lookup(name).WriteTo(out, 0)
				out.Close()
			}
		}
	}, nil
}
