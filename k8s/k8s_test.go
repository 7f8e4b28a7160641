package k8s

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/ampproxy/ampproxy/envoy"
)

// placeholder is the only value a Secret in these manifests may hold.
const placeholder = "REPLACE_ME"

// object is one rendered Kubernetes object: its identity, its JSON as
// kustomize produced it, and the value it decoded into.
type object struct {
	APIVersion, Kind, Namespace, Name string
	JSON                              []byte
	Value                             any
}

func (o *object) String() string {
	return fmt.Sprintf("%s %s/%s", o.Kind, o.Namespace, o.Name)
}

// rendering is the output of one kustomization, every object decoded.
type rendering struct {
	Dir     string
	Objects []*object
}

// kinds maps apiVersion/kind to a constructor of the type the object must
// decode into. An object of any other kind fails the tests: a new kind
// needs a type here before it ships.
var kinds = map[string]func() any{
	"v1/ConfigMap":                                        func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                                           func() any { return new(corev1.Secret) },
	"v1/Service":                                          func() any { return new(corev1.Service) },
	"v1/PersistentVolumeClaim":                            func() any { return new(corev1.PersistentVolumeClaim) },
	"v1/Namespace":                                        func() any { return new(corev1.Namespace) },
	"apps/v1/Deployment":                                  func() any { return new(appsv1.Deployment) },
	"networking.k8s.io/v1/NetworkPolicy":                  func() any { return new(networkingv1.NetworkPolicy) },
	"gateway.networking.k8s.io/v1/Gateway":                func() any { return new(gatewayAPIGateway) },
	"gateway.networking.k8s.io/v1/HTTPRoute":              func() any { return new(httpRoute) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyProxy":           func() any { return new(envoyProxy) },
	"gateway.envoyproxy.io/v1alpha1/Backend":              func() any { return new(egBackend) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy": func() any { return new(envoyExtensionPolicy) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyPatchPolicy":     func() any { return new(envoyPatchPolicy) },
	"networking.istio.io/v1alpha3/EnvoyFilter":            func() any { return new(istioEnvoyFilter) },
	"networking.istio.io/v1/ServiceEntry":                 func() any { return new(istioServiceEntry) },
	"networking.istio.io/v1/DestinationRule":              func() any { return new(istioDestinationRule) },
	"networking.istio.io/v1/Sidecar":                      func() any { return new(istioSidecar) },
	"security.istio.io/v1/PeerAuthentication":             func() any { return new(istioPeerAuthentication) },
}

// kustomizations lists every directory under k8s/ with a kustomization.yaml.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(dirs)
	return dirs
}

var (
	renderMu    sync.Mutex
	renderCache = map[string]*rendering{}
)

// render runs kustomize on dir in-process and decodes every object
// strictly. Renderings are cached: several tests read the same one.
func render(t *testing.T, dir string) *rendering {
	t.Helper()
	renderMu.Lock()
	defer renderMu.Unlock()
	if r, ok := renderCache[dir]; ok {
		return r
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := &rendering{Dir: dir}
	var errs []error
	for _, res := range m.Resources() {
		js, err := res.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %s: %v", dir, res.CurId(), err)
		}
		o := &object{
			APIVersion: res.GetApiVersion(),
			Kind:       res.GetKind(),
			Namespace:  res.GetNamespace(),
			Name:       res.GetName(),
			JSON:       js,
		}
		mk, ok := kinds[o.APIVersion+"/"+o.Kind]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s: no type to check %s/%s against", dir, o, o.APIVersion, o.Kind))
			continue
		}
		o.Value = mk()
		if err := decodeStrict(js, o.Value); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", dir, o, err))
			continue
		}
		r.Objects = append(r.Objects, o)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	renderCache[dir] = r
	return r
}

// decodeStrict decodes data into v, failing on an unknown field, on
// trailing data, and on any value that does not survive the decode:
// encoding/json matches field names case-insensitively, so the object is
// encoded again and every value of data must be found, under the same
// key, in the result.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the object")
	}
	again, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var in, out any
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	if err := json.Unmarshal(again, &out); err != nil {
		return err
	}
	return contained(in, out, "")
}

