package tokens

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// schemaVersion is the layout this code reads and writes. A file with a
// higher version was written by a newer release and is refused rather than
// misread.
const schemaVersion = 1

// File layout. Keys in the record buckets are record IDs; values are JSON.
var (
	bucketConnections   = []byte("connections")
	bucketInstallations = []byte("installations")
	bucketMeta          = []byte("meta")

	metaSchemaVersion = []byte("schemaVersion")
	// metaKeyCheck holds a known value sealed with the store's key, so that
	// a wrong key is refused even when the file has no connection yet;
	// otherwise new records would be sealed with a second key.
	metaKeyCheck = []byte("keyCheck")
)

// keyCheckPlain is what metaKeyCheck seals, with keyCheckAD as its
// additional data; neither is secret.
var (
	keyCheckPlain = []byte("ampproxy tokens key check v1")
	keyCheckAD    = []byte("meta/keyCheck")
)

// connRecord is a connection as stored: the connection's JSON, in which the
// credential does not appear, and the credential sealed on its own with
// AES-256-GCM (random 12-byte nonce, then ciphertext and tag), with the
// connection ID as additional data so a sealed credential cannot be moved to
// another record.
type connRecord struct {
	Connection *storedConnection `json:"connection"`
	Credential []byte            `json:"sealedCredential"`
}

// storedConnection has Connection's fields but not its MarshalJSON, which
// writes absent metadata as {} for clients; the store keeps it as it was.
type storedConnection Connection

// plainCredential has Credential's fields but none of its methods, so it
// marshals the real values where Credential's MarshalJSON would redact
// them. It is only ever marshalled on the way into the cipher.
type plainCredential Credential

// errKeyMismatch explains a failure to decrypt without saying anything
// about the content.
var errKeyMismatch = errors.New("credential does not decrypt: the encryption key does not match the one this store was written with (or the record is damaged)")

// load prepares the file in tx and fills the indexes from it.
func (s *Store) load(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	if err := checkSchema(meta); err != nil {
		return err
	}
	conns, err := tx.CreateBucketIfNotExists(bucketConnections)
	if err != nil {
		return err
	}
	insts, err := tx.CreateBucketIfNotExists(bucketInstallations)
	if err != nil {
		return err
	}

	ix := newIndex()
	// Most fields that are not IDs take a handful of values across all
	// records (the project, provider, auth scheme, status, integration),
	// and an installation repeats its connection's ID and usually its
	// group ref. Decoding gives every record copies of its own; sharing
	// one copy of each keeps the resident set that much smaller.
	seen := map[string]string{}
	intern := func(v string) string {
		if w, ok := seen[v]; ok {
			return w
		}
		seen[v] = v
		return v
	}
	// The pages of the file that loading has read are given back as it
	// goes, not only at the end (Open), so that the file and the heap
	// being built from it are not both resident at their largest.
	loaded, size := 0, tx.Size()
	step := func() {
		if loaded++; loaded%dropEvery == 0 {
			dropResident(s.db, size)
		}
	}
	// Connections first: with a wrong key, the error then names a record.
	err = conns.ForEach(func(k, v []byte) error {
		step()
		c, err := s.decodeConnection(k, v)
		if err != nil {
			return err
		}
		c.ProjectID, c.Provider = intern(c.ProjectID), intern(c.Provider)
		c.AuthScheme, c.Status = AuthScheme(intern(string(c.AuthScheme))), Status(intern(string(c.Status)))
		ix.loadConn(c)
		return nil
	})
	if err != nil {
		return err
	}
	err = insts.ForEach(func(k, v []byte) error {
		step()
		in, err := decodeInstallation(k, v)
		if err != nil {
			return err
		}
		if other, ok := ix.instsByGroup[in.groupKey()]; ok {
			return fmt.Errorf("installations %s and %s both install integration %q for group %q: the file is damaged", other.ID, in.ID, in.Integration, in.GroupRef)
		}
		in.ProjectID, in.Integration = intern(in.ProjectID), intern(in.Integration)
		if c, ok := ix.conns[in.ConnectionID]; ok {
			in.ConnectionID = c.ID
			if c.GroupRef == in.GroupRef {
				in.GroupRef = c.GroupRef
			}
		}
		ix.loadInst(in)
		return nil
	})
	if err != nil {
		return err
	}

	ix.sortLists()

	if kc := meta.Get(metaKeyCheck); kc != nil {
		if _, err := s.aead.Open(nil, nil, kc, keyCheckAD); err != nil {
			return errors.New("the encryption key does not match the one this store was created with")
		}
	} else if err := meta.Put(metaKeyCheck, s.aead.Seal(nil, nil, keyCheckPlain, keyCheckAD)); err != nil {
		return err
	}
	s.ix = ix
	return nil
}

