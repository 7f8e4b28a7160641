package loadgen

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// WriteText writes r for a person to read.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	mode := "closed loop"
	if r.TargetRate > 0 {
		mode = fmt.Sprintf("open loop at %.0f req/s", r.TargetRate)
	}
	fmt.Fprintf(&b, "target     %s (%d conn, %d workers, %s)\n", r.Target, r.Conns, r.Workers, mode)
	fmt.Fprintf(&b, "requests   %d in %s = %.0f req/s, %d errors", r.Requests, r.Elapsed.Round(time.Millisecond), r.RPS, r.TotalErrors())
	if r.Responses429 > 0 {
		fmt.Fprintf(&b, ", %d answered 429 upstream", r.Responses429)
	}
	b.WriteString("\n")
	l := r.Latency
	fmt.Fprintf(&b, "latency    p50 %s  p90 %s  p99 %s  p99.9 %s  (min %s, mean %s, max %s)\n",
		Dur(l.P50), Dur(l.P90), Dur(l.P99), Dur(l.P999), Dur(l.Min), Dur(l.Mean), Dur(l.Max))
	if s := r.Server; s != nil {
		fmt.Fprintf(&b, "server     %.1f allocs/req, %s/req, %s CPU/req, %.1f GCs/s",
			s.AllocsPerRequest, Bytes(s.AllocBytesPerRequest), Dur(s.CPUPerRequest), r.GCPerSecond())
		if s.RSS > 0 {
			fmt.Fprintf(&b, ", RSS %s (peak %s)", Bytes(float64(s.RSS)), Bytes(float64(s.HWM)))
		}
		b.WriteString("\n")
	}
	if r.ServerStatsError != "" {
		fmt.Fprintf(&b, "server     stats unavailable: %s\n", r.ServerStatsError)
	}
	kinds := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "error      %s: %d\n", k, r.Errors[k])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// GCPerSecond is the server's garbage collections per second of the
// measured phase; zero without server figures.
func (r *Result) GCPerSecond() float64 {
	if r.Server == nil || r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Server.GCCycles) / r.Elapsed.Seconds()
}

// Dur formats a duration with three significant digits: 812µs, 1.25ms.
func Dur(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d)
	case d < time.Millisecond:
		return sig3(float64(d)/1e3) + "µs"
	case d < time.Second:
		return sig3(float64(d)/1e6) + "ms"
	default:
		return sig3(d.Seconds()) + "s"
	}
}

// Bytes formats a size in B, KB, MB (powers of 1024).
func Bytes(n float64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%.0f B", n)
	case n < 1<<20:
		return sig3(n/(1<<10)) + " KB"
	case n < 1<<30:
		return sig3(n/(1<<20)) + " MB"
	default:
		return sig3(n/(1<<30)) + " GB"
	}
}

func sig3(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
