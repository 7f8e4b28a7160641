package config

import (
	"fmt"
	"os"
	"regexp"

	"go.yaml.in/yaml/v3"

	"github.com/ampproxy/ampproxy/catalog"
)

// Manifest is a project's amp.yaml: the integrations it offers.
type Manifest struct {
	SpecVersion  string        `yaml:"specVersion"`
	Integrations []Integration `yaml:"integrations"`

	byName map[string]*Integration
}

// Integration is one entry of a manifest. Read, write and subscribe
// sections belong to Ampersand's manifest format; ampproxy accepts and
// ignores them so that an existing amp.yaml loads unchanged.
type Integration struct {
	Name        string `yaml:"name"`
	DisplayName string `yaml:"displayName"`
	Provider    string `yaml:"provider"`
	Proxy       struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"proxy"`

	Read      yaml.Node `yaml:"read,omitempty"`
	Write     yaml.Node `yaml:"write,omitempty"`
	Subscribe yaml.Node `yaml:"subscribe,omitempty"`
	Module    yaml.Node `yaml:"module,omitempty"`
}

// Integration returns the named integration.
func (m *Manifest) Integration(name string) (*Integration, bool) {
	in, ok := m.byName[name]
	return in, ok
}

var integrationNameRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// LoadManifest reads and validates an amp.yaml against the catalog,
// returning every problem at once. A nil catalog skips the provider check.
func LoadManifest(path string, cat *catalog.Catalog) (*Manifest, []error) {
	var known func(string) bool
	if cat != nil {
		known = func(name string) bool {
			_, ok := cat.Provider(name)
			return ok
		}
	}
	return loadManifest(path, known)
}

// loadManifest is LoadManifest with the provider check as a function; nil
// skips it.
func loadManifest(path string, known func(string) bool) (*Manifest, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{fmt.Errorf("manifest: %w", err)}
	}
	return parseManifest(data, path, known)
}

func parseManifest(data []byte, file string, known func(string) bool) (*Manifest, []error) {
	m := &Manifest{}
	root, errs := decodeStrict(data, file, m)
	if root == nil && len(errs) > 0 {
		return nil, errs
	}
	p := &problems{loc: locator{file: file, root: root}, errs: errs}
	if m.SpecVersion != "1.0.0" {
		p.add("specVersion", "%q: want 1.0.0", m.SpecVersion)
	}
	if len(m.Integrations) == 0 {
		p.add("integrations", "at least one integration is required")
	}
	m.byName = make(map[string]*Integration, len(m.Integrations))
	for i := range m.Integrations {
		in := &m.Integrations[i]
		at := fmt.Sprintf("integrations[%d]", i)
		if !integrationNameRE.MatchString(in.Name) {
			p.add(at+".name", "%q must match ^[a-z0-9_-]{1,64}$", in.Name)
		} else if _, dup := m.byName[in.Name]; dup {
			p.add(at+".name", "%q is declared twice", in.Name)
		}
		m.byName[in.Name] = in
		if in.Provider == "" {
			p.add(at+".provider", "is required")
		} else if known != nil && !known(in.Provider) {
			p.add(at+".provider", "%q is not in the provider catalog", in.Provider)
		}
	}
	if len(p.errs) > 0 {
		return nil, p.errs
	}
	return m, nil
}
