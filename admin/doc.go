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
// cannot tell which paths exist.
//
//	POST   /v1/projects/{project}/connections:generate                        201 Connection
//	GET    /v1/projects/{project}/connections[?provider=&groupRef=]           200 {items, nextPageToken}
//	GET    /v1/projects/{project}/connections/{id}                            200 Connection
//	DELETE /v1/projects/{project}/connections/{id}                            204; 409 while installed
//	POST   /v1/projects/{project}/integrations/{integration}/installations    201 Installation
//	GET    /v1/projects/{project}/integrations/{integration}/installations    200 {items, nextPageToken}
//	GET    /v1/projects/{project}/integrations/{integration}/installations/{id}  200 Installation
//	DELETE /v1/projects/{project}/integrations/{integration}/installations/{id}  204
//	GET    /v1/projects/{project}/installations                               200, every integration
//	POST   /v1/oauth-connect, GET /v1/oauth/callback                          501 (not built yet)
//
// Lists take pageSize (1 to 1000; absent means the store's default of 100)
// and pageToken; nextPageToken is absent on the last page and items is
// never null.
//
// # Decisions where DESIGN is silent
//
//   - A new connection's status is always "created": ampproxy has not yet
//     seen the provider accept the credential. The proxy path moves it to
//     "working" or "bad_credentials".
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
//   - Unknown routes are a problem+json 404, a wrong method a 405 with
//     Allow; a path that is not in clean form (// or dot segments) is a 404
//     rather than ServeMux's redirect.
//
// # Caveats
//
//   - Secrets never leave in a response, an error detail or a log line:
//     decoding errors name fields and byte offsets but never quote input,
//     and connections are serialised without their credential.
//   - The handler writes one log line per request (method, route pattern,
//     status, duration, request ID, and the project once authenticated),
//     never the body or the path's values.
//   - X-Request-Id is echoed when it is a short printable token and
//     generated otherwise; it is also the problem's requestId.
package admin