// checkSchema stamps a new file with schemaVersion and refuses a file it
// cannot read.
func checkSchema(meta *bolt.Bucket) error {
	v := meta.Get(metaSchemaVersion)
	if v == nil {
		return meta.Put(metaSchemaVersion, []byte(strconv.Itoa(schemaVersion)))
	}
	n, err := strconv.Atoi(string(v))
	if err != nil || n < 1 {
		return errors.New("the schema version in the meta bucket is unreadable: the file is damaged or not an ampproxy store")
	}
	if n > schemaVersion {
		return fmt.Errorf("the file has schema version %d, but this build reads up to version %d: run a newer ampproxy", n, schemaVersion)
	}
	return nil
}

// encodeConnection seals c's credential and marshals the record.
func (s *Store) encodeConnection(c *Connection) ([]byte, error) {
	plain, err := json.Marshal((*plainCredential)(&c.Credential))
	if err != nil {
		return nil, fmt.Errorf("connection %s: encode credential: %w", c.ID, err)
	}
	sealed := s.aead.Seal(nil, nil, plain, []byte(c.ID))
	clear(plain)
	v, err := json.Marshal(connRecord{Connection: (*storedConnection)(c), Credential: sealed})
	if err != nil {
		return nil, fmt.Errorf("connection %s: encode: %w", c.ID, err)
	}
	return v, nil
}

// decodeConnection reads a record stored under key k.
func (s *Store) decodeConnection(k, v []byte) (*Connection, error) {
	var rec connRecord
	if err := json.Unmarshal(v, &rec); err != nil || rec.Connection == nil {
		return nil, fmt.Errorf("connection %s: record is not readable: the file is damaged", k)
	}
	c := (*Connection)(rec.Connection)
	if !bytes.Equal(k, []byte(c.ID)) {
		return nil, fmt.Errorf("connection %s: record carries id %q: the file is damaged", k, c.ID)
	}
	plain, err := s.aead.Open(nil, nil, rec.Credential, k)
	if err != nil {
		return nil, fmt.Errorf("connection %s: %w", k, errKeyMismatch)
	}
	defer clear(plain)
	var cred plainCredential
	if err := json.Unmarshal(plain, &cred); err != nil {
		// The plaintext authenticated, so the key is right; say no more
		// than that it is malformed, since the decoder may quote it.
		return nil, fmt.Errorf("connection %s: decrypted credential is malformed", k)
	}
	c.Credential = Credential(cred)
	return c, nil
}

// decodeInstallation reads a record stored under key k.
func decodeInstallation(k, v []byte) (*Installation, error) {
	var in Installation
	if err := json.Unmarshal(v, &in); err != nil {
		return nil, fmt.Errorf("installation %s: record is not readable: the file is damaged", k)
	}
	if !bytes.Equal(k, []byte(in.ID)) {
		return nil, fmt.Errorf("installation %s: record carries id %q: the file is damaged", k, in.ID)
	}
	return &in, nil
}

// dropEvery is how many records load reads between two dropResident
// calls.
var dropEvery = 16384
