package k8s

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/tokens"
)

// Helpers that read a rendered pod the way the kubelet would: which volume
// serves a path, which ConfigMap or Secret key becomes which file.

// container returns the container or init container of that name.
func container(t *testing.T, pod *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for _, list := range [][]corev1.Container{pod.InitContainers, pod.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func volume(pod *corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

// mountOf returns the mount of c that serves the absolute path p, the
// deepest one if several do, and p relative to it.
func mountOf(c *corev1.Container, p string) (*corev1.VolumeMount, string) {
	var best *corev1.VolumeMount
	rel := ""
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		r, ok := strings.CutPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")
		if p == m.MountPath {
			r, ok = "", true
		}
		if ok && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best, rel = m, r
		}
	}
	return best, rel
}

// fileSource is one key of a ConfigMap or Secret projected into a volume.
type fileSource struct {
	kind, name, key string
}

// volumeFiles lists the files a ConfigMap, Secret or projected volume
// holds, by path inside the volume. Items that name a missing key are an
// error: the kubelet would refuse to start the pod.
func volumeFiles(r *rendering, v *corev1.Volume) (map[string]fileSource, error) {
	files := map[string]fileSource{}
	add := func(kind, name string, items []corev1.KeyToPath) error {
		keys, err := keysOf(r, kind, name)
		if err != nil {
			return err
		}
		if len(items) == 0 {
			for k := range keys {
				files[k] = fileSource{kind, name, k}
			}
			return nil
		}
		for _, it := range items {
			if !keys[it.Key] {
				return fmt.Errorf("volume %s: %s %s has no key %q", v.Name, kind, name, it.Key)
			}
			files[path.Clean(it.Path)] = fileSource{kind, name, it.Key}
		}
		return nil
	}
	var err error
	switch {
	case v.ConfigMap != nil:
		err = add("ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items)
	case v.Secret != nil:
		err = add("Secret", v.Secret.SecretName, v.Secret.Items)
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			switch {
			case s.ConfigMap != nil:
				err = add("ConfigMap", s.ConfigMap.Name, s.ConfigMap.Items)
			case s.Secret != nil:
				err = add("Secret", s.Secret.Name, s.Secret.Items)
			default:
				err = fmt.Errorf("volume %s: a projected source other than a ConfigMap or Secret", v.Name)
			}
			if err != nil {
				return nil, err
			}
		}
	default:
		return nil, nil
	}
	return files, err
}

func keysOf(r *rendering, kind, name string) (map[string]bool, error) {
	keys := map[string]bool{}
	for _, o := range r.Objects {
		if o.Kind != kind || o.Name != name {
			continue
		}
		switch v := o.Value.(type) {
		case *corev1.ConfigMap:
			for k := range v.Data {
				keys[k] = true
			}
		case *corev1.Secret:
			for k := range v.Data {
				keys[k] = true
			}
			for k := range v.StringData {
				keys[k] = true
			}
		}
		return keys, nil
	}
	return nil, fmt.Errorf("no %s %q in the rendering", kind, name)
}

// fileFor says which ConfigMap or Secret key the container sees at the
// absolute path p, or fails the test.
func fileFor(t *testing.T, r *rendering, pod *corev1.PodSpec, c *corev1.Container, p string) fileSource {
	t.Helper()
	m, rel := mountOf(c, p)
	if m == nil {
		t.Fatalf("container %s: no volume is mounted at %s", c.Name, p)
	}
	v := volume(pod, m.Name)
	if v == nil {
		t.Fatalf("container %s: mount %s names no volume", c.Name, m.Name)
	}
	files, err := volumeFiles(r, v)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := files[rel]
	if !ok {
		t.Fatalf("container %s: volume %s mounted at %s has no file %s", c.Name, v.Name, m.MountPath, rel)
	}
	return f
}

// flagValue returns the value after flag in args.
func flagValue(t *testing.T, c *corev1.Container, flag string) string {
	t.Helper()
	args := append(append([]string(nil), c.Command...), c.Args...)
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	t.Fatalf("container %s: no %s in %q", c.Name, flag, args)
	return ""
}

func port(t *testing.T, hostport string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return int32(n)
}

func containerPort(t *testing.T, c *corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %q", c.Name, name)
	return 0
}

func intOrString(t *testing.T, c *corev1.Container, v intstr.IntOrString) int32 {
	t.Helper()
	if v.Type == intstr.Int {
		return v.IntVal
	}
	return containerPort(t, c, v.StrVal)
}

// loadConfig lays out the files the container would see in a temporary
// directory, with stand-in content for every Secret key (the manifests
// hold only placeholders), rewrites the config's mount paths to point
// there, and loads it with config.Load. A path in the config that no
// volume of the container provides is then a missing file, and an error.
// It returns the loaded config with the temporary prefix taken off again.
func loadConfig(t *testing.T, r *rendering, pod *corev1.PodSpec, c *corev1.Container, configPath string) *config.Config {
	t.Helper()
	root, file := layOut(t, r, pod, c, configPath, func(fileSource) string { return standIn(t) })
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("config.Load of %s as mounted in container %s: %v", configPath, c.Name, err)
	}
	var unroot func(string) string
	unroot = func(s string) string {
		if rest, ok := strings.CutPrefix(s, "unix://"); ok {
			return "unix://" + unroot(rest)
		}
		if rel, err := filepath.Rel(root, s); err == nil && !strings.HasPrefix(rel, "..") {
			return "/" + filepath.ToSlash(rel)
		}
		return s
	}
	cfg.Path = unroot(cfg.Path)
	cfg.GRPC.Listen = unroot(cfg.GRPC.Listen)
	cfg.Storage.Path = unroot(cfg.Storage.Path)
	cfg.Storage.EncryptionKeyFile = unroot(cfg.Storage.EncryptionKeyFile)
	for _, p := range cfg.Projects {
		p.Manifest = unroot(p.Manifest)
		for i := range p.APIKeys {
			p.APIKeys[i].File = unroot(p.APIKeys[i].File)
		}
		for name, app := range p.ProviderApps {
			app.ClientSecretFile = unroot(app.ClientSecretFile)
			p.ProviderApps[name] = app
		}
	}
	return cfg
}

