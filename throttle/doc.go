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
// up: extproc does those, and the caller counts through Options.OnOpen,
// OnExtend and OnPersistFailure. It keeps its windows through a
// Persister; StorePersister puts them in the tokens store's bbolt file.
//
// # Window end
//
// The end is the latest of the hints a 429 carries, each read from the
// response's lower-case headers:
//
//   - Retry-After, as delta-seconds (a fraction allowed) or an HTTP-date
//     in any of HTTP's three date formats (net/http.ParseTime), or with
//     the zone written "UTC" or as a numeric offset ("+0000"), as some
//     senders do. It opens at least MinWindow (1 s): "Retry-After: 0", or
//     a date not after the 429, means "retry now", a usable hint, not
//     none;
//   - each header the catalog lists in the provider's
//     rateLimit.resetHeaders. Their numeric encodings are told apart by
//     magnitude, since catalogs and providers get them wrong: from 1e12 a
//     value is epoch milliseconds, from 1e9 epoch seconds, and below 1e9
//     seconds to wait, except under epochMillis, where a small value is a
//     moment in 1970 and thus ignored. A fraction is allowed in each.
//
// Providers send the reset headers of several buckets on every response
// (a minutely and a daily limit, GitHub's primary limit beside its
// secondary one), and the longest would win although its bucket was not
// the one exhausted. So a reset header whose name contains "reset" is
// ignored when the same response carries the matching remaining header —
// the name with "reset" replaced by "remaining", case-insensitively
// (x-ratelimit-minutely-reset and x-ratelimit-minutely-remaining) — with
// a value above zero: that bucket still had room. GitHub's secondary
// limit (Retry-After: 60, x-ratelimit-remaining: 4999, x-ratelimit-reset
// in 50 minutes) opens a 60 s window, not a 50-minute one. A remaining
// header that is absent, zero or unreadable leaves the reset header in
// force.
//
// Of a repeated header the first value counts. A reset header that does
// not parse, or that is not after the 429, and a Retry-After that does not
// parse, are ignored. Without a usable hint the window lasts
// Options.DefaultWindow. A window longer than Options.MaxWindow is cut to
// it and is not retryable, and so is every window of a 429 that carries
// one of the provider's rateLimit.lockoutMarkers headers. A later 429
// moves an open window's end later but never earlier, and a window that
// is not retryable stays so until it ends.
//
// # Durability
//
// Check never writes. Observe429 updates memory, hands the connection to
// Run's group-commit loop and returns when the batch it joined is
// committed: one transaction (one fsync in bbolt) for all the 429s that
// arrived while the previous batch was being written, instead of one per
// 429. Each commit writes the windows as they are in memory at that
// moment, in order, so the file never holds an older end than one already
// written. Without Run (before it starts, after it returns), Observe429
// commits on its own, one transaction per call.
//
// What is guaranteed: extproc answers Envoy's response-headers message
// after Observe429 returns, so whenever the store accepts the write, a
// window is durable before the caller sees its 429, and survives a crash
// or restart. When the write fails, or Observe429's context ends first
// (Envoy gave up on the stream), the caller still gets the 429 with the
// X-Amp headers (or, in the second case, Envoy's 504), the window applies
// in memory at once, and it is written later: an abandoned batch commits
// when the disk answers, and a failed save is retried with every later
// commit — the next 429's batch, or Run's next sweep (every
// SweepInterval) — until one succeeds. Such a window is lost only if the
// process dies before that. Each failed save calls
// Options.OnPersistFailure (ampproxy counts them in
// ampproxy_lockout_persist_failures_total).
//
// TestCrashAfterObserve kills a process with SIGKILL in a burst of 429s
// and finds every acknowledged window in the file: it proves that the
// commit precedes the answer. The kernel's page cache survives SIGKILL,
// so it does not prove the fsync; bbolt's fsync on commit (the store's
// default) is what carries the window through a power loss.
//
// Expired windows are deleted lazily: the sweep drops them from memory
// every SweepInterval and the loop deletes them from the store in chunks,
// skipping any connection that was locked out again in between; New
// leaves out expired windows it loads.
//
// # Memory
//
// An open window costs one sync.Map entry, with a 24-byte value, and shares
// its connection-ID string with the caller; provider names are interned.
// BenchmarkMemoryPerWindow measures about 146 bytes per window with a
// million distinct connections locked at once (run it with
// "-args -windows 1000000"; its default of 100,000 gives about 150), IDs
// excluded. The sweep drops expired windows and sync.Map gives their
// memory back, so memory follows the number of open windows, not the
// number ever opened.
//
// # Caveats
//
//   - Observe429 waits for a disk commit on the response path. On a
//     healthy disk that is one fsync shared by the batch; on a hung disk
//     it holds the provider's 429 until Envoy's message timeout turns it
//     into a 504 and resets the gRPC stream (its ext_proc client closes
//     and then resets the stream), whose context ends the wait. The
//     window then applies in memory only until the late commit. Without
//     Run the commit is synchronous and ignores the context.
//   - The remaining/reset pairing relies on the provider's naming; a
//     provider whose remaining header is named otherwise (Contentful's
//     x-contentful-ratelimit-second-remaining) is not paired, and its
//     longest reset header still wins.
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
//     cannot be described that way, and none of the embedded catalog's
//     providers documents a header whose presence alone means the token is
//     locked out; operators add one through a catalog override.
//   - A window outlives its connection: deleting a connection does not
//     delete its window, which simply expires.
//   - Open counts expired windows until the next sweep.
package throttle
