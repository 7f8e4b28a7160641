// Command ampproxy is the ext_proc server that sits beside Envoy and turns a
// caller's request into an authenticated provider request.
//
// Usage:
//
//	ampproxy serve --config FILE   run the ext_proc server and the admin API
//	ampproxy dev   --config FILE   serve, plus a local data plane (--listen, default 127.0.0.1:10000)
//	ampproxy check --config FILE   report every problem in the config, manifests, catalog and key
//	ampproxy admin RESOURCE VERB   manage connections and installations (ampproxy admin help)
//	ampproxy keys new              print a fresh API key and its SHA-256
//	ampproxy version               print the version
//
// Exit status: 0 on success, 1 on a failure, 2 on a usage mistake.
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
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
