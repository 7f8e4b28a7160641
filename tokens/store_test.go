package tokens

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	testKey  = keyFrom("test key")
	otherKey = keyFrom("another key")
)

func keyFrom(s string) []byte {
	k := sha256.Sum256([]byte(s))
	return k[:]
}

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines left behind by the tests:\n\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines returns the stacks of goroutines that still run code
// of this package, apart from TestMain's own.
func leakedGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "ampproxy/tokens.") && !strings.Contains(g, "tokens.TestMain") {
			leaked = append(leaked, g)
		}
	}
	return strings.Join(leaked, "\n\n")
}

// fakeClock moves one second forward on every reading, so records get
// distinct, ordered times without waiting.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

// openStore opens path with testKey and closes it when the test ends.
func openStore(tb testing.TB, path string, clk *fakeClock) *Store {
	tb.Helper()
	s, err := Open(path, testKey, Options{Now: clk.Now, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func newStore(tb testing.TB) *Store {
	tb.Helper()
	return openStore(tb, filepath.Join(tb.TempDir(), "store.db"), newClock())
}

func mustPut(tb testing.TB, s *Store, c *Connection) *Connection {
	tb.Helper()
	got, err := s.PutConnection(c)
	if err != nil {
		tb.Fatal(err)
	}
	return got
}

func mustInstall(tb testing.TB, s *Store, project, integration, group, connID string) *Installation {
	tb.Helper()
	in, err := s.CreateInstallation(&Installation{ProjectID: project, Integration: integration, GroupRef: group, ConnectionID: connID})
	if err != nil {
		tb.Fatal(err)
	}
	return in
}

func apiKeyConn(project, provider, group string) *Connection {
	return &Connection{ProjectID: project, Provider: provider, GroupRef: group, AuthScheme: SchemeAPIKey,
		Credential: Credential{APIKey: "key-" + project + "-" + provider + "-" + group}}
}

// equalConn compares connections field by field, times by instant.
func equalConn(a, b *Connection) bool {
	ac, bc := *a, *b
	if !ac.CreateTime.Equal(bc.CreateTime) || !ac.UpdateTime.Equal(bc.UpdateTime) || !ac.Credential.Expiry.Equal(bc.Credential.Expiry) {
		return false
	}
	ac.CreateTime, bc.CreateTime = time.Time{}, time.Time{}
	ac.UpdateTime, bc.UpdateTime = time.Time{}, time.Time{}
	ac.Credential.Expiry, bc.Credential.Expiry = time.Time{}, time.Time{}
	return reflect.DeepEqual(ac, bc)
}

// credentialKinds holds one connection of every credential kind, each
// with secrets that appear nowhere else.
func credentialKinds() []struct {
	name    string
	conn    *Connection
	secrets []string
} {
	expiry := time.Date(2026, 3, 1, 13, 0, 0, 123456789, time.UTC)
	return []struct {
		name    string
		conn    *Connection
		secrets []string
	}{
		{
			name: "apiKey",
			conn: &Connection{ProjectID: "p1", Provider: "openai", GroupRef: "g1", ConsumerRef: "u1", AuthScheme: SchemeAPIKey,
				Credential: Credential{APIKey: "sk-live-APIKEY-0d9f8a7b6c5e4d3c"}},
			secrets: []string{"sk-live-APIKEY-0d9f8a7b6c5e4d3c"},
		},
		{
			name: "basic",
			conn: &Connection{ProjectID: "p1", Provider: "jira", GroupRef: "g1", AuthScheme: SchemeBasic,
				Credential: Credential{Username: "alice@example.com", Password: "BASIC-PASSWORD-7e6d5c4b3a29"}},
			secrets: []string{"BASIC-PASSWORD-7e6d5c4b3a29"},
		},
		{
			name: "oauth2 authorization code",
			conn: &Connection{ProjectID: "p1", Provider: "salesforce", GroupRef: "g1", ConsumerRef: "u2",
				WorkspaceRef: "acme", Metadata: map[string]string{"workspace": "acme"},
				AuthScheme: SchemeOAuth2AuthorizationCode, Status: StatusWorking,
				Credential: Credential{AccessToken: "ACCESS-TOKEN-00D5g000004Xyz!AQ", RefreshToken: "REFRESH-TOKEN-5Aep861TSESvWeug",
					Expiry: expiry, Scopes: []string{"api", "refresh_token"}}},
			secrets: []string{"ACCESS-TOKEN-00D5g000004Xyz!AQ", "REFRESH-TOKEN-5Aep861TSESvWeug"},
		},
		{
			name: "oauth2 client credentials",
			conn: &Connection{ProjectID: "p2", Provider: "hubspot", GroupRef: "g9", AuthScheme: SchemeOAuth2ClientCredentials,
				Credential: Credential{ClientID: "client-id-visible", ClientSecret: "CLIENT-SECRET-9b8a7f6e5d4c",
					AccessToken: "CC-ACCESS-TOKEN-1a2b3c4d", Expiry: expiry, Scopes: []string{"crm.objects.read"}}},
			secrets: []string{"CLIENT-SECRET-9b8a7f6e5d4c", "CC-ACCESS-TOKEN-1a2b3c4d"},
		},
		{
			name:    "none",
			conn:    &Connection{ProjectID: "p2", Provider: "public", GroupRef: "g9", AuthScheme: SchemeNone},
			secrets: nil,
		},
	}
}

func TestCredentialRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "store.db")
	clk := newClock()
	s, err := Open(path, testKey, Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	kinds := credentialKinds()
	stored := map[string]*Connection{}
	for _, k := range kinds {
		c, err := s.PutConnection(k.conn)
		if err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		stored[k.name] = c
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		fi, _ := os.Stat(path)
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("store file mode %o, want 600", perm)
		}
	}

	s = openStore(t, path, clk)
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			want := stored[k.name]
			got, ok := s.Connection(want.ID)
			if !ok {
				t.Fatal("connection missing after reopen")
			}
			if !equalConn(got, want) {
				t.Errorf("after reopen:\n got %+v %#v\nwant %+v %#v", *got, plainCredential(got.Credential), *want, plainCredential(want.Credential))
			}
			// The credential put in is the credential read back.
			if !equalConn(&Connection{Credential: got.Credential}, &Connection{Credential: k.conn.Credential}) {
				t.Error("credential changed on the way through the store")
			}
			for _, secret := range k.secrets {
				for _, enc := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret))} {
					if bytes.Contains(raw, []byte(enc)) {
						t.Errorf("the file contains the secret %q in plaintext", enc)
					}
				}
			}
		})
	}
	// The check above would prove nothing if the file were unreadable for
	// another reason: the plain fields are there.
	for _, plain := range []string{"salesforce", "acme", `"authScheme":"basic"`} {
		if !bytes.Contains(raw, []byte(plain)) {
			t.Errorf("the file does not contain the plain field %q", plain)
		}
	}
}

