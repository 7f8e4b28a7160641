package throttle

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/tokens"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind by the tests:\n\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines returns the stacks of goroutines that still run code of
// this package, apart from TestMain's own.
func leakedGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ampproxy/throttle.") && !strings.Contains(g, "throttle.TestMain") {
			leaked = append(leaked, g)
		}
	}
	return strings.Join(leaked, "\n\n")
}

// bg is the context of Observe429 calls that no one abandons.
var bg = context.Background()

// t0 is the tests' "now": 2026-03-01 12:00:00 UTC, epoch 1772366400.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const t0Epoch = 1772366400

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func newTable(tb testing.TB, o Options) *Table {
	tb.Helper()
	tab, err := New(o)
	if err != nil {
		tb.Fatal(err)
	}
	return tab
}

// run starts tab.Run and stops it when the test ends.
func run(tb testing.TB, tab *Table) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tab.Run(ctx)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	// Run is active once it takes a batch: wait for that, not for time.
	for {
		tab.qmu.Lock()
		r := tab.running
		tab.qmu.Unlock()
		if r {
			return
		}
		runtime.Gosched()
	}
}

var (
	rlGitHubLike = catalog.RateLimit{
		ResetHeaders:   []catalog.ResetHeader{{Name: "x-ratelimit-reset", Format: catalog.ResetEpochSeconds}},
		LockoutMarkers: []string{"x-token-locked"},
	}
	rlMillis = catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{{Name: "x-reset-ms", Format: catalog.ResetEpochMillis}}}
	rlDelta  = catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{{Name: "ratelimit-reset", Format: catalog.ResetDeltaSeconds}}}
	rlTwo    = catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{
		{Name: "x-ratelimit-reset", Format: catalog.ResetEpochSeconds},
		{Name: "ratelimit-reset", Format: catalog.ResetDeltaSeconds},
	}}
)

func epoch(d time.Duration) string { return fmt.Sprint(t0.Add(d).Unix()) }

