package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/tokens"
)

// errReported marks a failure whose details were already printed.
var errReported = errors.New("configuration has problems")

// check loads everything serve would load, the store's encryption key
// included, without creating anything or opening the store, and prints
// every problem on its own line.
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
	if err := checkEncryptionKey(cfg.Storage); err != nil {
		fmt.Fprintf(stdout, "%s: storage.encryptionKeyFile: %v\n", cfg.Path, err)
		fmt.Fprintf(stdout, "1 problem(s) found\n")
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

// checkEncryptionKey reads the store's key with the loader serve uses, so
// that a malformed key file fails here rather than at the next start. It
// never creates the file: a missing one that serve would create is fine.
func checkEncryptionKey(st config.Storage) error {
	if _, err := os.Stat(st.EncryptionKeyFile); errors.Is(err, fs.ErrNotExist) && st.CreateKey {
		return nil
	}
	key, err := tokens.LoadKey(st.EncryptionKeyFile, false)
	clear(key)
	return err
}
