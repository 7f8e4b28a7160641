// Package sampleprovider is a test and demo fixture: a small "SaaS API"
// served over TLS on a loopback port, for ampproxy's end-to-end tests and for
// `make demo`. It is not a real provider and not a model of any one provider;
// it implements just enough of the common shapes (OAuth2 authorization code
// with PKCE, refresh-token rotation, client credentials, API keys in a header
// or the query, HTTP Basic, 429 answers with reset hints) for tests to prove
// what ampproxy sent upstream.
//
// It owns its certificate authority, its OAuth2 state (codes, access and
// refresh tokens) and its request counters. It does not own a clock: every
// expiry is measured with [Options.Now], so tests move time by hand.
//
// # Endpoints
//
//   - GET /healthz answers 200.
//   - GET /oauth/authorize approves every request from the configured client at
//     once (there is no user to ask) and redirects to redirect_uri with code and
//     state. PKCE (S256 or plain) is enforced when code_challenge is present.
//   - POST /oauth/token serves the authorization_code, refresh_token and
//     client_credentials grants. The client authenticates with HTTP Basic
//     ("inHeader") or client_id/client_secret form fields ("inParams"). Refresh
//     tokens rotate: each use returns a new one and invalidates the old one.
//   - Any method on /v1/... is an API call. It is authenticated by any one of a
//     bearer access token, the API key (X-Api-Key header or api_key query
//     parameter) or HTTP Basic, and answers [Echo] as JSON: what arrived,
//     including every header. GET /v1/big?bytes=N instead streams N bytes of
//     deterministic data whose SHA-256 is sent in advance in [BodySHA256Header].
//     A delay_ms=N query parameter holds any answer back N milliseconds (at
//     most 30 s), and [Server.Hold] holds the answers for a path until the
//     test releases them, for tests of requests in flight.
//
// With [Options.PlainHTTP] every endpoint is also served over plain HTTP on
// a second loopback port ([Server.HTTPAddr]). [Server.TokenGrants] counts
// token requests by grant type, and [Server.SetRateLimit] makes API calls
// answer 429 with the headers a test chooses (Retry-After, reset headers).
//
// # Caveats
//
//   - The echo repeats every request header, Authorization and X-Api-Key
//     included, and the query, api_key included. Tests and the demo must mask
//     those values before they print or log an echo.
//   - Bodies are hashed as they stream and never kept, so a 20 MB upload needs
//     no more memory than a small one. Rejected requests (401, rate-limited) are
//     read and hashed too, so that a client is never cut off mid-upload and
//     [Server.LastRequest] always describes the whole request.
//   - An Authorization, X-Api-Key or api_key that appears more than once counts
//     as absent: a proxy that appends a credential instead of replacing the
//     caller's is caught rather than forgiven.
//   - The certificate authority lives only in memory and only for the
//     server's lifetime; hand [Server.CAPEM] to other processes.
//   - State is not persisted and tokens are never purged other than on use or
//     expiry checks; the fixture is meant for short-lived processes.
package sampleprovider
