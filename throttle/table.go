package throttle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/ampproxy/ampproxy/catalog"
)

// Defaults for the zero values of Options.
const (
	DefaultWindow        = 60 * time.Second
	DefaultMaxWindow     = 24 * time.Hour
	DefaultSweepInterval = 30 * time.Second
)

// ErrCommitPending is wrapped by Observe429's error when its context ended
// before the window's batch was committed (with the context's error). The
// window applies in memory and the commit goes on in the background.
var ErrCommitPending = errors.New("lockout window not yet on disk")

// Window is a connection's lockout: throttle-mode requests on the
// connection are answered 429 until Until. Retryable is false when the
// provider marked the 429 as a lockout of the token or the window was
// capped at the maximum: retrying at Until may not help.
type Window struct {
	ConnectionID string
	Provider     string
	Until        time.Time
	Retryable    bool
}

// Persister keeps windows across restarts. Each call should be one
// transaction. StorePersister adapts a *tokens.Store; a distributed store
// (DESIGN §7) would be another implementation.
type Persister interface {
	// SaveLockouts stores ws, replacing any window stored for the same
	// connections.
	SaveLockouts(ws []Window) error
	// LoadLockouts returns every stored window, expired ones included.
	LoadLockouts() ([]Window, error)
	// DeleteLockouts removes the windows of the given connections.
	DeleteLockouts(connectionIDs []string) error
}

// Options configure a Table. The zero value gives the defaults: windows
// of DefaultWindow capped at DefaultMaxWindow, the wall clock, and no
// persistence.
type Options struct {
	// DefaultWindow is the window of a 429 without a usable hint
	// (throttle.defaultWindow). Zero means DefaultWindow.
	DefaultWindow time.Duration
	// MaxWindow caps every window; a longer hint is cut to it and reported
	// not retryable (throttle.maxWindow). Zero means DefaultMaxWindow. It
	// must not be shorter than DefaultWindow.
	MaxWindow time.Duration
	// SweepInterval is how often Run drops expired windows from memory and
	// from the store. Zero means DefaultSweepInterval. Shorter frees memory
	// sooner after a burst. A sweep walks every window in memory, without
	// blocking Check or Observe429, unless none can have ended yet.
	SweepInterval time.Duration
	// Now is the clock of New and of the sweeper; Check and Observe429 take
	// the time from their caller. Nil means time.Now.
	Now func() time.Time
	// Persist keeps windows across restarts. Nil keeps them in memory only:
	// for tests, or where losing them on restart is acceptable.
	Persist Persister
	// Logger receives failures of background writes. Nil discards them.
	Logger *slog.Logger
	// OnOpen, when set, is called after a 429 opened a window on a
	// connection that had none open (a metrics hook). It runs on the
	// caller's goroutine and must be quick.
	OnOpen func(provider string)
	// OnExtend, when set, is called after a 429 moved an open window's end
	// later; not for a 429 that fell inside an open window without
	// extending it. Same constraints as OnOpen.
	OnExtend func(provider string)
	// OnPersistFailure, when set, is called each time the Persister fails
	// to save windows, the retries of earlier failures included (a metrics
	// hook). The windows still apply in memory and are retried.
	OnPersistFailure func()
}

// deleteChunk bounds the deletions of one transaction, so that removing a
// million expired windows does not hold a burst of new ones back.
const deleteChunk = 4096

// Table is the lockout table: one window per connection, in memory, with
// every change written through a Persister. All methods are safe for
// concurrent use.
type Table struct {
	def, max, sweepEvery time.Duration
	now                  func() time.Time
	persist              Persister
	log                  *slog.Logger
	onOpen, onExtend     func(string)
	onPersistFailure     func()

	// m maps a connection ID to its *entry. Entries are immutable: a 429
	// swaps in a new one with CompareAndSwap and the sweep removes one with
	// CompareAndDelete, so neither can undo the other, and a reader never
	// writes to shared memory. sync.Map rather than 256 shards of
	// RWMutex-guarded maps, because a read lock is itself a write to the
	// lock: with 32 goroutines (2 CPUs) the sharded table measured 51 ns
	// per Check on one shared connection and 28 ns on distinct ones, against
	// 23 ns for both here. An open window costs about 146 bytes here
	// (BenchmarkMemoryPerWindow with a million connections).
	m sync.Map
	n atomic.Int64 // entries in m, expired ones not yet swept included
	// next is no later than the earliest end in m (math.MaxInt64 when m is
	// empty), so that a sweep before it can skip the walk.
	next atomic.Int64

	// Group commit: Observe429 adds its connection to pending and waits
	// for pending's done; Run's loop takes the whole batch and commits it
	// in one transaction while the next batch fills.
	qmu     sync.Mutex
	running bool
	pending *batch
	dels    []string // connections swept from memory, to delete from disk
	kick    chan struct{}

	// cmu is held from reading windows out of memory until their commit
	// ends, so that commits happen in the order of the reads and the file
	// never goes back to an older end than one already written.
	cmu     sync.Mutex
	unsaved []string // saves that failed, retried with the next commit

	// Test hooks: a sweep clock in place of the ticker, and a call after
	// each sweep and commit of Run's loop.
	sweepC <-chan time.Time
	looped func()
}

