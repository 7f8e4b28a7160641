// Package catalog holds ampproxy's provider catalog: for each SaaS API, where
// its requests go and how its credential travels (DESIGN §4).
//
// It owns the catalog embedded in the binary (providers.yaml), strict
// loading of it and of the operator's override file, the merge of the two,
// the URL templates of base, token and authorization URLs with the
// validation of every value substituted into them, and the resolution of a
// connection's metadata and a caller's path into an upstream ([Provider.Resolve],
// [Provider.TokenURL], [Provider.AuthURL], [Provider.ValidateMetadata]). It
// does not hold or refresh credentials, store anything, or make HTTP
// requests: the tokens package keeps connections and their secrets, and
// extproc applies what this package resolves.
//
// [Load] parses the embedded file and the override with unknown fields
// rejected, and returns every problem in either at once, each as
// "file:line: providers[i] (name).field: what is wrong". An override entry
// replaces the embedded entry of the same name as a whole (fields are not
// merged) or adds a provider. Templates are compiled at load time, so the
// request path only joins strings. A [Catalog] is immutable and safe for
// concurrent use.
//
// A catalog file is a list of providers:
//
//	providers:
//	  - name: zendeskSupport              # camelCase, unique
//	    displayName: Zendesk Support
//	    baseURL: https://{{.workspace}}.zendesk.com
//	    authType: oauth2                  # oauth2 | apiKey | basic | none
//	    oauth2:
//	      grantType: authorizationCode    # or authorizationCodePKCE, clientCredentials
//	      authURL: https://{{.workspace}}.zendesk.com/oauth/authorizations/new
//	      tokenURL: https://{{.workspace}}.zendesk.com/oauth/tokens
//	      authStyle: inParams             # or inHeader
//	    metadata:
//	      - {name: workspace, displayName: Subdomain}
//	    rateLimit:
//	      resetHeaders: [{name: x-ratelimit-reset, format: epochSeconds}]
//	    proxy: true
//
// An apiKey provider names exactly one place for the key: a header with an
// optional prefix ({header: {name: Authorization, prefix: "Bearer "}}) or a
// query parameter ({query: api_key}). A metadata entry may carry a default,
// used when a connection gives no value, and a list of allowed values,
// outside which a connection is refused. Reset headers are epochSeconds,
// epochMillis or deltaSeconds; Retry-After is read for every provider and
// is not listed. Each embedded reset header carries a comment with the
// provider's documentation it was checked against; a provider whose reset
// header could not be confirmed lists none (Retry-After and the default
// window then apply).
//
// A provider may list the reset headers of several buckets (Exact
// Online's minutely and daily limits, Affinity's per-minute and monthly
// ones). On a 429, a reset header whose name contains "reset" is ignored
// when the response also carries the matching remaining header (the name
// with "reset" replaced by "remaining", case-insensitively) above zero:
// that bucket was not the one exhausted. The pairing needs no field of
// its own; it follows the providers' naming, so list each bucket's reset
// header under the name the provider gives it.
//
// lockoutMarkers name response headers whose presence means the token or
// app itself is locked out (the 429 is then reported not retryable). The
// embedded catalog lists none: the providers checked either say which
// limit was hit in a header's value (Xero's X-Rate-Limit-Problem: day),
// which a marker cannot express, or use another status for an exhausted
// quota (Toggl's 402), which throttle mode does not observe. An operator
// who knows such a header for a provider adds it in an override entry.
//
// Only providers with proxy: true can be proxied.
//
// # Caveats
//
// Templates allow {{.name}} references and nothing else of text/template,
// and every name must be declared under metadata. A reference may stand for
// a whole host, part of a host or a path segment; the scheme, port and query
// are fixed by the template and cannot be templated, and a template holds no
// userinfo, fragment, backslash or whitespace. A base URL holds no query at
// all: the query of a proxied request is the caller's. A trailing slash on a
// template's path is dropped.
//
// A value substituted into a host must be DNS labels only: letters, digits
// and '-', labels separated by single dots, none empty, none starting or
// ending with '-', at most 63 characters each and 253 in all, and never an
// IP literal. It goes into the host in lower case (a stored ACME gives
// acme.my.salesforce.com), so that the forward proxy, which keys its DNS
// cache and connection pools by :authority, sees one host once. A host that took any value is then checked as a whole: it
// cannot be an IP address, localhost or a name under .localhost, a single
// label, or end in a numeric or 0x label (how resolvers accept IPv4 in
// disguise). A value substituted into a path is escaped as one segment;
// control characters are refused, and so is a value whose escaped form a
// server could read as a dot segment ("." and "..", and "a/../b", which
// escapes to a%2F..%2Fb). Token URLs must be https, except on loopback
// addresses.
//
// The caller's path, appended to the template's path, holds no dot
// segment either, so that it cannot climb out of a path the template fixes
// (bamboohr's /api/gateway.php/{{.subdomain}}, jira's /ex/jira/{{.cloudId}}):
// [Provider.Resolve] refuses it with [ErrBadPath] (extproc answers 400
// invalid-path). The path up to the first literal '?' is read the way the
// most lenient servers and proxies in front of them read it: as sent, then
// decoded up to three times, each round decoding %XX, IIS's %uXXXX and
// overlong UTF-8 (%c0%ae for '.', %c0%af for '/'), with '/', '\' and ';'
// all ending a segment; no form may hold a dot segment. "/../x",
// "/%2e%2E/x", "/.%2e/x", "/..%2fx", "/..\x", "/..;/x", "/%252e%252e/x",
// "/%u002e%u002e/x" and "/%c0%ae%c0%ae/x" are refused; "/...",
// "/.well-known", "/a..b" and "/100%25done" pass. A NUL in any form is
// refused outright (some servers end the path there, others drop it, and
// no provider path holds one), and so is a path still percent-encoded
// after three rounds.
//
// Some templates make a whole host a value: the base URLs of coupa,
// emailBison, grafana, kaseyaVSAX, loxo, odoo, sentry, talkdesk, vtiger,
// woocommerce and zoho, and coupa's token URL. There the connection
// decides where requests go and, for a token URL, where the provider app's
// client secret is sent. The checks above keep that a DNS name reached
// over https, but cannot tell a vendor's host from an internal one; an
// operator who knows the hosts in use can pin them in an override with
// allowed. A value that ends a host after a literal prefix decides the
// domain just as much. Where the vendor documents its hosts, the embedded
// catalog pins them: exactOnline's extension (nl, be, de, fr, es, co.uk,
// com), talkdesk's token domain (talkdeskid.com, .eu, .au, talkdeskidca.com),
// zoho's token domain (the accounts server of each data centre) and both
// of mercury's hosts (production and sandbox).
//
// authStyle, where the client ID and secret go on a token request, is set
// per provider from its documentation and never auto-detected: detection
// resends the grant, which fails against providers that rotate refresh
// tokens or accept a code once. Most entries send them in the body
// (inParams); those whose documentation asks for, or defaults to, HTTP
// Basic use inHeader.
//
// A provider gets exactly one credential per request: the API key, the
// Basic pair, or the OAuth2 access token as "Authorization: Bearer". Other
// headers a provider requires without being secret (Copper's
// X-PW-UserEmail, Procore-Company-Id, Algolia's application ID, Twitch's
// Client-Id, a User-Agent) are the caller's to send. An OAuth2 provider
// that reads its token from another header names it under oauth2.header
// (shopify: X-Shopify-Access-Token, no prefix); the caller's own
// Authorization is then removed all the same, as it is for an API key
// that goes in a query parameter or another header. Only authType none
// passes the caller's Authorization on.
//
// Metadata names are kept as the providers' established catalogs spell
// them (workspace, subdomain, APP_ID, zoho_api_domain) rather than forced
// into one convention, so connections carry the keys integrations expect.
//
// # Dropped providers
//
// Of the providers in the reference list (shared/reference/providers.tsv,
// DESIGN §4), these are left out because the catalog shape cannot express
// them; an override can add any of them once it can.
//
// Custom auth schemes (service-account keys, JWT bearer grants, several
// secret headers, multi-step logins): bigquery, clariCopilot, devrev,
// discourse, gitlab, googleWorkspaceDelegation, microsoftAdminConsent,
// netsuiteM2M, redtail, salesforceJWT, snowflake.
//
// OAuth2 password grant: sugarCRM, whose URLs are also whole-URL templates.
//
// Base URL that is not a fixed-scheme template: aws (a placeholder; the
// real host depends on the AWS service), bullhorn ({{.restUrl}} from the
// token response), gong ({{.api_base_url_for_customer}} from the token
// response).
//
// Token or authorization request the catalog cannot describe (oauth2.header
// could now name their access-token headers, X-Auth-Token and
// Access-Token): bigcommerce, whose token request also needs a context
// parameter, and tiktokAds, whose authorization URL renames client_id to
// app_id.
//
// A second secret on every request, beside the credential: blackbaud
// (Bb-Api-Subscription-Key), datadog (DD-APPLICATION-KEY), etsy (x-api-key
// made of the app's keystring and secret), supabase (the key again in an
// apikey header).
//
// Token endpoint that is not a plain OAuth2 exchange: adp (requires a TLS
// client certificate), personio (the v1 auth endpoint takes a JSON body and
// returns the token under data.token).
package catalog
