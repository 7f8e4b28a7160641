// Package logbuf is the buffered writer under ampproxy's log: one line per
// request would otherwise be one write system call per request, made
// under the log handler's lock, so that a slow reader of the log (a full
// pipe, a stalled log collector) stalls every stream that logs.
//
// A Writer collects lines in memory and writes them out together: every
// Interval (1 s by default), whenever the buffer is full, on Flush, and on
// Close; after Close it writes each line through. Handler wraps a
// slog.Handler so that a record at error level or above is written out at
// once. It does not own the destination, decide what is logged, or rotate
// files.
//
// # Caveats
//
//   - Lines written in the last Interval before the process dies without
//     Close (SIGKILL, a crash, an out-of-memory kill) are lost; an orderly
//     exit flushes everything, and error records never wait.
//   - A destination that fails a write does not fail the caller: the
//     lines are dropped and counted (Dropped), and the next flush tries
//     again with new lines.
//   - A destination slower than the log rate still slows loggers down
//     once the buffer is full: they wait for the write in progress rather
//     than lose lines.
package logbuf

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	// DefaultInterval is how long a line may wait in the buffer. Envoy's
	// own access logs wait up to 10 s by default (--file-flush-interval-msec
	// 10000); service meshes commonly run them at 1 s, which keeps log
	// tailing responsive at a negligible cost.
	DefaultInterval = time.Second
	// DefaultSize is the buffer's size: a few hundred request lines.
	DefaultSize = 64 << 10
)

// Options configure a Writer. The zero value gives the defaults.
type Options struct {
	Interval time.Duration
	Size     int

	// newTicker replaces time.NewTicker in tests; afterTick, when set,
	// runs after each interval flush, so that a test knows it is over.
	newTicker func(time.Duration) (<-chan time.Time, func())
	afterTick func()
}

// Writer buffers writes to an io.Writer. It is safe for concurrent use.
type Writer struct {
	out  io.Writer
	size int

	// outMu serialises writes to out and owns spare; mu guards buf. A
	// flush swaps the buffers under both and writes with only outMu held,
	// so that loggers keep appending while a slow destination is written.
	outMu sync.Mutex
	spare []byte
	mu    sync.Mutex
	buf   []byte
	// through, set by Close under mu, sends every later write straight
	// to out: nothing would flush a buffer after Close.
	through bool

	dropped atomic.Uint64
	stop    chan struct{}
	done    chan struct{}
	closed  sync.Once
}

// New returns a Writer to out and starts its interval flushes; Close
// stops them.
func New(out io.Writer, o Options) *Writer {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Size <= 0 {
		o.Size = DefaultSize
	}
	if o.newTicker == nil {
		o.newTicker = func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(d)
			return t.C, t.Stop
		}
	}
	w := &Writer{
		out: out, size: o.Size,
		buf: make([]byte, 0, o.Size), spare: make([]byte, 0, o.Size),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	tick, stopTick := o.newTicker(o.Interval)
	go func() {
		defer close(w.done)
		defer stopTick()
		for {
			select {
			case <-w.stop:
				return
			case <-tick:
				w.Flush()
				if o.afterTick != nil {
					o.afterTick()
				}
			}
		}
	}()
	return w
}

// Write buffers p, writing the buffer out first when p does not fit; after
// Close it writes p straight out. It never fails: a line the destination
// refuses is counted in Dropped.
func (w *Writer) Write(p []byte) (int, error) {
	for {
		w.mu.Lock()
		through := w.through
		if !through && len(w.buf)+len(p) <= w.size {
			w.buf = append(w.buf, p...)
			w.mu.Unlock()
			return len(p), nil
		}
		empty := len(w.buf) == 0
		w.mu.Unlock()
		if through || empty {
			// Closed, or larger than the whole buffer: write it through,
			// after anything a concurrent writer buffered meanwhile.
			w.outMu.Lock()
			w.flushLocked()
			w.write(p)
			w.outMu.Unlock()
			return len(p), nil
		}
		w.Flush()
	}
}

// Flush writes out what is buffered.
func (w *Writer) Flush() {
	w.outMu.Lock()
	w.flushLocked()
	w.outMu.Unlock()
}

// flushLocked swaps the buffers and writes the full one; outMu is held.
func (w *Writer) flushLocked() {
	w.mu.Lock()
	b := w.buf
	w.buf = w.spare
	w.mu.Unlock()
	if len(b) > 0 {
		w.write(b)
	}
	w.spare = b[:0]
}

func (w *Writer) write(b []byte) {
	if n, err := w.out.Write(b); err != nil {
		w.dropped.Add(uint64(len(b) - min(max(n, 0), len(b))))
	}
}

// Dropped is the number of bytes the destination refused.
func (w *Writer) Dropped() uint64 { return w.dropped.Load() }

// Close stops the interval flushes and writes out what is buffered.
// Writes after Close go straight to the destination, one write each: a
// goroutine that outlives serve's shutdown may still log.
func (w *Writer) Close() error {
	w.closed.Do(func() {
		close(w.stop)
		<-w.done
	})
	w.mu.Lock()
	w.through = true
	w.mu.Unlock()
	w.Flush()
	return nil
}

// Handler wraps h so that every record at error level or above is
// written out at once, with whatever was buffered before it.
func (w *Writer) Handler(h slog.Handler) slog.Handler { return &handler{h, w} }

type handler struct {
	slog.Handler
	w *Writer
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelError {
		h.w.Flush()
	}
	return err
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{h.Handler.WithAttrs(as), h.w}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{h.Handler.WithGroup(name), h.w}
}
