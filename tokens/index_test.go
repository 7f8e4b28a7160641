package tokens

import (
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"unsafe"
)

// TestOpenRestoresListingOrder checks that the lists Open builds are in
// listing order although bbolt hands records over in key order, which
// for random IDs is not creation order. Open gives the file's pages back
// every few records here, so the test also checks that loading reads
// every record right after pages it has read were dropped.
func TestOpenRestoresListingOrder(t *testing.T) {
	defer func(n int) { dropEvery = n }(dropEvery)
	dropEvery = 3
	path := filepath.Join(t.TempDir(), "store.db")
	clk := newClock()
	s := openStore(t, path, clk)
	var conns, insts []string
	newest := map[string]string{} // group → its newest salesforce connection
	for i := range 40 {
		group := "g" + strconv.Itoa(i%4)
		c := mustPut(t, s, apiKeyConn("p1", "salesforce", group))
		conns = append(conns, c.ID)
		newest[group] = c.ID
		insts = append(insts, mustInstall(t, s, "p1", "sync", "i"+strconv.Itoa(i), c.ID).ID)
	}
	if slices.IsSorted(conns) && slices.IsSorted(insts) {
		t.Fatal("the IDs came out in creation order; the test proves nothing")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path, clk)
	listed, _, err := s.ListConnections("p1", ConnectionFilter{}, Page{Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range listed {
		got = append(got, c.ID)
	}
	if !slices.Equal(got, conns) {
		t.Errorf("connections after reopen listed as\n%v\nwant creation order\n%v", got, conns)
	}
	li, _, err := s.ListInstallations("p1", "", Page{Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, in := range li {
		got = append(got, in.ID)
	}
	if !slices.Equal(got, insts) {
		t.Errorf("installations after reopen listed as\n%v\nwant creation order\n%v", got, insts)
	}
	for group, id := range newest {
		if c, ok := s.ConnectionByGroup("p1", "salesforce", group); !ok || c.ID != id {
			t.Errorf("ConnectionByGroup(%s) after reopen = %v, want the newest, %s", group, c, id)
		}
	}
}

// BenchmarkOpen measures Open of a store whose 20,000 connections and
// installations all belong to one project, the case where building the
// listing order record by record was quadratic.
func BenchmarkOpen(b *testing.B) {
	s, _ := benchStore(b, 20_000)
	path := s.Path()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := Open(path, testKey, Options{})
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}

// TestOpenSharesRepeatedStrings checks that records loaded by Open share
// one copy of the values that repeat across them.
func TestOpenSharesRepeatedStrings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	clk := newClock()
	s := openStore(t, path, clk)
	var ids [2]string
	for i := range ids {
		c := mustPut(t, s, apiKeyConn("p1", "salesforce", "g"+strconv.Itoa(i)))
		ids[i] = mustInstall(t, s, "p1", "sync", "g"+strconv.Itoa(i), c.ID).ID
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, clk)
	same := func(what, a, b string) {
		t.Helper()
		if a != b || unsafe.StringData(a) != unsafe.StringData(b) {
			t.Errorf("%s: %q and %q are separate copies", what, a, b)
		}
	}
	var insts [2]*Installation
	var conns [2]*Connection
	for i, id := range ids {
		insts[i], _ = s.Installation(id)
		conns[i], _ = s.Connection(insts[i].ConnectionID)
		same("installation's connection ID", insts[i].ConnectionID, conns[i].ID)
		same("installation's group ref", insts[i].GroupRef, conns[i].GroupRef)
	}
	same("project", conns[0].ProjectID, conns[1].ProjectID)
	same("project", conns[0].ProjectID, insts[1].ProjectID)
	same("provider", conns[0].Provider, conns[1].Provider)
	same("auth scheme", string(conns[0].AuthScheme), string(conns[1].AuthScheme))
	same("status", string(conns[0].Status), string(conns[1].Status))
	same("integration", insts[0].Integration, insts[1].Integration)
}