func TestWindowEnd(t *testing.T) {
	const def, maxW = 60 * time.Second, time.Hour
	tests := []struct {
		name      string
		rl        catalog.RateLimit
		headers   Pairs
		want      time.Duration // from t0
		retryable bool
	}{
		{"no headers: default", rlGitHubLike, nil, def, true},
		{"retry-after delta", catalog.RateLimit{}, Pairs{{"retry-after", "3"}}, 3 * time.Second, true},
		{"retry-after delta with spaces", catalog.RateLimit{}, Pairs{{"retry-after", " 7 "}}, 7 * time.Second, true},
		{"retry-after fraction", catalog.RateLimit{}, Pairs{{"retry-after", "1.5"}}, 1500 * time.Millisecond, true},
		{"retry-after IMF-fixdate", catalog.RateLimit{}, Pairs{{"retry-after", t0.Add(90 * time.Second).Format(http.TimeFormat)}}, 90 * time.Second, true},
		{"retry-after RFC 850 date", catalog.RateLimit{}, Pairs{{"retry-after", "Sunday, 01-Mar-26 12:02:00 GMT"}}, 2 * time.Minute, true},
		{"retry-after asctime date", catalog.RateLimit{}, Pairs{{"retry-after", "Sun Mar  1 12:03:00 2026"}}, 3 * time.Minute, true},
		{"retry-after in the past: minimal window", catalog.RateLimit{}, Pairs{{"retry-after", t0.Add(-time.Minute).Format(http.TimeFormat)}}, MinWindow, true},
		{"retry-after now: minimal window", catalog.RateLimit{}, Pairs{{"retry-after", t0.Format(http.TimeFormat)}}, MinWindow, true},
		{"retry-after zero: minimal window", catalog.RateLimit{}, Pairs{{"retry-after", "0"}}, MinWindow, true},
		{"retry-after under a second: minimal window", catalog.RateLimit{}, Pairs{{"retry-after", "0.25"}}, MinWindow, true},
		{"retry-after zero, reset later: reset wins", rlGitHubLike, Pairs{{"retry-after", "0"}, {"x-ratelimit-reset", epoch(30 * time.Second)}}, 30 * time.Second, true},
		{"retry-after date in UTC", catalog.RateLimit{}, Pairs{{"retry-after", "Sun, 01 Mar 2026 12:01:40 UTC"}}, 100 * time.Second, true},
		{"retry-after date at +0000", catalog.RateLimit{}, Pairs{{"retry-after", "Sun, 01 Mar 2026 12:01:40 +0000"}}, 100 * time.Second, true},
		{"retry-after date at +0200", catalog.RateLimit{}, Pairs{{"retry-after", "Sun, 01 Mar 2026 14:01:40 +0200"}}, 100 * time.Second, true},
		{"retry-after date in another zone name: default", catalog.RateLimit{}, Pairs{{"retry-after", "Sun, 01 Mar 2026 12:01:40 PST"}}, def, true},
		{"retry-after garbage: default", catalog.RateLimit{}, Pairs{{"retry-after", "soon"}}, def, true},
		{"retry-after negative: default", catalog.RateLimit{}, Pairs{{"retry-after", "-5"}}, def, true},
		{"retry-after exponent: default", catalog.RateLimit{}, Pairs{{"retry-after", "1e3"}}, def, true},
		{"epoch seconds", rlGitHubLike, Pairs{{"x-ratelimit-reset", epoch(5 * time.Minute)}}, 5 * time.Minute, true},
		{"epoch seconds with fraction", rlGitHubLike, Pairs{{"x-ratelimit-reset", epoch(5*time.Minute) + ".25"}}, 5*time.Minute + 250*time.Millisecond, true},
		{"epoch millis", rlMillis, Pairs{{"x-reset-ms", epoch(2*time.Minute) + "500"}}, 2*time.Minute + 500*time.Millisecond, true},
		{"millis under epochSeconds", rlGitHubLike, Pairs{{"x-ratelimit-reset", epoch(2*time.Minute) + "000"}}, 2 * time.Minute, true},
		{"seconds under epochMillis", rlMillis, Pairs{{"x-reset-ms", epoch(4 * time.Minute)}}, 4 * time.Minute, true},
		{"small value under epochMillis is 1970: default", rlMillis, Pairs{{"x-reset-ms", "30"}}, def, true},
		{"delta under epochSeconds", rlGitHubLike, Pairs{{"x-ratelimit-reset", "42"}}, 42 * time.Second, true},
		{"delta seconds", rlDelta, Pairs{{"ratelimit-reset", "17"}}, 17 * time.Second, true},
		{"epoch under deltaSeconds", rlDelta, Pairs{{"ratelimit-reset", epoch(10 * time.Minute)}}, 10 * time.Minute, true},
		{"past epoch: default", rlGitHubLike, Pairs{{"x-ratelimit-reset", epoch(-time.Minute)}}, def, true},
		{"epoch now: default", rlGitHubLike, Pairs{{"x-ratelimit-reset", epoch(0)}}, def, true},
		{"garbage reset: default", rlGitHubLike, Pairs{{"x-ratelimit-reset", "tomorrow"}}, def, true},
		{"reset header not in catalog ignored", catalog.RateLimit{}, Pairs{{"x-ratelimit-reset", epoch(5 * time.Minute)}}, def, true},
		{"catalog name in upper case", catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{{Name: "X-RateLimit-Reset", Format: catalog.ResetEpochSeconds}}}, Pairs{{"x-ratelimit-reset", epoch(5 * time.Minute)}}, 5 * time.Minute, true},
		{"longest wins: retry-after", rlTwo, Pairs{{"retry-after", "600"}, {"x-ratelimit-reset", epoch(time.Minute)}, {"ratelimit-reset", "30"}}, 10 * time.Minute, true},
		{"longest wins: epoch", rlTwo, Pairs{{"retry-after", "6"}, {"x-ratelimit-reset", epoch(20 * time.Minute)}, {"ratelimit-reset", "30"}}, 20 * time.Minute, true},
		{"longest wins: delta", rlTwo, Pairs{{"retry-after", "6"}, {"x-ratelimit-reset", epoch(time.Minute)}, {"ratelimit-reset", "300"}}, 5 * time.Minute, true},
		{"longest usable wins over garbage", rlTwo, Pairs{{"retry-after", "x"}, {"x-ratelimit-reset", epoch(-time.Hour)}, {"ratelimit-reset", "8"}}, 8 * time.Second, true},
		{"shorter than default is kept", catalog.RateLimit{}, Pairs{{"retry-after", "1"}}, time.Second, true},
		{"exactly max: retryable", catalog.RateLimit{}, Pairs{{"retry-after", "3600"}}, maxW, true},
		{"beyond max: capped, not retryable", catalog.RateLimit{}, Pairs{{"retry-after", "3601"}}, maxW, false},
		{"huge delta: capped", catalog.RateLimit{}, Pairs{{"retry-after", "99999999999999999999999999"}}, maxW, false},
		{"far epoch: capped", rlGitHubLike, Pairs{{"x-ratelimit-reset", epoch(48 * time.Hour)}}, maxW, false},
		{"lockout marker: not retryable", rlGitHubLike, Pairs{{"retry-after", "5"}, {"x-token-locked", "1"}}, 5 * time.Second, false},
		{"lockout marker, no hint: default, not retryable", rlGitHubLike, Pairs{{"x-token-locked", ""}}, def, false},
		{"marker not in catalog ignored", catalog.RateLimit{}, Pairs{{"x-token-locked", "1"}}, def, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end, retryable := windowEnd(tt.headers, tt.rl, t0, def, maxW)
			if got := end.Sub(t0); got != tt.want || retryable != tt.retryable {
				t.Errorf("window = %s retryable=%t, want %s retryable=%t", got, retryable, tt.want, tt.retryable)
			}
		})
	}
}