// contained reports where a value of in is missing from or different in out.
func contained(in, out any, path string) error {
	switch a := in.(type) {
	case map[string]any:
		b, ok := out.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: lost in decoding (a mapping became %T)", path, out)
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok {
				return fmt.Errorf("%s.%s: lost in decoding (wrong case or type?)", path, k)
			}
			if err := contained(v, w, path+"."+k); err != nil {
				return err
			}
		}
	case []any:
		b, ok := out.([]any)
		if !ok || len(a) != len(b) {
			return fmt.Errorf("%s: list changed in decoding", path)
		}
		for i := range a {
			if err := contained(a[i], b[i], fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	default:
		if !reflect.DeepEqual(in, out) {
			return fmt.Errorf("%s: %v became %v in decoding", path, in, out)
		}
	}
	return nil
}

// get returns the one object of the given kind and name, failing otherwise.
func get[T any](t *testing.T, r *rendering, kind, name string) T {
	t.Helper()
	var found []*object
	for _, o := range r.Objects {
		if o.Kind == kind && (name == "" || o.Name == name) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: want one %s %q, found %d", r.Dir, kind, name, len(found))
	}
	v, ok := found[0].Value.(T)
	if !ok {
		t.Fatalf("%s: %s decoded as %T", r.Dir, found[0], found[0].Value)
	}
	return v
}

// all returns every object of a kind.
func all[T any](r *rendering, kind string) []T {
	var out []T
	for _, o := range r.Objects {
		if o.Kind == kind {
			out = append(out, o.Value.(T))
		}
	}
	return out
}

func TestEveryKustomizationRendersAndDecodesStrictly(t *testing.T) {
	dirs := kustomizations(t)
	for _, want := range []string{"sidecar", "gateway/envoy-gateway", "gateway/istio"} {
		if !slices.Contains(dirs, filepath.FromSlash(want)) {
			t.Errorf("no kustomization in k8s/%s", want)
		}
	}
	for _, dir := range dirs {
		t.Run(filepath.ToSlash(dir), func(t *testing.T) {
			r := render(t, dir)
			if len(r.Objects) == 0 {
				t.Fatal("renders nothing")
			}
		})
	}
}

// TestStrictDecodingCatchesMistakes proves that the decoding the other
// tests rely on rejects what it must.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		v          any
	}{
		{"unknown field", `{"kind":"Deployment","spec":{"replica":1}}`, new(appsv1.Deployment)},
		{"wrong case", `{"kind":"Deployment","spec":{"Replicas":1}}`, new(appsv1.Deployment)},
		{"wrong type", `{"kind":"Deployment","spec":{"replicas":"1"}}`, new(appsv1.Deployment)},
		{"unknown CRD field", `{"spec":{"extProc":[{"failOpn":false}]}}`, new(envoyExtensionPolicy)},
		{"trailing data", `{"kind":"Secret"} {}`, new(corev1.Secret)},
	} {
		if err := decodeStrict([]byte(tc.json), tc.v); err == nil {
			t.Errorf("%s: %s decoded without error", tc.name, tc.json)
		}
	}
	if err := decodeStrict([]byte(`{"kind":"Deployment","spec":{"replicas":1}}`), new(appsv1.Deployment)); err != nil {
		t.Errorf("a valid object failed: %v", err)
	}
}

