package k8s

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ampproxy/ampproxy/envoy"
)

// sidecarPod is the rendered k8s/sidecar Deployment with its two sidecars.
type sidecarPod struct {
	r                       *rendering
	dep                     *appsv1.Deployment
	pod                     *corev1.PodSpec
	ampproxy, envoy         *corev1.Container
	bootstrap               *bootstrapv3.Bootstrap
	configPath, envoyConfig string
}

func loadSidecar(t *testing.T) *sidecarPod {
	t.Helper()
	r := render(t, "sidecar")
	s := &sidecarPod{r: r, dep: get[*appsv1.Deployment](t, r, "Deployment", "")}
	s.pod = &s.dep.Spec.Template.Spec
	s.ampproxy = container(t, s.pod, "ampproxy")
	s.envoy = container(t, s.pod, "envoy")
	s.configPath = flagValue(t, s.ampproxy, "--config")
	s.envoyConfig = flagValue(t, s.envoy, "-c")
	src := fileFor(t, r, s.pod, s.envoy, s.envoyConfig)
	if src.kind != "ConfigMap" {
		t.Fatalf("envoy's %s comes from a %s", s.envoyConfig, src.kind)
	}
	b, err := envoy.ValidateBootstrapYAML([]byte(configMapData(t, r, src.name, src.key)))
	if err != nil {
		t.Fatalf("the bootstrap Envoy loads (%s): %v", s.envoyConfig, err)
	}
	s.bootstrap = b
	return s
}

func TestSidecarDeployment(t *testing.T) {
	s := loadSidecar(t)
	if s.dep.Spec.Replicas == nil || *s.dep.Spec.Replicas != 1 {
		t.Error("replicas must be 1: one bbolt file, one writer")
	}
	if s.dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %q: must be Recreate, a rolling update would run two writers", s.dep.Spec.Strategy.Type)
	}
	// Both proxies are native sidecars: init containers that keep running,
	// ampproxy first so that Envoy starts with its ext_proc server up.
	var order []string
	for _, c := range s.pod.InitContainers {
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Errorf("init container %s: restartPolicy must be Always (a native sidecar)", c.Name)
		}
		if c.StartupProbe == nil {
			t.Errorf("sidecar %s: without a startupProbe the next container starts before it serves", c.Name)
		}
		order = append(order, c.Name)
	}
	if strings.Join(order, ",") != "ampproxy,envoy" {
		t.Errorf("init containers %v, want ampproxy then envoy", order)
	}
	if len(s.pod.Containers) != 1 {
		t.Errorf("want one application container, found %d", len(s.pod.Containers))
	}
	checkHardened(t, s.pod)
	// The application and Envoy stop before ampproxy does.
	checkGracePeriod(t, s.pod, loadConfig(t, s.r, s.pod, s.ampproxy, s.configPath), 20*time.Second)

	// The bbolt file lives on the claim, and the claim is single-writer.
	pvc := get[*corev1.PersistentVolumeClaim](t, s.r, "PersistentVolumeClaim", "")
	if len(pvc.Spec.AccessModes) != 1 || pvc.Spec.AccessModes[0] != corev1.ReadWriteOnce {
		t.Errorf("PVC %s: access modes %v, want ReadWriteOnce", pvc.Name, pvc.Spec.AccessModes)
	}
	found := false
	for _, v := range s.pod.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvc.Name {
			found = true
		}
	}
	if !found {
		t.Errorf("no volume uses PVC %s", pvc.Name)
	}
}

func TestSidecarEnvoyImage(t *testing.T) {
	s := loadSidecar(t)
	m := regexp.MustCompile(`^(docker\.io/)?envoyproxy/envoy(-distroless)?:v(\d+)\.(\d+)[.-]`).FindStringSubmatch(s.envoy.Image)
	if m == nil {
		t.Fatalf("envoy image %q: want envoyproxy/envoy:vX.Y…", s.envoy.Image)
	}
	major, _ := strconv.Atoi(m[3])
	minor, _ := strconv.Atoi(m[4])
	if major < 1 || major == 1 && minor < 32 {
		t.Errorf("envoy image %q: the bootstrap needs Envoy 1.32 or newer", s.envoy.Image)
	}
}

