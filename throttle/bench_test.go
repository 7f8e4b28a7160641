package throttle

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/tokens"
)

// parallel32 makes b.RunParallel use 32 goroutines whatever GOMAXPROCS is.
func parallel32(b *testing.B) {
	p := runtime.GOMAXPROCS(0)
	b.SetParallelism((32 + p - 1) / p)
}

func connIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = tokens.NewID()
	}
	return ids
}

// BenchmarkCheck measures the request path's look-up with 32 goroutines:
// each on its own connections, or all on one, with 100,000 windows open.
// "unlocked" asks about connections without a window, the common case;
// "empty" about a table with no window at all.
func BenchmarkCheck(b *testing.B) {
	const open = 100_000
	ids := connIDs(open)
	tab := newTable(b, Options{})
	for _, id := range ids {
		if _, err := tab.Observe429(bg, id, "hubspot", nil, catalog.RateLimit{}, t0); err != nil {
			b.Fatal(err)
		}
	}
	others := connIDs(1024)
	empty := newTable(b, Options{})
	now := t0.Add(time.Second)

	cases := []struct {
		name string
		tab  *Table
		ids  func(g int) []string // the IDs goroutine g asks about
		want bool
	}{
		{"distinct", tab, func(g int) []string { return ids[g*1000 : (g+1)*1000] }, true},
		{"shared", tab, func(int) []string { return ids[:1] }, true},
		{"unlocked", tab, func(g int) []string { return others[g*32 : (g+1)*32] }, false},
		{"empty", empty, func(g int) []string { return others[g*32 : (g+1)*32] }, false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var next atomic.Int64
			b.ReportAllocs()
			parallel32(b)
			b.RunParallel(func(pb *testing.PB) {
				mine := c.ids(int(next.Add(1)-1) % 32)
				i := 0
				for pb.Next() {
					if _, ok := c.tab.Check(mine[i%len(mine)], now); ok != c.want {
						b.Fatalf("open = %t, want %t", ok, c.want)
					}
					i++
				}
			})
		})
	}
}

// BenchmarkObserve429 measures the response path's record of a 429 with
// 32 goroutines: in memory only, and committed to a real store with fsync
// through Run's group commit (tx/op is transactions per 429).
func BenchmarkObserve429(b *testing.B) {
	h := Pairs{{"content-type", "application/json"}, {"retry-after", "30"}, {"x-ratelimit-reset", "1772366460"}}
	rl := catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{{Name: "x-ratelimit-reset", Format: catalog.ResetEpochSeconds}}}
	ids := connIDs(1 << 16)

	b.Run("memory", func(b *testing.B) {
		tab := newTable(b, Options{})
		var next atomic.Int64
		b.ReportAllocs()
		parallel32(b)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := ids[next.Add(1)%int64(len(ids))]
				if _, err := tab.Observe429(bg, id, "github", h, rl, t0); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("store", func(b *testing.B) {
		st := openStore(b, filepath.Join(b.TempDir(), "ampproxy.db"), true)
		counter := &countingPersister{Persister: StorePersister(st)}
		tab := newTable(b, Options{Persist: counter})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); tab.Run(ctx) }()
		defer func() { cancel(); <-done }()
		var next atomic.Int64
		b.ReportAllocs()
		parallel32(b)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := ids[next.Add(1)%int64(len(ids))]
				if _, err := tab.Observe429(bg, id, "github", h, rl, t0); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(float64(counter.saves.Load())/float64(b.N), "tx/op")
	})
}

var benchWindows = flag.Int("windows", 100_000, "windows BenchmarkMemoryPerWindow opens before it measures the heap")

// BenchmarkMemoryPerWindow opens windows for -windows distinct connections
// (100,000 by default) and reports the heap they take per window (the ID
// strings, which the table shares with the store, are allocated beforehand
// and not counted), then what is left once they, and the ones the loop
// added, have all expired and been swept. The timed loop opens one more
// window per iteration, on a table that already holds them all (making
// its ID included). For the figure with a million connections locked at
// once:
//
//	go test -run '^$' -bench MemoryPerWindow ./throttle/ -args -windows 1000000
func BenchmarkMemoryPerWindow(b *testing.B) {
	n := *benchWindows
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-000000000000", i)
	}
	providers := []string{"hubspot", "salesforce", "slack", "zendeskSupport"}
	before := heapInUse()
	tab := newTable(b, Options{})
	for i, id := range ids {
		if _, err := tab.Observe429(bg, id, providers[i%len(providers)], nil, catalog.RateLimit{}, t0); err != nil {
			b.Fatal(err)
		}
	}
	perWindow := float64(heapInUse()-before) / float64(n)

	i := n
	for b.Loop() {
		if _, err := tab.Observe429(bg, "loop-"+strconv.Itoa(i), providers[i%len(providers)], nil, catalog.RateLimit{}, t0); err != nil {
			b.Fatal(err)
		}
		i++
	}

	if dropped := tab.sweep(t0.Add(time.Hour)); len(dropped) != i || tab.Open() != 0 {
		b.Fatalf("sweep dropped %d of %d, left %d", len(dropped), i, tab.Open())
	}
	afterSweep := float64(heapInUse() - before)
	runtime.KeepAlive(tab)
	runtime.KeepAlive(ids)
	b.ReportMetric(perWindow, "B/window")
	b.ReportMetric(afterSweep, "B-after-sweep")
}

func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkSweep measures one walk over a million open windows, none of
// them expired: what Run pays every SweepInterval while windows keep
// ending (when none can have ended, the sweep skips the walk).
func BenchmarkSweep(b *testing.B) {
	tab := newTable(b, Options{})
	for i := range 1_000_000 {
		if _, err := tab.Observe429(bg, fmt.Sprintf("%08x-0000-4000-8000-000000000000", i), "p", nil, catalog.RateLimit{}, t0); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		tab.next.Store(0) // force the walk
		if dropped := tab.sweep(t0); len(dropped) != 0 {
			b.Fatalf("dropped %d", len(dropped))
		}
	}
}
