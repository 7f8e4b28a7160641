package throttle_test

import (
	"context"
	"fmt"
	"time"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/throttle"
)

// The request and response phases of throttle mode, as extproc drives them.
func Example() {
	tab, err := throttle.New(throttle.Options{DefaultWindow: time.Minute, MaxWindow: 24 * time.Hour})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tab.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rl := catalog.RateLimit{ResetHeaders: []catalog.ResetHeader{{Name: "x-ratelimit-reset", Format: catalog.ResetEpochSeconds}}}

	// Response phase: the provider answered 429.
	w, err := tab.Observe429(ctx, "conn-1", "github", throttle.Pairs{{"retry-after", "3"}}, rl, now)
	if err != nil {
		fmt.Println("not persisted:", err) // the window applies all the same
	}
	fmt.Println("X-Amp-Retry-After:", throttle.FormatRetryAfter(w.Until))
	fmt.Println("X-Amp-Retryable:", w.Retryable)

	// Request phase, one second later, in throttle mode.
	later := now.Add(time.Second)
	if w, open := tab.Check("conn-1", later); open {
		fmt.Println("short-circuit 429, Retry-After:", throttle.RetryAfterSeconds(w.Until, later))
	}
	if _, open := tab.Check("conn-2", later); !open {
		fmt.Println("conn-2 goes to the provider")
	}
	// Output:
	// X-Amp-Retry-After: Sun, 01 Mar 2026 12:00:03 UTC
	// X-Amp-Retryable: true
	// short-circuit 429, Retry-After: 2
	// conn-2 goes to the provider
}