// layOut writes the files container c would see under a temporary root,
// each Secret key's content given by secret, and the config with its mount
// paths rewritten to point there; it returns the root and the config file.
func layOut(t *testing.T, r *rendering, pod *corev1.PodSpec, c *corev1.Container, configPath string, secret func(fileSource) string) (root, file string) {
	t.Helper()
	root = t.TempDir()
	var pairs []string
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(root, filepath.FromSlash(m.MountPath))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, m.MountPath+"/", filepath.ToSlash(dir)+"/")
		v := volume(pod, m.Name)
		if v == nil {
			t.Fatalf("container %s: mount %s names no volume", c.Name, m.Name)
		}
		files, err := volumeFiles(r, v)
		if err != nil {
			t.Fatal(err)
		}
		for rel, src := range files {
			var data string
			if src.kind == "ConfigMap" {
				data = configMapData(t, r, src.name, src.key)
			} else {
				data = secret(src)
			}
			f := filepath.Join(dir, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	// One pass, so that a replaced path is never replaced again.
	rewrite := strings.NewReplacer(pairs...)
	src := fileFor(t, r, pod, c, configPath)
	if src.kind != "ConfigMap" {
		t.Fatalf("%s comes from a %s, not a ConfigMap", configPath, src.kind)
	}
	file = filepath.Join(root, filepath.FromSlash(configPath))
	if err := os.WriteFile(file, []byte(rewrite.Replace(configMapData(t, r, src.name, src.key))), 0o600); err != nil {
		t.Fatal(err)
	}
	return root, file
}

// TestUneditedSecretsFailClosed: the Secret bases ship REPLACE_ME. Laid out
// as the container sees them, with the Secrets as rendered, the config is
// refused for its API key file and the store's key is refused too, so a
// deployment nobody filled in never serves.
func TestUneditedSecretsFailClosed(t *testing.T) {
	for _, dir := range []string{"sidecar", "gateway/base"} {
		t.Run(dir, func(t *testing.T) {
			r := render(t, dir)
			var pod *corev1.PodSpec
			for _, d := range all[*appsv1.Deployment](r, "Deployment") {
				for _, c := range d.Spec.Template.Spec.InitContainers {
					if c.Name == "ampproxy" {
						pod = &d.Spec.Template.Spec
					}
				}
				for _, c := range d.Spec.Template.Spec.Containers {
					if c.Name == "ampproxy" {
						pod = &d.Spec.Template.Spec
					}
				}
			}
			if pod == nil {
				t.Fatal("no Deployment runs ampproxy")
			}
			c := container(t, pod, "ampproxy")
			configPath := flagValue(t, c, "--config")
			root, file := layOut(t, r, pod, c, configPath, func(src fileSource) string { return secretData(t, r, src.name, src.key) })
			_, err := config.Load(file)
			if err == nil || !strings.Contains(err.Error(), "placeholder") || !strings.Contains(err.Error(), root) {
				t.Errorf("config.Load with the shipped Secrets = %v, want a placeholder API key refused", err)
			}
			// The API key error stops config.Load; the store's key is
			// serve's next check, through the same loader serve uses.
			stored := loadConfig(t, r, pod, c, configPath).Storage.EncryptionKeyFile
			keyFile := filepath.Join(root, filepath.FromSlash(stored))
			if _, err := tokens.LoadKey(keyFile, false); err == nil {
				t.Errorf("the shipped %s is accepted as the store's encryption key", keyFile)
			}
		})
	}
}

// secretData is a Secret key's content as rendered.
func secretData(t *testing.T, r *rendering, name, key string) string {
	t.Helper()
	for _, s := range all[*corev1.Secret](r, "Secret") {
		if s.Name != name {
			continue
		}
		if v, ok := s.Data[key]; ok {
			return string(v)
		}
		if v, ok := s.StringData[key]; ok {
			return v
		}
	}
	t.Fatalf("no Secret %s with key %s", name, key)
	return ""
}

// checkConfigFiles: every secret the config names is a Secret key, the
// manifest a ConfigMap key, and the bbolt file sits on a writable
// PersistentVolumeClaim.
func checkConfigFiles(t *testing.T, r *rendering, pod *corev1.PodSpec, c *corev1.Container, cfg *config.Config) {
	t.Helper()
	want := func(p, kind, what string) {
		t.Helper()
		if f := fileFor(t, r, pod, c, p); f.kind != kind {
			t.Errorf("%s %s comes from %s %s, want a %s", what, p, f.kind, f.name, kind)
		}
	}
	want(cfg.Storage.EncryptionKeyFile, "Secret", "storage.encryptionKeyFile")
	for _, p := range cfg.Projects {
		want(p.Manifest, "ConfigMap", "projects["+p.ID+"].manifest")
		for _, k := range p.APIKeys {
			if k.File != "" {
				want(k.File, "Secret", "projects["+p.ID+"].apiKeys.file")
			}
		}
		for name, app := range p.ProviderApps {
			if app.ClientSecretFile != "" {
				want(app.ClientSecretFile, "Secret", "projects["+p.ID+"].providerApps."+name+".clientSecretFile")
			}
		}
	}
	m, _ := mountOf(c, cfg.Storage.Path)
	if m == nil {
		t.Fatalf("storage.path %s is on no volume: it would be lost with the container", cfg.Storage.Path)
	}
	if v := volume(pod, m.Name); v == nil || v.PersistentVolumeClaim == nil {
		t.Errorf("storage.path %s is on volume %s, not a PersistentVolumeClaim", cfg.Storage.Path, m.Name)
	}
	if m.ReadOnly {
		t.Errorf("storage.path %s is on a read-only mount", cfg.Storage.Path)
	}
}

// standIn is what a Secret key holds in a test: 32 random bytes in base64,
// which is a valid encryption key, API key and client secret alike.
func standIn(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func configMapData(t *testing.T, r *rendering, name, key string) string {
	t.Helper()
	for _, cm := range all[*corev1.ConfigMap](r, "ConfigMap") {
		if cm.Name == name {
			v, ok := cm.Data[key]
			if !ok {
				t.Fatalf("ConfigMap %s has no key %s", name, key)
			}
			return v
		}
	}
	t.Fatalf("no ConfigMap %s", name)
	return ""
}

// checkHardened holds every container of the pod to the securityContext
// and resources the manifests promise.
func checkHardened(t *testing.T, pod *corev1.PodSpec) {
	t.Helper()
	psc := pod.SecurityContext
	if psc == nil {
		t.Fatal("pod has no securityContext")
	}
	if psc.FSGroup == nil || *psc.FSGroup == 0 {
		t.Error("pod: fsGroup must be set to a non-root group")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("pod: automountServiceAccountToken must be false: nothing here calls the Kubernetes API")
	}
	for _, list := range [][]corev1.Container{pod.InitContainers, pod.Containers} {
		for _, c := range list {
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("container %s: no securityContext", c.Name)
				continue
			}
			nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
			if !nonRoot {
				t.Errorf("container %s: runAsNonRoot is not true", c.Name)
			}
			uid := psc.RunAsUser
			if sc.RunAsUser != nil {
				uid = sc.RunAsUser
			}
			if uid == nil || *uid == 0 {
				t.Errorf("container %s: runs as root or as the image's user", c.Name)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("container %s: readOnlyRootFilesystem is not true", c.Name)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("container %s: allowPrivilegeEscalation is not false", c.Name)
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Errorf("container %s: privileged", c.Name)
			}
			if sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
				t.Errorf("container %s: capabilities must drop ALL and add none", c.Name)
			}
			seccomp := psc.SeccompProfile
			if sc.SeccompProfile != nil {
				seccomp = sc.SeccompProfile
			}
			if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("container %s: seccompProfile is not RuntimeDefault", c.Name)
			}
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, okReq := c.Resources.Requests[res]
				lim, okLim := c.Resources.Limits[res]
				if !okReq || !okLim {
					t.Errorf("container %s: %s needs a request and a limit", c.Name, res)
				} else if req.Cmp(lim) > 0 {
					t.Errorf("container %s: %s request above its limit", c.Name, res)
				}
			}
		}
	}
}

