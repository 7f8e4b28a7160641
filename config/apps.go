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
