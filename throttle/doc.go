// Package throttle owns throttle mode's lockout table (DESIGN §3): every
// provider 429 opens a window for the connection (the credential) that got
// it, and throttle-mode requests on that connection are answered 429 by
// ampproxy until the window ends, without reaching the provider.
//
// A Table holds one window per connection in memory. Check is the request
// path's question, Observe429 the response path's record of a 429, and Run
// the background loop that commits windows and drops expired ones.
// FormatRetryAfter and RetryAfterSeconds format a window's end for the
// X-Amp-Retry-After and Retry-After headers.
//
// The package does not read ext_proc messages, build responses, choose
// which requests are in throttle mode, export metrics or look connections
// up: extproc does those, and counts through Options.OnOpen. It keeps its
// windows through a Persister; StorePersister puts them in the tokens
// store's bbolt file.
//
// # Window end
//
// The end is the latest of the hints a 429 carries, each read from the
// response's lower-case headers:
//
//   - Retry-After, as delta-seconds (a fraction allowed) or an HTTP-date
//     in any of HTTP's three date formats (net/http.ParseTime);
//   - each header the catalog lists in the provider's
//     rateLimit.resetHeaders. Their numeric encodings are told apart by
//     magnitude, since catalogs and providers get them wrong: from 1e12 a
//     value is epoch milliseconds, from 1e9 epoch seconds, and below 1e9
//     seconds to wait, except under epochMillis, where a small value is a
//     moment in 1970 and thus ignored. A fraction is allowed in each.
//
// Of a repeated header the first value counts. A hint that does not parse,
// or that is not after the 429 (Retry-After: 0 included), is ignored.
// Without a usable hint the window lasts Options.DefaultWindow. A window
// longer than Options.MaxWindow is cut to it and is not retryable, and so
// is every window of a 429 that carries one of the provider's
// rateLimit.lockoutMarkers headers. A later 429 moves an open window's end
// later but never earlier, and a window that is not retryable stays so
// until it ends.
//
// # Durability
//
// Check never writes. Observe429 updates memory, hands the connection to
// Run's group-commit loop and returns only when the batch it joined is
// committed: one transaction (one fsync in bbolt) for all the 429s that
// arrived while the previous batch was being written, instead of one per
// 429. extproc answers Envoy's response-headers message after Observe429
// returns, so once the caller has a 429 the window is on disk and survives
// a crash or restart. Each commit writes the windows as they are in memory
// at that moment, in order, so the file never holds an older end than one
// already written. Without Run (before it starts, after it returns),
// Observe429 commits on its own, one transaction per call.
// TestCrashAfterObserve kills a process in a burst of 429s and finds every
// acknowledged window in the file.
//
// When the Persister fails, the window still applies in memory, Observe429
// returns the error for logging, and the next commit retries it. Expired
// windows are deleted lazily: the sweep drops them from memory every
// SweepInterval and the loop deletes them from the store in chunks,
// skipping any connection that was locked out again in between; New
// leaves out expired windows it loads.
//
// # Memory
//
// An open window costs one sync.Map entry, with a 24-byte value, and shares
// its connection-ID string with the caller; provider names are interned.
// BenchmarkMemoryPerWindow measures about 150 bytes per window with a
// million distinct connections, IDs excluded. The sweep drops expired
// windows and sync.Map gives their memory back, so memory follows the
// number of open windows, not the number ever opened.
//
// # Caveats
//
//   - Observe429 waits for a disk commit on the response path. On a
//     healthy disk that is one fsync shared by the batch; on a hung disk
//     it holds the provider's 429 until Envoy's message timeout turns it
//     into a 504. Options.CommitTimeout trades that for a window that may
//     be lost if the process dies before the late commit.
//   - Windows are per process and per file, like the tokens store. Several
//     replicas would each learn of a 429 on their own; sharing windows
//     needs the distributed store of DESIGN §7.
//   - Check answers from the caller's clock; windows restored after a
//     restart are judged by the new process's wall clock, so a clock step
//     moves every window.
//   - A window locks the whole credential, as DESIGN §3 asks: a 429 from
//     one of a provider's narrower buckets (GitHub's search limit, say)
//     holds back every throttle-mode request on that connection.
//   - lockoutMarkers match header names, not values: a provider that says
//     which limit was hit in a header's value (Xero's X-Rate-Limit-Problem)
//     cannot be described that way.
//   - A window outlives its connection: deleting a connection does not
//     delete its window, which simply expires.
//   - Open counts expired windows until the next sweep.
package throttle
