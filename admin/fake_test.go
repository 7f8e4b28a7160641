package admin

import (
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ampproxy/ampproxy/tokens"
)

// fakeStore keeps connections and installations in memory with the
// semantics of tokens.Store that the handlers rely on: lookups across
// projects, newest connection per group, stable pages in creation order,
// ErrInUse, ErrConflict and ErrNotFound.
type fakeStore struct {
	mu    sync.Mutex
	seq   int
	now   func() time.Time
	conns []*tokens.Connection // creation order
	insts []*tokens.Installation
	// failNext makes the next write fail, for the 500 path.
	failNext error
}

var _ Store = (*fakeStore)(nil)

func newFakeStore(now func() time.Time) *fakeStore { return &fakeStore{now: now} }

func (f *fakeStore) nextID(prefix string) string {
	f.seq++
	return fmt.Sprintf("%s-%04d", prefix, f.seq)
}

func (f *fakeStore) Connection(id string) (*tokens.Connection, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		if c.ID == id {
			return c, true
		}
	}
	return nil, false
}

func (f *fakeStore) ConnectionByGroup(projectID, provider, groupRef string) (*tokens.Connection, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.conns) - 1; i >= 0; i-- {
		c := f.conns[i]
		if c.ProjectID == projectID && c.Provider == provider && c.GroupRef == groupRef {
			return c, true
		}
	}
	return nil, false
}

func (f *fakeStore) Installation(id string) (*tokens.Installation, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, in := range f.insts {
		if in.ID == id {
			return in, true
		}
	}
	return nil, false
}

// pageOf pages items (already filtered, in order) with an opaque token
// that holds the index of the next item.
func pageOf[T any](items []T, p tokens.Page) ([]T, string, error) {
	start := 0
	if p.Token != "" {
		b, err := base64.RawURLEncoding.DecodeString(p.Token)
		if err != nil {
			return nil, "", tokens.ErrBadPageToken
		}
		n, err := strconv.Atoi(string(b))
		if err != nil || n < 0 || n > len(items) {
			return nil, "", tokens.ErrBadPageToken
		}
		start = n
	}
	size := p.Size
	switch {
	case size <= 0:
		size = tokens.DefaultPageSize
	case size > tokens.MaxPageSize:
		size = tokens.MaxPageSize
	}
	end := min(start+size, len(items))
	next := ""
	if end < len(items) {
		next = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(end)))
	}
	return slices.Clone(items[start:end]), next, nil
}

func (f *fakeStore) ListConnections(projectID string, flt tokens.ConnectionFilter, p tokens.Page) ([]*tokens.Connection, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []*tokens.Connection
	for _, c := range f.conns {
		if c.ProjectID == projectID && (flt.Provider == "" || flt.Provider == c.Provider) && (flt.GroupRef == "" || flt.GroupRef == c.GroupRef) {
			match = append(match, c)
		}
	}
	return pageOf(match, p)
}

func (f *fakeStore) ListInstallations(projectID, integration string, p tokens.Page) ([]*tokens.Installation, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []*tokens.Installation
	for _, in := range f.insts {
		if in.ProjectID == projectID && (integration == "" || in.Integration == integration) {
			match = append(match, in)
		}
	}
	return pageOf(match, p)
}

func (f *fakeStore) PutConnection(c *tokens.Connection) (*tokens.Connection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failNext; err != nil {
		f.failNext = nil
		return nil, err
	}
	nc := *c
	nc.Metadata = maps.Clone(c.Metadata)
	nc.Credential.Scopes = slices.Clone(c.Credential.Scopes)
	if nc.ID != "" {
		panic("the admin API only creates connections")
	}
	nc.ID = f.nextID("conn")
	nc.CreateTime = f.now().UTC()
	nc.UpdateTime = nc.CreateTime
	if nc.Status == "" {
		nc.Status = tokens.StatusCreated
	}
	f.conns = append(f.conns, &nc)
	return &nc, nil
}

