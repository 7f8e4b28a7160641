package config

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// KeyRing verifies a project's API keys. Keys given as files are re-read
// when the file changes, because Kubernetes rotates a mounted Secret by
// swapping the file in place.
type KeyRing struct {
	static [][32]byte
	files  []string

	hashes atomic.Pointer[[][32]byte]

	mu       sync.Mutex // serialises Refresh and guards the maps below
	stamp    map[string]fileStamp
	cur      map[string][32]byte
	reported map[string]string // file → the problem last returned for it
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

func newKeyRing(static [][32]byte, files []string) *KeyRing {
	k := &KeyRing{static: static, files: files, stamp: map[string]fileStamp{}, cur: map[string][32]byte{}, reported: map[string]string{}}
	all := append([][32]byte(nil), static...)
	k.hashes.Store(&all)
	k.Refresh()
	return k
}

// Check reports whether key is one of the project's keys. It hashes the key
// and compares against every configured hash in constant time, so neither
// the result's timing nor an early exit tells which bytes matched.
func (k *KeyRing) Check(key string) bool {
	if key == "" {
		return false
	}
	h := sha256.Sum256([]byte(key))
	ok := 0
	for _, want := range *k.hashes.Load() {
		ok |= subtle.ConstantTimeCompare(h[:], want[:])
	}
	return ok == 1
}

// Refresh re-reads key files whose size, time or inode changed. A file that
// is missing, cannot be read or holds no acceptable key (see readKeyFile)
// keeps its previous key, so a rotation in progress, such as Kubernetes'
// swap of a Secret's files, never locks callers out. It reports whether a
// key changed, and the problems it found: each once, when it appears or
// changes, not again on every call while it lasts. They name the file,
// never a key.
func (k *KeyRing) Refresh() (changed bool, problems []error) {
	if len(k.files) == 0 {
		return false, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, f := range k.files {
		err := k.refreshFile(f, &changed)
		if err == nil {
			delete(k.reported, f)
			continue
		}
		if msg := err.Error(); k.reported[f] != msg {
			k.reported[f] = msg
			problems = append(problems, err)
		}
	}
	if changed {
		all := append([][32]byte(nil), k.static...)
		for _, f := range k.files {
			if h, ok := k.cur[f]; ok {
				all = append(all, h)
			}
		}
		k.hashes.Store(&all)
	}
	return changed, problems
}

// refreshFile re-reads f if it changed, setting *changed when its key did.
func (k *KeyRing) refreshFile(f string, changed *bool) error {
	st, err := os.Stat(f)
	if err != nil {
		return err
	}
	s := fileStamp{mod: st.ModTime(), size: st.Size(), ino: inode(st)}
	if old, ok := k.stamp[f]; ok && old == s {
		return nil
	}
	key, err := readKeyFile(f)
	if err != nil {
		return err
	}
	k.stamp[f] = s
	k.cur[f] = sha256.Sum256(key)
	*changed = true
	return nil
}

// MinAPIKeyLen is the shortest API key a key file may hold. `ampproxy keys
// new` makes 47-byte keys (amp_ and 32 random bytes in base64); a key
// written by hand shorter than this is more likely a password than a
// secret. A key given by its SHA-256 cannot be measured.
const MinAPIKeyLen = 32

// placeholders are values shipped in examples and manifests to be replaced;
// a key file holding one (in any case) was never filled in.
var placeholders = []string{"replace_me", "replace-me", "changeme", "change_me", "change-me"}

// readKeyFile returns the key a file holds, without surrounding whitespace.
// An empty key, a placeholder and a key shorter than MinAPIKeyLen are
// errors. Errors name the file, never the key.
func readKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: %w", path, errEmptyKey)
	}
	lower := bytes.ToLower(b)
	for _, p := range placeholders {
		if bytes.Contains(lower, []byte(p)) {
			clear(lower)
			return nil, fmt.Errorf("%s: %w (it holds %s): put a real key there, such as one from `ampproxy keys new`", path, errPlaceholderKey, strings.ToUpper(p))
		}
	}
	clear(lower)
	if len(b) < MinAPIKeyLen {
		return nil, fmt.Errorf("%s: %w: it holds %d bytes, want at least %d (`ampproxy keys new` makes one)", path, errShortKey, len(b), MinAPIKeyLen)
	}
	return b, nil
}

var (
	errEmptyKey       = errors.New("key file is empty")
	errPlaceholderKey = errors.New("the API key is a placeholder")
	errShortKey       = errors.New("the API key is too short")
)

// unknownProject is hashed and compared against when a caller names a
// project that does not exist, so that it costs what a wrong key costs.
var unknownProject = &KeyRing{}

func init() {
	all := [][32]byte{sha256.Sum256([]byte("ampproxy: no such project"))}
	unknownProject.hashes.Store(&all)
}

// Authenticate returns the project if key is one of its API keys. An
// unknown project and a wrong key give the same answer in about the same
// time: the key is hashed and compared either way, so a caller cannot
// probe for project IDs.
func (c *Config) Authenticate(projectID, key string) (*Project, bool) {
	p, ok := c.Project(projectID)
	keys := unknownProject
	if ok && p.Keys != nil {
		keys = p.Keys
	}
	if !keys.Check(key) || !ok || p.Keys == nil {
		return nil, false
	}
	return p, true
}