func TestOpenWrongKey(t *testing.T) {
	secrets := []string{"sk-live-APIKEY-0d9f8a7b6c5e4d3c", string(testKey), base64.StdEncoding.EncodeToString(testKey)}
	tests := []struct {
		name    string
		fill    bool // put a connection before reopening
		key     []byte
		wantErr []string
	}{
		{name: "store with a connection", fill: true, key: otherKey, wantErr: []string{"encryption key does not match", "connection "}},
		{name: "empty store", key: otherKey, wantErr: []string{"encryption key does not match"}},
		{name: "short key", key: testKey[:16], wantErr: []string{"encryption key is 16 bytes, want 32"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			s := openStore(t, path, newClock())
			var id string
			if tt.fill {
				id = mustPut(t, s, credentialKinds()[0].conn).ID
			}
			s.Close()

			_, err := Open(path, tt.key, Options{NoSync: true})
			if err == nil {
				t.Fatal("Open succeeded with the wrong key")
			}
			msg := err.Error()
			for _, want := range append(tt.wantErr, path, id) {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			for _, secret := range secrets {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q reveals a secret", msg)
				}
			}
			// The failed open changed nothing: the right key still works.
			s = openStore(t, path, newClock())
			if tt.fill {
				if _, ok := s.Connection(id); !ok {
					t.Error("connection lost after a failed open")
				}
			}
		})
	}
}

