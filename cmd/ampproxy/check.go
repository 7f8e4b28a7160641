package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/ampproxy/ampproxy/config"
)

// errReported marks a failure whose details were already printed.
var errReported = errors.New("configuration has problems")

// check loads everything serve would load, without opening the store, and
// prints every problem on its own line.
func check(path string, stdout io.Writer) error {
	cfg, err := config.Load(path)
	if err != nil {
		errs := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			errs = j.Unwrap()
		}
		for _, e := range errs {
			fmt.Fprintln(stdout, e)
		}
		fmt.Fprintf(stdout, "%d problem(s) found\n", len(errs))
		return errReported
	}
	n := 0
	for _, p := range cfg.Projects {
		n += len(p.Integrations.Integrations)
	}
	fmt.Fprintf(stdout, "%s: ok (%d project(s), %d integration(s), %d provider(s) in the catalog)\n",
		cfg.Path, len(cfg.Projects), n, len(cfg.Providers.Names()))
	return nil
}
