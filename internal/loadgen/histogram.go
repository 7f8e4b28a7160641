package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, in the manner of HdrHistogram: values below
// 2^(subBits+1) nanoseconds each have a bucket of their own, and every
// power of two above that is split into 2^subBits equal buckets. A
// recorded value is therefore known to within 1/2^subBits (under 0.8%)
// across the whole range of time.Duration, in a fixed 59 KB, however long
// the run.
const (
	subBits    = 7
	subCount   = 1 << subBits             // buckets per power of two
	exactLimit = 1 << (subBits + 1)       // values below this are exact
	numBuckets = exactLimit + 56*subCount // 64-bit values: 56 more powers of two
)

// Histogram records durations with bounded memory and relative error.
// The zero value is ready to use. It is not safe for concurrent use: give
// each goroutine its own and Merge them.
type Histogram struct {
	counts   [numBuckets]uint64
	n        uint64
	sum      float64 // nanoseconds; float so that it cannot overflow
	min, max uint64
}

func bucketOf(v uint64) int {
	if v < exactLimit {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1) // ≥ 1
	sub := v >> shift                      // in [subCount, 2*subCount)
	return exactLimit + (shift-1)*subCount + int(sub-subCount)
}

// bucketHigh is the largest value that falls into bucket i.
func bucketHigh(i int) uint64 {
	if i < exactLimit {
		return uint64(i)
	}
	shift := (i-exactLimit)/subCount + 1
	sub := uint64((i-exactLimit)%subCount + subCount)
	hi := (sub+1)<<shift - 1
	if hi < sub<<shift { // the top bucket would wrap
		return math.MaxUint64
	}
	return hi
}

// Record adds one duration; negative ones count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := uint64(0)
	if d > 0 {
		v = uint64(d)
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds every value recorded in o.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Min is the smallest recorded value, exactly.
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max is the largest recorded value, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the average of the recorded values.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the value at quantile q (0.99 for p99): the smallest
// recorded value v such that at least q of all values are ≤ v, reported
// as the top of its bucket (so never below the true value, and above it
// by less than 0.8%), and never beyond Max. It returns 0 when nothing was
// recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if q <= 0 {
		return time.Duration(h.min)
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank > h.n || q >= 1 {
		rank = h.n
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketHigh(i), h.max))
		}
	}
	return time.Duration(h.max)
}