// TestSidecarBootstrapIsEnvoyBootstrap: kustomize reads no file outside the
// kustomization, so k8s/sidecar/envoy.yaml is a copy; it must stay the
// same bytes as envoy/envoy.yaml, and the ConfigMap must carry them.
func TestSidecarBootstrapIsEnvoyBootstrap(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join("..", "envoy", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := os.ReadFile(filepath.Join("sidecar", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(orig, cp) {
		t.Fatal("k8s/sidecar/envoy.yaml differs from envoy/envoy.yaml: run `make generate`")
	}
	if !bytes.Equal(orig, envoy.BootstrapYAML) {
		t.Fatal("envoy.BootstrapYAML is not envoy/envoy.yaml")
	}
	cm := get[*corev1.ConfigMap](t, render(t, "sidecar"), "ConfigMap", "")
	if cm.Data["envoy.yaml"] != string(orig) {
		t.Fatal("the ConfigMap's envoy.yaml is not envoy/envoy.yaml")
	}
	if _, err := envoy.ValidateBootstrapYAML([]byte(cm.Data["envoy.yaml"])); err != nil {
		t.Fatalf("the ConfigMap's envoy.yaml: %v", err)
	}
}

// secretPatterns recognise credentials by their shape. A manifest may name
// a secret file but never hold one.
var secretPatterns = []struct {
	name string
	re   *regexp.Regexp
}{
	{"ampproxy API key", regexp.MustCompile(`amp_[A-Za-z0-9_-]{20,}`)},
	{"private key", regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----`)},
	{"AWS access key", regexp.MustCompile(`\b(AKIA|ASIA)[0-9A-Z]{16}\b`)},
	{"Slack token", regexp.MustCompile(`\bxox[abposr]-[A-Za-z0-9-]{10,}`)},
	{"GitHub token", regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{30,}`)},
	{"Google API key", regexp.MustCompile(`\bAIza[0-9A-Za-z_-]{35}\b`)},
	{"HubSpot private app token", regexp.MustCompile(`\bpat-[a-z0-9]{2,4}-[0-9a-f]{8}-`)},
	{"bearer token", regexp.MustCompile(`(?i)bearer\s+[A-Za-z0-9._~+/-]{20,}`)},
	{"32-byte key in base64", regexp.MustCompile(`(^|[^A-Za-z0-9+/])[A-Za-z0-9+/]{43}=`)},
	{"SHA-256 or 32-byte key in hex", regexp.MustCompile(`\b[0-9a-fA-F]{64}\b`)},
}

// tokenRe finds the words a random secret would be made of.
var tokenRe = regexp.MustCompile(`[A-Za-z0-9+/=_-]{24,}`)

// entropy is the Shannon entropy of s in bits per character. Random base64
// of this length scores above 4.5; words, names and paths stay well below.
func entropy(s string) float64 {
	n := map[rune]float64{}
	for _, r := range s {
		n[r]++
	}
	var h float64
	for _, c := range n {
		p := c / float64(len(s))
		h -= p * math.Log2(p)
	}
	return h
}

// secretsIn names what in text looks like a real credential.
func secretsIn(text string) []string {
	var found []string
	for _, p := range secretPatterns {
		if m := p.re.FindString(text); m != "" {
			found = append(found, fmt.Sprintf("%s (%.12s…)", p.name, strings.TrimSpace(m)))
		}
	}
	for _, w := range tokenRe.FindAllString(text, -1) {
		if entropy(w) > 4.5 {
			found = append(found, fmt.Sprintf("high-entropy string (%.12s…)", w))
		}
	}
	return found
}

func TestSecretDetectorFindsSecrets(t *testing.T) {
	rnd := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	for _, s := range []string{
		"api-key: amp_" + base64.RawURLEncoding.EncodeToString(rnd(32)),
		"master.key=" + base64.StdEncoding.EncodeToString(rnd(32)),
		fmt.Sprintf("sha256: %x", rnd(32)),
		"token: " + base64.RawURLEncoding.EncodeToString(rnd(30)),
		"-----BEGIN RSA PRIVATE KEY-----",
		"Authorization: Bearer " + base64.RawURLEncoding.EncodeToString(rnd(24)),
	} {
		if len(secretsIn(s)) == 0 {
			t.Errorf("not recognised as a secret: %.24s…", s)
		}
	}
	for _, s := range []string{placeholder, "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", "dynamic_forward_proxy_cache_config", "ampproxy-secrets-59k2fm4f7g"} {
		if f := secretsIn(s); len(f) != 0 {
			t.Errorf("%q taken for a secret: %v", s, f)
		}
	}
}

// TestNoRealSecrets: every Secret rendered holds only the placeholder, and
// no file under k8s/ nor any rendered object holds anything shaped like a
// credential.
func TestNoRealSecrets(t *testing.T) {
	for _, dir := range kustomizations(t) {
		r := render(t, dir)
		for _, s := range all[*corev1.Secret](r, "Secret") {
			if len(s.Data)+len(s.StringData) == 0 {
				t.Errorf("%s: Secret %s is empty", dir, s.Name)
			}
			for k, v := range s.Data {
				if string(v) != placeholder {
					t.Errorf("%s: Secret %s key %s holds something other than %s", dir, s.Name, k, placeholder)
				}
			}
			for k, v := range s.StringData {
				if v != placeholder {
					t.Errorf("%s: Secret %s key %s holds something other than %s", dir, s.Name, k, placeholder)
				}
			}
		}
		for _, o := range r.Objects {
			for _, f := range secretsIn(string(o.JSON)) {
				t.Errorf("%s: %s: %s", dir, o, f)
			}
		}
	}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, f := range secretsIn(string(b)) {
			t.Errorf("k8s/%s: %s", filepath.ToSlash(path), f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
