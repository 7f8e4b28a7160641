// Package loadgen measures an ext_proc server the way Envoy drives it: one
// gRPC stream per HTTP request on a shared HTTP/2 connection, the request
// headers of a proxy request (DESIGN §2) in, a header mutation or an
// immediate response out, then the upstream's response headers in and an
// answer out, then the stream closes.
//
// Run is the generator: a number of workers over one or more client
// connections, in a closed loop (as fast as the server answers) or an open
// loop (a fixed schedule, latency measured from when each request was due,
// so that a stall is not hidden by the requests it held back). It reports
// requests per second, latency percentiles from a Histogram of fixed size
// and bounded relative error, failed streams by kind, and, through a
// ServerStats hook, the server's allocations, CPU time, collections and
// resident memory per request: ProcessCounters for a server that reports
// its own counters, MetricsStats for one that serves Prometheus metrics.
// NoopServer is the floor to compare against: it answers every message
// with an empty response of the matching kind, and DecodeAllocs measures
// how much of that floor is protobuf decoding alone.
//
// The package does not start ampproxy, choose concurrency levels or write
// reports: cmd/ampbench does, and documents how its figures are taken.
//
// # Caveats
//
//   - Latency is measured at the client and includes the generator's own
//     scheduling. When generator and server share a machine they compete
//     for the same cores, as Envoy and ampproxy do in a pod.
//   - ServerStats must describe the server process alone. ProcessCounters
//     reads the calling process, so with an in-process server it counts the
//     generator's allocations too; cmd/ampbench runs each server in a
//     process of its own for that reason.
//   - Messages are built once per worker and changed in place between
//     streams (x-request-id, the selector headers). That relies on grpc-go
//     encoding a message inside SendMsg; a stats handler or interceptor
//     that keeps messages would see them change.
//   - A stream in an open-loop run waits for its predecessor on the same
//     worker; give enough workers that one worker's service time stays
//     well below its interval (Workers/TargetRate).
package loadgen