// TestWindowEndPairsResetWithRemaining: a reset header is ignored when the
// same 429 carries its bucket's remaining header above zero, so a 429 from
// a short bucket is not locked until a long bucket's reset.
func TestWindowEndPairsResetWithRemaining(t *testing.T) {
	const def, maxW = 60 * time.Second, 24 * time.Hour
	exact := catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{
		{Name: "X-RateLimit-Minutely-Reset", Format: catalog.ResetEpochMillis},
		{Name: "X-RateLimit-Reset", Format: catalog.ResetEpochMillis},
	}}
	millis := func(d time.Duration) string { return fmt.Sprint(t0.Add(d).UnixMilli()) }
	tests := []struct {
		name    string
		rl      catalog.RateLimit
		headers Pairs
		want    time.Duration
	}{
		{"GitHub secondary limit: Retry-After, primary bucket not exhausted", rlGitHubLike,
			Pairs{{"retry-after", "60"}, {"x-ratelimit-remaining", "4999"}, {"x-ratelimit-reset", epoch(50 * time.Minute)}}, 60 * time.Second},
		{"GitHub primary limit exhausted", rlGitHubLike,
			Pairs{{"x-ratelimit-remaining", "0"}, {"x-ratelimit-reset", epoch(50 * time.Minute)}}, 50 * time.Minute},
		{"Exact Online: minutely exhausted, daily not", exact,
			Pairs{{"x-ratelimit-minutely-remaining", "0"}, {"x-ratelimit-minutely-reset", millis(40 * time.Second)},
				{"x-ratelimit-remaining", "4980"}, {"x-ratelimit-reset", millis(14 * time.Hour)}}, 40 * time.Second},
		{"Exact Online: daily exhausted", exact,
			Pairs{{"x-ratelimit-minutely-remaining", "59"}, {"x-ratelimit-minutely-reset", millis(40 * time.Second)},
				{"x-ratelimit-remaining", "0"}, {"x-ratelimit-reset", millis(14 * time.Hour)}}, 14 * time.Hour},
		{"remaining with a fraction above zero", rlGitHubLike,
			Pairs{{"x-ratelimit-remaining", "0.5"}, {"x-ratelimit-reset", epoch(50 * time.Minute)}}, def},
		{"remaining that does not parse: reset kept", rlGitHubLike,
			Pairs{{"x-ratelimit-remaining", "lots"}, {"x-ratelimit-reset", epoch(50 * time.Minute)}}, 50 * time.Minute},
		{"no remaining header: reset kept", rlGitHubLike,
			Pairs{{"x-ratelimit-reset", epoch(50 * time.Minute)}}, 50 * time.Minute},
		{"name without reset is never paired", catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{{Name: "x-ratelimit-retry-after", Format: catalog.ResetDeltaSeconds}}},
			Pairs{{"x-ratelimit-retry-after", "30"}, {"x-ratelimit-remaining", "10"}}, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end, _ := windowEnd(tt.headers, tt.rl, t0, def, maxW)
			if got := end.Sub(t0); got != tt.want {
				t.Errorf("window = %s, want %s", got, tt.want)
			}
		})
	}
	// Through Observe429 with a controlled clock: the GitHub secondary
	// limit's window is the 60 s of Retry-After.
	clk := newClock()
	tab := newTable(t, Options{Now: clk.Now})
	w, err := tab.Observe429(bg, "conn-gh", "github", tests[0].headers, rlGitHubLike, clk.Now())
	if err != nil || !w.Until.Equal(t0.Add(60*time.Second)) {
		t.Errorf("Observe429 = %+v, %v; want a window to +60s", w, err)
	}
	clk.Set(t0.Add(61 * time.Second))
	if _, open := tab.Check("conn-gh", clk.Now()); open {
		t.Error("window still open after 61 s")
	}
}

func TestWindowEndNilHeaders(t *testing.T) {
	end, retryable := windowEnd(nil, rlGitHubLike, t0, time.Minute, time.Hour)
	if !end.Equal(t0.Add(time.Minute)) || !retryable {
		t.Errorf("got %s %t", end, retryable)
	}
}

func TestParseDecimal(t *testing.T) {
	tests := []struct {
		in           string
		whole, nanos int64
		ok           bool
	}{
		{"0", 0, 0, true},
		{"12", 12, 0, true},
		{"12.5", 12, 5e8, true},
		{"1.000000001", 1, 1, true},
		{"1.0000000019", 1, 1, true},
		{"99999999999999999999", maxWhole, 0, true},
		{"", 0, 0, false},
		{".5", 0, 0, false},
		{"5.", 0, 0, false},
		{"+5", 0, 0, false},
		{"-5", 0, 0, false},
		{"5 ", 0, 0, false},
		{"5e2", 0, 0, false},
		{"0x10", 0, 0, false},
		{"1.2.3", 0, 0, false},
		{strings.Repeat("1", 65), 0, 0, false},
	}
	for _, tt := range tests {
		w, n, ok := parseDecimal(tt.in)
		if w != tt.whole || n != tt.nanos || ok != tt.ok {
			t.Errorf("parseDecimal(%q) = %d, %d, %t; want %d, %d, %t", tt.in, w, n, ok, tt.whole, tt.nanos, tt.ok)
		}
	}
}

func FuzzWindowEnd(f *testing.F) {
	for _, s := range []string{"3", "1.5", "Sun, 01 Mar 2026 12:01:00 GMT", "1772366460", "1772366460000", "", "x", "99999999999999999999", "0.0000000001"} {
		f.Add(s, s)
	}
	rl := catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{
		{Name: "a", Format: catalog.ResetEpochSeconds},
		{Name: "b", Format: catalog.ResetEpochMillis},
		{Name: "c", Format: catalog.ResetDeltaSeconds},
	}}
	f.Fuzz(func(t *testing.T, retryAfter, reset string) {
		h := Pairs{{"retry-after", retryAfter}, {"a", reset}, {"b", reset}, {"c", reset}}
		end, retryable := windowEnd(h, rl, t0, time.Minute, time.Hour)
		if d := end.Sub(t0); d <= 0 || d > time.Hour {
			t.Fatalf("window %s outside (0, 1h]", d)
		}
		if end.Sub(t0) < time.Hour && !retryable {
			t.Fatalf("not retryable below the cap")
		}
	})
}

