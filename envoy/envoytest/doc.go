// Package envoytest is an in-process stand-in for the data plane that
// envoy/envoy.yaml configures, for end-to-end tests and demos on machines
// without an Envoy binary.
//
// It is not Envoy. It implements the few behaviours of Envoy's ext_proc,
// dynamic_forward_proxy and router filters that ampproxy depends on, as
// Envoy implements them (Envoy versions says from which release), and
// nothing else: no retries, no route or idle timeouts, no access logs, no
// HTTP/2 or HTTP/3 upstreams, no body or trailer processing modes,
// no DNS cache (Config.Resolve or the system resolver stands in for it).
// Where a test passes here but could fail with Envoy, run it against a real
// Envoy with envoy.TestBootstrap.
//
// # Envoy versions
//
// The rules below that ampproxy relies on hold from Envoy 1.32: raw_value
// is the only value read (1.32 removed send_header_raw_value), and a late
// answer is a 504 (1.32 changelog, runtime guard ext_proc_timeout_error).
// One rule is newer: an answer of the wrong kind fails the request only from
// 1.35 (runtime guard ext_proc_fail_close_spurious_resp); 1.32 to 1.34
// ignore it, end processing and forward the request unchanged, fail-open.
// ampproxy answers every message with its own kind or an ImmediateResponse,
// so it does not depend on that rule; a processor that can send a wrong
// kind needs Envoy 1.35. Local replies reach the response phase as they did
// before Envoy 1.34; see the Caveats.
//
// # Rules it follows
//
// Paths are files in github.com/envoyproxy/envoy.
//
// Listener and headers (source/common/http/conn_manager_utility.cc,
// source/common/http/header_map_impl.cc):
//   - HTTP/1.1 and h2c on one listener (codec_type AUTO).
//   - The header map has lower-case names, pseudo-headers first (:method,
//     :path, :authority from Host, :scheme "http"); the names a request's
//     Connection header nominates are removed and te is kept only as
//     "trailers" (source/common/http/http1/codec_impl.cc); connection,
//     upgrade, keep-alive, proxy-connection and transfer-encoding are
//     removed, x-forwarded-proto is added when missing, x-request-id (a
//     UUID) when missing (generate_request_id).
//   - Setting a header replaces every value it had (HeaderMapImpl::setCopy
//     removes, then adds).
//
// ext_proc (source/extensions/filters/http/ext_proc/ext_proc.cc,
// processor_state.cc, mutation_utils.cc, client_impl.cc):
//   - One gRPC stream per HTTP request, opened for its first message; the
//     first message carries protocol_config (body modes NONE).
//   - Request headers, then response headers, each a HttpHeaders message with
//     every value in raw_value and value empty, and end_of_stream true when
//     there is no body. Bodies and trailers are never sent (modes NONE and
//     SKIP); the request body waits, unread, until the processor answers.
//   - Each answer must arrive within MessageTimeout (default 200ms) of its
//     message, or the client gets 504 (Filter::onMessageTimeout; 500 before
//     Envoy 1.32). An override_message_timeout message is ignored (no
//     max_message_timeout is configured).
//   - A gRPC error (the server fails the stream, is unreachable, or the
//     connection breaks) gives 500 (Filter::onGrpcError, failure_mode_allow
//     false). The server ending the stream with status OK before answering
//     is different: Envoy treats the processor as done and the request goes
//     on unchanged (onRemoteClose → onGrpcClose), which is fail-open.
//   - An answer of the wrong kind (for example response_headers to request
//     headers) gives 500 (spurious message, failing closed; Envoy 1.35 and
//     later, see Envoy versions).
//   - Header mutations follow MutationUtils::applyHeaderMutations and the
//     HeaderMutationRules checker
//     (source/extensions/filters/common/mutation_rules/mutation_rules.cc):
//     removals before sets; only raw_value is read, so a header given through
//     value alone is set to ""; value and raw_value both set, an invalid
//     name, or a value with NUL, CR, LF or another control character fails
//     the request with 500, keeping what was applied before it; append
//     (unset = false) overwrites and append_action is not read; other
//     disallowed mutations are ignored and counted (disallow_is_error false):
//     changes to x-envoy-* headers, removal of host or any ":" header,
//     appending to a ":" header, an :authority that is not a valid
//     authority, a :scheme other than http or https, a :status below 200 or
//     not a number, and, unless AllowAllRouting, any change to :authority,
//     host, :method or :scheme. CONTINUE_AND_REPLACE may change :method and
//     replace the request body. More than 100 headers, or more than 60 KiB,
//     fails the request.
//   - An ImmediateResponse ends processing and answers the client with its
//     status (200 when unset or below 200), headers (same rules; a failing
//     mutation is only logged) and body; content-type is text/plain unless
//     set. The upstream is not contacted, or, in the response phase, its
//     response is dropped.
//
// dynamic_forward_proxy and router
// (source/extensions/filters/http/dynamic_forward_proxy/proxy_filter.cc,
// source/common/router/router.cc):
//   - The request goes to the :authority and :path the processor left, over
//     TLS (port 443 when :authority names none), with SNI set to the host
//     and the certificate checked for that host (auto_sni,
//     auto_san_validation) against RootCAs, over HTTP/1.1, without
//     x-envoy-* headers (suppress_envoy_headers).
//   - Request and response bodies stream in both directions, unbuffered.
//   - A name that does not resolve gives 503 "DNS resolution failure"; a
//     connection that fails or is reset before response headers gives 503
//     "upstream connect error or disconnect/reset before headers. ...".
//     Both are local replies made after ext_proc ran, so, like any response,
//     they go through the response phase first.
//   - Provider response headers reach the processor with :status first,
//     without connection, upgrade, transfer-encoding, keep-alive and
//     proxy-connection (Envoy drops those when it writes the response, which
//     may be after ext_proc saw them); what the processor answers is applied
//     before the client sees the response.
//
// # Caveats
//
//   - Local replies in the response phase: Envoy 1.34's changelog says
//     local replies are no longer sent to the ext_proc server (runtime guard
//     skip_ext_proc_on_local_reply, also the fix for CVE-2025-30157 in
//     1.33.1 and 1.32.4). Whether that covers the DNS and upstream-reset
//     503s above has not been checked against a real Envoy; the stand-in
//     still sends them. ampproxy only counts such a 503 in its provider
//     metrics, so no test of ampproxy should depend on seeing it.
package envoytest
