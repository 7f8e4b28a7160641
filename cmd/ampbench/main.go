// Command ampbench measures ampproxy's ext_proc server against the floor
// of the protocol, a no-op ext_proc server, playing Envoy's side of the
// streams with internal/loadgen.
//
// Usage:
//
//	ampbench noop    --listen ADDR           serve the no-op ext_proc server
//	ampbench load    --target ADDR [flags]   run the load generator against any ext_proc server
//	ampbench suite   --out BENCHMARKS.md     everything make bench reports, in one run
//	ampbench server  --kind KIND ...         one server process of the suite
//	ampbench fixture --dir DIR [-n N]        the suite's config and a store of N installations
//
// suite runs, in order: the Go micro-benchmarks of the hot path; a search
// for the concurrency at which the no-op server peaks; rounds alternating
// the no-op server and ampproxy at that concurrency over TCP and a unix
// socket, then ampproxy with OAuth2 installations and ampproxy writing its
// request log; an open-loop latency run of both at half the no-op server's
// peak rate; and the scale figures (startup, resident memory, per-request
// cost) with 100,000 connections and installations against 10. It writes
// every figure, and each performance target as met or missed, to the file
// --out names.
//
// Every server runs in a process of its own, this binary started as
// "ampbench server", while the generator runs in the suite's process. The
// server reports its own allocations (runtime/metrics), CPU time
// (getrusage) and resident memory (/proc/self/status) before and after
// each run, so the per-request figures hold the server's work and nothing
// of the generator's, gRPC's own share included; the no-op server's
// figures are that share. ampproxy is assembled by internal/datapath, as
// "ampproxy serve" assembles it, with the same gRPC server options
// (datapath.ServerOptions), minus the admin API.
//
// main only wires signals to Main, which the tests call directly.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