func TestObserveExtendsNeverShortens(t *testing.T) {
	type step struct {
		at        time.Duration // from t0
		retryAt   string
		marker    bool
		want      time.Duration // window end from t0
		retryable bool
		opened    bool // OnOpen called
		extended  bool // OnExtend called
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"longer extends", []step{
			{0, "10", false, 10 * time.Second, true, true, false},
			{time.Second, "30", false, 31 * time.Second, true, false, true},
		}},
		{"shorter keeps end", []step{
			{0, "30", false, 30 * time.Second, true, true, false},
			{time.Second, "5", false, 30 * time.Second, true, false, false},
		}},
		{"equal keeps end", []step{
			{0, "30", false, 30 * time.Second, true, true, false},
			{10 * time.Second, "20", false, 30 * time.Second, true, false, false},
		}},
		{"not retryable sticks while open", []step{
			{0, "30", true, 30 * time.Second, false, true, false},
			{time.Second, "60", false, 61 * time.Second, false, false, true},
			{2 * time.Second, "1", false, 61 * time.Second, false, false, false},
		}},
		{"marker on a shorter 429 makes the window not retryable", []step{
			{0, "30", false, 30 * time.Second, true, true, false},
			{time.Second, "1", true, 30 * time.Second, false, false, false},
		}},
		{"after the end a new window starts afresh", []step{
			{0, "30", true, 30 * time.Second, false, true, false},
			{30 * time.Second, "5", false, 35 * time.Second, true, true, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opened, extended []string
			tab := newTable(t, Options{
				OnOpen:   func(p string) { opened = append(opened, p) },
				OnExtend: func(p string) { extended = append(extended, p) },
			})
			for i, s := range tt.steps {
				h := Pairs{{"retry-after", s.retryAt}}
				if s.marker {
					h = append(h, [2]string{"x-token-locked", "yes"})
				}
				before, beforeExt := len(opened), len(extended)
				w, err := tab.Observe429(bg, "conn-1", "github", h, rlGitHubLike, t0.Add(s.at))
				if err != nil {
					t.Fatal(err)
				}
				if !w.Until.Equal(t0.Add(s.want)) || w.Retryable != s.retryable || w.Provider != "github" || w.ConnectionID != "conn-1" {
					t.Errorf("step %d: got %+v, want end +%s retryable=%t", i, w, s.want, s.retryable)
				}
				if got := len(opened) > before; got != s.opened {
					t.Errorf("step %d: OnOpen called = %t, want %t", i, got, s.opened)
				}
				if got := len(extended) > beforeExt; got != s.extended {
					t.Errorf("step %d: OnExtend called = %t, want %t", i, got, s.extended)
				}
				c, open := tab.Check("conn-1", t0.Add(s.at))
				if !open || c != w {
					t.Errorf("step %d: Check = %+v, %t; want %+v", i, c, open, w)
				}
			}
		})
	}
}

func TestCheck(t *testing.T) {
	tab := newTable(t, Options{})
	if _, open := tab.Check("conn-1", t0); open {
		t.Fatal("empty table has an open window")
	}
	w, err := tab.Observe429(bg, "conn-1", "hubspot", Pairs{{"retry-after", "3"}}, catalog.RateLimit{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if w.Until.Location() != time.UTC {
		t.Errorf("Until in %s, want UTC", w.Until.Location())
	}
	tests := []struct {
		conn string
		at   time.Duration
		open bool
	}{
		{"conn-1", 0, true},
		{"conn-1", 2999 * time.Millisecond, true},
		{"conn-1", 3 * time.Second, false},
		{"conn-1", time.Hour, false},
		{"conn-2", 0, false}, // same provider, other connection
		{"", 0, false},
	}
	for _, tt := range tests {
		got, open := tab.Check(tt.conn, t0.Add(tt.at))
		if open != tt.open {
			t.Errorf("Check(%q, +%s) open = %t, want %t", tt.conn, tt.at, open, tt.open)
		}
		if open && got != w {
			t.Errorf("Check(%q, +%s) = %+v, want %+v", tt.conn, tt.at, got, w)
		}
	}
	if _, err := tab.Observe429(bg, "", "hubspot", nil, catalog.RateLimit{}, t0); err == nil {
		t.Error("Observe429 without a connection ID: no error")
	}
}

func TestSweep(t *testing.T) {
	tab := newTable(t, Options{})
	const n = 10_000
	for i := range n {
		// Half the windows end after 10 s, half after 20 s.
		d := 10 + 10*(i%2)
		if _, err := tab.Observe429(bg, fmt.Sprint("c", i), "p", Pairs{{"retry-after", fmt.Sprint(d)}}, catalog.RateLimit{}, t0); err != nil {
			t.Fatal(err)
		}
	}
	if got := tab.Open(); got != n {
		t.Fatalf("Open = %d, want %d", got, n)
	}
	if got := tab.sweep(t0.Add(9 * time.Second)); len(got) != 0 {
		t.Errorf("sweep before any end dropped %d", len(got))
	}
	got := tab.sweep(t0.Add(10 * time.Second))
	if len(got) != n/2 || tab.Open() != n/2 {
		t.Errorf("sweep at 10 s dropped %d, left %d; want %d and %d", len(got), tab.Open(), n/2, n/2)
	}
	if _, open := tab.Check("c1", t0.Add(15*time.Second)); !open {
		t.Error("c1 (20 s) closed after the sweep at 10 s")
	}
	got = tab.sweep(t0.Add(20 * time.Second))
	if len(got) != n/2 || tab.Open() != 0 {
		t.Errorf("sweep at 20 s dropped %d, left %d", len(got), tab.Open())
	}
	n2 := 0
	tab.m.Range(func(any, any) bool { n2++; return true })
	if n2 != 0 {
		t.Errorf("%d entries left in the map", n2)
	}
}

// fakePersister counts transactions; a save may be held until released.
type fakePersister struct {
	mu      sync.Mutex
	saved   map[string]Window
	saves   int
	deletes [][]string
	failing bool

	hold    chan struct{} // when set, SaveLockouts waits on it
	entered chan struct{} // when set, SaveLockouts signals on it first
}

func newFake() *fakePersister { return &fakePersister{saved: map[string]Window{}} }

var errDisk = errors.New("disk on fire")

func (f *fakePersister) SaveLockouts(ws []Window) error {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.hold != nil {
		<-f.hold
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saves++
	if f.failing {
		return errDisk
	}
	for _, w := range ws {
		f.saved[w.ConnectionID] = w
	}
	return nil
}

func (f *fakePersister) LoadLockouts() ([]Window, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ws []Window
	for _, w := range f.saved {
		ws = append(ws, w)
	}
	return ws, nil
}

func (f *fakePersister) DeleteLockouts(ids []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes = append(f.deletes, slices.Clone(ids))
	for _, id := range ids {
		delete(f.saved, id)
	}
	return nil
}

func (f *fakePersister) get(id string) (Window, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, ok := f.saved[id]
	return w, ok
}

func TestGroupCommit(t *testing.T) {
	fake := newFake()
	fake.hold = make(chan struct{})
	fake.entered = make(chan struct{}, 100)
	tab := newTable(t, Options{Persist: fake})
	run(t, tab)

	const n = 50
	errs := make(chan error, n)
	observe := func(i int) {
		id := fmt.Sprint("conn-", i)
		_, err := tab.Observe429(bg, id, "p", Pairs{{"retry-after", "30"}}, catalog.RateLimit{}, t0)
		if err == nil {
			// Once Observe429 returns, the window is stored.
			if _, ok := fake.get(id); !ok {
				err = fmt.Errorf("%s returned before its window was saved", id)
			}
		}
		errs <- err
	}
	// The first 429 starts a commit, which the fake holds; the others
	// arrive meanwhile and must share the next one.
	go observe(0)
	<-fake.entered
	for i := 1; i < n; i++ {
		go observe(i)
	}
	for {
		tab.qmu.Lock()
		queued := 0
		if tab.pending != nil {
			queued = len(tab.pending.ids)
		}
		tab.qmu.Unlock()
		if queued == n-1 {
			break
		}
		runtime.Gosched()
	}
	close(fake.hold)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.saves != 2 || len(fake.saved) != n {
		t.Errorf("%d Observe429 calls made %d transactions saving %d windows; want 2 and %d", n, fake.saves, len(fake.saved), n)
	}
}

func TestGroupCommitStore(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "ampproxy.db"), false)
	counter := &countingPersister{Persister: StorePersister(st)}
	tab := newTable(t, Options{Persist: counter})
	run(t, tab)

	const n = 500
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := tab.Observe429(bg, fmt.Sprint("conn-", i), "p", Pairs{{"retry-after", "30"}}, catalog.RateLimit{}, t0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	saves := counter.saves.Load()
	t.Logf("%d concurrent Observe429 calls: %d transactions (with fsync)", n, saves)
	if saves >= n {
		t.Errorf("%d calls made %d transactions: no grouping", n, saves)
	}
	ws, err := st.LoadLockouts()
	if err != nil || len(ws) != n {
		t.Fatalf("store holds %d windows (%v), want %d", len(ws), err, n)
	}
}

type countingPersister struct {
	Persister
	saves atomic.Int64
}

func (c *countingPersister) SaveLockouts(ws []Window) error {
	c.saves.Add(1)
	return c.Persister.SaveLockouts(ws)
}

func TestPersisterFailure(t *testing.T) {
	fake := newFake()
	fake.failing = true
	var failures atomic.Int64
	tab := newTable(t, Options{Persist: fake, OnPersistFailure: func() { failures.Add(1) }})
	run(t, tab)

	w, err := tab.Observe429(bg, "conn-1", "p", Pairs{{"retry-after", "30"}}, catalog.RateLimit{}, t0)
	if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "conn-1") {
		t.Errorf("err = %v, want one wrapping %v and naming the connection", err, errDisk)
	}
	if !w.Until.Equal(t0.Add(30 * time.Second)) {
		t.Errorf("window = %+v", w)
	}
	if got, open := tab.Check("conn-1", t0); !open || got != w {
		t.Errorf("Check after a failed save = %+v, %t; want the window in memory", got, open)
	}
	if n := failures.Load(); n != 1 {
		t.Errorf("OnPersistFailure called %d times, want 1", n)
	}
	// The next commit retries the failed window along with its own.
	fake.mu.Lock()
	fake.failing = false
	fake.mu.Unlock()
	if _, err := tab.Observe429(bg, "conn-2", "p", nil, catalog.RateLimit{}, t0); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"conn-1", "conn-2"} {
		if _, ok := fake.get(id); !ok {
			t.Errorf("%s not saved after the store recovered", id)
		}
	}
}

