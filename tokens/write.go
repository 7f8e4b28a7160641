package tokens

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Every write below follows the same steps under wmu: check against
// memory, build the new immutable value, commit it in one bbolt
// transaction, and only then apply it to memory under the write lock. A
// failed commit leaves memory as it was.

// PutConnection stores c and returns the stored snapshot. With an empty ID
// it creates a connection with a new ID; with the ID of an existing
// connection of the same project it replaces that connection, keeping its
// CreateTime; with an unknown ID it creates the connection under that ID.
// UpdateTime is always set to now. ProjectID, Provider and AuthScheme are
// required; an empty Status becomes StatusCreated. c itself is copied, not
// kept.
func (s *Store) PutConnection(c *Connection) (*Connection, error) {
	if c == nil {
		return nil, fmt.Errorf("%w connection: nil", ErrInvalid)
	}
	nc := cloneConnection(c)
	if err := validateConnection(nc); err != nil {
		return nil, err
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := s.stamp()
	var old *Connection
	if nc.ID == "" {
		nc.ID = NewID()
	} else {
		old = s.ix.conns[nc.ID]
	}
	if old != nil {
		if old.ProjectID != nc.ProjectID {
			return nil, fmt.Errorf("connection %s in project %s: %w", nc.ID, nc.ProjectID, ErrNotFound)
		}
		nc.CreateTime = old.CreateTime
	} else {
		nc.CreateTime = now
	}
	nc.UpdateTime = now
	if err := s.commitConnection(nc); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if old != nil {
		s.ix.removeConn(old)
	}
	s.ix.addConn(nc)
	s.mu.Unlock()
	return nc, nil
}

// UpdateConnection changes the project's connection id through fn and
// returns the stored snapshot: fn gets a copy to modify, and its changes
// are stored only when it returns nil; its error is returned as is. fn must
// not change ID, ProjectID or CreateTime (the last is restored), and
// UpdateTime is set to now. fn runs while the store's writers are held
// back: it may read from the store but must not write to it, and should be
// quick. A missing connection, or one of another project, gives
// ErrNotFound.
func (s *Store) UpdateConnection(projectID, id string, fn func(*Connection) error) (*Connection, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	old, ok := s.ix.conns[id]
	if !ok || old.ProjectID != projectID {
		return nil, fmt.Errorf("connection %s in project %s: %w", id, projectID, ErrNotFound)
	}
	work := cloneConnection(old)
	if err := fn(work); err != nil {
		return nil, err
	}
	if work.ID != id || work.ProjectID != projectID {
		return nil, fmt.Errorf("%w connection %s: an update may not change id or projectId", ErrInvalid, id)
	}
	// fn may have kept work; the store keeps a copy of its own.
	nc := cloneConnection(work)
	if err := validateConnection(nc); err != nil {
		return nil, err
	}
	nc.CreateTime = old.CreateTime
	nc.UpdateTime = s.stamp()
	if err := s.commitConnection(nc); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.ix.removeConn(old)
	s.ix.addConn(nc)
	s.mu.Unlock()
	return nc, nil
}

// DeleteConnection removes the project's connection id. A missing
// connection, or one of another project, gives ErrNotFound; one that an
// installation still points at gives ErrInUse.
func (s *Store) DeleteConnection(projectID, id string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	old, ok := s.ix.conns[id]
	if !ok || old.ProjectID != projectID {
		return fmt.Errorf("connection %s in project %s: %w", id, projectID, ErrNotFound)
	}
	if n := s.ix.uses[id]; n > 0 {
		return fmt.Errorf("connection %s: %w by %d installation(s); delete them first", id, ErrInUse, n)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketConnections).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete connection %s: %w", id, err)
	}
	s.mu.Lock()
	s.ix.removeConn(old)
	s.mu.Unlock()
	return nil
}

