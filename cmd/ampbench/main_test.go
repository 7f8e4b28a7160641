package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/internal/loadgen"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no command given"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"suite", "--levels", "1,x", "--rounds", "0"}, 2, `"x" is not a positive number`},
		{[]string{"server", "--kind", "noop"}, 2, "server needs --listen"},
		{[]string{"load", "--target", "127.0.0.1:1", "--duration", "0"}, 1, "one of duration and requests"},
		{[]string{"help"}, 0, ""},
	} {
		var out, errb strings.Builder
		code := Main(context.Background(), tc.args, strings.NewReader(""), &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
}

// runServer runs "ampbench server args..." in-process, speaking its
// protocol over pipes, and returns the ready line and a way to ask.
func runServer(t *testing.T, args ...string) (ready, func(string) statsLine) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	var errb strings.Builder
	go func() {
		done <- Main(context.Background(), append([]string{"server"}, args...), inR, outW, &errb)
		outW.Close()
	}()
	t.Cleanup(func() {
		inW.Close()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("server exit %d: %s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop when its stdin closed")
		}
	})
	out := bufio.NewReader(outR)
	next := func(v any) {
		t.Helper()
		line, err := out.ReadBytes('\n')
		if err != nil {
			t.Fatalf("reading the server: %v (stderr %s)", err, errb.String())
		}
		if err := json.Unmarshal(line, v); err != nil {
			t.Fatal(err)
		}
	}
	var rd ready
	next(&rd)
	ask := func(req string) statsLine {
		t.Helper()
		if _, err := io.WriteString(inW, req+"\n"); err != nil {
			t.Fatal(err)
		}
		var s statsLine
		next(&s)
		return s
	}
	return rd, ask
}

func TestServerProtocol(t *testing.T) {
	sock := "unix://" + filepath.Join(t.TempDir(), "noop.sock")
	rd, ask := runServer(t, "--kind", "noop", "--listen", "127.0.0.1:0", "--listen", sock)
	if len(rd.Addrs) != 2 || rd.Addrs[1] != sock || rd.Startup <= 0 || rd.Counters.Allocs == 0 {
		t.Fatalf("ready line %+v", rd)
	}
	before := ask("stats")
	r, err := loadgen.Run(context.Background(), loadgen.Options{
		Target: rd.Addrs[0], Requests: 20, ProjectID: "p", APIKey: "k",
		Installations: []loadgen.Installation{{ID: "i"}},
	})
	if err != nil || r.Requests != 20 {
		t.Fatalf("run: %v %+v", err, r)
	}
	after := ask("gc")
	if after.Allocs <= before.Allocs || after.HeapLive == 0 {
		t.Errorf("counters did not move: %+v then %+v", before, after)
	}
	if s := ask("bogus"); !strings.Contains(s.Error, "unknown request") {
		t.Errorf("bogus request answered %+v", s)
	}
}

// The suite's fixture and wiring give an ampproxy that forwards both kinds
// of installation; if extproc or tokens change under it, this fails
// before a benchmark measures error answers.
func TestAmpproxyFixture(t *testing.T) {
	f, err := writeFixture(t.TempDir(), 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.keyInsts) != 3 || f.fileBytes == 0 {
		t.Fatalf("fixture %+v", f)
	}
	rd, _ := runServer(t, "--kind", "ampproxy", "--config", f.config, "--log", "json", "--listen", "127.0.0.1:0")
	if rd.Records.Installations != 4 || rd.Records.Connections != 4 || rd.Open <= 0 {
		t.Fatalf("ready line %+v", rd)
	}
	for _, insts := range [][]loadgen.Installation{f.keyInsts, {f.oauth}} {
		r, err := loadgen.Run(context.Background(), loadgen.Options{
			Target: rd.Addrs[0], Requests: 9, Workers: 3, ProjectID: benchProject, APIKey: benchAPIKey, Installations: insts,
		})
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests != 9 || r.TotalErrors() != 0 {
			t.Errorf("%v: %d requests, errors %v", insts, r.Requests, r.Errors)
		}
	}
	// A wrong key must be refused, or the fixture proves nothing.
	r, err := loadgen.Run(context.Background(), loadgen.Options{
		Target: rd.Addrs[0], Requests: 1, ProjectID: benchProject, APIKey: "wrong", Installations: f.keyInsts,
	})
	if err != nil || r.Errors["immediate 401"] != 1 {
		t.Errorf("wrong key: %v %v", err, r)
	}
}

func result(rps float64, p99 time.Duration, allocs float64, cpu time.Duration) *loadgen.Result {
	return &loadgen.Result{RPS: rps, Latency: loadgen.Latency{P99: p99},
		Server: &loadgen.ServerCost{AllocsPerRequest: allocs, CPUPerRequest: cpu}}
}