// TestCommitContext: on a hung disk, Observe429 returns when its context
// ends (the stream Envoy gave up on), with the window in memory; the batch
// it joined is still committed once the disk answers.
// TestPersisterFailureRetriedBySweep: a window whose save failed is saved
// by Run's next pass, here a sweep tick, without waiting for another 429.
func TestPersisterFailureRetriedBySweep(t *testing.T) {
	fake := newFake()
	fake.failing = true
	var failures atomic.Int64
	clk := newClock()
	tab := newTable(t, Options{Persist: fake, Now: clk.Now, OnPersistFailure: func() { failures.Add(1) }})
	tick := make(chan time.Time)
	looped := make(chan struct{}, 16)
	tab.sweepC = tick
	tab.looped = func() { looped <- struct{}{} }
	run(t, tab)

	if _, err := tab.Observe429(bg, "conn-1", "p", Pairs{{"retry-after", "30"}}, catalog.RateLimit{}, t0); !errors.Is(err, errDisk) {
		t.Fatalf("err = %v, want %v", err, errDisk)
	}
	<-looped   // the failed commit
	tick <- t0 // still failing: a second failure
	<-looped
	fake.mu.Lock()
	fake.failing = false
	fake.mu.Unlock()
	tick <- t0
	<-looped
	if _, ok := fake.get("conn-1"); !ok {
		t.Error("window not saved by the sweep after the store recovered")
	}
	if n := failures.Load(); n != 2 {
		t.Errorf("OnPersistFailure called %d times, want 2", n)
	}
}

