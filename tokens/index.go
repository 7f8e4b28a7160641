package tokens

import (
	"slices"
	"strings"
	"time"
)

func newIndex() index {
	return index{
		conns:          map[string]*Connection{},
		connsByGroup:   map[connKey][]*Connection{},
		connsByProject: map[string][]*Connection{},
		uses:           map[string]int{},
		insts:          map[string]*Installation{},
		instsByGroup:   map[instKey]*Installation{},
		instsByProject: map[string][]*Installation{},
	}
}

func (c *Connection) groupKey() connKey { return connKey{c.ProjectID, c.Provider, c.GroupRef} }

func (in *Installation) groupKey() instKey {
	return instKey{in.ProjectID, in.Integration, in.GroupRef}
}

// addConn indexes c, which must not be indexed yet.
func (ix *index) addConn(c *Connection) {
	ix.conns[c.ID] = c
	k := c.groupKey()
	ix.connsByGroup[k] = insertSorted(ix.connsByGroup[k], c)
	ix.connsByProject[c.ProjectID] = insertSorted(ix.connsByProject[c.ProjectID], c)
}

// loadConn indexes c at the end of its lists, out of order; Open calls it
// for every record and then sortLists once. bbolt yields records in key
// order, and keys are random UUIDs, so inserting each in listing order
// would move half a project's list on every record: quadratic in the
// records of a project.
func (ix *index) loadConn(c *Connection) {
	ix.conns[c.ID] = c
	k := c.groupKey()
	ix.connsByGroup[k] = append(ix.connsByGroup[k], c)
	ix.connsByProject[c.ProjectID] = append(ix.connsByProject[c.ProjectID], c)
}

// loadInst is loadConn for installations.
func (ix *index) loadInst(in *Installation) {
	ix.insts[in.ID] = in
	ix.instsByGroup[in.groupKey()] = in
	ix.instsByProject[in.ProjectID] = append(ix.instsByProject[in.ProjectID], in)
	ix.uses[in.ConnectionID]++
}

// sortLists puts every list in listing order after loadConn and loadInst.
func (ix *index) sortLists() {
	for _, l := range ix.connsByGroup {
		slices.SortFunc(l, compareOrder)
	}
	for _, l := range ix.connsByProject {
		slices.SortFunc(l, compareOrder)
	}
	for _, l := range ix.instsByProject {
		slices.SortFunc(l, compareOrder)
	}
}

// removeConn drops c, the indexed value, from every index.
func (ix *index) removeConn(c *Connection) {
	delete(ix.conns, c.ID)
	k := c.groupKey()
	if l := removeSorted(ix.connsByGroup[k], c); len(l) > 0 {
		ix.connsByGroup[k] = l
	} else {
		delete(ix.connsByGroup, k)
	}
	if l := removeSorted(ix.connsByProject[c.ProjectID], c); len(l) > 0 {
		ix.connsByProject[c.ProjectID] = l
	} else {
		delete(ix.connsByProject, c.ProjectID)
	}
}

// addInst indexes in, which must not be indexed yet.
func (ix *index) addInst(in *Installation) {
	ix.insts[in.ID] = in
	ix.instsByGroup[in.groupKey()] = in
	ix.instsByProject[in.ProjectID] = insertSorted(ix.instsByProject[in.ProjectID], in)
	ix.uses[in.ConnectionID]++
}

// removeInst drops in, the indexed value, from every index.
func (ix *index) removeInst(in *Installation) {
	delete(ix.insts, in.ID)
	delete(ix.instsByGroup, in.groupKey())
	if l := removeSorted(ix.instsByProject[in.ProjectID], in); len(l) > 0 {
		ix.instsByProject[in.ProjectID] = l
	} else {
		delete(ix.instsByProject, in.ProjectID)
	}
	if ix.uses[in.ConnectionID]--; ix.uses[in.ConnectionID] <= 0 {
		delete(ix.uses, in.ConnectionID)
	}
}

// ordered is a record with a place in listing order: by creation time,
// then by ID, which is unique.
type ordered interface {
	order() (time.Time, string)
}

func (c *Connection) order() (time.Time, string)    { return c.CreateTime, c.ID }
func (in *Installation) order() (time.Time, string) { return in.CreateTime, in.ID }

// compareOrder orders two records as the sorted lists do.
func compareOrder[T ordered](a, b T) int {
	ta, ia := a.order()
	tb, ib := b.order()
	return position{ta, ia}.compare(tb, ib)
}

// position is a place in listing order.
type position struct {
	t  time.Time
	id string
}

func (p position) compare(t time.Time, id string) int {
	if c := p.t.Compare(t); c != 0 {
		return c
	}
	return strings.Compare(p.id, id)
}

// search finds where p is, or would be, in the sorted s.
func search[T ordered](s []T, p position) (int, bool) {
	return slices.BinarySearchFunc(s, p, func(e T, p position) int {
		return -p.compare(e.order())
	})
}

// insertSorted adds v to the sorted s. s is changed in place: callers hold
// the write lock, and List copies what it returns.
func insertSorted[T ordered](s []T, v T) []T {
	t, id := v.order()
	i, _ := search(s, position{t, id})
	return slices.Insert(s, i, v)
}

// removeSorted drops the element with v's order from the sorted s.
func removeSorted[T ordered](s []T, v T) []T {
	t, id := v.order()
	if i, ok := search(s, position{t, id}); ok {
		return slices.Delete(s, i, i+1)
	}
	return s
}

// list returns up to size elements of the sorted s that come after the
// position a page token names (from the start when token is empty) and that
// keep passes (all when keep is nil), never nil, and the token of the next
// page, empty when no element is left.
func list[T ordered](s []T, token string, size int, keep func(T) bool) ([]T, string, error) {
	start := 0
	if token != "" {
		p, err := decodePageToken(token)
		if err != nil {
			return nil, "", err
		}
		i, found := search(s, p)
		if found {
			i++
		}
		start = i
	}
	size = pageSize(size)
	var out []T
	for i := start; i < len(s); i++ {
		if keep != nil && !keep(s[i]) {
			continue
		}
		if len(out) == size {
			// Another element passes: there is a next page.
			return out, encodePageToken(out[len(out)-1].order()), nil
		}
		if out == nil {
			out = make([]T, 0, min(size, len(s)-i))
		}
		out = append(out, s[i])
	}
	if out == nil {
		out = []T{} // an empty page is an empty list, not JSON null
	}
	return out, "", nil
}