func TestReportNeverHidesAMiss(t *testing.T) {
	r := &report{
		Command: "go run ./cmd/ampbench suite", Started: time.Now(), PeakWorkers: 8,
		GeneratorGOGC: 400, DecodeAllocs: 55,
		NoopReady: ready{GOGC: 100, MemoryLimit: math.MaxInt64}, Small: ready{GOGC: 100, MemoryLimit: math.MaxInt64},
		Machine: machine{Cores: 2, CPU: "test CPU"},
		Peak:    []levelRun{{Workers: 8, Result: result(1000, time.Millisecond, 100, 50*time.Microsecond)}},
		Throughput: map[string][]pair{
			"tcp":  {{Base: result(1000, time.Millisecond, 100, 50*time.Microsecond), Amp: result(700, 2*time.Millisecond, 130, 80*time.Microsecond)}},
			"unix": {{Base: result(1100, time.Millisecond, 100, 50*time.Microsecond), Amp: result(1000, time.Millisecond, 130, 60*time.Microsecond)}},
		},
		OAuth:       result(690, 2*time.Millisecond, 135, 82*time.Microsecond),
		LatencyRate: 500,
		Latency:     []pair{{Base: result(500, time.Millisecond, 100, 50*time.Microsecond), Amp: result(500, 1100*time.Microsecond, 130, 60*time.Microsecond)}},
	}
	md := r.markdown()
	for _, want := range []string{
		"| Throughput, TCP, at the no-op server's peak concurrency | ≥ 0.85 × no-op | 0.70 × ",
		"| **missed** (note 1) |",
		"| p99 latency at 50% of the no-op server's peak rate (open loop, TCP) | ≤ 1.25 × no-op | 1.10 × ",
		"130.0 in the server process; 30.0 above the no-op server's 100.0",
		"The no-op server, which does nothing but answer, allocates 100.0 per request, of which 55.0 are protobuf-go decoding",
		"ampproxy's own share above that floor is 30.0.",
		"has not been done, and by these figures it would not be enough: the 45.0 that are not decoding are already above 40",
		"| garbage collector | both servers GOGC=100, no GOMEMLIMIT (Go's defaults); the load generator GOGC=400 |",
		"median of per-round ratios 0.70",
		"| 100,000 installations: startup | < 3 s | skipped | not measured |",
		"test CPU, 2 cores",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if n := strings.Count(md, "**missed**"); n != 3 {
		t.Errorf("%d misses reported, want 3 (throughput and both allocation targets)", n)
	}
}

// TestReportInconclusiveOnNoisyMachine: rounds that vary by more than a
// quarter, or a busy machine, turn a timing verdict into "inconclusive"
// while the figures stay; allocation counts are judged all the same.
func TestReportInconclusiveOnNoisyMachine(t *testing.T) {
	steady := []pair{
		{Base: result(1000, time.Millisecond, 100, 50*time.Microsecond), Amp: result(700, 2*time.Millisecond, 130, 80*time.Microsecond)},
		{Base: result(1010, time.Millisecond, 100, 50*time.Microsecond), Amp: result(710, 2*time.Millisecond, 130, 80*time.Microsecond)},
	}
	noisy := []pair{steady[0], {Base: result(1500, time.Millisecond, 100, 50*time.Microsecond), Amp: result(700, 2*time.Millisecond, 130, 80*time.Microsecond)}}
	verdicts := func(r *report) (string, string) {
		ts := r.targets()
		return ts[0].verdict(), ts[2].verdict() // throughput, API-key allocations
	}
	for _, tc := range []struct {
		name       string
		rounds     []pair
		load       string
		throughput string
	}{
		{"quiet", steady, "0.50 0.40 0.30", "**missed**"},
		{"rounds vary", noisy, "0.50 0.40 0.30", "inconclusive (noisy machine)"},
		{"busy machine", steady, "3.10 2.00 1.00", "inconclusive (noisy machine)"},
	} {
		r := &report{PeakWorkers: 8, Machine: machine{Cores: 2, LoadBefore: tc.load}, Throughput: map[string][]pair{"tcp": tc.rounds}}
		th, al := verdicts(r)
		if th != tc.throughput || al != "**missed**" {
			t.Errorf("%s: throughput %q, allocations %q; want %q and a miss", tc.name, th, al, tc.throughput)
		}
		if md := r.markdown(); !strings.Contains(md, " req/s, medians of 2 rounds at 8 streams); median of per-round ratios ") || !strings.Contains(md, "| "+tc.throughput) {
			t.Errorf("%s: the figures are gone:\n%s", tc.name, md)
		}
	}
}

func TestPeakLevels(t *testing.T) {
	var got []int
	for l := range peakLevels([]int{1, 4, 16}, 100) {
		got = append(got, l)
	}
	if want := []int{1, 4, 16, 32, 64}; !slices.Equal(got, want) {
		t.Errorf("levels %v, want %v", got, want)
	}
}