func TestCommitContext(t *testing.T) {
	fake := newFake()
	fake.hold = make(chan struct{})
	fake.entered = make(chan struct{}, 1)
	tab := newTable(t, Options{Persist: fake})
	run(t, tab)
	released := false
	t.Cleanup(func() { // before Run stops: cleanups run last first
		if !released {
			close(fake.hold)
		}
	})

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	var w Window
	go func() {
		var err error
		w, err = tab.Observe429(ctx, "conn-1", "p", nil, catalog.RateLimit{}, t0)
		errc <- err
	}()
	<-fake.entered // the commit is stuck in the disk
	cancel()
	err := <-errc
	if !errors.Is(err, ErrCommitPending) || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want one wrapping %v and %v", err, ErrCommitPending, context.Canceled)
	}
	if got, open := tab.Check("conn-1", t0); !open || got != w {
		t.Errorf("Check = %+v, %t; want the window %+v in memory", got, open, w)
	}
	if _, ok := fake.get("conn-1"); ok {
		t.Fatal("saved while the disk was held")
	}
	close(fake.hold)
	released = true
	// The abandoned batch commits all the same; wait for it, not for time.
	for {
		if _, ok := fake.get("conn-1"); ok {
			break
		}
		runtime.Gosched()
	}
}

func TestRunOnce(t *testing.T) {
	tab := newTable(t, Options{})
	run(t, tab)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tab.Run(ctx) // returns at once: Run is already active
}

func TestWithoutRun(t *testing.T) {
	fake := newFake()
	tab := newTable(t, Options{Persist: fake})
	for i := range 3 {
		if _, err := tab.Observe429(bg, fmt.Sprint("conn-", i), "p", nil, catalog.RateLimit{}, t0); err != nil {
			t.Fatal(err)
		}
	}
	if fake.saves != 3 || len(fake.saved) != 3 {
		t.Errorf("without Run: %d transactions, %d windows; want 3 and 3", fake.saves, len(fake.saved))
	}
}

// TestRunSweeps drives Run's sweep with a fake tick and clock: expired
// windows leave memory and the store, and a connection locked again after
// the sweep keeps its new window on disk.
func TestRunSweeps(t *testing.T) {
	clk := newClock()
	fake := newFake()
	tab := newTable(t, Options{Persist: fake, Now: clk.Now})
	tick := make(chan time.Time)
	looped := make(chan struct{}, 16)
	tab.sweepC = tick
	tab.looped = func() { looped <- struct{}{} }
	run(t, tab)

	for _, c := range []struct {
		id, after string
	}{{"short", "10"}, {"long", "100"}} {
		if _, err := tab.Observe429(bg, c.id, "p", Pairs{{"retry-after", c.after}}, catalog.RateLimit{}, t0); err != nil {
			t.Fatal(err)
		}
	}
	clk.Set(t0.Add(10 * time.Second))
	tick <- clk.Now()
	for {
		<-looped
		fake.mu.Lock()
		nd := len(fake.deletes)
		fake.mu.Unlock()
		if nd > 0 {
			break
		}
	}
	if _, ok := fake.get("short"); ok {
		t.Error("expired window still stored after the sweep")
	}
	if _, ok := fake.get("long"); !ok {
		t.Error("open window deleted by the sweep")
	}
	if tab.Open() != 1 {
		t.Errorf("Open = %d, want 1", tab.Open())
	}
}

