// Package envoy owns the Envoy side of the ampproxy sidecar: the static
// bootstrap the Envoy container runs (envoy.yaml, embedded as BootstrapYAML),
// a check that decodes it the way Envoy's loader does, and a variant of it
// for tests that run a real Envoy on one machine (TestBootstrap).
//
// It does not run Envoy and does not serve ext_proc; the ext_proc server is
// package extproc, and envoy/envoytest is an in-process stand-in for Envoy's
// data plane for tests that cannot run the real binary.
//
// # What the file sets up
//
// One listener (0.0.0.0:10000, plain HTTP/1.1 or h2c) whose HTTP filters run
// in this order: ext_proc (cluster ampproxy_extproc, a unix socket at
// /run/ampproxy/extproc.sock, HTTP/2), dynamic_forward_proxy, router. Every
// route goes to dynamic_forward_proxy_cluster, which connects over TLS to the
// host that :authority names after ext_proc has run, with SNI and certificate
// name checks derived from that host (auto_sni, auto_san_validation).
// ext_proc fails closed, sees request and response headers only, and may
// change :authority (mutation_rules.allow_all_routing). The comments in
// envoy.yaml give the reason for each of these choices.
//
// # Envoy version
//
// The file needs Envoy 1.32 or newer. Its fields are all in the API well
// before that: dns_lookup_family V4_PREFERRED arrived in 1.20 and
// HeaderMutationRules with allow_all_routing is in the 1.22 API reference;
// ext_proc's processing_mode and message_timeout and the upstream
// HttpProtocolOptions extension (auto_sni, auto_san_validation) are older,
// though not checked release by release. What sets the floor is behaviour
// ampproxy relies on (DESIGN §6):
//
//   - Header values in raw_value, both ways. Envoy 1.27 started sending and
//     reading raw_value behind the runtime guard
//     envoy.reloadable_features.send_header_raw_value; 1.32 removed the guard
//     and the old path. Before 1.27 Envoy reads only value, and ampproxy's
//     mutations, which set only raw_value, would set empty headers.
//   - A per-message timeout answers 504. Before 1.32 it answered 500
//     (1.32 changelog, runtime guard ext_proc_timeout_error).
//   - The filter's mutation_rules also govern the headers of an
//     ImmediateResponse: introduced in 1.27 behind
//     immediate_response_use_filter_mutation_rule, unconditional since 1.32.
//
// # Caveats
//
//   - ValidateBootstrapYAML checks protobuf shape and protoc-gen-validate
//     rules only. It cannot see whether a cluster a filter names exists,
//     whether an extension name is compiled into the Envoy binary, or whether
//     files such as the CA bundle exist; envoy --mode validate does, and
//     envoy_test.go runs it when an envoy binary is on PATH.
//   - If ampproxy's Process handler returns without an error before it has
//     answered the request headers, the stream ends with gRPC status OK and
//     Envoy treats that as the processor being done: the request continues
//     unprocessed, x-api-key and all, even with failure_mode_allow false
//     (ext_proc/client_impl.cc, onRemoteClose). Only a non-OK status fails
//     the request. The server must answer every message it is sent.
//   - Local replies that Envoy itself makes after ext_proc has run (the
//     router's 503 when a provider cannot be reached, dynamic_forward_proxy's
//     503 when DNS fails) pass through ext_proc's response phase like any
//     response: ampproxy sees a :status 503 that no provider sent.
//   - The DNS cache config appears twice (filter and cluster) and must stay
//     identical; Envoy shares the cache by name.
//   - Provider certificates are checked against /etc/ssl/certs/ca-certificates.crt
//     in the Envoy container. An image without that file fails every request.
package envoy
