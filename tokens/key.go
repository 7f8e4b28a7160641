package tokens

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// KeySize is the length of the store's encryption key: AES-256.
const KeySize = 32

// keyFormat is quoted in every error about the key file's content.
const keyFormat = "32 random bytes, raw (exactly 32 bytes) or standard base64 (44 characters)"

// LoadKey reads the store's encryption key from path. The file holds 32
// bytes, either raw (exactly 32 bytes, nothing else) or standard base64;
// whitespace around the base64 text, such as a trailing newline, is ignored.
//
// When the file is missing and create is true, LoadKey writes 32 new random
// bytes there, base64-encoded, with mode 0600, creating the parent directory
// with mode 0700 if needed. The file appears whole or not at all: it is
// written to a temporary file in the same directory, synced, and then linked
// into place, so a crash never leaves a half-written key behind. If another
// process creates the key at the same moment, its key wins and is returned,
// so that two starting servers never end up with different keys.
//
// Errors name the path and the expected format but never the file's
// content. LoadKey does not judge the file's permissions: a key readable by
// group or others is returned like any other, and the caller decides
// whether to warn (see LooseKeyPermissions).
func LoadKey(path string, create bool) ([]byte, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		return parseKey(path, data)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("encryption key file %s: %w", path, err)
	case !create:
		return nil, fmt.Errorf("encryption key file %s does not exist: provide the key there (%s) or set storage.createKey: true to have one created", path, keyFormat)
	}
	return createKey(path)
}

// LooseKeyPermissions reports whether the key file at path grants more
// access than the process needs, with its mode: any permission for others,
// or any for its group when the file belongs to the process's own user,
// who needs no group access to read it. Group access to a file owned by
// another user passes: it is how Kubernetes hands a Secret to a non-root
// container (fsGroup, defaultMode 0440; the kubelet adds group read
// whatever the mode says).
//
// It is meant for a warning, not a refusal: some secret mounts show 0644
// files inside a directory nobody else can enter, which is safe, and a
// server that refused them would not start there.
func LooseKeyPermissions(path string) (fs.FileMode, bool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false, err
	}
	perm := fi.Mode().Perm()
	if !modeBitsMeanAccess {
		return perm, false, nil
	}
	return perm, perm&0o007 != 0 || perm&0o070 != 0 && ownedBySelf(fi), nil
}

// parseKey decodes a key file's content. It never puts data into an error.
func parseKey(path string, data []byte) ([]byte, error) {
	defer clear(data)
	if len(data) == KeySize {
		return bytes.Clone(data), nil
	}
	text := bytes.TrimSpace(data)
	if len(text) == 0 {
		return nil, fmt.Errorf("encryption key file %s is empty: want %s", path, keyFormat)
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(key, text)
	if err != nil {
		// The decoder's message carries only an offset, but the content is
		// not worth the risk: say what was expected instead.
		return nil, fmt.Errorf("encryption key file %s is neither 32 raw bytes nor valid standard base64: want %s", path, keyFormat)
	}
	if n != KeySize {
		clear(key)
		return nil, fmt.Errorf("encryption key file %s decodes to %d bytes: want %s", path, n, keyFormat)
	}
	return key[:n], nil
}

// createKey writes a new random key to path without ever replacing a file
// that is already there.
func createKey(path string) ([]byte, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create encryption key file %s: %w", path, err)
	}
	key := make([]byte, KeySize)
	rand.Read(key)
	text := make([]byte, base64.StdEncoding.EncodedLen(KeySize)+1)
	base64.StdEncoding.Encode(text, key)
	text[len(text)-1] = '\n'
	defer clear(text)

	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create encryption key file %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a successful link, only the extra name goes
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(text)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("create encryption key file %s: %w", path, err)
	}

	// A hard link, unlike a rename, fails when path already exists: a key
	// another process created in the meantime is never overwritten, since
	// data may already be sealed with it. Where the file system has no hard
	// links, a rename is the fallback.
	err = os.Link(tmpName, path)
	if errors.Is(err, fs.ErrExist) {
		clear(key)
		return LoadKey(path, false)
	}
	if err != nil {
		err = os.Rename(tmpName, path)
	}
	if err != nil {
		return nil, fmt.Errorf("create encryption key file %s: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("create encryption key file %s: %w", path, err)
	}
	return key, nil
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be opened for syncing there
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	// Some platforms and file systems cannot sync a directory; the entry is
	// then as durable as they make it.
	if errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	return err
}