// UpdateConnection follows tokens.Store: fn gets a deep copy, its error
// is returned as is, and only a nil error stores the copy.
func (f *fakeStore) UpdateConnection(projectID, id string, fn func(*tokens.Connection) error) (*tokens.Connection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.conns, func(c *tokens.Connection) bool { return c.ID == id && c.ProjectID == projectID })
	if i < 0 {
		return nil, fmt.Errorf("connection %s in project %s: %w", id, projectID, tokens.ErrNotFound)
	}
	old := f.conns[i]
	work := *old
	work.Metadata = maps.Clone(old.Metadata)
	work.Credential.Scopes = slices.Clone(old.Credential.Scopes)
	if err := fn(&work); err != nil {
		return nil, err
	}
	if err := f.failNext; err != nil {
		f.failNext = nil
		return nil, err
	}
	if work.ID != id || work.ProjectID != projectID {
		return nil, fmt.Errorf("%w: an update may not change id or projectId", tokens.ErrInvalid)
	}
	nc := work
	nc.Metadata = maps.Clone(work.Metadata)
	nc.Credential.Scopes = slices.Clone(work.Credential.Scopes)
	nc.CreateTime = old.CreateTime
	nc.UpdateTime = f.now().UTC()
	f.conns[i] = &nc
	return &nc, nil
}

// setStatus changes a stored connection's status the way the proxy path
// does, for tests of what an update clears.
func (f *fakeStore) setStatus(id string, st tokens.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.conns {
		if c.ID == id {
			nc := *c
			nc.Status = st
			f.conns[i] = &nc
		}
	}
}

func (f *fakeStore) DeleteConnection(projectID, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.conns, func(c *tokens.Connection) bool { return c.ID == id && c.ProjectID == projectID })
	if i < 0 {
		return fmt.Errorf("connection %s: %w", id, tokens.ErrNotFound)
	}
	if slices.ContainsFunc(f.insts, func(in *tokens.Installation) bool { return in.ConnectionID == id }) {
		return fmt.Errorf("connection %s: %w", id, tokens.ErrInUse)
	}
	f.conns = slices.Delete(f.conns, i, i+1)
	return nil
}

func (f *fakeStore) CreateInstallation(in *tokens.Installation) (*tokens.Installation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.ContainsFunc(f.conns, func(c *tokens.Connection) bool { return c.ID == in.ConnectionID && c.ProjectID == in.ProjectID }) {
		return nil, fmt.Errorf("connection %s: %w", in.ConnectionID, tokens.ErrNotFound)
	}
	if slices.ContainsFunc(f.insts, func(o *tokens.Installation) bool {
		return o.ProjectID == in.ProjectID && o.Integration == in.Integration && o.GroupRef == in.GroupRef
	}) {
		return nil, fmt.Errorf("installation: %w", tokens.ErrConflict)
	}
	ni := &tokens.Installation{
		ID:           f.nextID("inst"),
		ProjectID:    in.ProjectID,
		Integration:  in.Integration,
		GroupRef:     in.GroupRef,
		ConnectionID: in.ConnectionID,
		CreateTime:   f.now().UTC(),
	}
	f.insts = append(f.insts, ni)
	return ni, nil
}

func (f *fakeStore) DeleteInstallation(projectID, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.insts, func(in *tokens.Installation) bool { return in.ID == id && in.ProjectID == projectID })
	if i < 0 {
		return fmt.Errorf("installation %s: %w", id, tokens.ErrNotFound)
	}
	f.insts = slices.Delete(f.insts, i, i+1)
	return nil
}

// credentialOf returns a stored connection's credential, so tests can check
// what the handler stored.
func (f *fakeStore) credentialOf(id string) tokens.Credential {
	c, _ := f.Connection(id)
	if c == nil {
		return tokens.Credential{}
	}
	return c.Credential
}
