package tokens

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DefaultOpenTimeout is how long Open waits for another process to release
// the file when Options.OpenTimeout is zero.
const DefaultOpenTimeout = time.Second

// Options tune a Store. The zero value gives the defaults.
type Options struct {
	// OpenTimeout bounds how long Open waits for the file lock that another
	// process holds. Zero means DefaultOpenTimeout. Waiting longer helps a
	// rolling restart where the old process is still closing the file; a
	// short wait makes a second server that was started by mistake fail
	// fast.
	OpenTimeout time.Duration

	// Now is the clock that stamps CreateTime and UpdateTime. Nil means
	// time.Now. Tests set it to order records deterministically.
	Now func() time.Time

	// NoSync skips the fsync after each commit. Writes become much faster,
	// but a power loss or kernel crash may lose recent writes or, worse,
	// leave the file damaged. A process crash loses nothing either way.
	// For tests and benchmarks only.
	NoSync bool
}

// Store keeps connections and installations in a bbolt file, with every
// credential sealed, and serves look-ups from memory. All methods are safe
// for concurrent use.
//
// Values returned by the store are shared, immutable snapshots: a write
// replaces a stored value with a new one and never changes it in place, so
// a caller may keep a returned value for as long as it likes but must not
// modify it.
type Store struct {
	path string
	db   *bolt.DB
	aead cipher.AEAD
	now  func() time.Time

	// wmu serialises writers across check, commit and apply, so that a
	// check made against memory (conflict, in-use) still holds when the
	// commit lands. Only writers holding wmu change the indexes, so they may
	// read them without mu.
	wmu sync.Mutex

	// mu guards the indexes. A sync.RWMutex rather than an atomic snapshot
	// of the whole state: a snapshot would have to copy every map on each
	// write, O(store) per token refresh, while here a write costs a few map
	// operations. Readers take the read lock for one map look-up, which is
	// allocation-free, and never wait for disk: the write lock is taken
	// only to apply a change that has already been committed.
	mu sync.RWMutex
	ix index
}

// index is the in-memory copy of the file.
type index struct {
	conns map[string]*Connection
	// connsByGroup lists a group's connections of one provider, oldest
	// first, so the newest is the last element.
	connsByGroup map[connKey][]*Connection
	// connsByProject lists a project's connections in listing order.
	connsByProject map[string][]*Connection
	// uses counts the installations that point at a connection.
	uses map[string]int

	insts          map[string]*Installation
	instsByGroup   map[instKey]*Installation
	instsByProject map[string][]*Installation
}

// Struct keys let a look-up hash its three parts without building a string.
type (
	connKey struct{ project, provider, group string }
	instKey struct{ project, integration, group string }
)

// Open opens the store at path, creating the file (mode 0600) and its
// directory (mode 0700) when they are missing, and loads every record into
// memory, decrypting each credential with key. key must be KeySize bytes.
//
// When another process holds the file, Open gives up after
// Options.OpenTimeout with an error that wraps ErrLocked and names the
// path. A file written by a newer, incompatible version, or sealed with a
// different key, is refused with an error that says so.
func Open(path string, key []byte, opts Options) (*Store, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("open store %s: encryption key is %d bytes, want %d", path, len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	timeout := opts.OpenTimeout
	if timeout <= 0 {
		timeout = DefaultOpenTimeout
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, NoSync: opts.NoSync})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (gave up after %s; only one process may use the file)", path, ErrLocked, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{path: path, db: db, aead: aead, now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}
	// One write transaction sets the file up and reads it back; if anything
	// is wrong (newer schema, wrong key) it rolls back and the file is left
	// as it was.
	if err := db.Update(s.load); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// Everything is in memory now; the file's pages need not stay
	// resident. Nothing else holds the database yet.
	if fi, err := os.Stat(path); err == nil {
		dropResident(db, fi.Size())
	}
	return s, nil
}

// Close releases the file. Look-ups keep answering from memory afterwards;
// writes fail.
func (s *Store) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.db.Close()
}

// Path is the file the store was opened from.
func (s *Store) Path() string { return s.path }

// Connection returns the connection with that ID, from memory.
func (s *Store) Connection(id string) (*Connection, bool) {
	s.mu.RLock()
	c, ok := s.ix.conns[id]
	s.mu.RUnlock()
	return c, ok
}

// ConnectionByGroup returns the newest (by CreateTime, the greater ID on a
// tie) of the group's connections to provider in the project, from memory.
func (s *Store) ConnectionByGroup(projectID, provider, groupRef string) (*Connection, bool) {
	s.mu.RLock()
	var c *Connection
	if l := s.ix.connsByGroup[connKey{projectID, provider, groupRef}]; len(l) > 0 {
		c = l[len(l)-1]
	}
	s.mu.RUnlock()
	return c, c != nil
}

// Installation returns the installation with that ID, from memory.
func (s *Store) Installation(id string) (*Installation, bool) {
	s.mu.RLock()
	in, ok := s.ix.insts[id]
	s.mu.RUnlock()
	return in, ok
}

// InstallationByGroup returns the group's installation of integration in
// the project, from memory. A group installs an integration at most once.
func (s *Store) InstallationByGroup(projectID, integration, groupRef string) (*Installation, bool) {
	s.mu.RLock()
	in, ok := s.ix.instsByGroup[instKey{projectID, integration, groupRef}]
	s.mu.RUnlock()
	return in, ok
}

// Stats describes the store's size.
type Stats struct {
	Connections, Installations int
	// FileBytes is the size of the file on disk, which bbolt grows in
	// steps and never shrinks; 0 when it cannot be read.
	FileBytes int64
}

// Stats returns the record counts and the file size.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	st := Stats{Connections: len(s.ix.conns), Installations: len(s.ix.insts)}
	s.mu.RUnlock()
	if fi, err := os.Stat(s.path); err == nil {
		st.FileBytes = fi.Size()
	}
	return st
}
