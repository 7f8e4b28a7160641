package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ampproxy/ampproxy/internal/loadgen"
)

type suiteFlags struct {
	out       string
	goBin     string
	micro     string
	benchtime string
	round     time.Duration
	peakRound time.Duration
	warmup    time.Duration
	rounds    int
	levels    []int
	samples   int
	maxLevel  int
	scale     int
	skipMicro bool
	skipScale bool
}

func suiteCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("suite", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f suiteFlags
	fs.StringVar(&f.out, "out", "BENCHMARKS.md", "markdown file to write")
	fs.StringVar(&f.goBin, "go", "go", "go command for the micro-benchmarks")
	fs.StringVar(&f.micro, "micro", "./extproc/ ./tokens/ ./throttle/", "packages whose Go benchmarks run first (missing ones are skipped)")
	fs.StringVar(&f.benchtime, "benchtime", "", "go test -benchtime for the micro-benchmarks (default go's)")
	fs.DurationVar(&f.round, "round", 5*time.Second, "length of each measured run")
	fs.DurationVar(&f.peakRound, "peak-round", 2*time.Second, "length of each run while looking for the no-op server's peak concurrency")
	fs.DurationVar(&f.warmup, "warmup", 500*time.Millisecond, "unmeasured load before each run")
	fs.IntVar(&f.rounds, "rounds", 3, "rounds of each alternating comparison")
	levels := fs.String("levels", "1,2,4,8,16,32,64", "concurrency levels tried first for the no-op server's peak; the search goes on doubling past the last until throughput falls at two levels in a row")
	fs.IntVar(&f.samples, "peak-samples", 2, "runs per level in the peak search; a level counts with its median")
	fs.IntVar(&f.maxLevel, "max-level", 1024, "highest concurrency the peak search doubles up to")
	fs.IntVar(&f.scale, "scale", 100_000, "installations (and connections) in the scale store")
	fs.BoolVar(&f.skipMicro, "skip-micro", false, "skip the Go micro-benchmarks")
	fs.BoolVar(&f.skipScale, "skip-scale", false, "skip the scale figures")
	if err := parse(fs, args); err != nil {
		return err
	}
	var errs []error
	for _, s := range strings.Split(*levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("--levels: %q is not a positive number", s))
			continue
		}
		f.levels = append(f.levels, n)
	}
	if f.rounds < 1 {
		errs = append(errs, errors.New("--rounds must be at least 1"))
	}
	if f.samples < 1 {
		errs = append(errs, errors.New("--peak-samples must be at least 1"))
	}
	if f.maxLevel < 1 {
		errs = append(errs, errors.New("--max-level must be at least 1"))
	}
	if f.round <= 0 || f.peakRound <= 0 || f.warmup < 0 {
		errs = append(errs, errors.New("--round and --peak-round must be positive, --warmup not negative"))
	}
	if f.scale < 11 && !f.skipScale {
		errs = append(errs, errors.New("--scale must be above the 10 installations it is compared with"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	// The generator's own collections take CPU from the same cores as the
	// server under test, and charge both servers alike; fewer of them
	// leave more of the machine to the servers. The servers themselves
	// run with the runtime's settings (see ready.GOGC).
	debug.SetGCPercent(generatorGOGC)
	s := &suite{f: f, log: stderr, start: time.Now()}
	s.rep.Command = commandLine(args)
	s.rep.Warmup = f.warmup
	s.rep.GeneratorGOGC = generatorGOGC
	if err := s.run(ctx); err != nil {
		return err
	}
	md := s.rep.markdown()
	if err := os.WriteFile(f.out, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\nwrote %s\n", s.rep.targetsText(), f.out)
	return nil
}

// generatorGOGC is the suite process's GOGC.
const generatorGOGC = 400

// commandLine is how the suite was started, for the report.
func commandLine(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if a == "" || strings.ContainsAny(a, " \t'\"$") {
			quoted[i] = strconv.Quote(a)
		}
	}
	cmd := "go run ./cmd/ampbench suite " + strings.Join(quoted, " ")
	if os.Getenv("MAKELEVEL") != "" {
		cmd = "make bench, which runs " + cmd
	}
	return strings.TrimSpace(cmd)
}

type suite struct {
	f     suiteFlags
	log   io.Writer
	start time.Time
	rep   report

	noop, amp, ampLog *child
	small             *fixture
}

func (s *suite) progress(format string, args ...any) {
	fmt.Fprintf(s.log, "[%4.0fs] %s\n", time.Since(s.start).Seconds(), fmt.Sprintf(format, args...))
}

func (s *suite) run(ctx context.Context) (err error) {
	s.rep.Machine = readMachine()
	s.rep.Started = s.start
	defer func() { s.rep.Elapsed = time.Since(s.start) }()

	root := moduleRoot(ctx, s.f.goBin)
	s.rep.Revision = gitRevision(ctx, root)
	if !s.f.skipMicro {
		s.progress("Go micro-benchmarks")
		s.rep.Micro = s.microBenchmarks(ctx, root)
	}

	dir, err := os.MkdirTemp("", "ampbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var children []*child
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	spawn := func(name string, args ...string) (*child, error) {
		c, err := startChild(ctx, name, args...)
		if err == nil {
			children = append(children, c)
		}
		return c, err
	}

	// Measured before any server runs, while the suite process does
	// nothing else.
	if n, err := loadgen.DecodeAllocs(loadgen.Options{Target: "decode", Requests: 1, ProjectID: benchProject, APIKey: benchAPIKey,
		Installations: []loadgen.Installation{{Integration: keyIntegr, GroupRef: "g000001"}}}); err == nil {
		s.rep.DecodeAllocs = n
	}

	s.progress("writing the 10-installation store")
	smallDir := filepath.Join(dir, "small")
	if err := os.Mkdir(smallDir, 0o700); err != nil {
		return err
	}
	if s.small, err = writeFixture(smallDir, 10); err != nil {
		return err
	}
	if s.noop, err = spawn("no-op server", "--kind", "noop",
		"--listen", "127.0.0.1:0", "--listen", "unix://"+filepath.Join(dir, "noop.sock")); err != nil {
		return err
	}
	if s.amp, err = spawn("ampproxy", "--kind", "ampproxy", "--config", s.small.config,
		"--listen", "127.0.0.1:0", "--listen", "unix://"+filepath.Join(dir, "amp.sock")); err != nil {
		return err
	}
	// bbolt locks its file, so the second ampproxy needs a store of its
	// own; the fixture's group refs, and so the requests, are the same.
	logDir := filepath.Join(dir, "small-log")
	if err := os.Mkdir(logDir, 0o700); err != nil {
		return err
	}
	logged, err := writeFixture(logDir, 10)
	if err != nil {
		return err
	}
	if s.ampLog, err = spawn("ampproxy with request log", "--kind", "ampproxy", "--config", logged.config, "--log", "json",
		"--listen", "127.0.0.1:0"); err != nil {
		return err
	}
	s.rep.Small, s.rep.SmallFileBytes, s.rep.SmallPopulate = s.amp.ready, s.small.fileBytes, s.small.populate
	s.rep.NoopReady = s.noop.ready
	for _, c := range []*child{s.amp, s.ampLog} {
		if err := s.sanity(ctx, c); err != nil {
			return err
		}
	}

	if err := s.findPeak(ctx); err != nil {
		return err
	}
	if err := s.throughput(ctx); err != nil {
		return err
	}
	if err := s.latency(ctx); err != nil {
		return err
	}
	if !s.f.skipScale {
		if err := s.scale(ctx, dir, spawn); err != nil {
			return err
		}
	}
	return nil
}

// sanity makes sure ampproxy forwards both kinds of installation before
// anything is measured: a misconfigured fixture would otherwise measure
// error answers.
func (s *suite) sanity(ctx context.Context, c *child) error {
	for _, insts := range [][]loadgen.Installation{s.small.keyInsts, {s.small.oauth}} {
		r, err := loadgen.Run(ctx, s.options(c, "tcp", insts, 1, 0, 0, uint64(2*len(insts))))
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		if r.TotalErrors() != 0 {
			return fmt.Errorf("%s does not forward the fixture's requests: %v", c.name, r.Errors)
		}
	}
	return nil
}

func (s *suite) options(c *child, network string, insts []loadgen.Installation, workers int, rate float64, d time.Duration, n uint64) loadgen.Options {
	o := loadgen.Options{
		Target:        c.addr(network),
		Conns:         1,
		Workers:       workers,
		Duration:      d,
		Requests:      n,
		TargetRate:    rate,
		ProjectID:     benchProject,
		APIKey:        benchAPIKey,
		Installations: insts,
		ServerStats:   c.stats,
	}
	if d > 0 {
		o.Warmup = s.f.warmup
	}
	return o
}

// measure runs one measured load and files it under label.
func (s *suite) measure(ctx context.Context, label string, c *child, network string, insts []loadgen.Installation, workers int, rate float64, d time.Duration) (*loadgen.Result, error) {
	r, err := loadgen.Run(ctx, s.options(c, network, insts, workers, rate, d, 0))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	line := fmt.Sprintf("%-34s %6.0f req/s  p99 %-7s", label, r.RPS, loadgen.Dur(r.Latency.P99))
	if r.Server != nil {
		line += fmt.Sprintf("  %5.1f allocs/req  %s CPU/req", r.Server.AllocsPerRequest, loadgen.Dur(r.Server.CPUPerRequest))
	}
	if n := r.TotalErrors(); n > 0 {
		line += fmt.Sprintf("  %d errors %v", n, r.Errors)
	}
	s.progress("%s", line)
	return r, nil
}

// findPeak runs the no-op server at rising concurrency: the levels of
// --levels, then doubling past the last, until throughput has fallen
// below the best so far at two levels in a row (or --max-level). Each
// level runs --peak-samples times and counts with its median, so that one
// unlucky sample neither ends the search nor picks the peak.
func (s *suite) findPeak(ctx context.Context) error {
	best, falls := -1.0, 0
	for w := range peakLevels(s.f.levels, s.f.maxLevel) {
		l := levelRun{Workers: w}
		for i := 1; i <= s.f.samples; i++ {
			r, err := s.measure(ctx, fmt.Sprintf("peak search: no-op tcp ×%d (%d/%d)", w, i, s.f.samples), s.noop, "tcp", s.small.keyInsts, w, 0, s.f.peakRound)
			if err != nil {
				return err
			}
			l.Samples = append(l.Samples, r)
		}
		l.Result = medianRun(l.Samples)
		s.rep.Peak = append(s.rep.Peak, l)
		if l.Result.RPS > best {
			best, s.rep.PeakWorkers, falls = l.Result.RPS, w, 0
		} else if falls++; falls == 2 {
			break
		}
	}
	s.progress("no-op server peaks at %d concurrent streams", s.rep.PeakWorkers)
	return nil
}

// peakLevels yields levels in order, then doubles the last up to max.
func peakLevels(levels []int, max int) iter.Seq[int] {
	return func(yield func(int) bool) {
		last := 0
		for _, l := range levels {
			if !yield(l) {
				return
			}
			last = l
		}
		for l := last * 2; l <= max && last > 0; l *= 2 {
			if !yield(l) {
				return
			}
		}
	}
}

// medianRun is the run with the median throughput (the lower middle one
// of an even number).
func medianRun(rs []*loadgen.Result) *loadgen.Result {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b *loadgen.Result) int { return cmp.Compare(a.RPS, b.RPS) })
	return s[(len(s)-1)/2]
}

// throughput alternates the no-op server and ampproxy at the peak
// concurrency, each round in the other order, on both transports.
func (s *suite) throughput(ctx context.Context) error {
	w := s.rep.PeakWorkers
	s.rep.Throughput = map[string][]pair{}
	for r := 1; r <= s.f.rounds; r++ {
		for _, network := range []string{"tcp", "unix"} {
			var p pair
			order := []*child{s.noop, s.amp}
			if r%2 == 0 {
				order = []*child{s.amp, s.noop}
			}
			for _, c := range order {
				res, err := s.measure(ctx, fmt.Sprintf("round %d: %s %s ×%d", r, c.name, network, w), c, network, s.small.keyInsts, w, 0, s.f.round)
				if err != nil {
					return err
				}
				if c == s.noop {
					p.Base = res
				} else {
					p.Amp = res
				}
			}
			s.rep.Throughput[network] = append(s.rep.Throughput[network], p)
		}
	}
	var err error
	if s.rep.OAuth, err = s.measure(ctx, fmt.Sprintf("ampproxy OAuth2 tcp ×%d", w), s.amp, "tcp", []loadgen.Installation{s.small.oauth}, w, 0, s.f.round); err != nil {
		return err
	}
	s.rep.LogOn, err = s.measure(ctx, fmt.Sprintf("ampproxy with request log tcp ×%d", w), s.ampLog, "tcp", s.small.keyInsts, w, 0, s.f.round)
	return err
}

// latency runs both servers in an open loop at half the no-op server's
// peak rate over TCP.
func (s *suite) latency(ctx context.Context) error {
	var peaks []float64
	for _, p := range s.rep.Throughput["tcp"] {
		peaks = append(peaks, p.Base.RPS)
	}
	rate := median(peaks) / 2
	w := s.rep.PeakWorkers
	s.rep.LatencyRate, s.rep.LatencyWorkers = rate, w
	for r := 1; r <= s.f.rounds; r++ {
		var p pair
		order := []*child{s.noop, s.amp}
		if r%2 == 0 {
			order = []*child{s.amp, s.noop}
		}
		for _, c := range order {
			res, err := s.measure(ctx, fmt.Sprintf("latency %d: %s at %.0f/s", r, c.name, rate), c, "tcp", s.small.keyInsts, w, rate, s.f.round)
			if err != nil {
				return err
			}
			if c == s.noop {
				p.Base = res
			} else {
				p.Amp = res
			}
		}
		s.rep.Latency = append(s.rep.Latency, p)
	}
	return nil
}

// scale writes a store of f.scale installations, starts ampproxy on it in
// a fresh process (startup and memory), and alternates it with the
// 10-installation ampproxy, every request for another installation.
func (s *suite) scale(ctx context.Context, dir string, spawn func(string, ...string) (*child, error)) error {
	sc := &scaleReport{N: s.f.scale}
	s.rep.Scale = sc
	s.progress("writing a store of %d installations", s.f.scale)
	bigDir := filepath.Join(dir, "big")
	if err := os.Mkdir(bigDir, 0o700); err != nil {
		return err
	}
	big, err := writeFixture(bigDir, s.f.scale)
	if err != nil {
		return err
	}
	sc.Populate, sc.FileBytes = big.populate, big.fileBytes
	s.progress("store written in %s; starting ampproxy on it", big.populate.Round(time.Millisecond))
	c, err := spawn(fmt.Sprintf("ampproxy, %d installations", s.f.scale), "--kind", "ampproxy", "--config", big.config, "--listen", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sc.Ready = c.ready
	s.progress("started in %s (store open %s), RSS %s", c.ready.Startup.Round(time.Millisecond), c.ready.Open.Round(time.Millisecond), loadgen.Bytes(float64(c.ready.Counters.RSS)))
	gc, err := c.ask("gc")
	if err != nil {
		return err
	}
	sc.HeapLive, sc.RSSAfterGC = gc.HeapLive, gc.RSS

	w := s.rep.PeakWorkers
	for r := 1; r <= s.f.rounds; r++ {
		var p pair
		order := []*child{s.amp, c}
		if r%2 == 0 {
			order = []*child{c, s.amp}
		}
		for _, cc := range order {
			insts := s.small.keyInsts
			if cc == c {
				insts = big.keyInsts
			}
			res, err := s.measure(ctx, fmt.Sprintf("scale %d: %s ×%d", r, cc.name, w), cc, "tcp", insts, w, 0, s.f.round)
			if err != nil {
				return err
			}
			if cc == c {
				p.Amp = res
			} else {
				p.Base = res // the baseline here is the 10-installation ampproxy
			}
		}
		sc.Rounds = append(sc.Rounds, p)
	}
	end, err := c.stats()
	if err != nil {
		return err
	}
	sc.End = end
	return nil
}

// microBenchmarks runs the hot path's Go benchmarks of the packages that
// exist.
func (s *suite) microBenchmarks(ctx context.Context, root string) *microResult {
	m := &microResult{}
	if root == "" {
		m.Err = "not inside the ampproxy module; skipped"
		return m
	}
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem"}
	if s.f.benchtime != "" {
		args = append(args, "-benchtime", s.f.benchtime)
	}
	for _, p := range strings.Fields(s.f.micro) {
		if hasGoFiles(filepath.Join(root, p)) {
			args = append(args, p)
			m.Packages = append(m.Packages, p)
		} else {
			m.Skipped = append(m.Skipped, p)
		}
	}
	m.Command = s.f.goBin + " " + strings.Join(quoteArgs(args), " ")
	if len(m.Packages) == 0 {
		m.Err = "none of the packages exists"
		return m
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, s.f.goBin, args...)
	cmd.Dir = root
	cmd.Stdout = io.MultiWriter(&out, s.log)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		m.Err = err.Error()
	}
	m.Output = out.String()
	return m
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if strings.ContainsAny(a, "^$ *") {
			out[i] = "'" + a + "'"
		}
	}
	return out
}

func hasGoFiles(dir string) bool {
	ms, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	return len(ms) > 0
}

// moduleRoot is the directory of the main module's go.mod, or "".
func moduleRoot(ctx context.Context, goBin string) string {
	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return ""
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return ""
	}
	return filepath.Dir(mod)
}

// gitRevision is the checked-out commit, marked dirty when the tree has
// changes; "" outside a git checkout.
func gitRevision(ctx context.Context, dir string) string {
	if dir == "" {
		return ""
	}
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return ""
	}
	rev := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		rev += " with uncommitted changes"
	}
	return rev
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