// checkProbes holds ampproxy's probes to /healthz and /readyz on the admin
// port and returns the ports they use.
func checkProbes(t *testing.T, c *corev1.Container) []int32 {
	t.Helper()
	var ports []int32
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", c.StartupProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("container %s: no HTTP %s", c.Name, p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("container %s: %s on %s, want %s", c.Name, p.name, p.probe.HTTPGet.Path, p.path)
		}
		ports = append(ports, intOrString(t, c, p.probe.HTTPGet.Port))
	}
	return ports
}

// ingressPorts maps each port the NetworkPolicies selecting these pod
// labels open to the peers they open it to, written as
// "ns{k=v} pods{k=v}" ("ns" absent for the policy's own namespace). A rule
// open to every port or every peer fails the test.
func ingressPorts(t *testing.T, r *rendering, labels map[string]string) map[int32][]string {
	t.Helper()
	out := map[int32][]string{}
	for _, np := range all[*networkingv1.NetworkPolicy](r, "NetworkPolicy") {
		if len(np.Spec.PodSelector.MatchExpressions) != 0 {
			t.Fatalf("NetworkPolicy %s: matchExpressions are not understood here", np.Name)
		}
		if !subset(np.Spec.PodSelector.MatchLabels, labels) {
			continue
		}
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			t.Errorf("NetworkPolicy %s: policyTypes lacks Ingress", np.Name)
		}
		for i, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 || len(rule.From) == 0 {
				t.Errorf("NetworkPolicy %s: ingress[%d] is open to every port or every peer", np.Name, i)
				continue
			}
			var peers []string
			for _, f := range rule.From {
				if f.IPBlock != nil {
					t.Errorf("NetworkPolicy %s: ingress[%d] has an ipBlock", np.Name, i)
					continue
				}
				peer := ""
				if f.NamespaceSelector != nil {
					peer = "ns" + selector(t, f.NamespaceSelector) + " "
				}
				if f.PodSelector == nil {
					f.PodSelector = &metav1.LabelSelector{}
				}
				peers = append(peers, peer+"pods"+selector(t, f.PodSelector))
			}
			for _, p := range rule.Ports {
				if p.Port == nil || p.Port.Type != intstr.Int || p.EndPort != nil {
					t.Errorf("NetworkPolicy %s: ingress[%d]: give each port as one number", np.Name, i)
					continue
				}
				if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
					t.Errorf("NetworkPolicy %s: ingress[%d]: protocol %s", np.Name, i, *p.Protocol)
				}
				out[p.Port.IntVal] = append(out[p.Port.IntVal], peers...)
			}
		}
	}
	return out
}

