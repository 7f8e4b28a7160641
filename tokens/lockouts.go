package tokens

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketLockouts holds throttle lockout windows: the key is the connection
// ID, the value lockoutRecord's JSON. The bucket is created by the first
// SaveLockouts, so a file that never saw a 429 does not have it.
var bucketLockouts = []byte("lockouts")

// Lockout is a connection's throttle lockout window as stored (DESIGN §3):
// the provider answered 429, and requests in throttle mode on that
// connection are held back until Until. Nothing in it is secret, so it is
// stored in plaintext.
//
// The store only keeps these records; deciding windows, expiring them and
// answering requests belong to package throttle, which holds the live table
// in memory and writes through SaveLockouts.
type Lockout struct {
	ConnectionID string
	Provider     string
	Until        time.Time
	Retryable    bool
}

// lockoutRecord is a Lockout's value in the bucket; the ID is the key.
type lockoutRecord struct {
	Provider  string    `json:"provider"`
	Until     time.Time `json:"until"`
	Retryable bool      `json:"retryable"`
}

// The lockout methods do not take wmu: they touch neither the indexes nor
// the records that writers check against, and bbolt already serialises
// write transactions. Taking wmu would only make a burst of 429s wait
// behind connection writes. After Close they fail like every write.

// SaveLockouts writes ls in one transaction, replacing any window stored
// for the same connection; the last of several entries for one connection
// wins. Either every window is stored or, on error, none is. Saving an
// empty list does nothing. A window must name its connection.
func (s *Store) SaveLockouts(ls []Lockout) error {
	if len(ls) == 0 {
		return nil
	}
	keys := make([][]byte, len(ls))
	vals := make([][]byte, len(ls))
	for i, l := range ls {
		if l.ConnectionID == "" {
			return fmt.Errorf("%w lockout %d: connectionId is required", ErrInvalid, i)
		}
		v, err := json.Marshal(lockoutRecord{Provider: l.Provider, Until: l.Until.UTC().Round(0), Retryable: l.Retryable})
		if err != nil {
			return fmt.Errorf("lockout of connection %s: encode: %w", l.ConnectionID, err)
		}
		keys[i], vals[i] = []byte(l.ConnectionID), v
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketLockouts)
		if err != nil {
			return err
		}
		for i := range keys {
			if err := b.Put(keys[i], vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %d lockout window(s): %w", len(ls), err)
	}
	return nil
}

// LoadLockouts returns every stored window, expired ones included, in
// connection-ID order. A record that does not decode is an error that names
// its key: the file is damaged.
func (s *Store) LoadLockouts() ([]Lockout, error) {
	var out []Lockout
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLockouts)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r lockoutRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("lockout of connection %q: %w", k, err)
			}
			out = append(out, Lockout{ConnectionID: string(k), Provider: r.Provider, Until: r.Until, Retryable: r.Retryable})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load lockout windows: %w", err)
	}
	return out, nil
}

// DeleteLockouts removes the windows of the given connections in one
// transaction. IDs without a stored window are ignored.
func (s *Store) DeleteLockouts(connectionIDs []string) error {
	if len(connectionIDs) == 0 {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLockouts)
		if b == nil {
			return nil
		}
		for _, id := range connectionIDs {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete %d lockout window(s): %w", len(connectionIDs), err)
	}
	return nil
}