// rewrite changes the file underneath the store, through bbolt directly.
func rewrite(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesTamperedFile(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(tx *bolt.Tx, a, b string) error
		wantErr []string
	}{
		{
			name: "sealed credentials swapped between records",
			tamper: func(tx *bolt.Tx, a, b string) error {
				bk := tx.Bucket(bucketConnections)
				var ra, rb connRecord
				if err := json.Unmarshal(bk.Get([]byte(a)), &ra); err != nil {
					return err
				}
				if err := json.Unmarshal(bk.Get([]byte(b)), &rb); err != nil {
					return err
				}
				ra.Credential, rb.Credential = rb.Credential, ra.Credential
				va, _ := json.Marshal(ra)
				vb, _ := json.Marshal(rb)
				if err := bk.Put([]byte(a), va); err != nil {
					return err
				}
				return bk.Put([]byte(b), vb)
			},
			wantErr: []string{"encryption key does not match"},
		},
		{
			name: "newer schema",
			tamper: func(tx *bolt.Tx, _, _ string) error {
				return tx.Bucket(bucketMeta).Put(metaSchemaVersion, []byte("2"))
			},
			wantErr: []string{"schema version 2", "run a newer ampproxy"},
		},
		{
			name: "unreadable schema",
			tamper: func(tx *bolt.Tx, _, _ string) error {
				return tx.Bucket(bucketMeta).Put(metaSchemaVersion, []byte("two"))
			},
			wantErr: []string{"schema version", "damaged"},
		},
		{
			name: "record under another ID",
			tamper: func(tx *bolt.Tx, a, _ string) error {
				bk := tx.Bucket(bucketConnections)
				return bk.Put([]byte("moved"), bk.Get([]byte(a)))
			},
			wantErr: []string{"connection moved", "damaged"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "store.db")
			s := openStore(t, path, newClock())
			a := mustPut(t, s, credentialKinds()[0].conn).ID
			b := mustPut(t, s, credentialKinds()[1].conn).ID
			s.Close()
			rewrite(t, path, func(tx *bolt.Tx) error { return tt.tamper(tx, a, b) })

			_, err := Open(path, testKey, Options{NoSync: true})
			if err == nil {
				t.Fatal("Open accepted the tampered file")
			}
			for _, want := range append(tt.wantErr, path) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	openStore(t, path, newClock())

	_, err := Open(path, testKey, Options{OpenTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the path", err)
	}
}

func TestLookups(t *testing.T) {
	s := newStore(t)
	old := mustPut(t, s, apiKeyConn("p1", "salesforce", "g1"))
	newer := mustPut(t, s, apiKeyConn("p1", "salesforce", "g1"))
	otherProvider := mustPut(t, s, apiKeyConn("p1", "hubspot", "g1"))
	otherProject := mustPut(t, s, apiKeyConn("p2", "salesforce", "g1"))
	inst := mustInstall(t, s, "p1", "sf-sync", "g1", old.ID)
	inst2 := mustInstall(t, s, "p2", "sf-sync", "g1", otherProject.ID)

	connByGroup := []struct {
		project, provider, group string
		want                     *Connection
	}{
		{"p1", "salesforce", "g1", newer},
		{"p1", "hubspot", "g1", otherProvider},
		{"p2", "salesforce", "g1", otherProject},
		{"p1", "salesforce", "g2", nil},
		{"p3", "salesforce", "g1", nil},
		{"p2", "hubspot", "g1", nil},
	}
	for _, tt := range connByGroup {
		got, ok := s.ConnectionByGroup(tt.project, tt.provider, tt.group)
		if ok != (tt.want != nil) || got != tt.want {
			t.Errorf("ConnectionByGroup(%s, %s, %s) = %v, %v; want %v", tt.project, tt.provider, tt.group, got, ok, tt.want)
		}
	}
	for _, c := range []*Connection{old, newer, otherProvider, otherProject} {
		if got, ok := s.Connection(c.ID); !ok || got != c {
			t.Errorf("Connection(%s) = %v, %v", c.ID, got, ok)
		}
	}
	if _, ok := s.Connection("missing"); ok {
		t.Error("Connection(missing) found something")
	}

	instByGroup := []struct {
		project, integration, group string
		want                        *Installation
	}{
		{"p1", "sf-sync", "g1", inst},
		{"p2", "sf-sync", "g1", inst2},
		{"p1", "sf-sync", "g2", nil},
		{"p1", "other", "g1", nil},
		{"p3", "sf-sync", "g1", nil},
	}
	for _, tt := range instByGroup {
		got, ok := s.InstallationByGroup(tt.project, tt.integration, tt.group)
		if ok != (tt.want != nil) || got != tt.want {
			t.Errorf("InstallationByGroup(%s, %s, %s) = %v, %v; want %v", tt.project, tt.integration, tt.group, got, ok, tt.want)
		}
	}
	if got, ok := s.Installation(inst.ID); !ok || got != inst {
		t.Errorf("Installation(%s) = %v, %v", inst.ID, got, ok)
	}
	if _, ok := s.Installation("missing"); ok {
		t.Error("Installation(missing) found something")
	}

	// With the newest gone, the one before it is the newest.
	if err := s.DeleteConnection("p1", newer.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ConnectionByGroup("p1", "salesforce", "g1"); got != old {
		t.Errorf("after deleting the newest, ConnectionByGroup = %v, want %v", got, old)
	}

	// The indexes are rebuilt the same way from the file.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := openStore(t, s.Path(), newClock())
	if got, ok := r.ConnectionByGroup("p1", "salesforce", "g1"); !ok || got.ID != old.ID {
		t.Errorf("after reopen, ConnectionByGroup = %v", got)
	}
	if got, ok := r.InstallationByGroup("p1", "sf-sync", "g1"); !ok || got.ID != inst.ID || got.ConnectionID != old.ID {
		t.Errorf("after reopen, InstallationByGroup = %v", got)
	}
	if st := r.Stats(); st.Connections != 3 || st.Installations != 2 || st.FileBytes <= 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestPutConnection(t *testing.T) {
	s := newStore(t)
	in := apiKeyConn("p1", "salesforce", "g1")
	in.Metadata = map[string]string{"workspace": "acme"}
	c := mustPut(t, s, in)
	if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(c.ID) || c.CreateTime.IsZero() || !c.UpdateTime.Equal(c.CreateTime) || c.Status != StatusCreated {
		t.Fatalf("new connection = %+v", *c)
	}
	if in.ID != "" {
		t.Error("PutConnection changed its argument")
	}
	// The store keeps its own copy.
	in.Metadata["workspace"] = "evil"
	in.Credential.APIKey = "changed"
	if c.Metadata["workspace"] != "acme" || c.Credential.APIKey == "changed" {
		t.Error("changing the argument after PutConnection changed the stored value")
	}

	// Replacing keeps CreateTime, moves the connection to its new group,
	// and leaves the previous snapshot as it was.
	repl := apiKeyConn("p1", "salesforce", "g2")
	repl.ID = c.ID
	r := mustPut(t, s, repl)
	if r == c || !r.CreateTime.Equal(c.CreateTime) || !r.UpdateTime.After(c.UpdateTime) || r.GroupRef != "g2" {
		t.Errorf("replaced = %+v, was %+v", *r, *c)
	}
	if c.GroupRef != "g1" {
		t.Error("the previous snapshot was changed in place")
	}
	if _, ok := s.ConnectionByGroup("p1", "salesforce", "g1"); ok {
		t.Error("the old group still finds the replaced connection")
	}
	if got, _ := s.ConnectionByGroup("p1", "salesforce", "g2"); got != r {
		t.Error("the new group does not find the replaced connection")
	}
	if st := s.Stats(); st.Connections != 1 {
		t.Errorf("Stats.Connections = %d after a replace, want 1", st.Connections)
	}

	// A caller-chosen ID is kept for a new connection.
	chosen := apiKeyConn("p1", "hubspot", "g1")
	chosen.ID = "imported-1"
	if got := mustPut(t, s, chosen); got.ID != "imported-1" {
		t.Errorf("ID = %q, want imported-1", got.ID)
	}

	invalid := []struct {
		name  string
		edit  func(*Connection)
		field string
	}{
		{"no project", func(c *Connection) { c.ProjectID = "" }, "projectId"},
		{"no provider", func(c *Connection) { c.Provider = "" }, "provider"},
		{"no auth scheme", func(c *Connection) { c.AuthScheme = "" }, "authScheme"},
		{"unknown auth scheme", func(c *Connection) { c.AuthScheme = "magic" }, "authScheme"},
		{"unknown status", func(c *Connection) { c.Status = "fine" }, "status"},
		{"ID of another project", func(c *Connection) { c.ID, c.ProjectID = r.ID, "p2" }, "not found"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			c := apiKeyConn("p1", "salesforce", "g1")
			tt.edit(c)
			before := s.Stats()
			_, err := s.PutConnection(c)
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("PutConnection: %v, want an error naming %s", err, tt.field)
			}
			if after := s.Stats(); after.Connections != before.Connections {
				t.Error("a rejected PutConnection changed the store")
			}
		})
	}
	if _, err := s.PutConnection(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutConnection(nil): %v, want ErrInvalid", err)
	}
}

func TestUpdateConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, newClock())
	c := mustPut(t, s, credentialKinds()[2].conn)
	expiry := c.Credential.Expiry.Add(time.Hour)

	u, err := s.UpdateConnection(c.ProjectID, c.ID, func(w *Connection) error {
		if w == c {
			t.Error("fn got the stored value, not a copy")
		}
		w.Credential.AccessToken = "ACCESS-TOKEN-refreshed"
		w.Credential.Expiry = expiry
		w.Credential.Scopes[0] = "changed-scope"
		w.Status = StatusWorking
		w.CreateTime = time.Time{} // ignored
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if u.Credential.AccessToken != "ACCESS-TOKEN-refreshed" || !u.Credential.Expiry.Equal(expiry) || !u.CreateTime.Equal(c.CreateTime) || !u.UpdateTime.After(c.UpdateTime) {
		t.Errorf("updated = %+v", *u)
	}
	if c.Credential.AccessToken == "ACCESS-TOKEN-refreshed" || c.Credential.Scopes[0] == "changed-scope" {
		t.Error("the previous snapshot was changed in place")
	}
	if got, _ := s.Connection(c.ID); got != u {
		t.Error("Connection does not return the updated value")
	}

	errBoom := errors.New("boom")
	failing := []struct {
		name      string
		project   string
		id        string
		fn        func(*Connection) error
		wantIs    error
		wantInMsg string
	}{
		{"fn fails", c.ProjectID, c.ID, func(w *Connection) error { w.Status = StatusBadCredentials; return errBoom }, errBoom, "boom"},
		{"missing", c.ProjectID, "missing", func(*Connection) error { return nil }, ErrNotFound, "missing"},
		{"other project", "p9", c.ID, func(*Connection) error { return nil }, ErrNotFound, c.ID},
		{"changes ID", c.ProjectID, c.ID, func(w *Connection) error { w.ID = "x"; return nil }, ErrInvalid, "id"},
		{"changes project", c.ProjectID, c.ID, func(w *Connection) error { w.ProjectID = "p9"; return nil }, ErrInvalid, "projectId"},
		{"clears provider", c.ProjectID, c.ID, func(w *Connection) error { w.Provider = ""; return nil }, ErrInvalid, "provider"},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.UpdateConnection(tt.project, tt.id, tt.fn)
			if !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantInMsg) {
				t.Fatalf("UpdateConnection: %v, want %v naming %q", err, tt.wantIs, tt.wantInMsg)
			}
			if got, _ := s.Connection(c.ID); got != u {
				t.Error("a failed update changed the stored value")
			}
		})
	}

	s.Close()
	r := openStore(t, path, newClock())
	if got, _ := r.Connection(c.ID); got == nil || !equalConn(got, u) {
		t.Errorf("after reopen = %+v, want %+v", got, u)
	}
}

