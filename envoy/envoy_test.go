package envoy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	dfpclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	dfpfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

func mustBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	b, err := ValidateBootstrapYAML(BootstrapYAML)
	if err != nil {
		t.Fatalf("embedded envoy.yaml: %v", err)
	}
	return b
}

func unpack[T proto.Message](t *testing.T, a *anypb.Any, m T) T {
	t.Helper()
	if a == nil {
		t.Fatalf("missing typed_config for %T", m)
	}
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatalf("typed_config %s: %v", a.GetTypeUrl(), err)
	}
	return m
}

func hcm(t *testing.T, b *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	t.Helper()
	l := findListener(b, ListenerName)
	if l == nil {
		t.Fatalf("no listener %q", ListenerName)
	}
	if n := len(l.GetFilterChains()); n != 1 {
		t.Fatalf("listener has %d filter chains, want 1", n)
	}
	fs := l.GetFilterChains()[0].GetFilters()
	if len(fs) != 1 || fs[0].GetName() != "envoy.filters.network.http_connection_manager" {
		t.Fatalf("listener filters = %v, want only the HTTP connection manager", fs)
	}
	return unpack(t, fs[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
}

func httpFilter(t *testing.T, b *bootstrapv3.Bootstrap, name string) *anypb.Any {
	t.Helper()
	for _, f := range hcm(t, b).GetHttpFilters() {
		if f.GetName() == name {
			return f.GetTypedConfig()
		}
	}
	t.Fatalf("no HTTP filter %q", name)
	return nil
}

func cluster(t *testing.T, b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	c := findCluster(b, name)
	if c == nil {
		t.Fatalf("no cluster %q", name)
	}
	return c
}

func protocolOptions(t *testing.T, c *clusterv3.Cluster) *upstreamhttpv3.HttpProtocolOptions {
	t.Helper()
	return unpack(t, c.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey], &upstreamhttpv3.HttpProtocolOptions{})
}

func TestEmbeddedBootstrapValidates(t *testing.T) {
	b := mustBootstrap(t)
	if got := b.GetAdmin().GetAddress().GetSocketAddress(); got.GetAddress() != "127.0.0.1" || got.GetPortValue() != 9901 {
		t.Errorf("admin address = %v, want 127.0.0.1:9901", got)
	}
	l := findListener(b, ListenerName)
	if got := l.GetAddress().GetSocketAddress(); got.GetAddress() != "0.0.0.0" || got.GetPortValue() != 10000 {
		t.Errorf("listener address = %v, want 0.0.0.0:10000", got)
	}
	if l.GetFilterChains()[0].GetTransportSocket() != nil {
		t.Error("listener has a transport socket; the app calls Envoy over plain HTTP")
	}
}

func TestConnectionManager(t *testing.T) {
	h := hcm(t, mustBootstrap(t))
	if h.GetStatPrefix() == "" {
		t.Error("stat_prefix is empty")
	}
	if h.GetCodecType() != hcmv3.HttpConnectionManager_AUTO {
		t.Errorf("codec_type = %v, want AUTO", h.GetCodecType())
	}
	if !h.GetGenerateRequestId().GetValue() {
		t.Error("generate_request_id is not true; ampproxy quotes x-request-id")
	}
	if h.GetServerHeaderTransformation() != hcmv3.HttpConnectionManager_PASS_THROUGH {
		t.Errorf("server_header_transformation = %v, want PASS_THROUGH (provider headers pass unchanged)", h.GetServerHeaderTransformation())
	}
	vhs := h.GetRouteConfig().GetVirtualHosts()
	if len(vhs) != 1 || len(vhs[0].GetRoutes()) != 1 {
		t.Fatalf("want one virtual host with one route, got %v", vhs)
	}
	r := vhs[0].GetRoutes()[0]
	if r.GetMatch().GetPrefix() != "/" {
		t.Errorf("route match = %v, want prefix /", r.GetMatch())
	}
	if r.GetRoute().GetCluster() != ForwardProxyCluster {
		t.Errorf("route cluster = %q, want %q", r.GetRoute().GetCluster(), ForwardProxyCluster)
	}
	if r.GetRoute().GetTimeout() == nil {
		t.Error("route has no timeout")
	}
}

func TestFilterOrder(t *testing.T) {
	var got []string
	for _, f := range hcm(t, mustBootstrap(t)).GetHttpFilters() {
		got = append(got, f.GetName())
	}
	want := []string{"envoy.filters.http.ext_proc", "envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.router"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("http_filters = %v, want %v (ext_proc must set :authority before DFP reads it)", got, want)
	}
}

func TestExtProcFilter(t *testing.T) {
	b := mustBootstrap(t)
	ep := unpack(t, httpFilter(t, b, "envoy.filters.http.ext_proc"), &extprocfilterv3.ExternalProcessor{})
	if ep.GetFailureModeAllow() {
		t.Error("failure_mode_allow is true; ampproxy must fail closed")
	}
	if !ep.GetMutationRules().GetAllowAllRouting().GetValue() {
		t.Error("mutation_rules.allow_all_routing is not true; :authority changes would be dropped")
	}
	if ep.GetMutationRules().GetDisallowIsError() != nil || ep.GetMutationRules().GetAllowEnvoy() != nil {
		t.Error("mutation_rules sets more than allow_all_routing; envoytest models only that")
	}
	if ep.GetMessageTimeout() == nil {
		t.Error("message_timeout is not set explicitly")
	} else if got := ep.GetMessageTimeout().AsDuration(); got != 200*time.Millisecond {
		t.Errorf("message_timeout = %v, want 200ms", got)
	}
	if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != ExtProcCluster {
		t.Errorf("grpc_service cluster = %q, want %q", got, ExtProcCluster)
	}
	pm := ep.GetProcessingMode()
	want := &extprocfilterv3.ProcessingMode{
		RequestHeaderMode:   extprocfilterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocfilterv3.ProcessingMode_NONE,
		ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
		RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
	}
	if !proto.Equal(pm, want) {
		t.Errorf("processing_mode = %v, want %v", pm, want)
	}
	if ep.GetAllowModeOverride() || ep.GetObservabilityMode() {
		t.Error("ext_proc lets the server change the processing mode or runs in observability mode")
	}
	router := unpack(t, httpFilter(t, b, "envoy.filters.http.router"), &routerv3.Router{})
	if !router.GetSuppressEnvoyHeaders() {
		t.Error("router does not suppress x-envoy-* headers towards providers")
	}
}

func TestForwardProxyCluster(t *testing.T) {
	b := mustBootstrap(t)
	c := cluster(t, b, ForwardProxyCluster)
	if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("lb_policy = %v, want CLUSTER_PROVIDED", c.GetLbPolicy())
	}
	if got := c.GetClusterType().GetName(); got != "envoy.clusters.dynamic_forward_proxy" {
		t.Errorf("cluster_type = %q", got)
	}
	cc := unpack(t, c.GetClusterType().GetTypedConfig(), &dfpclusterv3.ClusterConfig{})
	fc := unpack(t, httpFilter(t, b, "envoy.filters.http.dynamic_forward_proxy"), &dfpfilterv3.FilterConfig{})
	if !proto.Equal(cc.GetDnsCacheConfig(), fc.GetDnsCacheConfig()) {
		t.Errorf("DNS cache config differs between cluster (%v) and filter (%v)", cc.GetDnsCacheConfig(), fc.GetDnsCacheConfig())
	}
	if got := fc.GetDnsCacheConfig().GetName(); got != "dynamic_forward_proxy_cache_config" {
		t.Errorf("dns cache name = %q", got)
	}
	if got := fc.GetDnsCacheConfig().GetDnsLookupFamily(); got != clusterv3.Cluster_V4_PREFERRED {
		t.Errorf("dns_lookup_family = %v, want V4_PREFERRED", got)
	}

	po := protocolOptions(t, c)
	up := po.GetUpstreamHttpProtocolOptions()
	if !up.GetAutoSni() || !up.GetAutoSanValidation() {
		t.Errorf("upstream_http_protocol_options = %v, want auto_sni and auto_san_validation true", up)
	}
	if po.GetExplicitHttpConfig().GetHttpProtocolOptions() == nil {
		t.Error("provider connections are not explicit HTTP/1.1")
	}

	ts := c.GetTransportSocket()
	if ts.GetName() != "envoy.transport_sockets.tls" {
		t.Errorf("transport socket = %q, want TLS", ts.GetName())
	}
	tc := unpack(t, ts.GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
	if got := tc.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); got != "/etc/ssl/certs/ca-certificates.crt" {
		t.Errorf("trusted_ca = %q", got)
	}
}