type batch struct {
	ids  []string
	done chan struct{}
	err  error
}

type entry struct {
	until     int64 // Unix nanoseconds
	provider  unique.Handle[string]
	retryable bool
}

// New returns a table, loading the windows Options.Persist holds: expired
// ones are left out and deleted from the store once Run starts, and ends
// beyond MaxWindow from now (a lower maximum than when they were written)
// are cut to it and made not retryable. Call Run to sweep and to batch
// commits; until Run starts, and after it returns, Observe429 commits on its
// own.
func New(o Options) (*Table, error) {
	var errs []error
	if o.DefaultWindow < 0 {
		errs = append(errs, fmt.Errorf("throttle: defaultWindow %s must not be negative", o.DefaultWindow))
	}
	if o.MaxWindow < 0 {
		errs = append(errs, fmt.Errorf("throttle: maxWindow %s must not be negative", o.MaxWindow))
	}
	if o.SweepInterval < 0 {
		errs = append(errs, fmt.Errorf("throttle: sweepInterval %s must not be negative", o.SweepInterval))
	}
	t := &Table{
		def:              orDefault(o.DefaultWindow, DefaultWindow),
		max:              orDefault(o.MaxWindow, DefaultMaxWindow),
		sweepEvery:       orDefault(o.SweepInterval, DefaultSweepInterval),
		now:              o.Now,
		persist:          o.Persist,
		log:              o.Logger,
		onOpen:           o.OnOpen,
		onExtend:         o.OnExtend,
		onPersistFailure: o.OnPersistFailure,
		kick:             make(chan struct{}, 1),
	}
	if t.max < t.def {
		errs = append(errs, fmt.Errorf("throttle: maxWindow %s must not be shorter than defaultWindow %s", t.max, t.def))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	t.next.Store(math.MaxInt64)
	if t.now == nil {
		t.now = time.Now
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.persist == nil {
		return t, nil
	}
	ws, err := t.persist.LoadLockouts()
	if err != nil {
		return nil, fmt.Errorf("throttle: %w", err)
	}
	now := t.now()
	for _, w := range ws {
		if w.ConnectionID == "" {
			continue
		}
		if !w.Until.After(now) {
			t.dels = append(t.dels, w.ConnectionID)
			continue
		}
		if w.Until.Sub(now) > t.max {
			w.Until, w.Retryable = now.Add(t.max), false
		}
		t.merge(w.ConnectionID, w.Provider, w.Until, w.Retryable, now)
	}
	return t, nil
}

func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// Check reports whether connID has an open window at now, and returns it.
// It is the request path's look-up: one lock-free map read, no
// allocation, no write to shared memory, and nothing at all while the
// table is empty.
func (t *Table) Check(connID string, now time.Time) (w Window, open bool) {
	if t.n.Load() == 0 {
		return Window{}, false
	}
	v, ok := t.m.Load(connID)
	if !ok {
		return Window{}, false
	}
	e := v.(*entry)
	if e.until <= now.UnixNano() {
		return Window{}, false
	}
	return e.window(connID), true
}

func (e *entry) window(id string) Window {
	return Window{ConnectionID: id, Provider: e.provider.Value(), Until: time.Unix(0, e.until).UTC(), Retryable: e.retryable}
}

// Observe429 records that the provider answered 429 on connID at now:
// it computes the window's end from headers and the provider's rate-limit
// facts (see the package comment), opens the connection's window or
// extends it (never shortens it), and returns the resulting window once it
// is committed to the Persister, alongside other windows of the same batch.
//
// When the commit fails, or ctx ends first (the error then wraps
// ErrCommitPending), the window still applies in memory and is returned
// with the error; the error is for logging, and the caller should add the
// X-Amp headers all the same. A failed save is retried with the next
// commit, and a pending batch commits whether or not anyone still waits
// for it. The table keeps connID as given: pass a string that does not
// pin a larger buffer, such as the store's connection ID.
func (t *Table) Observe429(ctx context.Context, connID, provider string, headers Headers, rl catalog.RateLimit, now time.Time) (Window, error) {
	if connID == "" {
		return Window{}, errors.New("throttle: a 429 without a connection ID opens no window")
	}
	end, retryable := windowEnd(headers, rl, now, t.def, t.max)
	w, change := t.merge(connID, provider, end, retryable, now)
	switch {
	case change == opened && t.onOpen != nil:
		t.onOpen(provider)
	case change == extended && t.onExtend != nil:
		t.onExtend(provider)
	}
	if t.persist == nil {
		return w, nil
	}
	if err := t.commit(ctx, connID); err != nil {
		return w, fmt.Errorf("throttle: window of connection %s applies in memory only: %w", connID, err)
	}
	return w, nil
}

// change says what a 429 did to its connection's window.
type change int

const (
	unchanged change = iota // fell inside an open window that ends later
	opened                  // no window was open before
	extended                // an open window's end moved later
)

// merge applies a window ending at end to id's entry: it replaces an entry
// whose window is over, and otherwise keeps the later end and a false
// Retryable.
func (t *Table) merge(id, provider string, end time.Time, retryable bool, now time.Time) (Window, change) {
	until, nowNs := end.UnixNano(), now.UnixNano()
	fresh := &entry{until: until, provider: unique.Make(provider), retryable: retryable}
	for {
		v, loaded := t.m.LoadOrStore(id, fresh)
		if !loaded {
			t.n.Add(1)
			t.lowerNext(until)
			return fresh.window(id), opened
		}
		old := v.(*entry)
		e, c := fresh, opened
		if old.until > nowNs {
			e = &entry{until: max(old.until, until), provider: fresh.provider, retryable: retryable && old.retryable}
			c = unchanged
			if until > old.until {
				c = extended
			}
		}
		if t.m.CompareAndSwap(id, old, e) {
			t.lowerNext(e.until)
			return e.window(id), c
		}
		// Another 429 or the sweep changed the entry: merge again.
	}
}

// lookup returns id's entry as a window, whether or not it is over.
func (t *Table) lookup(id string) (Window, bool) {
	v, ok := t.m.Load(id)
	if !ok {
		return Window{}, false
	}
	return v.(*entry).window(id), true
}

// Open returns the number of windows in memory: the open ones, and the
// expired ones the sweeper has not dropped yet (at most SweepInterval
// late).
func (t *Table) Open() int { return int(t.n.Load()) }

// commit makes id's window durable: through Run's batch when Run is
// active, on its own otherwise. It waits for the batch until ctx ends; the
// batch commits all the same, so that a response Envoy gave up on (a
// hung disk, its message timeout) frees its goroutine without losing the
// write.
func (t *Table) commit(ctx context.Context, id string) error {
	t.qmu.Lock()
	if !t.running {
		t.qmu.Unlock()
		return t.write([]string{id}, nil)
	}
	b := t.pending
	if b == nil {
		b = &batch{done: make(chan struct{})}
		t.pending = b
	}
	b.ids = append(b.ids, id)
	t.qmu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default: // a kick is already waiting; it will take this batch too
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrCommitPending, context.Cause(ctx))
	}
}