// TestDeleteSkipsRelocked: a connection swept from memory and locked out
// again before the deletion is committed keeps its window on disk.
func TestDeleteSkipsRelocked(t *testing.T) {
	fake := newFake()
	tab := newTable(t, Options{Persist: fake})
	if _, err := tab.Observe429(bg, "conn-1", "p", Pairs{{"retry-after", "10"}}, catalog.RateLimit{}, t0); err != nil {
		t.Fatal(err)
	}
	dropped := tab.sweep(t0.Add(10 * time.Second))
	if _, err := tab.Observe429(bg, "conn-1", "p", Pairs{{"retry-after", "10"}}, catalog.RateLimit{}, t0.Add(11*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := tab.write(nil, dropped); err != nil {
		t.Fatal(err)
	}
	if w, ok := fake.get("conn-1"); !ok || !w.Until.Equal(t0.Add(21*time.Second)) {
		t.Errorf("stored window = %+v, %t; want the new one", w, ok)
	}
}

func openStore(tb testing.TB, path string, sync bool) *tokens.Store {
	tb.Helper()
	key, err := tokens.LoadKey(filepath.Join(filepath.Dir(path), "master.key"), true)
	if err != nil {
		tb.Fatal(err)
	}
	st, err := tokens.Open(path, key, tokens.Options{NoSync: !sync})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// TestPersistAcrossNew runs windows through a real store, closes it as a
// restart would, and reopens it: open windows come back, expired ones do
// not and are deleted from the file.
func TestPersistAcrossNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ampproxy.db")
	st := openStore(t, path, false)
	clk := newClock()
	tab := newTable(t, Options{Persist: StorePersister(st), Now: clk.Now})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tab.Run(ctx) }()

	want := map[string]Window{}
	for _, c := range []struct {
		id      string
		headers Pairs
	}{
		{"conn-short", Pairs{{"retry-after", "5"}}},
		{"conn-long", Pairs{{"retry-after", "600"}}},
		{"conn-locked", Pairs{{"x-ratelimit-reset", epoch(2 * time.Minute)}, {"x-token-locked", "1"}}},
	} {
		w, err := tab.Observe429(bg, c.id, "github", c.headers, rlGitHubLike, t0)
		if err != nil {
			t.Fatal(err)
		}
		want[c.id] = w
	}
	cancel()
	<-done
	st.Close()

	// Restart 10 s later: conn-short's window is over.
	st = openStore(t, path, false)
	clk.Set(t0.Add(10 * time.Second))
	tab = newTable(t, Options{Persist: StorePersister(st), Now: clk.Now})
	for id, w := range want {
		got, open := tab.Check(id, clk.Now())
		if id == "conn-short" {
			if open {
				t.Errorf("expired %s restored", id)
			}
			continue
		}
		if !open || got != w {
			t.Errorf("after restart %s = %+v, %t; want %+v", id, got, open, w)
		}
	}
	if tab.Open() != 2 {
		t.Errorf("Open after restart = %d, want 2", tab.Open())
	}
	// Run deletes what New found expired before it looks at ctx.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	tab.Run(ctx)
	ls, err := st.LoadLockouts()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range ls {
		ids = append(ids, l.ConnectionID)
	}
	if !slices.Equal(ids, []string{"conn-locked", "conn-long"}) {
		t.Errorf("store holds %v after the restart, want conn-locked and conn-long", ids)
	}
}

func TestPersistCapsLoadedWindows(t *testing.T) {
	fake := newFake()
	fake.saved["c"] = Window{ConnectionID: "c", Provider: "p", Until: t0.Add(48 * time.Hour), Retryable: true}
	clk := newClock()
	tab := newTable(t, Options{Persist: fake, Now: clk.Now, MaxWindow: time.Hour})
	w, open := tab.Check("c", t0)
	if !open || !w.Until.Equal(t0.Add(time.Hour)) || w.Retryable {
		t.Errorf("loaded window beyond the maximum = %+v, %t; want capped, not retryable", w, open)
	}
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want []string // substrings of the error; none: valid
	}{
		{"zero", Options{}, nil},
		{"default above max", Options{DefaultWindow: 2 * time.Hour, MaxWindow: time.Hour}, []string{"maxWindow 1h0m0s must not be shorter than defaultWindow 2h0m0s"}},
		{"default above default max", Options{DefaultWindow: 25 * time.Hour}, []string{"maxWindow"}},
		{"negatives", Options{DefaultWindow: -1, MaxWindow: -1, SweepInterval: -1}, []string{"defaultWindow", "maxWindow", "sweepInterval"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.o)
			if (err != nil) != (tt.want != nil) {
				t.Fatalf("err = %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	tab := newTable(t, Options{})
	if tab.def != DefaultWindow || tab.max != DefaultMaxWindow || tab.sweepEvery != DefaultSweepInterval {
		t.Errorf("zero Options: %s %s %s", tab.def, tab.max, tab.sweepEvery)
	}
}

type failingLoad struct{ fakePersister }

func (*failingLoad) LoadLockouts() ([]Window, error) { return nil, errDisk }

func TestNewLoadFailure(t *testing.T) {
	if _, err := New(Options{Persist: &failingLoad{}}); !errors.Is(err, errDisk) {
		t.Errorf("err = %v, want %v", err, errDisk)
	}
}

func TestFormatRetryAfter(t *testing.T) {
	tests := []struct {
		in   time.Time
		want string
	}{
		{time.Date(2026, 3, 1, 12, 0, 3, 0, time.UTC), "Sun, 01 Mar 2026 12:00:03 UTC"},
		{time.Date(2026, 3, 1, 12, 0, 3, 1, time.UTC), "Sun, 01 Mar 2026 12:00:04 UTC"},
		{time.Date(2026, 3, 1, 13, 0, 3, 0, time.FixedZone("CET", 3600)), "Sun, 01 Mar 2026 12:00:03 UTC"},
		{time.Date(2026, 12, 31, 23, 59, 59, 500, time.UTC), "Fri, 01 Jan 2027 00:00:00 UTC"},
	}
	for _, tt := range tests {
		if got := FormatRetryAfter(tt.in); got != tt.want {
			t.Errorf("FormatRetryAfter(%s) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want int64
	}{{-time.Second, 0}, {0, 0}, {time.Nanosecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {time.Hour, 3600}}
	for _, tt := range tests {
		if got := RetryAfterSeconds(t0.Add(tt.d), t0); got != tt.want {
			t.Errorf("RetryAfterSeconds(+%s) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

func TestHeaderAdapters(t *testing.T) {
	p := Pairs{{"retry-after", "1"}, {"retry-after", "2"}}
	if v, ok := p.Get("retry-after"); !ok || v != "1" {
		t.Errorf("Pairs.Get = %q, %t; want the first value", v, ok)
	}
	if _, ok := p.Get("x"); ok {
		t.Error("Pairs.Get found a missing header")
	}
	f := HeaderFunc(func(n string) (string, bool) { return n, n == "a" })
	if v, ok := f.Get("a"); !ok || v != "a" {
		t.Errorf("HeaderFunc.Get = %q, %t", v, ok)
	}
}

// TestCatalogFacts reads 429s as the catalog's providers send them: the
// embedded facts and the parser agree on each format.
func TestCatalogFacts(t *testing.T) {
	cat, err := catalog.Load("")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		provider string
		headers  Pairs
		want     time.Duration
	}{
		{"github", Pairs{{"x-ratelimit-reset", epoch(10 * time.Minute)}}, 10 * time.Minute},
		{"twitterV2", Pairs{{"x-rate-limit-reset", epoch(15 * time.Minute)}}, 15 * time.Minute},
		{"linear", Pairs{{"x-ratelimit-requests-reset", epoch(time.Minute) + "250"}}, time.Minute + 250*time.Millisecond},
		{"linear", Pairs{{"x-ratelimit-complexity-reset", epoch(2*time.Minute) + "000"}}, 2 * time.Minute},
		{"zendeskSupport", Pairs{{"ratelimit-reset", "41"}}, 41 * time.Second},
		{"pipedrive", Pairs{{"x-ratelimit-reset", "2"}}, 2 * time.Second},
		{"discord", Pairs{{"x-ratelimit-reset", epoch(time.Second) + ".5"}, {"x-ratelimit-reset-after", "1.25"}}, 1500 * time.Millisecond},
		{"sentry", Pairs{{"x-sentry-rate-limit-reset", epoch(30 * time.Second)}}, 30 * time.Second},
		{"calendly", Pairs{{"x-ratelimit-reset", "60"}}, time.Minute},
		// A secondary-limit 429: the primary bucket has room.
		{"github", Pairs{{"retry-after", "60"}, {"x-ratelimit-remaining", "4999"}, {"x-ratelimit-reset", epoch(50 * time.Minute)}}, time.Minute},
		// The per-minute user limit, not the monthly org quota.
		{"affinity", Pairs{{"x-ratelimit-limit-user-remaining", "0"}, {"x-ratelimit-limit-user-reset", "35"},
			{"x-ratelimit-limit-org-remaining", "90000"}, {"x-ratelimit-limit-org-reset", "2000000"}}, 35 * time.Second},
		{"exactOnline", Pairs{{"x-ratelimit-minutely-remaining", "0"}, {"x-ratelimit-minutely-reset", epoch(40*time.Second) + "000"},
			{"x-ratelimit-remaining", "4980"}, {"x-ratelimit-reset", epoch(14*time.Hour) + "000"}}, 40 * time.Second},
	}
	for _, tt := range tests {
		p, ok := cat.Provider(tt.provider)
		if !ok {
			t.Errorf("%s is not in the catalog", tt.provider)
			continue
		}
		end, retryable := windowEnd(tt.headers, p.RateLimit, t0, time.Hour, 24*time.Hour)
		if got := end.Sub(t0); got != tt.want || !retryable {
			t.Errorf("%s %v: window %s retryable=%t, want %s", tt.provider, tt.headers, got, retryable, tt.want)
		}
	}
}

// crashEnv switches TestHelperObserver on in the subprocess of
// TestCrashAfterObserve; it names the store file to write.
const crashEnv = "AMPPROXY_THROTTLE_TEST_HELPER_DB"

// TestHelperObserver is not a test of its own: TestCrashAfterObserve runs
// the test binary again with only this function selected, and kills it
// while 429s arrive from 8 goroutines, each connection ID printed once its
// Observe429 has returned (the moment extproc would answer Envoy).
func TestHelperObserver(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("helper process of TestCrashAfterObserve")
	}
	key, err := tokens.LoadKey(filepath.Join(filepath.Dir(path), "master.key"), false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	st, err := tokens.Open(path, key, tokens.Options{}) // with fsync, as in production
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	tab, err := New(Options{Persist: StorePersister(st)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go tab.Run(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	for g := range 8 {
		wg.Go(func() {
			// Bounded so that a parent that fails to kill it does not
			// leave it running for ever.
			for i := range 10_000 {
				id := fmt.Sprintf("conn-%d-%d", g, i)
				if _, err := tab.Observe429(bg, id, "p", Pairs{{"retry-after", "3600"}}, catalog.RateLimit{}, t0); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Println(id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}

// TestCrashAfterObserve kills a process in the middle of a burst of 429s
// and reopens its file: every window whose Observe429 had returned is
// there, so a 429 that reached the caller is not forgotten by a crash of
// the process. SIGKILL leaves the kernel's page cache intact, so this
// proves that the commit comes before the answer, not that the commit's
// fsync reached the disk (which would take cutting the machine's power).
func TestCrashAfterObserve(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "crash.db")
	if _, err := tokens.LoadKey(filepath.Join(dir, "master.key"), true); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperObserver$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})

	const want = 300
	var ids []string
	sc := bufio.NewScanner(stdout)
	for len(ids) < want && sc.Scan() {
		ids = append(ids, sc.Text())
	}
	if len(ids) < want {
		t.Fatalf("helper printed %d IDs before stopping: %s", len(ids), stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waited = true
	// Lines printed after the ones read may be lost with the pipe; the
	// ones read were all acknowledged before the kill.

	st := openStore(t, path, false)
	clk := newClock()
	tab := newTable(t, Options{Persist: StorePersister(st), Now: clk.Now})
	for _, id := range ids {
		if _, open := tab.Check(id, t0); !open {
			t.Errorf("window of %s lost in the crash", id)
		}
	}
	t.Logf("%d acknowledged windows all found after SIGKILL; %d in the file", len(ids), tab.Open())
}

// TestSweepSkips: a sweep before any window can have ended does not walk
// the map, and one stored during or after a walk is still swept on time.
func TestSweepSkips(t *testing.T) {
	tab := newTable(t, Options{})
	if _, err := tab.Observe429(bg, "long", "p", Pairs{{"retry-after", "100"}}, catalog.RateLimit{}, t0); err != nil {
		t.Fatal(err)
	}
	if got := tab.next.Load(); got != t0.Add(100*time.Second).UnixNano() {
		t.Errorf("next = %d, want the end of the only window", got)
	}
	if d := tab.sweep(t0.Add(99 * time.Second)); d != nil {
		t.Errorf("early sweep dropped %v", d)
	}
	// A shorter window lowers next, so the sweep at its end walks.
	if _, err := tab.Observe429(bg, "short", "p", Pairs{{"retry-after", "10"}}, catalog.RateLimit{}, t0); err != nil {
		t.Fatal(err)
	}
	if d := tab.sweep(t0.Add(10 * time.Second)); !slices.Equal(d, []string{"short"}) {
		t.Errorf("sweep at 10 s dropped %v, want short", d)
	}
	if got := tab.next.Load(); got != t0.Add(100*time.Second).UnixNano() {
		t.Errorf("after the sweep next = %d, want the end of long", got)
	}
	if d := tab.sweep(t0.Add(100 * time.Second)); !slices.Equal(d, []string{"long"}) {
		t.Errorf("sweep at 100 s dropped %v, want long", d)
	}
	if got := tab.next.Load(); got != math.MaxInt64 {
		t.Errorf("empty table: next = %d", got)
	}
}