func TestExtProcCluster(t *testing.T) {
	c := cluster(t, mustBootstrap(t), ExtProcCluster)
	if c.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("type = %v, want STATIC", c.GetType())
	}
	if protocolOptions(t, c).GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Error("ext_proc cluster does not use HTTP/2; gRPC needs it")
	}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		t.Fatalf("want exactly one endpoint, got %v", eps)
	}
	if got := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath(); got != "/run/ampproxy/extproc.sock" {
		t.Errorf("ext_proc endpoint = %q, want the unix socket /run/ampproxy/extproc.sock", got)
	}
}

func TestValidateRejects(t *testing.T) {
	src := string(BootstrapYAML)
	edit := func(old, new string) string {
		t.Helper()
		if !strings.Contains(src, old) {
			t.Fatalf("envoy.yaml no longer contains %q; update the test", old)
		}
		return strings.Replace(src, old, new, 1)
	}
	cases := []struct {
		name, doc, want string
	}{
		{"unknown field", edit("failure_mode_allow: false", "failure_mode_alow: false"), "failure_mode_alow"},
		{"unknown typed_config type",
			edit("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "type.googleapis.com/envoy.extensions.filters.http.nosuch.v3.Filter"),
			"nosuch"},
		{"wrong type for field", edit("auto_sni: true", "auto_sni: sometimes"), "autoSni"},
		{"validation rule in the bootstrap", edit("port_value: 9901", "port_value: 99010"), "PortValue"},
		{"validation rule inside a typed_config", edit("cluster_name: ampproxy_extproc", `cluster_name: ""`), "ClusterName"},
		{"not YAML", "admin: [", "yaml"},
		{"empty", "", "empty"},
		{"duplicate key", "admin: {}\nadmin: {}\n", "already defined"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ValidateBootstrapYAML([]byte(tc.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestTestBootstrap(t *testing.T) {
	js, err := TestBootstrap(TestBootstrapOptions{
		ListenAddress:  "127.0.0.1",
		ListenPort:     18000,
		AdminPort:      18001,
		ExtProcAddress: "127.0.0.1:18002",
		UpstreamCAFile: "/tmp/test-ca.pem",
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ValidateBootstrapYAML(js)
	if err != nil {
		t.Fatalf("TestBootstrap output does not validate: %v", err)
	}
	if a := got.GetAdmin().GetAddress().GetSocketAddress(); a.GetPortValue() != 18001 || a.GetAddress() != "127.0.0.1" {
		t.Errorf("admin = %v", a)
	}
	if a := findListener(got, ListenerName).GetAddress().GetSocketAddress(); a.GetPortValue() != 18000 || a.GetAddress() != "127.0.0.1" {
		t.Errorf("listener = %v", a)
	}
	ep := cluster(t, got, ExtProcCluster).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if ep.GetAddress() != "127.0.0.1" || ep.GetPortValue() != 18002 {
		t.Errorf("ext_proc endpoint = %v", ep)
	}
	tc := unpack(t, cluster(t, got, ForwardProxyCluster).GetTransportSocket().GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
	if f := tc.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); f != "/tmp/test-ca.pem" {
		t.Errorf("trusted_ca = %q", f)
	}

	// Everything else is the shipped file: put the four settings back and
	// compare with the embedded bootstrap.
	want := mustBootstrap(t)
	got.Admin = want.GetAdmin()
	findListener(got, ListenerName).Address = findListener(want, ListenerName).GetAddress()
	cluster(t, got, ExtProcCluster).LoadAssignment = cluster(t, want, ExtProcCluster).GetLoadAssignment()
	cluster(t, got, ForwardProxyCluster).TransportSocket = cluster(t, want, ForwardProxyCluster).GetTransportSocket()
	if !proto.Equal(got, want) {
		t.Error("TestBootstrap changed more than the addresses and the CA file")
	}

	unix, err := TestBootstrap(TestBootstrapOptions{ExtProcAddress: "unix:///tmp/x.sock"})
	if err != nil {
		t.Fatal(err)
	}
	ub, err := ValidateBootstrapYAML(unix)
	if err != nil {
		t.Fatal(err)
	}
	if p := cluster(t, ub, ExtProcCluster).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath(); p != "/tmp/x.sock" {
		t.Errorf("unix ext_proc path = %q", p)
	}

	for _, bad := range []string{"localhost:50051", "127.0.0.1", "127.0.0.1:0", "unix://"} {
		if _, err := TestBootstrap(TestBootstrapOptions{ExtProcAddress: bad}); err == nil {
			t.Errorf("ExtProcAddress %q accepted", bad)
		}
	}
}

// TestEnvoyValidate asks a real Envoy to load the files, which also checks
// extension names and references between filters and clusters.
func TestEnvoyValidate(t *testing.T) {
	bin, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("no envoy binary on PATH; install Envoy 1.32 or newer to run `envoy --mode validate` on envoy.yaml")
	}
	dir := t.TempDir()
	shipped := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(shipped, BootstrapYAML, 0o600); err != nil {
		t.Fatal(err)
	}
	// The test variant points at a CA file that exists on any machine.
	ca := filepath.Join(dir, "ca.pem")
	writeTestCA(t, ca)
	js, err := TestBootstrap(TestBootstrapOptions{ListenAddress: "127.0.0.1", ExtProcAddress: "127.0.0.1:50051", UpstreamCAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	variant := filepath.Join(dir, "envoy-test.json")
	if err := os.WriteFile(variant, js, 0o600); err != nil {
		t.Fatal(err)
	}
	files := []string{variant}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		files = append(files, shipped)
	} else {
		t.Log("skipping the shipped file: /etc/ssl/certs/ca-certificates.crt is missing on this machine")
	}
	for _, f := range files {
		out, err := exec.Command(bin, "--mode", "validate", "-c", f, "--log-level", "warn").CombinedOutput()
		if err != nil {
			t.Errorf("envoy --mode validate -c %s: %v\n%s", filepath.Base(f), err, out)
		}
	}
}

// writeTestCA writes a freshly made self-signed CA certificate to path:
// Envoy only needs a file that parses as a trust bundle.
func writeTestCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "envoy package test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