// Run sweeps expired windows from memory and the store every
// SweepInterval and commits Observe429's windows in batches, until ctx
// ends. Before returning it commits the pending batch, so no Observe429 is
// left waiting, and from then on Observe429 commits on its own. One Run
// at a time: a second concurrent call logs and returns at once.
func (t *Table) Run(ctx context.Context) {
	t.qmu.Lock()
	if t.running {
		t.qmu.Unlock()
		t.log.Error("throttle: Run called while another Run is active")
		return
	}
	t.running = true
	t.qmu.Unlock()

	sweepC := t.sweepC
	if sweepC == nil {
		tick := time.NewTicker(t.sweepEvery)
		defer tick.Stop()
		sweepC = tick.C
	}
	t.flush() // deletions found by New
	for {
		select {
		case <-ctx.Done():
			t.qmu.Lock()
			t.running = false
			t.qmu.Unlock()
			// The last batch, so that no Observe429 is left waiting.
			// Deletions still queued are found again by the next New.
			t.flush()
			return
		case <-t.kick:
			t.flush()
		case <-sweepC:
			dropped := t.sweep(t.now())
			if len(dropped) > 0 && t.persist != nil {
				t.qmu.Lock()
				t.dels = append(t.dels, dropped...)
				t.qmu.Unlock()
			}
			t.flush()
		}
		if t.looped != nil {
			t.looped()
		}
	}
}

