package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/loadgen"
	"github.com/ampproxy/ampproxy/tokens"
)

// A provider whose API key goes in a header, and an OAuth2 one whose
// base URL has a per-connection host part: the two common shapes of the
// request path. Neither host is ever contacted.
const benchCatalog = `providers:
  - name: benchKey
    displayName: Bench API key
    baseURL: https://api.bench.test
    authType: apiKey
    apiKey: {header: {name: X-Api-Key, prefix: "Token "}}
    proxy: true
  - name: benchOAuth
    displayName: Bench OAuth2
    baseURL: https://{{.workspace}}.bench.test
    authType: oauth2
    oauth2:
      grantType: authorizationCode
      authURL: https://login.bench.test/authorize
      tokenURL: https://login.bench.test/token
      authStyle: inHeader
    metadata: [{name: workspace}]
    proxy: true
`

const benchManifest = `specVersion: 1.0.0
integrations:
  - {name: key-int, provider: benchKey, proxy: {enabled: true}}
  - {name: oauth-int, provider: benchOAuth, proxy: {enabled: true}}
`

// fixture is an ampproxy config directory whose store holds n
// installations: n-1 of key-int, each with its own API-key connection,
// and one of oauth-int with a valid access token.
type fixture struct {
	config    string
	keyInsts  []loadgen.Installation // shuffled, so that look-ups do not follow insertion order
	oauth     loadgen.Installation
	populate  time.Duration // writing the store
	fileBytes int64
}

func writeFixture(dir string, n int) (*fixture, error) {
	if n < 2 {
		return nil, fmt.Errorf("a fixture needs at least 2 installations, not %d", n)
	}
	sum := sha256.Sum256([]byte(benchAPIKey))
	files := map[string]string{
		"providers.local.yaml": benchCatalog,
		"amp.yaml":             benchManifest,
		"ampproxy.yaml": `grpc: {listen: "127.0.0.1:0"}
admin: {listen: "127.0.0.1:0"}
storage: {path: data/ampproxy.db, encryptionKeyFile: data/master.key, createKey: true}
catalog: {overrides: providers.local.yaml}
log: {format: json}
projects:
  - id: ` + benchProject + `
    apiKeys: [{sha256: ` + hex.EncodeToString(sum[:]) + `}]
    manifest: amp.yaml
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	f := &fixture{config: filepath.Join(dir, "ampproxy.yaml")}
	cfg, err := config.Load(f.config)
	if err != nil {
		return nil, err
	}
	key, err := tokens.LoadKey(cfg.Storage.EncryptionKeyFile, cfg.Storage.CreateKey)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	// NoSync only while writing the fixture; the server opens the file
	// with the defaults, as serve does.
	s, err := tokens.Open(cfg.Storage.Path, key, tokens.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for i := 1; i < n; i++ {
		group := fmt.Sprintf("g%06d", i)
		c, err := s.PutConnection(&tokens.Connection{
			ProjectID: benchProject, Provider: "benchKey", GroupRef: group, ConsumerRef: "bench",
			AuthScheme: tokens.SchemeAPIKey, Status: tokens.StatusWorking,
			Credential: tokens.Credential{APIKey: fmt.Sprintf("bench-provider-key-%06d", i)},
		})
		if err != nil {
			return nil, err
		}
		if _, err := s.CreateInstallation(&tokens.Installation{ProjectID: benchProject, Integration: keyIntegr, GroupRef: group, ConnectionID: c.ID}); err != nil {
			return nil, err
		}
		f.keyInsts = append(f.keyInsts, loadgen.Installation{Integration: keyIntegr, GroupRef: group})
	}
	c, err := s.PutConnection(&tokens.Connection{
		ProjectID: benchProject, Provider: "benchOAuth", GroupRef: "oauth-group", ConsumerRef: "bench",
		WorkspaceRef: "acme", Metadata: map[string]string{"workspace": "acme"},
		AuthScheme: tokens.SchemeOAuth2AuthorizationCode, Status: tokens.StatusWorking,
		Credential: tokens.Credential{AccessToken: "bench-access-token", RefreshToken: "bench-refresh-token", Expiry: time.Now().Add(30 * 24 * time.Hour)},
	})
	if err != nil {
		return nil, err
	}
	if _, err := s.CreateInstallation(&tokens.Installation{ProjectID: benchProject, Integration: oauthIntegr, GroupRef: "oauth-group", ConnectionID: c.ID}); err != nil {
		return nil, err
	}
	f.oauth = loadgen.Installation{Integration: oauthIntegr, GroupRef: "oauth-group"}
	if err := s.Close(); err != nil {
		return nil, err
	}
	s = nil
	f.populate = time.Since(t0)
	if fi, err := os.Stat(cfg.Storage.Path); err == nil {
		f.fileBytes = fi.Size()
	}
	rng := rand.New(rand.NewPCG(7, 7))
	rng.Shuffle(len(f.keyInsts), func(i, j int) { f.keyInsts[i], f.keyInsts[j] = f.keyInsts[j], f.keyInsts[i] })
	return f, nil
}

func fixtureCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fixture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to write the config and store into (created; must not hold a store yet)")
	n := fs.Int("n", 10, "installations in the store")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: fixture needs --dir", errUsage)
	}
	if _, err := os.Stat(filepath.Join(*dir, "data", "ampproxy.db")); err == nil {
		return fmt.Errorf("%s already holds a store; give an empty directory", *dir)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	f, err := writeFixture(*dir, *n)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "config %s with %d installations (project %s, integrations %s and %s, groups g000001…)\n", f.config, *n, benchProject, keyIntegr, oauthIntegr)
	fmt.Fprintf(stdout, "serve it:  ampbench server --kind ampproxy --config %s --listen 127.0.0.1:50061 --profile prof\n", f.config)
	fmt.Fprintf(stdout, "load it:   ampbench load --target 127.0.0.1:50061 --workers 64 --duration 20s\n")
	return nil
}