// CreateInstallation stores a new installation of in.Integration for
// in.GroupRef, pointing at in.ConnectionID, and returns the stored
// snapshot. The store assigns ID and CreateTime; values in in are ignored.
// ProjectID, Integration, GroupRef and ConnectionID are required. A
// connection that is missing or belongs to another project gives
// ErrNotFound; a group that already has the integration gives ErrConflict.
// Whether the connection's provider fits the integration is for the caller
// to check: the store does not know the manifest.
func (s *Store) CreateInstallation(in *Installation) (*Installation, error) {
	if in == nil {
		return nil, fmt.Errorf("%w installation: nil", ErrInvalid)
	}
	for _, f := range [...]struct{ name, value string }{
		{"projectId", in.ProjectID},
		{"integration", in.Integration},
		{"groupRef", in.GroupRef},
		{"connectionId", in.ConnectionID},
	} {
		if f.value == "" {
			return nil, fmt.Errorf("%w installation: %s is required", ErrInvalid, f.name)
		}
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	if c, ok := s.ix.conns[in.ConnectionID]; !ok || c.ProjectID != in.ProjectID {
		return nil, fmt.Errorf("connection %s in project %s: %w", in.ConnectionID, in.ProjectID, ErrNotFound)
	}
	ni := &Installation{
		ID:           NewID(),
		ProjectID:    in.ProjectID,
		Integration:  in.Integration,
		GroupRef:     in.GroupRef,
		ConnectionID: in.ConnectionID,
		CreateTime:   s.stamp(),
	}
	if other, ok := s.ix.instsByGroup[ni.groupKey()]; ok {
		return nil, fmt.Errorf("group %q already has an installation of integration %q (%s): %w", ni.GroupRef, ni.Integration, other.ID, ErrConflict)
	}
	v, err := json.Marshal(ni)
	if err != nil {
		return nil, fmt.Errorf("installation %s: encode: %w", ni.ID, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInstallations).Put([]byte(ni.ID), v)
	})
	if err != nil {
		return nil, fmt.Errorf("store installation %s: %w", ni.ID, err)
	}
	s.mu.Lock()
	s.ix.addInst(ni)
	s.mu.Unlock()
	return ni, nil
}

// DeleteInstallation removes the project's installation id. A missing
// installation, or one of another project, gives ErrNotFound.
func (s *Store) DeleteInstallation(projectID, id string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	old, ok := s.ix.insts[id]
	if !ok || old.ProjectID != projectID {
		return fmt.Errorf("installation %s in project %s: %w", id, projectID, ErrNotFound)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInstallations).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete installation %s: %w", id, err)
	}
	s.mu.Lock()
	s.ix.removeInst(old)
	s.mu.Unlock()
	return nil
}

// commitConnection writes c in its own transaction.
func (s *Store) commitConnection(c *Connection) error {
	v, err := s.encodeConnection(c)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketConnections).Put([]byte(c.ID), v)
	})
	if err != nil {
		return fmt.Errorf("store connection %s: %w", c.ID, err)
	}
	return nil
}

// stamp is now as stored: UTC, without the monotonic reading, so a value
// in memory equals the one read back after a restart.
func (s *Store) stamp() time.Time { return s.now().UTC().Round(0) }

var knownSchemes = []AuthScheme{SchemeNone, SchemeAPIKey, SchemeBasic, SchemeOAuth2AuthorizationCode, SchemeOAuth2ClientCredentials}

var knownStatuses = []Status{StatusCreated, StatusWorking, StatusBadCredentials}

// validateConnection checks the fields the store relies on and fills in
// the default status.
func validateConnection(c *Connection) error {
	switch {
	case c.ProjectID == "":
		return fmt.Errorf("%w connection: projectId is required", ErrInvalid)
	case c.Provider == "":
		return fmt.Errorf("%w connection: provider is required", ErrInvalid)
	case c.AuthScheme == "":
		return fmt.Errorf("%w connection: authScheme is required", ErrInvalid)
	case !slices.Contains(knownSchemes, c.AuthScheme):
		return fmt.Errorf("%w connection: authScheme %q is not one of %v", ErrInvalid, c.AuthScheme, knownSchemes)
	}
	if c.Status == "" {
		c.Status = StatusCreated
	}
	if !slices.Contains(knownStatuses, c.Status) {
		return fmt.Errorf("%w connection: status %q is not one of %v", ErrInvalid, c.Status, knownStatuses)
	}
	return nil
}

// cloneConnection copies c deeply enough that no map or slice is shared.
func cloneConnection(c *Connection) *Connection {
	nc := *c
	nc.Metadata = maps.Clone(c.Metadata)
	nc.Credential.Scopes = slices.Clone(c.Credential.Scopes)
	return &nc
}

// NewID returns a random version 4 UUID from crypto/rand.
func NewID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
