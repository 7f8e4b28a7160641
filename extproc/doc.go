// Package extproc is ampproxy's envoy.service.ext_proc.v3.ExternalProcessor
// server: for each HTTP request Envoy opens one stream and sends the
// request headers, then the response headers; this package turns the
// first into an authenticated provider request and reads the second.
//
// It owns the proxy contract of DESIGN §2: validating the x-amp-* headers,
// authenticating the caller, choosing the installation (the installation
// ID wins over integration name plus group ref), checking proxy.enabled
// and that the installation's connection is for the integration's
// provider (a manifest edit can move an integration to another provider;
// the old connection's credential must not follow it there), resolving the
// upstream through the catalog, removing every control header and (unless
// the provider's authType is none) the caller's own Authorization, and
// setting the credential. Errors leave as an ImmediateResponse carrying
// application/problem+json. It does not own storage (a Store
// answers look-ups from memory), the catalog, or configuration loading.
//
// # Envoy's rules
//
// Mutations follow what Envoy's ext_proc filter actually applies: values
// go in raw_value only (Envoy ignores value when raw_value is set and
// reads an empty header otherwise); append is left unset, so a set
// overwrites; clear_route_cache is sent together with the header
// mutation, the only place where it counts; :authority changes need
// mutation_rules.allow_all_routing in the filter config (envoy/envoy.yaml
// sets it).
//
// # Caveats
//
// The hot path reads only memory: the config is an atomic pointer swapped
// on reload, the Store answers without disk I/O, and Tokens answers from
// memory while a token is valid (a refresh, when one is due, is the only
// network call, made by tokens.Refresher). A request that has to wait for
// a refresh waits at most Options.TokenWait (half of grpc.messageTimeout,
// Envoy's message_timeout) from when its headers arrived, then gets 503
// with Retry-After, so that Envoy's own timeout (a 504) does not come
// first. A provider 429 waits for its lockout window to be committed
// before the answer leaves (throttle.Table).
//
// A forwarded request's answers are fields of one block with the
// stream's state (reply), and the x-amp-* values it parses are views of
// the received message's bytes rather than copies. Both rely on grpc-go and
// protobuf-go as they are: Send encodes the message before it returns, and
// decoding copies bytes out of gRPC's buffers, so nothing else writes to
// either. A gRPC interceptor or stats handler that kept a received message
// and changed it would break the second.
//
// The block is taken from a sync.Pool and, once Process is over, cleared
// and put back for another stream. That is safe while nothing keeps a
// reference past the stream: the log line is encoded and the metrics,
// lockout commit (Lockouts.Observe429 returns once the window is
// committed) and token look-up (Tokens.AccessToken, which gets the
// stream's context, never the block) complete before Process returns, and
// the gRPC server keeps no sent message: ampproxy installs no stats
// handler (grpc.StatsHandler hands each sent message to HandleRPC) and
// leaves grpc.EnableTracing off (its trace keeps every message), and
// binary logging keeps the encoded bytes, not the message. Turning on
// either of the first two, or wrapping the stream in an interceptor that
// keeps what it sends, would let the next stream overwrite a message
// still referenced.
package extproc