// TestSidecarConfigLoads loads the ConfigMap's ampproxy.yaml, with its
// amp.yaml, through config.Load, laid out as the container sees it.
func TestSidecarConfigLoads(t *testing.T) {
	s := loadSidecar(t)
	cfg := loadConfig(t, s.r, s.pod, s.ampproxy, s.configPath)
	if cfg.Storage.CreateKey {
		t.Error("storage.createKey must be false: a lost key must stop the start, not be replaced")
	}
}

func TestSidecarSocketPath(t *testing.T) {
	s := loadSidecar(t)
	cfg := loadConfig(t, s.r, s.pod, s.ampproxy, s.configPath)
	sock, ok := strings.CutPrefix(cfg.GRPC.Listen, "unix://")
	if !ok {
		t.Fatalf("grpc.listen %q: the sidecar talks to Envoy over a unix socket", cfg.GRPC.Listen)
	}
	pipe := extProcPipe(t, s.bootstrap)
	if pipe != sock {
		t.Errorf("Envoy's %s cluster dials %s, ampproxy listens on %s", envoy.ExtProcCluster, pipe, sock)
	}
	// Both containers see the socket's directory through the same emptyDir.
	var vols []string
	for _, c := range []*corev1.Container{s.ampproxy, s.envoy} {
		m, rel := mountOf(c, sock)
		if m == nil {
			t.Errorf("container %s: %s is on no volume", c.Name, sock)
			continue
		}
		if rel != path.Base(sock) {
			t.Errorf("container %s: the socket is at %s inside volume %s, want its top level", c.Name, rel, m.Name)
		}
		v := volume(s.pod, m.Name)
		if v == nil || v.EmptyDir == nil {
			t.Errorf("container %s: %s is not an emptyDir", c.Name, m.Name)
		}
		if m.ReadOnly && c == s.ampproxy {
			t.Errorf("container %s: the socket volume is read-only", c.Name)
		}
		vols = append(vols, m.Name)
	}
	if len(vols) == 2 && vols[0] != vols[1] {
		t.Errorf("ampproxy and envoy mount different volumes (%s, %s) for the socket", vols[0], vols[1])
	}
	// Only ampproxy and Envoy see the socket: another container with it
	// could ask ampproxy for credentials.
	for _, c := range s.pod.Containers {
		if m, _ := mountOf(&c, sock); m != nil {
			t.Errorf("container %s mounts the ext_proc socket", c.Name)
		}
	}
}

func extProcPipe(t *testing.T, b *bootstrapv3.Bootstrap) string {
	t.Helper()
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != envoy.ExtProcCluster {
			continue
		}
		var pipes []string
		for _, e := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range e.GetLbEndpoints() {
				if p := lb.GetEndpoint().GetAddress().GetPipe(); p != nil {
					pipes = append(pipes, p.GetPath())
				}
			}
		}
		if len(pipes) != 1 {
			t.Fatalf("cluster %s: want one pipe endpoint, found %v", envoy.ExtProcCluster, pipes)
		}
		return pipes[0]
	}
	t.Fatalf("bootstrap has no cluster %s", envoy.ExtProcCluster)
	return ""
}

func listenerPort(t *testing.T, b *bootstrapv3.Bootstrap) int32 {
	t.Helper()
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == envoy.ListenerName {
			return int32(l.GetAddress().GetSocketAddress().GetPortValue())
		}
	}
	t.Fatalf("bootstrap has no listener %s", envoy.ListenerName)
	return 0
}

