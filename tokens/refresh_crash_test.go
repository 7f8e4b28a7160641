package tokens

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/internal/oauthtest"
)

// Environment of TestHelperRefresher, set by TestRefreshCrashSafety.
const (
	refreshHelperDB     = "AMPPROXY_TOKENS_TEST_REFRESH_DB"
	refreshHelperConn   = "AMPPROXY_TOKENS_TEST_REFRESH_CONN"
	refreshHelperTokens = "AMPPROXY_TOKENS_TEST_REFRESH_TOKEN_URL"
)

// TestHelperRefresher is not a test of its own: TestRefreshCrashSafety
// runs the test binary again with only this function selected. It
// refreshes one connection over and over, with fsync as in production,
// printing a line after each refresh has returned, until it is killed.
func TestHelperRefresher(t *testing.T) {
	path := os.Getenv(refreshHelperDB)
	if path == "" {
		t.Skip("helper process of TestRefreshCrashSafety")
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := Open(path, testKey, Options{})
	if err != nil {
		fail(err)
	}
	cat := testCatalog(t, os.Getenv(refreshHelperTokens), "inParams")
	clock := &manualClock{t: time.Now()}
	r := NewRefresher(RefresherOptions{
		Store:     s,
		Providers: func() *catalog.Catalog { return cat },
		Apps: func(string, string) (string, string, bool, error) {
			return "oauthtest-client", "oauthtest-secret", true, nil
		},
		HTTPClient: &http.Client{Timeout: 10 * time.Second},
		Wait:       10 * time.Second,
		Now:        clock.Now,
	})
	id := os.Getenv(refreshHelperConn)
	// Bounded so that a parent that fails to kill it does not leave it
	// running for ever.
	for i := range 100_000 {
		clock.Advance(2 * time.Hour) // every token has expired
		c, ok := s.Connection(id)
		if !ok {
			fail(fmt.Errorf("connection %s missing", id))
		}
		if _, err := r.AccessToken(t.Context(), c); err != nil {
			fail(err)
		}
		fmt.Printf("refreshed %d\n", i)
	}
	r.Close()
	s.Close()
}

// TestRefreshCrashSafety kills a process that refreshes a token in a
// loop, at various points of the refresh, and checks that the store then
// holds a complete pair the server issued: the latest, or the one before
// when the kill fell between the provider's answer and the write.
// Never a new access token with an old refresh token, or the reverse.
func TestRefreshCrashSafety(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL")
	}
	var (
		mu      sync.Mutex
		child   *exec.Cmd
		killAt  int // kill when the server receives this many refresh requests; 0: not from the server
		arrived int
	)
	srv := oauthtest.Start(t, oauthtest.Options{OnTokenRequest: func(grant string) {
		mu.Lock()
		defer mu.Unlock()
		if grant != oauthtest.GrantRefreshToken {
			return
		}
		arrived++
		if killAt > 0 && arrived == killAt && child != nil {
			// The request has left the client: the server rotates the
			// refresh token, and the client never hears of it.
			child.Process.Kill()
		}
	}})

	path := filepath.Join(t.TempDir(), "crash.db")
	seed, err := srv.IssueTokens(0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, testKey, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := mustPut(t, s, &Connection{ProjectID: testProject, Provider: provAuthCode, GroupRef: "g", AuthScheme: SchemeOAuth2AuthorizationCode,
		Status: StatusWorking, Credential: Credential{AccessToken: seed.Access, RefreshToken: seed.Refresh, Expiry: time.Now().Add(-time.Hour)}})
	s.Close()

	const rounds = 9
	outcomes := map[string]int{}
	for round := range rounds {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperRefresher$", "-test.count=1")
		cmd.Env = append(os.Environ(), refreshHelperDB+"="+path, refreshHelperConn+"="+c.ID, refreshHelperTokens+"="+srv.TokenURL())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		// Three ways to pick the moment: from the server as the request
		// arrives, as soon as a refresh is reported, or a random moment
		// after.
		mode := round % 3
		after := 3 + rand.IntN(10)
		// Held across Start, so that the server's hook sees cmd.Process.
		mu.Lock()
		child, killAt = cmd, 0
		if mode == 0 {
			killAt = arrived + after
		}
		err = cmd.Start()
		mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}

		sc := bufio.NewScanner(stdout)
		lines := 0
		for sc.Scan() {
			if !strings.HasPrefix(sc.Text(), "refreshed ") {
				continue
			}
			lines++
			if mode != 0 && lines == after {
				if mode == 2 {
					// Not a wait for time to pass: a random point inside the
					// next refresh.
					time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				}
				cmd.Process.Kill()
			}
		}
		err = cmd.Wait()
		if cmd.ProcessState.Exited() {
			t.Fatalf("round %d: the refresher exited (%v) before it was killed: %s", round, err, stderr.String())
		}

		// Reopen and judge, once the server has finished the request the
		// child may have left behind: until then a rotation may still be
		// under way, and the "latest" pair not yet the latest.
		srv.WaitIdle()
		s, err := Open(path, testKey, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			return nil
		}); err != nil {
			t.Fatalf("round %d: bbolt consistency check: %v", round, err)
		}
		got, _ := s.Connection(c.ID)
		issued := srv.Issued()
		pos := -1
		for i, p := range issued {
			if p.Access == got.Credential.AccessToken {
				pos = i
			}
		}
		switch {
		case pos < 0:
			t.Fatalf("round %d: the stored access token is not one the server issued", round)
		case issued[pos].Refresh != got.Credential.RefreshToken:
			t.Fatalf("round %d: the stored access and refresh tokens were not issued together", round)
		case pos == len(issued)-1:
			outcomes["latest pair"]++
			if !srv.ValidRefresh(got.Credential.RefreshToken) {
				t.Fatalf("round %d: the server does not accept the latest stored refresh token", round)
			}
		case pos == len(issued)-2:
			// Killed after the server rotated, before the write: the window
			// no client can close. Give the connection a new grant.
			outcomes["previous pair (killed before the write)"]++
			fresh, err := srv.IssueTokens(0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.UpdateConnection(testProject, c.ID, func(w *Connection) error {
				w.Credential.AccessToken, w.Credential.RefreshToken = fresh.Access, fresh.Refresh
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("round %d: the stored pair is %d issues old", round, len(issued)-1-pos)
		}
		s.Close()
	}
	t.Logf("after %d kills: %v; %d refresh requests reached the server", rounds, outcomes, srv.Requests(oauthtest.GrantRefreshToken))
	if outcomes["latest pair"] == 0 {
		t.Error("no round ended with the latest pair stored")
	}
}
