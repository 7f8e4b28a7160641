package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version from the build info is used.
var version = ""

const usage = `ampproxy — authenticated passthrough proxy for SaaS APIs, as Envoy's ext_proc server

Usage:
  ampproxy serve   --config FILE   run the ext_proc server and the admin API
  ampproxy check   --config FILE   load config, manifests, catalog and key; print every problem
  ampproxy dev     --config FILE [--listen ADDR]
                                   serve plus a local data plane (no Envoy needed),
                                   taking requests on ADDR (default 127.0.0.1:10000)
  ampproxy admin   RESOURCE VERB   manage connections and installations (see ampproxy admin help)
  ampproxy keys new                print a fresh API key and its SHA-256 for the config
  ampproxy version                 print the version
`

// errUsage marks errors that come with the usage text.
var errUsage = errors.New("usage")

// Main runs one command and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if err := run(ctx, args, stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "ampproxy:", err)
		if errors.Is(err, errUsage) {
			fmt.Fprint(stderr, "\n"+usage)
			return 2
		}
		return 1
	}
	return 0
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given", errUsage)
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		path, err := configFlag(cmd, rest, stderr)
		if err != nil {
			return err
		}
		return serve(ctx, path, stderr)
	case "check":
		path, err := configFlag(cmd, rest, stderr)
		if err != nil {
			return err
		}
		return check(path, stdout)
	case "dev":
		return devCmd(ctx, rest, stderr)
	case "admin":
		return adminCmd(ctx, rest, stdout, stderr)
	case "keys":
		return keysCmd(rest, stdout)
	case "version":
		if len(rest) > 0 {
			return fmt.Errorf("%w: version takes no arguments", errUsage)
		}
		fmt.Fprintln(stdout, "ampproxy", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

func configFlag(cmd string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet("ampproxy "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to ampproxy.yaml")
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	if *path == "" {
		return "", fmt.Errorf("%w: %s needs --config FILE", errUsage, cmd)
	}
	if fs.NArg() > 0 {
		return "", fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return *path, nil
}

// parseFlags parses args with fs. A flag the command does not know, or a
// value its flag refuses, is a usage mistake (exit 2); -h stays flag.ErrHelp
// (exit 0).
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", errUsage, fs.Name(), err)
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
