package k8s

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/envoy"
)

// gatewayServer is ampproxy as rendered by a k8s/gateway overlay: its
// Deployment, config and Service.
type gatewayServer struct {
	r        *rendering
	dep      *appsv1.Deployment
	pod      *corev1.PodSpec
	ampproxy *corev1.Container
	cfg      *config.Config
	svc      *corev1.Service
	grpcPort int32 // the Service port for ext_proc
}

func loadGatewayServer(t *testing.T, dir string) *gatewayServer {
	t.Helper()
	r := render(t, dir)
	g := &gatewayServer{r: r, dep: get[*appsv1.Deployment](t, r, "Deployment", "ampproxy")}
	g.pod = &g.dep.Spec.Template.Spec
	g.ampproxy = container(t, g.pod, "ampproxy")
	g.cfg = loadConfig(t, r, g.pod, g.ampproxy, flagValue(t, g.ampproxy, "--config"))
	g.svc = get[*corev1.Service](t, r, "Service", "ampproxy")
	if !subset(g.svc.Spec.Selector, g.dep.Spec.Template.Labels) || len(g.svc.Spec.Selector) == 0 {
		t.Fatalf("Service %s selects %v, not the ampproxy pods %v", g.svc.Name, g.svc.Spec.Selector, g.dep.Spec.Template.Labels)
	}
	listen := port(t, g.cfg.GRPC.Listen)
	if got := containerPort(t, g.ampproxy, "grpc-extproc"); got != listen {
		t.Fatalf("containerPort grpc-extproc %d, grpc.listen %d", got, listen)
	}
	for _, p := range g.svc.Spec.Ports {
		if p.Name != "grpc-extproc" {
			continue
		}
		if intOrString(t, g.ampproxy, p.TargetPort) != listen {
			t.Fatalf("Service %s targets port %s, grpc.listen is %d", g.svc.Name, p.TargetPort.String(), listen)
		}
		if p.AppProtocol == nil || *p.AppProtocol != "grpc" {
			t.Fatalf("Service %s port %s: appProtocol must be grpc (HTTP/2)", g.svc.Name, p.Name)
		}
		g.grpcPort = p.Port
	}
	if g.grpcPort == 0 {
		t.Fatalf("Service %s has no port grpc-extproc", g.svc.Name)
	}
	return g
}

// bootstrapExtProc is the ext_proc filter config of envoy/envoy.yaml, the
// reference the gateway variants must agree with.
func bootstrapExtProc(t *testing.T) *extprocv3.ExternalProcessor {
	t.Helper()
	b, err := envoy.ValidateBootstrapYAML(envoy.BootstrapYAML)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
					continue
				}
				for _, hf := range hcm.GetHttpFilters() {
					var ep extprocv3.ExternalProcessor
					if hf.GetTypedConfig().UnmarshalTo(&ep) == nil {
						return &ep
					}
				}
			}
		}
	}
	t.Fatal("envoy/envoy.yaml has no ext_proc filter")
	return nil
}

func TestGatewayServers(t *testing.T) {
	for _, dir := range []string{"gateway/envoy-gateway", "gateway/istio"} {
		t.Run(dir, func(t *testing.T) {
			g := loadGatewayServer(t, dir)
			if g.dep.Spec.Replicas == nil || *g.dep.Spec.Replicas != 1 {
				t.Error("replicas must be 1: one bbolt file, one writer")
			}
			if g.dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
				t.Errorf("strategy %q: must be Recreate", g.dep.Spec.Strategy.Type)
			}
			checkHardened(t, g.pod)
			checkGracePeriod(t, g.pod, g.cfg, 5*time.Second)
			checkConfigFiles(t, g.r, g.pod, g.ampproxy, g.cfg)
			if g.cfg.Storage.CreateKey {
				t.Error("storage.createKey must be false")
			}
			admin := port(t, g.cfg.Admin.Listen)
			if got := containerPort(t, g.ampproxy, "admin"); got != admin {
				t.Errorf("containerPort admin %d, admin.listen %d", got, admin)
			}
			for _, p := range checkProbes(t, g.ampproxy) {
				if p != admin {
					t.Errorf("probe on port %d, admin.listen %d", p, admin)
				}
			}
			for _, p := range g.svc.Spec.Ports {
				if intOrString(t, g.ampproxy, p.TargetPort) == admin {
					t.Errorf("Service %s exposes the admin port", g.svc.Name)
				}
			}
		})
	}
}

