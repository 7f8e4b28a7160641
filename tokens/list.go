package tokens

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Page sizes of the list methods.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// ErrBadPageToken is returned for a page token that no list method issued.
var ErrBadPageToken = errors.New("invalid page token")

// Page selects one page of a listing.
type Page struct {
	// Size is the most items to return: DefaultPageSize when zero or
	// negative, at most MaxPageSize.
	Size int
	// Token is the nextPageToken of the previous page; empty for the first.
	Token string
}

func pageSize(n int) int {
	switch {
	case n <= 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	}
	return n
}

// A page token names the last item of the previous page by its place in
// listing order (creation time, then ID), not by an offset, so items
// created or deleted between two calls neither repeat nor shift the pages.
// It is opaque to callers; the version prefix lets the format change.
const pageTokenVersion = "1"

func encodePageToken(t time.Time, id string) string {
	s := pageTokenVersion + "." + strconv.FormatInt(t.UnixNano(), 10) + "." + id
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

func decodePageToken(token string) (position, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return position{}, ErrBadPageToken
	}
	v, rest, ok := strings.Cut(string(b), ".")
	if !ok || v != pageTokenVersion {
		return position{}, ErrBadPageToken
	}
	nanos, id, ok := strings.Cut(rest, ".")
	if !ok || id == "" {
		return position{}, ErrBadPageToken
	}
	n, err := strconv.ParseInt(nanos, 10, 64)
	if err != nil {
		return position{}, ErrBadPageToken
	}
	return position{time.Unix(0, n), id}, nil
}

// ConnectionFilter narrows ListConnections. An empty field matches any
// value.
type ConnectionFilter struct {
	Provider, GroupRef string
}

// ListConnections returns one page of the project's connections that pass
// f, oldest first (by CreateTime, then ID), and the token of the next page,
// empty on the last one. A token the store did not issue gives
// ErrBadPageToken.
func (s *Store) ListConnections(projectID string, f ConnectionFilter, p Page) ([]*Connection, string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f.Provider != "" && f.GroupRef != "" {
		// This index holds exactly the matches, in the same order.
		return list(s.ix.connsByGroup[connKey{projectID, f.Provider, f.GroupRef}], p.Token, p.Size, nil)
	}
	var keep func(*Connection) bool
	if f != (ConnectionFilter{}) {
		keep = func(c *Connection) bool {
			return (f.Provider == "" || c.Provider == f.Provider) && (f.GroupRef == "" || c.GroupRef == f.GroupRef)
		}
	}
	return list(s.ix.connsByProject[projectID], p.Token, p.Size, keep)
}

// ListInstallations returns one page of the project's installations of
// integration (of every integration when it is empty), oldest first (by
// CreateTime, then ID), and the token of the next page, empty on the last
// one. A token the store did not issue gives ErrBadPageToken.
func (s *Store) ListInstallations(projectID, integration string, p Page) ([]*Installation, string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var keep func(*Installation) bool
	if integration != "" {
		keep = func(in *Installation) bool { return in.Integration == integration }
	}
	return list(s.ix.instsByProject[projectID], p.Token, p.Size, keep)
}
