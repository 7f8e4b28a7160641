package tokens

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestLockoutsRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, newClock())

	// A file that never saw a 429 has no bucket, and nothing to load.
	if got, err := s.LoadLockouts(); err != nil || len(got) != 0 {
		t.Fatalf("LoadLockouts on a new file = %v, %v", got, err)
	}
	if err := s.DeleteLockouts([]string{"nothing"}); err != nil {
		t.Fatalf("DeleteLockouts without a bucket: %v", err)
	}

	until := time.Date(2026, 3, 1, 12, 0, 3, 500, time.FixedZone("CET", 3600))
	in := []Lockout{
		{ConnectionID: "c2", Provider: "hubspot", Until: until, Retryable: true},
		{ConnectionID: "c1", Provider: "github", Until: until.Add(time.Hour)},
		{ConnectionID: "c3", Provider: "slack", Until: until, Retryable: true},
		{ConnectionID: "c3", Provider: "slack", Until: until.Add(time.Minute)}, // last wins
	}
	if err := s.SaveLockouts(in); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveLockouts(nil); err != nil {
		t.Fatalf("SaveLockouts(nil): %v", err)
	}
	want := []Lockout{
		{ConnectionID: "c1", Provider: "github", Until: until.Add(time.Hour).UTC()},
		{ConnectionID: "c2", Provider: "hubspot", Until: until.UTC(), Retryable: true},
		{ConnectionID: "c3", Provider: "slack", Until: until.Add(time.Minute).UTC()},
	}
	check := func(s *Store, want []Lockout) {
		t.Helper()
		got, err := s.LoadLockouts()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(got, want, func(a, b Lockout) bool {
			return a.ConnectionID == b.ConnectionID && a.Provider == b.Provider && a.Until.Equal(b.Until) && a.Retryable == b.Retryable
		}) {
			t.Errorf("LoadLockouts = %+v\nwant %+v", got, want)
		}
	}
	check(s, want)

	// Across a restart.
	s.Close()
	s = openStore(t, path, newClock())
	check(s, want)

	if err := s.DeleteLockouts([]string{"c2", "unknown"}); err != nil {
		t.Fatal(err)
	}
	check(s, []Lockout{want[0], want[2]})
	if err := s.DeleteLockouts(nil); err != nil {
		t.Fatal(err)
	}
}

func TestSaveLockoutsAllOrNothing(t *testing.T) {
	s := newStore(t)
	err := s.SaveLockouts([]Lockout{{ConnectionID: "c1", Until: time.Now()}, {Provider: "p"}})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if got, _ := s.LoadLockouts(); len(got) != 0 {
		t.Errorf("a rejected batch stored %v", got)
	}
}

func TestLockoutsDoNotTouchConnections(t *testing.T) {
	s := newStore(t)
	c := mustPut(t, s, &Connection{ProjectID: "p", Provider: "hubspot", AuthScheme: SchemeAPIKey, Credential: Credential{APIKey: "k"}})
	if err := s.SaveLockouts([]Lockout{{ConnectionID: c.ID, Provider: "hubspot", Until: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Connection(c.ID); !ok || got != c {
		t.Error("saving a lockout changed the connection")
	}
	if st := s.Stats(); st.Connections != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestLoadLockoutsDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, newClock())
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketLockouts)
		if err != nil {
			return err
		}
		return b.Put([]byte("c9"), []byte("{not json"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, newClock())
	if _, err := s.LoadLockouts(); err == nil || !strings.Contains(err.Error(), `"c9"`) {
		t.Errorf("err = %v, want one naming the damaged record", err)
	}
}

func TestLockoutsAfterClose(t *testing.T) {
	s := newStore(t)
	s.Close()
	if err := s.SaveLockouts([]Lockout{{ConnectionID: "c", Until: time.Now()}}); err == nil {
		t.Error("SaveLockouts after Close: no error")
	}
	if err := s.DeleteLockouts([]string{"c"}); err == nil {
		t.Error("DeleteLockouts after Close: no error")
	}
}
