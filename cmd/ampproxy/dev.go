package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/envoy/envoytest"
)

// devCmd runs `ampproxy dev`: serve, plus envoytest as a local data plane,
// so ampproxy can be tried against real providers without installing
// Envoy. Upstream TLS is verified against the system roots.
func devCmd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("ampproxy dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to ampproxy.yaml")
	listen := fs.String("listen", "127.0.0.1:10000", "where the local data plane takes callers' requests")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("%w: dev needs --config FILE", errUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if strings.HasSuffix(cfg.GRPC.Listen, ":0") {
		return errors.New("dev: grpc.listen needs a fixed port (or a unix socket) for the data plane to reach it")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- serve(ctx, *path, stderr) }()

	// Callers are told where to send requests only once ext_proc answers.
	if err := waitDial(ctx, cfg.GRPC.Listen, served); err != nil {
		cancel()
		return err
	}
	// The data plane waits for ext_proc as long as the config says Envoy
	// does, so that dev answers like the deployment it stands in for.
	plane, err := envoytest.Start(envoytest.Config{
		ExtProcAddr:    cfg.GRPC.Listen,
		MessageTimeout: time.Duration(cfg.GRPC.MessageTimeout),
	}, *listen)
	if err != nil {
		cancel()
		<-served
		return fmt.Errorf("dev: data plane: %w", err)
	}
	defer plane.Close()
	fmt.Fprintf(stderr, "ampproxy dev: send requests to %s (ext_proc at %s)\n", plane.URL(), cfg.GRPC.Listen)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		return <-served
	}
}

// waitDial waits until addr (host:port or unix:///path) accepts
// connections, or serve has ended.
func waitDial(ctx context.Context, addr string, served chan error) error {
	network, a := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, a = "unix", p
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout(network, a, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dev: ext_proc server at %s did not come up: %w", addr, err)
		}
		select {
		case err := <-served:
			if err == nil {
				err = errors.New("serve stopped")
			}
			return err
		case <-ctx.Done():
			return <-served
		case <-time.After(50 * time.Millisecond):
		}
	}
}