func TestSidecarPorts(t *testing.T) {
	s := loadSidecar(t)
	cfg := loadConfig(t, s.r, s.pod, s.ampproxy, s.configPath)
	labels := s.dep.Spec.Template.Labels
	open := ingressPorts(t, s.r, labels)

	// ampproxy's admin port: config, container port, probes, NetworkPolicy.
	admin := port(t, cfg.Admin.Listen)
	if got := containerPort(t, s.ampproxy, "admin"); got != admin {
		t.Errorf("ampproxy containerPort admin %d, admin.listen %d", got, admin)
	}
	for _, p := range checkProbes(t, s.ampproxy) {
		if p != admin {
			t.Errorf("ampproxy probe on port %d, admin.listen %d", p, admin)
		}
	}
	if want := []string{"ns{} pods{app.kubernetes.io/name=prometheus}"}; fmt.Sprint(open[admin]) != fmt.Sprint(want) {
		t.Errorf("admin port %d open to %v, want %v", admin, open[admin], want)
	}

	// Envoy's listener: bootstrap, container port, probes, NetworkPolicy,
	// and the address the application is given.
	listen := listenerPort(t, s.bootstrap)
	if got := containerPort(t, s.envoy, "proxy"); got != listen {
		t.Errorf("envoy containerPort proxy %d, bootstrap listener %d", got, listen)
	}
	for _, p := range []*corev1.Probe{s.envoy.StartupProbe, s.envoy.ReadinessProbe, s.envoy.LivenessProbe} {
		if p == nil || p.TCPSocket == nil {
			t.Error("envoy: want startup, readiness and liveness tcpSocket probes")
			continue
		}
		if got := intOrString(t, s.envoy, p.TCPSocket.Port); got != listen {
			t.Errorf("envoy probe on port %d, listener %d", got, listen)
		}
	}
	if want := []string{"pods{}"}; fmt.Sprint(open[listen]) != fmt.Sprint(want) {
		t.Errorf("listener port %d open to %v, want %v (this namespace's workloads)", listen, open[listen], want)
	}
	for p := range open {
		if p != admin && p != listen {
			t.Errorf("NetworkPolicy opens port %d, which nothing in the pod serves", p)
		}
	}
	app := s.pod.Containers[0]
	var proxyURL string
	for _, e := range app.Env {
		if e.Name == "AMPPROXY_URL" {
			proxyURL = e.Value
		}
	}
	u, err := url.Parse(proxyURL)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" || u.Port() != strconv.Itoa(int(listen)) {
		t.Errorf("application's AMPPROXY_URL %q, want http://127.0.0.1:%d", proxyURL, listen)
	}
}

// TestSidecarFilePaths: the files named on the command lines are there,
// and every file the config names comes from where it should.
func TestSidecarFilePaths(t *testing.T) {
	s := loadSidecar(t)
	if f := fileFor(t, s.r, s.pod, s.ampproxy, s.configPath); f.kind != "ConfigMap" || f.key != "ampproxy.yaml" {
		t.Errorf("ampproxy --config %s is %s %s key %s, want the ConfigMap's ampproxy.yaml", s.configPath, f.kind, f.name, f.key)
	}
	if f := fileFor(t, s.r, s.pod, s.envoy, s.envoyConfig); f.kind != "ConfigMap" || f.key != "envoy.yaml" {
		t.Errorf("envoy -c %s is %s %s key %s, want the ConfigMap's envoy.yaml", s.envoyConfig, f.kind, f.name, f.key)
	}
	cfg := loadConfig(t, s.r, s.pod, s.ampproxy, s.configPath)
	checkConfigFiles(t, s.r, s.pod, s.ampproxy, cfg)
	// The CA bundle Envoy checks providers against comes from its image:
	// no volume may hide it.
	ca := trustedCA(t, s.bootstrap)
	if m, _ := mountOf(s.envoy, ca); m != nil {
		t.Errorf("envoy: volume %s at %s hides the image's CA bundle %s", m.Name, m.MountPath, ca)
	}
	// Envoy sees no secret of ampproxy's.
	for _, m := range s.envoy.VolumeMounts {
		files, err := volumeFiles(s.r, volume(s.pod, m.Name))
		if err != nil {
			t.Fatal(err)
		}
		for rel, f := range files {
			if f.kind == "Secret" {
				t.Errorf("envoy sees Secret %s key %s at %s/%s", f.name, f.key, m.MountPath, rel)
			}
		}
	}
}

func trustedCA(t *testing.T, b *bootstrapv3.Bootstrap) string {
	t.Helper()
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != envoy.ForwardProxyCluster {
			continue
		}
		var tc tlsv3.UpstreamTlsContext
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tc); err != nil {
			t.Fatalf("cluster %s: %v", c.GetName(), err)
		}
		if f := tc.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); f != "" {
			return f
		}
	}
	t.Fatalf("bootstrap: cluster %s has no trusted CA file", envoy.ForwardProxyCluster)
	return ""
}
