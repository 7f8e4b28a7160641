// Package admin is ampproxy's admin HTTP API (DESIGN §5) and a Go client
// for it, which the `ampproxy admin` CLI uses.
//
// It owns the HTTP surface: routing, API-key authentication, request
// validation, problem+json errors, and the request/response JSON types. It
// does not own storage (the Store interface is the subset of the token
// store it needs), the configuration (read through a function per request,
// so that reloads apply), or the listener, /healthz, /readyz and /metrics,
// which the serve command mounts next to New's handler.
//
// # Endpoints
//
// Every /v1/projects/{project}/... request carries the project's API key in
// x-api-key; an unknown project and a wrong or missing key get the same
// 401. Authentication runs before routing, so an unauthenticated caller
// cannot tell which paths exist. POST /v1/oauth-connect names its project
// in the body and is authenticated against it the same way;
// GET /v1/oauth/callback is opened by a browser and protected by its state
// alone.
//
//	POST   /v1/projects/{project}/connections:generate                        201 Connection
//	GET    /v1/projects/{project}/connections[?provider=&groupRef=]           200 {items, nextPageToken}
//	GET    /v1/projects/{project}/connections/{id}                            200 Connection
//	PATCH  /v1/projects/{project}/connections/{id}                            200 Connection
//	DELETE /v1/projects/{project}/connections/{id}                            204; 409 while installed
//	POST   /v1/projects/{project}/integrations/{integration}/installations    201 Installation
//	GET    /v1/projects/{project}/integrations/{integration}/installations    200 {items, nextPageToken}
//	GET    /v1/projects/{project}/integrations/{integration}/installations/{id}  200 Installation
//	DELETE /v1/projects/{project}/integrations/{integration}/installations/{id}  204
//	GET    /v1/projects/{project}/installations                               200, every integration
//	POST   /v1/oauth-connect                                                  200 text/plain authorization URL
//	GET    /v1/oauth/callback?code=&state=                                    200 HTML page; 4xx/5xx HTML error page
//
// Lists take pageSize (1 to 1000; absent means the store's default of 100)
// and pageToken; nextPageToken is absent on the last page and items is
// never null.
//
// # Decisions where DESIGN is silent
//
//   - A connection from generate starts as "created": ampproxy has not yet
//     seen the provider accept the credential. The proxy path moves it to
//     "working" or "bad_credentials". A connection from the OAuth callback
//     starts as "working", since the provider has just issued its token.
//   - The credential field must match the provider's authType: apiKey for
//     apiKey, basicAuth for basic, oauth2ClientCredentials for an OAuth2
//     clientCredentials grant, oauth2AuthorizationCode for authorizationCode
//     and authorizationCodePKCE, none of them for authType none.
//   - basicAuth.password may be empty, since several providers take an API
//     key as the user name and nothing else; the user name may not hold ':'.
//   - oauth2AuthorizationCode needs an access token, or only a refresh
//     token when the project has a providerApps entry to refresh it with;
//     an access token that has already expired needs a refresh token. A
//     token object with an empty token counts as absent.
//   - Credential values with control characters are refused: they end up in
//     request headers, where Envoy would fail the request later.
//   - providerWorkspaceRef is the "workspace" metadata value; giving it for
//     a provider without workspace metadata, or differently in
//     providerMetadata, is a 400. Metadata is validated with the catalog's
//     rules at creation, so a hostile value such as "evil.com#" is a 400 now.
//   - An installation's explicit connectionId must belong to the same
//     project, the integration's provider and the same group as the
//     installation: a group is one customer, and one customer's
//     installation must not run on another customer's credential.
//   - Creating an installation needs the integration in the project's
//     manifest, and so does listing one integration's installations; reading
//     and deleting an installation by ID do not, so that installations of
//     an integration removed from the manifest can still be cleaned up.
//   - PATCH takes any of providerWorkspaceRef, providerMetadata and one
//     credential, validated as in generate (the credential must fit the
//     provider's authType and replaces the stored one whole). Metadata is
//     merged in: a name with a value sets it, a name with null or "" removes
//     it, others keep their values, and the result is validated whole. An
//     update always sets the status back to "created", which clears
//     "bad_credentials"; a body that changes nothing is a 400. The checks
//     run inside the store's update, against the connection as stored at
//     that moment, so a concurrent token refresh is not lost by a
//     metadata-only update.
//   - Unknown routes are a problem+json 404, a wrong method a 405 with
//     Allow; a path that is not in clean form (// or dot segments) is a 404
//     rather than ServeMux's redirect.
//
// # OAuth connect flow
//
// POST /v1/oauth-connect takes {projectIdOrName, provider, groupRef,
// consumerRef, providerWorkspaceRef?, providerMetadata?}. ampproxy's
// projects have only an ID, so projectIdOrName is matched against it. The
// provider must have authType oauth2 with grantType authorizationCode or
// authorizationCodePKCE (clientCredentials needs no consent: use
// connections:generate), and the project a providerApps entry for it with
// clientID and redirectURL (the provider would otherwise redirect wherever
// its registration says). Metadata is validated as in generate, except that
// names the catalog's oauth2.tokenMetadataFields fill in may be missing;
// values the authorization or token URL needs may not. The client secret
// file is read once here too, so that a broken file fails before the user
// consents rather than after.
//
// The answer is the provider's authorization URL (x/oauth2's AuthCodeURL
// with the app's client ID, redirect URL and scopes, access_type=offline,
// and code_challenge with S256 for authorizationCodePKCE). Its state is 32
// random bytes in base64url, kept in memory for ConnectStateTTL (10
// minutes), bound to the project, provider, groupRef, consumerRef,
// metadata, the client ID, redirect URL and token URL of the moment, and
// the PKCE verifier. At most MaxPendingConnects flows per project are
// pending; more answer 429 with Retry-After. Pending flows do not survive a
// restart.
//
// GET /v1/oauth/callback uses the state up whatever happens next: unknown,
// expired or reused states, an error parameter from the provider (shown by
// its code), a missing code and a failed exchange all answer an HTML error
// page and store nothing. The code is exchanged with x/oauth2, the auth
// style taken from the catalog (never auto-detected), through
// Options.HTTPClient (10 s timeout by default; a copy that never follows a
// redirect, which would carry the code and client secret elsewhere) handed
// over in the context,
// bounded by ExchangeTimeout. A provider that refuses the code with an
// OAuth error is a 400 (start again), any other failure a 502. Values named
// by oauth2.tokenMetadataFields are taken from the token response (extract
// subdomain keeps the leading labels of a URL's host that make the base URL
// name that host, so Salesforce's instance_url
// https://acme.my.salesforce.com gives workspace acme, and a sandbox's
// https://acme--dev.sandbox.my.salesforce.com gives acme--dev.sandbox; a
// host the base URL cannot name fails the callback with a 502 page); they
// win over values given at connect, and the result is validated again.
// The connection is stored with authScheme oauth2AuthorizationCode, the
// access and refresh tokens, the expiry from expires_in on the server's
// clock, the granted scopes (or the requested ones when the response names
// none), and status "working", since the provider has just issued the
// token. Each successful callback creates a new connection. If a reload
// removed the project, the provider or its app meanwhile, the page is a
// 409. HEAD on the callback is a 405, so that link checkers cannot use up
// a state.
//
// The pages are built with html/template and carry no secret; they are
// sent with Content-Security-Policy default-src 'none' (inline style
// only), Cache-Control no-store, Referrer-Policy no-referrer,
// X-Frame-Options DENY and nosniff. The success page shows the provider,
// group and connection ID; error pages show the request ID, which the
// warning log line carries with the reason.
//
// # Caveats
//
//   - Secrets never leave in a response, an error detail or a log line:
//     decoding errors name fields and byte offsets but never quote input,
//     and connections are serialised without their credential. The OAuth
//     callback logs why a flow failed (a provider's error code, the token
//     endpoint's status, a transport error with every code, verifier,
//     state and client secret of the flow removed), never the query.
//   - The handler writes one log line per request (method, route pattern,
//     status, duration, request ID, and the project once authenticated),
//     never the body, the query or the path's values. Failures caused
//     outside ampproxy (a provider's token endpoint) are logged at warning
//     level with a reason.
//   - X-Request-Id is echoed when it is a short printable token and
//     generated otherwise; it is also the problem's requestId.
package admin
