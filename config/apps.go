package config

import (
	"fmt"
	"os"
	"strings"
)

// App returns the project's OAuth2 client for a provider.
func (p *Project) App(provider string) (ProviderApp, bool) {
	a, ok := p.ProviderApps[provider]
	return a, ok
}

// ClientSecret reads the app's client secret from clientSecretFile. It is
// read at each call, not cached, so a rotated Secret file takes effect on
// the next token request; token requests are rare, the file is small.
// The error names the file, never its content.
func (a ProviderApp) ClientSecret() (string, error) {
	if a.ClientSecretFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(a.ClientSecretFile)
	if err != nil {
		return "", fmt.Errorf("client secret: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("client secret: %s is empty", a.ClientSecretFile)
	}
	return s, nil
}

// Files lists the files a Config was built from: the config itself, the
// catalog override and every manifest. A change to any of them calls for
// a reload; key files are watched by each project's KeyRing instead.
func (c *Config) Files() []string {
	files := []string{c.Path}
	if c.Catalog.Overrides != "" {
		files = append(files, c.Catalog.Overrides)
	}
	for _, p := range c.Projects {
		if p.Manifest != "" {
			files = append(files, p.Manifest)
		}
	}
	return files
}
