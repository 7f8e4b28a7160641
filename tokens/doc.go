// Package tokens owns ampproxy's persistent state about provider
// credentials: connections (a group's credential for one provider, with its
// metadata), installations (a group's use of an integration, bound to a
// connection), and the encryption of those credentials at rest.
//
// A Store keeps everything in one bbolt file. Each connection's credential
// is sealed on its own with AES-256-GCM under a 32-byte key (see LoadKey),
// bound to the connection's ID, so no secret is ever written in plaintext
// and a sealed credential cannot be moved to another record. At Open the
// whole file is read and every credential decrypted once; from then on the
// look-ups on the request path (Connection, ConnectionByGroup, Installation,
// InstallationByGroup) are served from memory, without allocation, disk
// access or decryption. Each write is one bbolt transaction, and memory
// changes only after it has committed.
//
// A Refresher keeps OAuth2 connections usable: it hands out access tokens
// and refreshes them against the providers' token endpoints (see Token
// refresh below). Apart from that, the package does not talk to providers,
// validate provider metadata against the catalog, check that a
// connection's provider fits an integration, or authenticate callers:
// those belong to the code that calls it.
//
// Consumers depend on the few methods they use through interfaces of their
// own (extproc.Store, for instance), so a second implementation backed by a
// distributed store can take the place of this one (DESIGN §7).
//
// # Token refresh
//
// [Refresher.AccessToken] returns a usable access token for an OAuth2
// connection, of either grant: authorization-code connections are
// refreshed with their refresh token and the project's provider app
// (RefresherOptions.Apps), client-credentials connections mint a new
// token from their own client ID, secret and scopes. Token requests go
// through golang.org/x/oauth2 (and its clientcredentials package) with the
// catalog's authStyle, never auto-detection, which would send the grant a
// second time; and on a context of the Refresher's own, never a request's,
// that carries the token HTTP client (10 s timeout by default). That
// client never follows a redirect, which would send the client secret and
// the refresh token on to the redirect's target: a 3xx answer is a failed
// refresh, retried with backoff. Each refresh builds its token source for
// that one call; none is kept.
//
// The request path. A token valid for longer than the margin (5 minutes,
// or the catalog's oauth2.refreshMargin, and never more than half the
// token's lifetime) is returned from memory, without lock, allocation or
// I/O. Otherwise one refresh per connection runs at a time and every
// concurrent caller shares its result. A caller whose token is inside the
// margin but not expired gets it at once while the refresh runs for the
// next requests. A caller whose token has expired waits until its
// context's deadline, or at most RefresherOptions.Wait (100 ms by
// default), and then gets a *RetryError, which extproc answers with 503
// and Retry-After; the refresh is not cancelled, and the next request uses
// its result. Envoy gives ampproxy 200 ms per message (message_timeout in
// envoy/envoy.yaml), counted from when it sends the message, and answers
// 504 past it. extproc therefore sets the deadline at half of that
// (config grpc.messageTimeout / 2) after the message arrived, not after
// the wait began, leaving the other half for the stream, the scheduler
// and the answer's way back. [Refresher.Cached] lets it build that
// deadline's context only when there is something to wait for. The server
// could extend Envoy's timeout once with override_message_timeout, but
// Envoy honours the override only up to the filter's max_message_timeout,
// which the shipped bootstrap does not set (its zero value disables the
// override), and extending it would hold the caller's request, and
// Envoy's stream, for as long as a slow token endpoint takes, up to the
// 10 s HTTP timeout. A short wait and an
// explicit 503 keep the data path's latency bounded and tell the caller
// when to come back; the margin and the background refresh make the wait
// rare, since tokens are normally refreshed before they expire.
//
// Persistence order. The endpoint's answer is written with
// Store.UpdateConnection, status working, in one bbolt transaction with
// fsync, and only then handed to any caller, so a rotated refresh token is
// on disk before the access token issued with it is used. An answer
// without refresh_token keeps the stored one; expires_in becomes an
// expiry on the Refresher's clock, counted from before the request was
// sent. The access token, refresh token and expiry are sealed together in
// one record, so after a crash at any point the store holds the old pair
// or the new pair, never a mix (TestRefreshCrashSafety kills a refreshing
// process and checks). A crash after the provider rotated the token but
// before the write commits leaves the old pair, which such a provider no
// longer accepts; no client can close that window, which is why the write
// comes first and nothing else precedes it. If the write fails, the answer
// is kept in memory and stored on the next attempt instead of spending
// another grant, and is not used before. If the connection's credentials
// were replaced while the refresh ran, its answer is discarded.
//
// Failures. invalid_grant marks the connection bad_credentials (stored)
// and gives ErrBadCredentials (424); so do invalid_client and
// unauthorized_client for a client-credentials connection, whose client is
// its own. The token endpoint is not called for it again until its
// credentials or status are updated; if storing the status failed, the
// Refresher remembers it until the connection's UpdateTime changes.
// invalid_client and unauthorized_client on an authorization-code refresh
// blame the project's provider app, not the connection (RFC 6749 §5.2;
// Google answers unauthorized_client once the app's client ID changed):
// they are logged as an error naming providerApps and retried with
// backoff, so that an operator's mistake does not mark every user's
// connection bad. Everything else, the
// endpoint down, slow or answering 5xx, 429, a redirect or an unexpected
// 4xx or body, a token that CheckToken refuses (it is not stored), and
// configuration problems, gives a *RetryError (503) and
// starts a per-connection backoff: BackoffBase (1 s) doubled per failure
// in a row up to BackoffMax (5 min), with full jitter but never below
// BackoffBase. During the backoff no request calls the endpoint: a token
// that has not expired is still handed out, an expired one gets a
// *RetryError with the rest of the pause. A success resets it, and so
// does any update of the connection made elsewhere (new credentials or
// metadata through the admin API, seen as a changed UpdateTime or
// credential), so that fixed credentials are tried at once. An expired
// token with no refresh token gives ErrTokenExpired (424) without any
// request.
//
// A provider 401 on a proxied request is reported with
// [Refresher.MarkStale]: the next request for that token refreshes first.
// Such forced refreshes are limited per connection, since each spends a
// grant and may rotate the refresh token, and a provider that rejects even
// fresh tokens (a missing scope, a suspended account) would otherwise
// cost one per request: after a forced refresh, 401s force nothing for a
// minute and requests go on with the current token; the gap doubles with
// each forced refresh of a new token that follows while it is still
// recent (the retries of one that failed count once), up to 30
// minutes, and is back to a minute after a spell of twice the gap without
// one, or once the connection's credentials are updated. A 401 for a token
// that a forced refresh has already replaced forces nothing.
//
// [Refresher.Run] refreshes in the background the tokens of connections
// used within RecentUse (1 h) that expire within twice their margin, or
// within half their lifetime if that is shorter (so a token just issued is
// never due), at most Concurrency (4) at a time, through the same
// one-refresh rule.
//
// Nothing logged or returned holds a token, refresh token, client secret
// or token-response body: failures are described by HTTP status and OAuth2
// error code alone, since providers may echo the request in
// error_description.
//
// # Caveats
//
//   - One process per file. bbolt takes an exclusive lock on the file; a
//     second Open, from another process or the same one, waits
//     Options.OpenTimeout and then fails with ErrLocked. Several replicas
//     need the planned distributed store, not a shared file.
//   - Everything is held in memory, so the store's size is bounded by RAM;
//     the file never shrinks after deletions.
//   - Key rotation is not yet supported: a store opens only with the key it
//     was created with, and losing the key loses every credential. Back the
//     key file up apart from the data file. With random nonces one key
//     should seal no more than 2^32 credentials over its life, far beyond
//     what token refreshes produce, but a bound rotation will have to keep.
//   - The one-refresh-per-connection rule holds within one process. With
//     replicas (DESIGN §7) it needs a lock in the shared store, or two
//     replicas may spend the same rotating refresh token.
//   - Refresher.Close waits for refreshes in flight, up to the token
//     timeout, rather than cancel one whose answer would then be lost.
//   - The key file's permissions are reported, not enforced:
//     LooseKeyPermissions tells serve when to warn (others may access it,
//     or the group may while the process owns it), because some secret
//     mounts show 0644 files in a directory nobody else can enter.
//   - Decrypted credentials live in process memory for the life of the
//     Store; their String, GoString, LogValue and MarshalJSON redact them,
//     but a core dump would not.
package tokens
