package loadgen

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramExactSmallValues(t *testing.T) {
	var h Histogram
	for v := 100; v >= 1; v-- { // order must not matter
		h.Record(time.Duration(v))
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0, 1}, {0.01, 1}, {0.5, 50}, {0.9, 90}, {0.99, 99}, {0.999, 100}, {1, 100}} {
		if got := h.Quantile(tc.q); got != tc.want {
			t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if h.Count() != 100 || h.Min() != 1 || h.Max() != 100 || h.Mean() != 50 {
		t.Errorf("count %d min %v max %v mean %v", h.Count(), h.Min(), h.Max(), h.Mean())
	}
}

// Against sorted samples: every quantile is the true value or above it by
// less than 1/128, and never beyond the maximum.
func TestHistogramMatchesSortedSamples(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	samples := make([]time.Duration, 100_000)
	for i := range samples {
		// Log-uniform from 1µs to 10s: every scale the histogram covers
		// in practice.
		samples[i] = time.Duration(math.Exp(math.Log(1e3) + rng.Float64()*(math.Log(1e10)-math.Log(1e3))))
		h.Record(samples[i])
	}
	slices.Sort(samples)
	for _, q := range []float64{0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
		want := samples[int(math.Ceil(q*float64(len(samples))))-1]
		got := h.Quantile(q)
		if got < want || float64(got) > float64(want)*(1+1.0/128) {
			t.Errorf("Quantile(%v) = %v, true value %v", q, got, want)
		}
	}
	if h.Max() != samples[len(samples)-1] || h.Min() != samples[0] {
		t.Errorf("min %v max %v, want %v %v", h.Min(), h.Max(), samples[0], samples[len(samples)-1])
	}
}

func TestHistogramMergeAndEdges(t *testing.T) {
	var a, b, all Histogram
	for i := range 1000 {
		d := time.Duration(i) * 997 * time.Nanosecond
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&Histogram{})
	m.Merge(&b)
	if m != all {
		t.Error("merging the parts differs from recording the whole")
	}

	var e Histogram
	if e.Quantile(0.5) != 0 || e.Mean() != 0 || e.Count() != 0 {
		t.Error("empty histogram should report zeros")
	}
	e.Record(-time.Second)
	e.Record(time.Duration(math.MaxInt64))
	if e.Min() != 0 || e.Max() != time.Duration(math.MaxInt64) || e.Quantile(1) != time.Duration(math.MaxInt64) {
		t.Errorf("edges: min %v max %v p100 %v", e.Min(), e.Max(), e.Quantile(1))
	}
	for i := range numBuckets {
		if bucketOf(bucketHigh(i)) != i || (i > 0 && bucketOf(bucketHigh(i-1)+1) != i) {
			t.Fatalf("bucket %d: bounds do not round-trip", i)
		}
	}
}
