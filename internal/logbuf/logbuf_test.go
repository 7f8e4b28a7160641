package logbuf

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// sink records each write it receives and signals it.
type sink struct {
	mu     sync.Mutex
	writes []string
	fail   bool
	wrote  chan struct{}
}

func newSink() *sink { return &sink{wrote: make(chan struct{}, 100)} }

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, string(p))
	s.wrote <- struct{}{}
	if s.fail {
		return 0, errors.New("pipe is broken")
	}
	return len(p), nil
}

func (s *sink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.writes...)
}

// waitWrite waits for the sink's next write; the bound only catches a
// hang.
func (s *sink) waitWrite(t *testing.T) {
	t.Helper()
	select {
	case <-s.wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("no write reached the destination")
	}
}

// manualTicker is a ticker the test fires.
type manualTicker struct {
	c       chan time.Time
	stopped chan struct{}
	flushed chan struct{}
}

// tick fires the ticker and waits until the flush it causes is over; the
// bound only catches a hang.
func (mt *manualTicker) tick(t *testing.T) {
	t.Helper()
	mt.c <- time.Now()
	select {
	case <-mt.flushed:
	case <-time.After(10 * time.Second):
		t.Fatal("the tick's flush did not end")
	}
}

func newWriter(t *testing.T, out *sink, size int) (*Writer, *manualTicker) {
	t.Helper()
	mt := &manualTicker{c: make(chan time.Time), stopped: make(chan struct{}), flushed: make(chan struct{}, 1)}
	w := New(out, Options{Size: size, newTicker: func(time.Duration) (<-chan time.Time, func()) {
		return mt.c, func() { close(mt.stopped) }
	}, afterTick: func() { mt.flushed <- struct{}{} }})
	t.Cleanup(func() { w.Close() })
	return w, mt
}

func TestLinesWaitForTheTick(t *testing.T) {
	out := newSink()
	w, mt := newWriter(t, out, 1024)
	for _, l := range []string{"one\n", "two\n", "three\n"} {
		if n, err := w.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if got := out.got(); len(got) != 0 {
		t.Fatalf("written before the interval passed: %q", got)
	}
	mt.tick(t)
	if got := out.got(); len(got) != 1 || got[0] != "one\ntwo\nthree\n" {
		t.Fatalf("after a tick the destination got %q, want the three lines in one write", got)
	}
	// A tick with nothing buffered writes nothing; with no tick in flight,
	// the next line waits for the next tick.
	mt.tick(t)
	if got := out.got(); len(got) != 1 {
		t.Fatalf("a tick with nothing buffered wrote: %q", got[1:])
	}
	w.Write([]byte("four\n"))
	if got := out.got(); len(got) != 1 {
		t.Fatalf("written before the next tick: %q", got[1:])
	}
	mt.tick(t)
	if got := out.got(); len(got) != 2 || got[1] != "four\n" {
		t.Fatalf("destination got %q", got)
	}
}

func TestFullBufferIsWrittenAtOnce(t *testing.T) {
	out := newSink()
	w, _ := newWriter(t, out, 10)
	w.Write([]byte("12345\n"))
	w.Write([]byte("6789\n")) // 11 bytes would not fit: the first line goes
	if got := out.got(); len(got) != 1 || got[0] != "12345\n" {
		t.Fatalf("destination got %q, want the first line", got)
	}
	big := strings.Repeat("x", 25) + "\n"
	w.Write([]byte(big)) // larger than the buffer: through, in order
	if got := out.got(); len(got) != 3 || got[1] != "6789\n" || got[2] != big {
		t.Fatalf("destination got %q", got)
	}
}

func TestErrorRecordsAreWrittenAtOnce(t *testing.T) {
	out := newSink()
	w, _ := newWriter(t, out, 4096)
	log := slog.New(w.Handler(slog.NewJSONHandler(w, nil))).With("component", "test")
	log.Info("request")
	log.Warn("slow")
	if got := out.got(); len(got) != 0 {
		t.Fatalf("info and warn written at once: %q", got)
	}
	log.WithGroup("g").Error("listener failed")
	got := out.got()
	if len(got) != 1 {
		t.Fatalf("destination got %d writes, want 1: %q", len(got), got)
	}
	lines := strings.Split(strings.TrimSpace(got[0]), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], `"msg":"request"`) || !strings.Contains(lines[2], `"msg":"listener failed"`) {
		t.Fatalf("want the buffered lines, then the error, in order; got %q", lines)
	}
}

func TestCloseFlushesAndStops(t *testing.T) {
	out := newSink()
	w, mt := newWriter(t, out, 4096)
	w.Write([]byte("last words\n"))
	w.Close()
	if got := out.got(); len(got) != 1 || got[0] != "last words\n" {
		t.Fatalf("after Close the destination got %q", got)
	}
	select {
	case <-mt.stopped:
	default:
		t.Fatal("Close left the ticker running")
	}
	w.Close() // twice is harmless
}

// TestWritesAfterCloseGoThrough: nothing flushes after Close, so a line
// logged then (a goroutine that outlives shutdown) is written at once.
func TestWritesAfterCloseGoThrough(t *testing.T) {
	out := newSink()
	w, _ := newWriter(t, out, 4096)
	w.Write([]byte("before\n"))
	w.Close()
	for _, l := range []string{"late\n", "later\n"} {
		if n, err := w.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("Write after Close = %d, %v", n, err)
		}
	}
	if got := out.got(); len(got) != 3 || got[0] != "before\n" || got[1] != "late\n" || got[2] != "later\n" {
		t.Fatalf("destination got %q, want each line written as it came", got)
	}
}

func TestFailedWriteDoesNotFailTheCaller(t *testing.T) {
	out := newSink()
	out.fail = true
	w, _ := newWriter(t, out, 4096)
	log := slog.New(w.Handler(slog.NewJSONHandler(w, nil)))
	if n, err := w.Write([]byte("a line\n")); n != 7 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	log.Error("boom") // flushes both lines into the failing destination
	if w.Dropped() == 0 {
		t.Fatal("Dropped = 0 after a failed write")
	}
	// The destination recovers: later lines are written.
	out.mu.Lock()
	out.fail = false
	out.mu.Unlock()
	before := w.Dropped()
	log.Error("again")
	if got := out.got(); !strings.Contains(got[len(got)-1], "again") || w.Dropped() != before {
		t.Fatalf("after recovery got %q, dropped %d → %d", got, before, w.Dropped())
	}
}
