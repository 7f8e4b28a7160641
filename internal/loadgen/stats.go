package loadgen

import (
	"bufio"
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"
	"time"
)

// ServerCounters are a server process's cumulative counters at one
// moment, plus its resident memory then.
type ServerCounters struct {
	// Allocs and AllocBytes are the heap objects and bytes allocated since
	// the process started (runtime/metrics /gc/heap/allocs:objects and
	// :bytes). They count allocations that escape to the heap, exactly,
	// as -benchmem does.
	Allocs     uint64 `json:"allocs"`
	AllocBytes uint64 `json:"allocBytes"`
	// CPU is the process's user plus system CPU time (getrusage); zero
	// where the platform does not say.
	CPU time.Duration `json:"cpuNs"`
	// RSS is the resident set size now and HWM its peak over the
	// process's life (VmRSS and VmHWM in /proc/self/status); zero off
	// Linux.
	RSS uint64 `json:"rssBytes"`
	HWM uint64 `json:"hwmBytes"`
	// RSSFile is the file-backed part of RSS (RssFile): mapped files such
	// as the bbolt store, which the kernel can drop at any time.
	RSSFile uint64 `json:"rssFileBytes"`
	// GCCycles is the number of garbage collections completed since the
	// process started (/gc/cycles/total:gc-cycles); zero where unknown.
	GCCycles uint64 `json:"gcCycles,omitempty"`
}

// ServerStats reads a server's counters. The generator calls it just
// before and just after the measured phase and divides the difference by
// the number of streams, so it must describe the server alone: a function
// that reads the calling process (ProcessCounters) measures the generator
// too when both run in one process.
type ServerStats func() (ServerCounters, error)

// ServerCost is a server's cost per stream over a measured phase.
type ServerCost struct {
	AllocsPerRequest     float64       `json:"allocsPerRequest"`
	AllocBytesPerRequest float64       `json:"allocBytesPerRequest"`
	CPUPerRequest        time.Duration `json:"cpuPerRequestNs"`
	// RSS is the server's resident memory at the end of the phase, under
	// load (RSSFile of it file-backed); HWM its peak so far.
	RSS     uint64 `json:"rssBytes"`
	HWM     uint64 `json:"hwmBytes"`
	RSSFile uint64 `json:"rssFileBytes"`
	// GCCycles is the number of collections the server completed during
	// the phase.
	GCCycles uint64 `json:"gcCycles,omitempty"`
}

func perRequest(before, after ServerCounters, streams uint64) *ServerCost {
	n := float64(streams)
	return &ServerCost{
		AllocsPerRequest:     float64(after.Allocs-before.Allocs) / n,
		AllocBytesPerRequest: float64(after.AllocBytes-before.AllocBytes) / n,
		CPUPerRequest:        time.Duration(float64(after.CPU-before.CPU) / n),
		RSS:                  after.RSS,
		HWM:                  after.HWM,
		RSSFile:              after.RSSFile,
		GCCycles:             after.GCCycles - before.GCCycles,
	}
}

// ProcessCounters reads the calling process's counters. It is what a
// server reports about itself; as a ServerStats in the generator's own
// process it includes the generator's work.
func ProcessCounters() (ServerCounters, error) {
	s := []metrics.Sample{
		{Name: "/gc/heap/allocs:objects"},
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(s)
	c := ServerCounters{Allocs: s[0].Value.Uint64(), AllocBytes: s[1].Value.Uint64(), GCCycles: s[2].Value.Uint64(), CPU: processCPU()}
	c.RSS, c.HWM, c.RSSFile = residentMemory()
	return c, nil
}

// residentMemory reads VmRSS, VmHWM and RssFile from /proc/self/status.
func residentMemory() (rss, hwm, file uint64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		for _, field := range []struct {
			prefix string
			dst    *uint64
		}{{"VmRSS:", &rss}, {"VmHWM:", &hwm}, {"RssFile:", &file}} {
			if v, ok := bytes.CutPrefix(line, []byte(field.prefix)); ok {
				v = bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))
				if kb, err := strconv.ParseUint(string(v), 10, 64); err == nil {
					*field.dst = kb << 10
				}
			}
		}
	}
	return rss, hwm, file
}