func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func selector(t *testing.T, s *metav1.LabelSelector) string {
	t.Helper()
	if len(s.MatchExpressions) != 0 {
		t.Fatal("matchExpressions are not understood here")
	}
	var kv []string
	for k, v := range s.MatchLabels {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return "{" + strings.Join(kv, ",") + "}"
}

// checkGracePeriod: the pod's grace period outlasts ampproxy's whole
// shutdown, so that the kubelet's SIGKILL cannot land in the middle of a
// token refresh (a provider that rotated the refresh token would then
// have a token ampproxy never stored): the drain (shutdown.drainTimeout
// of the config the pod mounts), then the admin listener's requests and
// the token requests in flight, each bounded; margin is for the
// containers that stop before ampproxy.
func checkGracePeriod(t *testing.T, pod *corev1.PodSpec, cfg *config.Config, margin time.Duration) {
	t.Helper()
	grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
	if pod.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	}
	drain := time.Duration(cfg.Shutdown.DrainTimeout)
	after := config.AdminShutdownTimeout + tokens.DefaultTokenTimeout
	if grace < drain+after+margin {
		t.Errorf("terminationGracePeriodSeconds %v: ampproxy drains for up to %v (shutdown.drainTimeout), then needs up to %v for its admin listener and token requests in flight, and %v more are needed for the rest", grace, drain, after, margin)
	}
}