// flush commits the pending batch and a chunk of the pending deletions,
// and reports whether deletions remain (it also kicks the loop for them).
func (t *Table) flush() (more bool) {
	t.qmu.Lock()
	b := t.pending
	t.pending = nil
	n := min(len(t.dels), deleteChunk)
	dels := t.dels[:n:n]
	t.dels = t.dels[n:]
	if len(t.dels) == 0 {
		t.dels = nil
	}
	more = len(t.dels) > 0
	t.qmu.Unlock()

	var ids []string
	if b != nil {
		ids = b.ids
	}
	if t.persist != nil && (len(ids) > 0 || len(dels) > 0 || t.hasUnsaved()) {
		err := t.write(ids, dels)
		if b != nil {
			b.err = err
		} else if err != nil {
			t.log.Warn("throttle: retrying lockout windows that could not be saved failed again", "err", err)
		}
	}
	if b != nil {
		close(b.done)
	}
	if more {
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
	return more
}

func (t *Table) hasUnsaved() bool {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	return len(t.unsaved) > 0
}

// write deletes dels that have no entry in memory any more, then saves
// the current windows of ids and of earlier failed saves, each in one
// transaction. A connection swept and then locked again keeps its record:
// the delete is skipped, or comes before the save.
func (t *Table) write(ids, dels []string) error {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	if len(dels) > 0 {
		gone := make([]string, 0, len(dels))
		for _, id := range dels {
			if _, ok := t.lookup(id); !ok {
				gone = append(gone, id)
			}
		}
		if len(gone) > 0 {
			if err := t.persist.DeleteLockouts(gone); err != nil {
				// Harmless: New drops expired windows and deletes them again.
				t.log.Warn("throttle: could not delete expired lockout windows", "count", len(gone), "err", err)
			}
		}
	}
	if len(t.unsaved) > 0 {
		ids = append(t.unsaved, ids...)
		t.unsaved = nil
	}
	if len(ids) == 0 {
		return nil
	}
	ws := make([]Window, 0, len(ids))
	var seen map[string]struct{}
	if len(ids) > 1 {
		seen = make(map[string]struct{}, len(ids))
	}
	for _, id := range ids {
		if seen != nil {
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
		}
		// The window as it is now, which is never shorter than the one
		// the waiting Observe429 computed.
		if w, ok := t.lookup(id); ok {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return nil
	}
	if err := t.persist.SaveLockouts(ws); err != nil {
		if t.onPersistFailure != nil {
			t.onPersistFailure()
		}
		t.unsaved = make([]string, len(ws))
		for i, w := range ws {
			t.unsaved[i] = w.ConnectionID
		}
		return err
	}
	return nil
}

// lowerNext makes next no later than until.
func (t *Table) lowerNext(until int64) {
	for {
		cur := t.next.Load()
		if until >= cur || t.next.CompareAndSwap(cur, until) {
			return
		}
	}
}

// sweep drops the windows that are over at now and returns their
// connections. It walks the whole map, without blocking readers or
// writers, unless no window can be over yet; an entry replaced during the
// walk stays. Only Run's goroutine (or a test) sweeps, never two at once.
func (t *Table) sweep(now time.Time) (dropped []string) {
	nowNs := now.UnixNano()
	if nowNs < t.next.Load() {
		return nil
	}
	// Entries stored during the walk lower next from here on, whether or
	// not the walk sees them.
	t.next.Store(math.MaxInt64)
	next := int64(math.MaxInt64)
	t.m.Range(func(k, v any) bool {
		switch until := v.(*entry).until; {
		case until > nowNs:
			next = min(next, until)
		case t.m.CompareAndDelete(k, v):
			t.n.Add(-1)
			dropped = append(dropped, k.(string))
		}
		return true
	})
	t.lowerNext(next)
	return dropped
}