func TestEnvoyGateway(t *testing.T) {
	g := loadGatewayServer(t, "gateway/envoy-gateway")
	r := g.r
	ref := bootstrapExtProc(t)

	// The policy: ampproxy's Service, settings as in envoy/envoy.yaml.
	pol := get[*envoyExtensionPolicy](t, r, "EnvoyExtensionPolicy", "")
	if len(pol.Spec.ExtProc) != 1 {
		t.Fatalf("EnvoyExtensionPolicy %s: want one extProc, found %d", pol.Name, len(pol.Spec.ExtProc))
	}
	ep := pol.Spec.ExtProc[0]
	if len(ep.BackendRefs) != 1 || ep.BackendRefs[0].Name != g.svc.Name || ep.BackendRefs[0].Port == nil || *ep.BackendRefs[0].Port != g.grpcPort ||
		ep.BackendRefs[0].Kind != nil && *ep.BackendRefs[0].Kind != "Service" || ep.BackendRefs[0].Namespace != nil && *ep.BackendRefs[0].Namespace != g.svc.Namespace {
		t.Errorf("extProc backendRefs %s, want Service %s port %d", refs(ep.BackendRefs), g.svc.Name, g.grpcPort)
	}
	if pol.Namespace != g.svc.Namespace {
		t.Errorf("EnvoyExtensionPolicy in %s, Service in %s", pol.Namespace, g.svc.Namespace)
	}
	if ep.FailOpen == nil || *ep.FailOpen != ref.GetFailureModeAllow() {
		t.Errorf("failOpen %s, envoy/envoy.yaml failure_mode_allow %v: set it explicitly", deref(ep.FailOpen), ref.GetFailureModeAllow())
	}
	if ep.MessageTimeout == nil {
		t.Error("messageTimeout unset")
	} else if d, err := time.ParseDuration(*ep.MessageTimeout); err != nil || d != ref.GetMessageTimeout().AsDuration() {
		t.Errorf("messageTimeout %s, envoy/envoy.yaml %s", *ep.MessageTimeout, ref.GetMessageTimeout().AsDuration())
	}
	pm := ep.ProcessingMode
	refPM := ref.GetProcessingMode()
	switch {
	case pm == nil || pm.Request == nil || pm.Response == nil:
		t.Error("processingMode must name request and response: only then are headers sent")
	case refPM.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND || refPM.GetResponseHeaderMode() != extprocv3.ProcessingMode_SEND:
		t.Error("envoy/envoy.yaml no longer sends both headers; update the policy with it")
	case pm.Request.Body != nil || pm.Response.Body != nil || refPM.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE || refPM.GetResponseBodyMode() != extprocv3.ProcessingMode_NONE:
		t.Error("bodies must not be sent to ampproxy")
	case len(pm.Request.Attributes)+len(pm.Response.Attributes) != 0:
		t.Error("no attributes are needed")
	case pm.AllowModeOverride == nil || *pm.AllowModeOverride != ref.GetAllowModeOverride():
		t.Errorf("allowModeOverride %s, envoy/envoy.yaml %v: set it explicitly", deref(pm.AllowModeOverride), ref.GetAllowModeOverride())
	}

	// The policy applies to the provider route, which belongs to the
	// egress Gateway and goes to the dynamic forward proxy Backend.
	if len(pol.Spec.TargetRefs) != 1 || pol.Spec.TargetRefs[0].Kind != "HTTPRoute" || pol.Spec.TargetRefs[0].Group != "gateway.networking.k8s.io" {
		t.Fatalf("EnvoyExtensionPolicy targets %+v, want the one HTTPRoute", pol.Spec.TargetRefs)
	}
	route := get[*httpRoute](t, r, "HTTPRoute", pol.Spec.TargetRefs[0].Name)
	if len(route.Spec.Hostnames) != 0 {
		t.Error("the provider route must match every host: ampproxy changes :authority and clears the route cache")
	}
	if len(route.Spec.ParentRefs) != 1 {
		t.Fatalf("HTTPRoute %s: want one parentRef", route.Name)
	}
	gw := get[*gatewayAPIGateway](t, r, "Gateway", route.Spec.ParentRefs[0].Name)
	if len(route.Spec.Rules) != 1 || len(route.Spec.Rules[0].BackendRefs) != 1 {
		t.Fatalf("HTTPRoute %s: want one rule with one backend", route.Name)
	}
	br := route.Spec.Rules[0].BackendRefs[0]
	if br.Group == nil || *br.Group != "gateway.envoyproxy.io" || br.Kind == nil || *br.Kind != "Backend" {
		t.Fatalf("HTTPRoute %s backend %s: want an Envoy Gateway Backend", route.Name, refs([]objectRef{br}))
	}
	be := get[*egBackend](t, r, "Backend", br.Name)
	if be.Spec.Type == nil || *be.Spec.Type != "DynamicResolver" {
		t.Error("Backend: type must be DynamicResolver (the dynamic forward proxy)")
	}
	if be.Spec.TLS == nil || be.Spec.TLS.WellKnownCACertificates == nil || *be.Spec.TLS.WellKnownCACertificates != "System" ||
		be.Spec.TLS.InsecureSkipVerify != nil && *be.Spec.TLS.InsecureSkipVerify {
		t.Error("Backend: TLS must be checked against the system CA bundle, as in envoy/envoy.yaml")
	}

	// The Gateway: one HTTP listener where callers find the sidecar's
	// Envoy, cluster-internal.
	if len(gw.Spec.Listeners) != 1 {
		t.Fatalf("Gateway %s: want one listener", gw.Name)
	}
	l := gw.Spec.Listeners[0]
	if route.Spec.ParentRefs[0].SectionName != "" && route.Spec.ParentRefs[0].SectionName != l.Name {
		t.Errorf("HTTPRoute attaches to listener %q, Gateway has %q", route.Spec.ParentRefs[0].SectionName, l.Name)
	}
	b, err := envoy.ValidateBootstrapYAML(envoy.BootstrapYAML)
	if err != nil {
		t.Fatal(err)
	}
	if l.Protocol != "HTTP" || l.Port != listenerPort(t, b) {
		t.Errorf("Gateway listener %s %d, want HTTP on the sidecar's port %d", l.Protocol, l.Port, listenerPort(t, b))
	}
	if l.AllowedRoutes == nil || l.AllowedRoutes.Namespaces == nil || l.AllowedRoutes.Namespaces.From != "Same" {
		t.Error("Gateway: allow routes from its own namespace only; another route here would see ampproxy's traffic")
	}
	infra := gw.Spec.Infrastructure
	if infra == nil || infra.ParametersRef == nil || infra.ParametersRef.Kind != "EnvoyProxy" {
		t.Fatal("Gateway: no EnvoyProxy parameters")
	}
	proxy := get[*envoyProxy](t, r, "EnvoyProxy", infra.ParametersRef.Name)
	if k := proxy.Spec.Provider.Kubernetes; k == nil || k.EnvoyService == nil || k.EnvoyService.Type != "ClusterIP" {
		t.Error("EnvoyProxy: the egress gateway's Service must be ClusterIP, not reachable from outside")
	}

	// allow_all_routing, which the policy cannot express, by patch.
	pp := get[*envoyPatchPolicy](t, r, "EnvoyPatchPolicy", "")
	if pp.Spec.TargetRef.Kind != "Gateway" || pp.Spec.TargetRef.Name != gw.Name || pp.Spec.Type != "JSONPatch" || len(pp.Spec.JSONPatches) != 1 {
		t.Fatalf("EnvoyPatchPolicy %s: want one JSONPatch on Gateway %s", pp.Name, gw.Name)
	}
	patch := pp.Spec.JSONPatches[0]
	// The listener's name under Envoy Gateway's legacy xDS name scheme,
	// its default before v1.10; k8s/README.md says how to switch to the
	// XDSNameSchemeV2 name, tcp-<port>.
	if listener := gw.Namespace + "/" + gw.Name + "/" + l.Name; patch.Type != "type.googleapis.com/envoy.config.listener.v3.Listener" || patch.Name != listener {
		t.Errorf("patch targets %s %q, want the Listener %s", patch.Type, patch.Name, listener)
	}
	filterName := fmt.Sprintf("envoy.filters.http.ext_proc/envoyextensionpolicy/%s/%s/extproc/0", pol.Namespace, pol.Name)
	op := patch.Operation
	if op.Op != "add" || op.JSONPath == nil || !strings.Contains(*op.JSONPath, "'"+filterName+"'") || !strings.HasPrefix(*op.JSONPath, "..http_filters[") {
		t.Errorf("patch selects %s, want the http_filter named %s", deref(op.JSONPath), filterName)
	}
	if op.Path == nil || *op.Path != "typed_config/mutation_rules" {
		t.Errorf("patch path %s, want typed_config/mutation_rules", deref(op.Path))
	}
	if extprocv3.File_envoy_extensions_filters_http_ext_proc_v3_ext_proc_proto.Messages().ByName("ExternalProcessor").Fields().ByName("mutation_rules") == nil {
		t.Error("ExternalProcessor has no field mutation_rules")
	}
	var rules mutationrulesv3.HeaderMutationRules
	if err := protojson.Unmarshal(op.Value, &rules); err != nil {
		t.Fatalf("patch value is not a HeaderMutationRules: %v", err)
	}
	if !proto.Equal(&rules, ref.GetMutationRules()) {
		t.Errorf("patch sets mutation_rules %v, envoy/envoy.yaml has %v", &rules, ref.GetMutationRules())
	}

	// Only this Gateway's Envoy pods reach ext_proc.
	open := ingressPorts(t, r, g.dep.Spec.Template.Labels)
	want := fmt.Sprintf("[ns{kubernetes.io/metadata.name=envoy-gateway-system} pods{gateway.envoyproxy.io/owning-gateway-name=%s,gateway.envoyproxy.io/owning-gateway-namespace=%s}]", gw.Name, gw.Namespace)
	if got := fmt.Sprint(open[g.grpcPort]); got != want {
		t.Errorf("ext_proc port %d open to %s, want %s", g.grpcPort, got, want)
	}
	checkGatewayAdminPolicy(t, g, open)

}

