package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
)

// keysCmd runs `ampproxy keys new`: a fresh random API key for a project,
// and the SHA-256 to put under projects[].apiKeys in ampproxy.yaml.
func keysCmd(args []string, stdout io.Writer) error {
	if len(args) != 1 || args[0] != "new" {
		return fmt.Errorf("%w: keys takes one subcommand: new", errUsage)
	}
	key, sum := newAPIKey()
	fmt.Fprintf(stdout, "api key: %s\nsha256:  %s\n\n", key, sum)
	fmt.Fprintf(stdout, "Give the key to the callers (header x-api-key) and add to the project in ampproxy.yaml:\n    apiKeys:\n      - sha256: %s\n", sum)
	return nil
}

// newAPIKey returns 32 random bytes as URL-safe base64 with an "amp_"
// prefix, so that secret scanners can recognise a leaked key, and the
// hex SHA-256 of the whole key string.
func newAPIKey() (key, sum string) {
	var b [32]byte
	rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	key = "amp_" + base64.RawURLEncoding.EncodeToString(b[:])
	h := sha256.Sum256([]byte(key))
	return key, hex.EncodeToString(h[:])
}