func TestWriteErrors(t *testing.T) {
	s := newStore(t)
	c1 := mustPut(t, s, apiKeyConn("p1", "salesforce", "g1"))
	c2 := mustPut(t, s, apiKeyConn("p2", "salesforce", "g1"))
	in := mustInstall(t, s, "p1", "sf-sync", "g1", c1.ID)

	tests := []struct {
		name      string
		do        func() error
		wantIs    error
		wantInMsg string
	}{
		{"installation of a group twice", func() error {
			_, err := s.CreateInstallation(&Installation{ProjectID: "p1", Integration: "sf-sync", GroupRef: "g1", ConnectionID: c1.ID})
			return err
		}, ErrConflict, in.ID},
		{"installation with another project's connection", func() error {
			_, err := s.CreateInstallation(&Installation{ProjectID: "p1", Integration: "sf-sync", GroupRef: "g2", ConnectionID: c2.ID})
			return err
		}, ErrNotFound, "connection " + c2.ID},
		{"installation with a missing connection", func() error {
			_, err := s.CreateInstallation(&Installation{ProjectID: "p1", Integration: "sf-sync", GroupRef: "g2", ConnectionID: "missing"})
			return err
		}, ErrNotFound, "connection missing"},
		{"installation without group", func() error {
			_, err := s.CreateInstallation(&Installation{ProjectID: "p1", Integration: "sf-sync", ConnectionID: c1.ID})
			return err
		}, ErrInvalid, "groupRef"},
		{"installation without connection", func() error {
			_, err := s.CreateInstallation(&Installation{ProjectID: "p1", Integration: "sf-sync", GroupRef: "g2"})
			return err
		}, ErrInvalid, "connectionId"},
		{"delete a connection in use", func() error { return s.DeleteConnection("p1", c1.ID) }, ErrInUse, c1.ID},
		{"delete another project's connection", func() error { return s.DeleteConnection("p1", c2.ID) }, ErrNotFound, c2.ID},
		{"delete a missing connection", func() error { return s.DeleteConnection("p1", "missing") }, ErrNotFound, "missing"},
		{"delete another project's installation", func() error { return s.DeleteInstallation("p2", in.ID) }, ErrNotFound, in.ID},
		{"delete a missing installation", func() error { return s.DeleteInstallation("p1", "missing") }, ErrNotFound, "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Stats()
			err := tt.do()
			if !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantInMsg) {
				t.Fatalf("got %v, want %v naming %q", err, tt.wantIs, tt.wantInMsg)
			}
			if after := s.Stats(); after.Connections != before.Connections || after.Installations != before.Installations {
				t.Error("a failed write changed the store")
			}
		})
	}

	// Once its installation is gone, the connection can go, and the group
	// can install the integration again.
	if err := s.DeleteInstallation("p1", in.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.InstallationByGroup("p1", "sf-sync", "g1"); ok {
		t.Error("deleted installation still found by group")
	}
	if err := s.DeleteConnection("p1", c1.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Connection(c1.ID); ok {
		t.Error("deleted connection still found")
	}
	mustInstall(t, s, "p2", "sf-sync", "g1", c2.ID)

	// After Close, look-ups still answer and writes fail.
	s.Close()
	if _, ok := s.Connection(c2.ID); !ok {
		t.Error("look-up failed after Close")
	}
	if _, err := s.PutConnection(apiKeyConn("p1", "x", "g")); err == nil {
		t.Error("PutConnection succeeded after Close")
	}
	if _, ok := s.ConnectionByGroup("p1", "x", "g"); ok {
		t.Error("a failed write reached memory")
	}
}

func TestListConnections(t *testing.T) {
	s := newStore(t)
	var all []*Connection
	for i := range 25 {
		all = append(all, mustPut(t, s, apiKeyConn("p1", []string{"salesforce", "hubspot"}[i%2], "g"+strconv.Itoa(i%3))))
	}
	mustPut(t, s, apiKeyConn("p2", "salesforce", "g0")) // another project's never shows
	ids := func(cs []*Connection) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.ID)
		}
		return out
	}
	filter := func(f ConnectionFilter) []string {
		var out []string
		for _, c := range all {
			if (f.Provider == "" || c.Provider == f.Provider) && (f.GroupRef == "" || c.GroupRef == f.GroupRef) {
				out = append(out, c.ID)
			}
		}
		return out
	}

	tests := []struct {
		name   string
		filter ConnectionFilter
		size   int
		pages  int
	}{
		{"all, pages of 10", ConnectionFilter{}, 10, 3},
		{"all, exact pages", ConnectionFilter{}, 5, 5},
		{"all, default size", ConnectionFilter{}, 0, 1},
		{"all, oversize", ConnectionFilter{}, 5000, 1},
		{"provider", ConnectionFilter{Provider: "salesforce"}, 4, 4},
		{"group", ConnectionFilter{GroupRef: "g1"}, 3, 3},
		{"provider and group", ConnectionFilter{Provider: "hubspot", GroupRef: "g2"}, 2, 2},
		{"nothing matches", ConnectionFilter{Provider: "jira"}, 10, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			token, pages := "", 0
			for {
				items, next, err := s.ListConnections("p1", tt.filter, Page{Size: tt.size, Token: token})
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if n := pageSize(tt.size); len(items) > n {
					t.Fatalf("page of %d items, size %d", len(items), n)
				}
				got = append(got, ids(items)...)
				if next == "" {
					break
				}
				if len(items) == 0 {
					t.Fatal("an empty page with a next token")
				}
				token = next
			}
			if want := filter(tt.filter); !slices.Equal(got, want) {
				t.Errorf("listed\n%v\nwant\n%v", got, want)
			}
			if pages != tt.pages {
				t.Errorf("%d pages, want %d", pages, tt.pages)
			}
		})
	}

	// Deleting around a page boundary neither repeats nor skips the rest.
	first, next, err := s.ListConnections("p1", ConnectionFilter{}, Page{Size: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Connection{first[9], all[10]} {
		if err := s.DeleteConnection("p1", c.ID); err != nil {
			t.Fatal(err)
		}
	}
	rest, _, err := s.ListConnections("p1", ConnectionFilter{}, Page{Size: 100, Token: next})
	if err != nil {
		t.Fatal(err)
	}
	if want := ids(all[11:]); !slices.Equal(ids(rest), want) {
		t.Errorf("after deletions, the next page is\n%v\nwant\n%v", ids(rest), want)
	}

	for _, bad := range []string{"!!!", "bm90IGEgdG9rZW4", base64.RawURLEncoding.EncodeToString([]byte("2.1.x")), base64.RawURLEncoding.EncodeToString([]byte("1.abc.x")), base64.RawURLEncoding.EncodeToString([]byte("1.5."))} {
		if _, _, err := s.ListConnections("p1", ConnectionFilter{}, Page{Token: bad}); !errors.Is(err, ErrBadPageToken) {
			t.Errorf("token %q: %v, want ErrBadPageToken", bad, err)
		}
	}
	if items, next, err := s.ListConnections("nobody", ConnectionFilter{}, Page{}); err != nil || items == nil || len(items) != 0 || next != "" {
		t.Errorf("unknown project: %v, %q, %v", items, next, err)
	}
}

func TestListInstallations(t *testing.T) {
	s := newStore(t)
	c := mustPut(t, s, apiKeyConn("p1", "salesforce", "g"))
	other := mustPut(t, s, apiKeyConn("p2", "salesforce", "g"))
	byIntegration := map[string][]string{}
	var all []string
	for i := range 12 {
		integ := []string{"sync", "write", "read"}[i%3]
		in := mustInstall(t, s, "p1", integ, "g"+strconv.Itoa(i), c.ID)
		byIntegration[integ] = append(byIntegration[integ], in.ID)
		all = append(all, in.ID)
	}
	mustInstall(t, s, "p2", "sync", "g0", other.ID)
	byIntegration[""] = all

	for _, integ := range slices.Sorted(maps.Keys(byIntegration)) {
		t.Run("integration="+integ, func(t *testing.T) {
			var got []string
			token := ""
			for {
				items, next, err := s.ListInstallations("p1", integ, Page{Size: 3, Token: token})
				if err != nil {
					t.Fatal(err)
				}
				for _, in := range items {
					got = append(got, in.ID)
				}
				if next == "" {
					break
				}
				token = next
			}
			if !slices.Equal(got, byIntegration[integ]) {
				t.Errorf("listed %v, want %v", got, byIntegration[integ])
			}
		})
	}
	if _, _, err := s.ListInstallations("p1", "", Page{Token: "%%"}); !errors.Is(err, ErrBadPageToken) {
		t.Errorf("bad token: %v, want ErrBadPageToken", err)
	}
}

func TestPageSize(t *testing.T) {
	for _, tt := range []struct{ in, want int }{{-1, 100}, {0, 100}, {1, 1}, {1000, 1000}, {1001, 1000}} {
		if got := pageSize(tt.in); got != tt.want {
			t.Errorf("pageSize(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if !re.MatchString(id) {
			t.Fatalf("NewID() = %q, not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
	}
}

// TestConcurrentUse lets readers and writers overlap, for the race
// detector.
func TestConcurrentUse(t *testing.T) {
	s := newStore(t)
	base := mustPut(t, s, apiKeyConn("p1", "salesforce", "g0"))
	mustInstall(t, s, "p1", "sync", "g0", base.ID)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 20 {
				c, err := s.PutConnection(apiKeyConn("p1", "salesforce", fmt.Sprintf("w%d-%d", w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := s.UpdateConnection("p1", c.ID, func(c *Connection) error { c.Status = StatusWorking; return nil }); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					if err := s.DeleteConnection("p1", c.ID); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 200 {
				in, ok := s.InstallationByGroup("p1", "sync", "g0")
				if !ok {
					t.Error("installation missing")
					return
				}
				if c, ok := s.Connection(in.ConnectionID); !ok || c.Credential.APIKey == "" {
					t.Error("connection missing")
					return
				}
				s.ConnectionByGroup("p1", "salesforce", "w0-1")
				if _, _, err := s.ListConnections("p1", ConnectionFilter{}, Page{Size: 7}); err != nil {
					t.Error(err)
					return
				}
				s.Stats()
			}
		})
	}
	wg.Wait()
	if got := s.Stats().Connections; got != 1+4*10 {
		t.Errorf("%d connections, want %d", got, 1+4*10)
	}
}

func TestLookupAllocs(t *testing.T) {
	s := newStore(t)
	c := mustPut(t, s, apiKeyConn("p1", "salesforce", "g1"))
	mustInstall(t, s, "p1", "sync", "g1", c.ID)
	allocs := testing.AllocsPerRun(100, func() {
		i, _ := s.InstallationByGroup("p1", "sync", "g1")
		s.Installation(i.ID)
		s.Connection(i.ConnectionID)
		s.ConnectionByGroup("p1", "salesforce", "g1")
	})
	if allocs != 0 {
		t.Errorf("look-ups allocate %v times per run, want 0", allocs)
	}
}

// helperEnv switches TestHelperWriter on in the subprocess of
// TestCrashSafety; it names the store file to write.
const helperEnv = "AMPPROXY_TOKENS_TEST_HELPER_DB"

// TestHelperWriter is not a test of its own: TestCrashSafety runs the test
// binary again with only this function selected, and kills it while it
// writes connections, printing each ID once its commit has returned.
func TestHelperWriter(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process of TestCrashSafety")
	}
	s, err := Open(path, testKey, Options{}) // with fsync, as in production
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Bounded so that a parent that fails to kill it does not leave it
	// running for ever.
	for i := range 100_000 {
		c, err := s.PutConnection(&Connection{ProjectID: "p", Provider: "prov", GroupRef: "g", ConsumerRef: strconv.Itoa(i),
			AuthScheme: SchemeAPIKey, Credential: Credential{APIKey: "crash-secret-" + strconv.Itoa(i)}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("committed %s\n", c.ID)
	}
	s.Close()
}

func TestCrashSafety(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})

	const before = 20
	var ids []string
	sc := bufio.NewScanner(stdout)
	read := func() bool {
		if !sc.Scan() {
			return false
		}
		// Each line is one write of 46 bytes, far below PIPE_BUF, so it
		// arrives whole.
		if id, ok := strings.CutPrefix(sc.Text(), "committed "); ok && len(id) == 36 {
			ids = append(ids, id)
		}
		return true
	}
	for len(ids) < before && read() {
	}
	if len(ids) < before {
		cmd.Wait()
		waited = true
		t.Fatalf("the writer stopped after %d commits: %s", len(ids), stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Whatever it printed before dying is still in the pipe.
	for read() {
	}
	err = cmd.Wait()
	waited = true
	if cmd.ProcessState.Exited() {
		t.Fatalf("the writer exited (%v) before it was killed: %s", err, stderr.String())
	}
	t.Logf("killed the writer after %d printed commits", len(ids))

	s := openStore(t, path, newClock())
	for _, id := range ids {
		c, ok := s.Connection(id)
		if !ok {
			t.Errorf("connection %s, printed before the kill, is missing", id)
			continue
		}
		if want := "crash-secret-" + c.ConsumerRef; c.Credential.APIKey != want {
			t.Errorf("connection %s decrypts to the wrong credential", id)
		}
	}
	if n := s.Stats().Connections; n < len(ids) {
		t.Errorf("%d connections in the store, %d printed", n, len(ids))
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Errorf("bbolt consistency check: %v", err)
	}
}

// benchStore holds n groups, each with a connection and an installation.
func benchStore(b *testing.B, n int) (*Store, []string) {
	s := newStore(b)
	groups := make([]string, n)
	for i := range groups {
		groups[i] = "group-" + strconv.Itoa(i)
		c := mustPut(b, s, apiKeyConn("proj", "salesforce", groups[i]))
		mustInstall(b, s, "proj", "sync", groups[i], c.ID)
	}
	return s, groups
}

// BenchmarkLookup is the request path's work in the store: find the
// installation by group, then its connection.
func BenchmarkLookup(b *testing.B) {
	s, groups := benchStore(b, 1000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		in, ok := s.InstallationByGroup("proj", "sync", groups[i%len(groups)])
		if !ok {
			b.Fatal("installation missing")
		}
		if _, ok := s.Connection(in.ConnectionID); !ok {
			b.Fatal("connection missing")
		}
		i++
	}
}

// BenchmarkLookupParallel shows what the read lock costs when every core
// looks up at once.
func BenchmarkLookupParallel(b *testing.B) {
	s, groups := benchStore(b, 1000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			in, ok := s.InstallationByGroup("proj", "sync", groups[i%len(groups)])
			if !ok {
				b.Error("installation missing")
				return
			}
			if _, ok := s.Connection(in.ConnectionID); !ok {
				b.Error("connection missing")
				return
			}
			i++
		}
	})
}