// checkGatewayAdminPolicy: Prometheus reaches the admin port, and no port
// but admin and ext_proc is open.
func checkGatewayAdminPolicy(t *testing.T, g *gatewayServer, open map[int32][]string) {
	t.Helper()
	admin := port(t, g.cfg.Admin.Listen)
	if want := "[ns{} pods{app.kubernetes.io/name=prometheus}]"; fmt.Sprint(open[admin]) != want {
		t.Errorf("admin port %d open to %v, want %s", admin, open[admin], want)
	}
	for p := range open {
		if p != admin && p != g.grpcPort {
			t.Errorf("NetworkPolicy opens port %d, which ampproxy does not serve", p)
		}
	}
}

func TestIstio(t *testing.T) {
	g := loadGatewayServer(t, "gateway/istio")
	r := g.r
	ref := bootstrapExtProc(t)

	ef := get[*istioEnvoyFilter](t, r, "EnvoyFilter", "")
	if ef.Namespace != "istio-system" {
		t.Errorf("EnvoyFilter in %q: only Istio's root namespace reaches workloads in every namespace", ef.Namespace)
	}
	if ef.Spec.WorkloadSelector == nil || len(ef.Spec.WorkloadSelector.Labels) == 0 {
		t.Fatal("EnvoyFilter without a workloadSelector would put ampproxy in front of every sidecar of the mesh")
	}
	if len(ef.Spec.ConfigPatches) != 1 {
		t.Fatalf("EnvoyFilter: want one config patch, found %d", len(ef.Spec.ConfigPatches))
	}
	cp := ef.Spec.ConfigPatches[0]
	m := cp.Match
	if cp.ApplyTo != "HTTP_FILTER" || m.Context != "SIDECAR_OUTBOUND" || cp.Patch.Operation != "INSERT_BEFORE" ||
		m.Listener == nil || m.Listener.FilterChain == nil || m.Listener.FilterChain.Filter == nil ||
		m.Listener.FilterChain.Filter.Name != "envoy.filters.network.http_connection_manager" ||
		m.Listener.FilterChain.Filter.SubFilter == nil || m.Listener.FilterChain.Filter.SubFilter.Name != "envoy.filters.http.router" {
		t.Fatal("EnvoyFilter: want an HTTP_FILTER inserted before the router of the sidecar's outbound HTTP connection manager")
	}
	if m.Listener.PortNumber == nil {
		t.Fatal("EnvoyFilter: match one outbound port, or every outbound HTTP request of the workload goes to ampproxy")
	}
	egressPort := *m.Listener.PortNumber

	// The filter config, decoded as Envoy decodes it.
	var hf hcmv3.HttpFilter
	if err := protojson.Unmarshal(cp.Patch.Value, &hf); err != nil {
		t.Fatalf("EnvoyFilter patch value is not an HttpFilter: %v", err)
	}
	var ep extprocv3.ExternalProcessor
	if err := hf.GetTypedConfig().UnmarshalTo(&ep); err != nil || hf.GetName() != "envoy.filters.http.ext_proc" {
		t.Fatalf("EnvoyFilter inserts %s (%v), want envoy.filters.http.ext_proc", hf.GetName(), err)
	}
	if err := ep.ValidateAll(); err != nil {
		t.Fatalf("ext_proc config: %v", err)
	}
	wantCluster := fmt.Sprintf("outbound|%d||%s.%s.svc.cluster.local", g.grpcPort, g.svc.Name, g.svc.Namespace)
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != wantCluster {
		t.Errorf("ext_proc calls cluster %q, want Istio's cluster for the ampproxy Service %q", got, wantCluster)
	}
	// Apart from where ampproxy is, the same filter as envoy/envoy.yaml.
	a, b := proto.Clone(&ep).(*extprocv3.ExternalProcessor), proto.Clone(ref).(*extprocv3.ExternalProcessor)
	a.GrpcService, b.GrpcService = nil, nil
	if !proto.Equal(a, b) {
		t.Errorf("ext_proc settings differ from envoy/envoy.yaml:\n istio: %v\n envoy: %v", a, b)
	}

	// Callers' entry point and the provider hosts share the matched port.
	egress := get[*corev1.Service](t, r, "Service", "ampproxy-egress")
	if len(egress.Spec.Selector) != 0 {
		t.Error("Service ampproxy-egress must have no selector: requests never go to it")
	}
	if len(egress.Spec.Ports) != 1 || uint32(egress.Spec.Ports[0].Port) != egressPort ||
		egress.Spec.Ports[0].AppProtocol == nil || *egress.Spec.Ports[0].AppProtocol != "http" {
		t.Errorf("Service ampproxy-egress: want one HTTP port %d", egressPort)
	}
	entries := all[*istioServiceEntry](r, "ServiceEntry")
	if len(entries) == 0 {
		t.Fatal("no provider ServiceEntry")
	}
	rules := map[string]*istioDestinationRule{}
	for _, dr := range all[*istioDestinationRule](r, "DestinationRule") {
		rules[dr.Spec.Host] = dr
	}
	for _, se := range entries {
		if se.Spec.Location != "MESH_EXTERNAL" || se.Spec.Resolution != "DNS" {
			t.Errorf("ServiceEntry %s: want MESH_EXTERNAL with DNS resolution", se.Name)
		}
		if len(se.Spec.Ports) != 1 || se.Spec.Ports[0].Number != egressPort || se.Spec.Ports[0].Protocol != "HTTP" || se.Spec.Ports[0].TargetPort != 443 {
			t.Errorf("ServiceEntry %s: want HTTP port %d to the provider's 443", se.Name, egressPort)
		}
		for _, h := range se.Spec.Hosts {
			dr := rules[h]
			if dr == nil {
				t.Errorf("ServiceEntry %s: no DestinationRule originates TLS to %s", se.Name, h)
				continue
			}
			ok := false
			for _, pl := range dr.Spec.TrafficPolicy.PortLevelSettings {
				if pl.Port.Number == egressPort && pl.TLS.Mode == "SIMPLE" && pl.TLS.SNI == h {
					ok = true
				}
			}
			if !ok {
				t.Errorf("DestinationRule %s: want TLS SIMPLE with SNI %s on port %d", dr.Name, h, egressPort)
			}
		}
	}

	// Only the selected workloads' sidecars reach ext_proc.
	open := ingressPorts(t, r, g.dep.Spec.Template.Labels)
	var kv []string
	for k, v := range ef.Spec.WorkloadSelector.Labels {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	want := fmt.Sprintf("[ns{} pods{%s}]", strings.Join(kv, ","))
	if got := fmt.Sprint(open[g.grpcPort]); got != want {
		t.Errorf("ext_proc port %d open to %s, want %s", g.grpcPort, got, want)
	}
	checkGatewayAdminPolicy(t, g, open)

	// ampproxy is in the mesh and takes mTLS only, except on the admin port.
	ns := get[*corev1.Namespace](t, r, "Namespace", g.svc.Namespace)
	if ns.Labels["istio-injection"] != "enabled" {
		t.Errorf("Namespace %s: no sidecar injection (istio-injection=enabled)", ns.Name)
	}
	pa := get[*istioPeerAuthentication](t, r, "PeerAuthentication", "")
	if pa.Namespace != g.svc.Namespace || pa.Spec.Selector == nil || !subset(pa.Spec.Selector.MatchLabels, g.dep.Spec.Template.Labels) {
		t.Error("PeerAuthentication does not select the ampproxy pods")
	}
	if pa.Spec.MTLS == nil || pa.Spec.MTLS.Mode != "STRICT" {
		t.Error("PeerAuthentication: mtls.mode must be STRICT, ampproxy's answers carry credentials")
	}
	admin := strconv.Itoa(int(port(t, g.cfg.Admin.Listen)))
	for p, m := range pa.Spec.PortLevelMTLS {
		if p != admin {
			t.Errorf("PeerAuthentication relaxes port %s (%s); only the admin port %s may be", p, m.Mode, admin)
		}
	}

	// ampproxy's own outbound calls to token endpoints pass its sidecar
	// even in a REGISTRY_ONLY mesh; only its pods are exempted.
	sc := get[*istioSidecar](t, r, "Sidecar", "")
	if sc.Namespace != g.dep.Namespace || sc.Spec.WorkloadSelector == nil || len(sc.Spec.WorkloadSelector.Labels) == 0 ||
		!subset(sc.Spec.WorkloadSelector.Labels, g.dep.Spec.Template.Labels) {
		t.Errorf("Sidecar %s must select the ampproxy pods, and nothing wider", sc.Name)
	}
	if sc.Spec.OutboundTrafficPolicy == nil || sc.Spec.OutboundTrafficPolicy.Mode != "ALLOW_ANY" {
		t.Errorf("Sidecar %s: outboundTrafficPolicy.mode must be ALLOW_ANY, token hosts are not in the registry", sc.Name)
	}
}

// deref prints what a pointer points at, or "unset".
func deref[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

func refs(rs []objectRef) string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("{group %s kind %s name %s namespace %s port %s}", deref(r.Group), deref(r.Kind), r.Name, deref(r.Namespace), deref(r.Port)))
	}
	return "[" + strings.Join(out, " ") + "]"
}
