package envoy

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// Every typed_config in envoy.yaml names one of these messages; the
	// blank imports register them so that protojson can resolve "@type".
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// BootstrapYAML is the sidecar's Envoy bootstrap (envoy.yaml).
//
//go:embed envoy.yaml
var BootstrapYAML []byte

// Names in envoy.yaml that code and tests refer to.
const (
	ExtProcCluster      = "ampproxy_extproc"
	ForwardProxyCluster = "dynamic_forward_proxy_cluster"
	ListenerName        = "ampproxy_ingress"
)

// ValidateBootstrapYAML decodes an Envoy bootstrap written in YAML (or JSON,
// which is YAML too) and checks it the way Envoy's own loader would, as far
// as the protobuf definitions allow: unknown fields are errors, every
// "@type" must name a registered message, and the protoc-gen-validate rules
// of the bootstrap and of every embedded typed_config must hold. It cannot
// check what only Envoy knows (extension names, cross-references between
// clusters and filters, file paths); `envoy --mode validate` does that.
func ValidateBootstrapYAML(data []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yamlToJSON(data)
	if err != nil {
		return nil, err
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	if err := validateTree(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, err
	}
	return &b, nil
}

// validator is what protoc-gen-validate generates for every Envoy message.
type validator interface{ ValidateAll() error }

// validateTree runs ValidateAll on m and then on the message inside every
// google.protobuf.Any below it: the generated ValidateAll stops at an Any,
// and Envoy's extension configs (HCM, ext_proc, clusters) all live in one.
func validateTree(m protoreflect.Message, path string) error {
	if v, ok := m.Interface().(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("envoy bootstrap: %s: %w", path, err)
		}
	}
	return walkAnys(m, path, func(a *anypb.Any, at string) error {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("envoy bootstrap: %s: %w", at, err)
		}
		return validateTree(inner.ProtoReflect(), at+"("+a.GetTypeUrl()+")")
	})
}

// walkAnys calls fn for each Any reachable from m without crossing another Any.
func walkAnys(m protoreflect.Message, path string, fn func(*anypb.Any, string) error) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		at := path + "." + string(fd.Name())
		visit := func(msg protoreflect.Message, at string) error {
			if a, ok := msg.Interface().(*anypb.Any); ok {
				return fn(a, at)
			}
			return walkAnys(msg, at, fn)
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = visit(l.Get(i).Message(), at+"["+strconv.Itoa(i)+"]")
			}
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = visit(mv.Message(), at+"["+k.String()+"]")
				return err == nil
			})
		default:
			err = visit(v.Message(), at)
		}
		return err == nil
	})
	return err
}

// yamlToJSON converts a YAML document to JSON so that protojson, which knows
// Envoy's field names and "@type", can decode it.
func yamlToJSON(data []byte) ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	if doc == nil {
		return nil, errors.New("envoy bootstrap: document is empty")
	}
	v, err := jsonable(doc, "")
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	return json.Marshal(v)
}

func jsonable(v any, path string) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			c, err := jsonable(e, path+"."+k)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		return nil, fmt.Errorf("%s: mapping keys must be strings", path)
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			c, err := jsonable(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case time.Time:
		// An unquoted date; Envoy's loader would see the text.
		return t.Format(time.RFC3339Nano), nil
	default:
		return v, nil
	}
}

// TestBootstrapOptions say how TestBootstrap adapts the sidecar bootstrap
// for a test that runs a real Envoy on one machine. Zero values keep the
// embedded setting.
type TestBootstrapOptions struct {
	// ListenAddress is the listener's IP; tests use 127.0.0.1.
	ListenAddress string
	// ListenPort and AdminPort replace 10000 and 9901.
	ListenPort uint32
	AdminPort  uint32
	// ExtProcAddress is where ampproxy's gRPC server listens: "host:port"
	// (host an IP literal, as a STATIC cluster needs) or "unix:///path".
	ExtProcAddress string
	// UpstreamCAFile replaces the system bundle that provider certificates
	// are checked against, e.g. the CA of a test server.
	UpstreamCAFile string
}

// TestBootstrap returns the embedded bootstrap with the addresses in opts
// substituted, as JSON (Envoy reads a bootstrap with a .json name as JSON).
// It edits the decoded file rather than keeping a second copy, so every
// other setting is the one that ships.
func TestBootstrap(opts TestBootstrapOptions) ([]byte, error) {
	b, err := ValidateBootstrapYAML(BootstrapYAML)
	if err != nil {
		return nil, err
	}
	if opts.AdminPort != 0 {
		b.GetAdmin().GetAddress().GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: opts.AdminPort}
	}
	l := findListener(b, ListenerName)
	if l == nil {
		return nil, fmt.Errorf("envoy bootstrap: no listener %q", ListenerName)
	}
	sa := l.GetAddress().GetSocketAddress()
	if opts.ListenAddress != "" {
		sa.Address = opts.ListenAddress
	}
	if opts.ListenPort != 0 {
		sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: opts.ListenPort}
	}
	if opts.ExtProcAddress != "" {
		addr, err := extProcAddress(opts.ExtProcAddress)
		if err != nil {
			return nil, err
		}
		c := findCluster(b, ExtProcCluster)
		if c == nil {
			return nil, fmt.Errorf("envoy bootstrap: no cluster %q", ExtProcCluster)
		}
		c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().Address = addr
	}
	if opts.UpstreamCAFile != "" {
		if err := setUpstreamCA(b, opts.UpstreamCAFile); err != nil {
			return nil, err
		}
	}
	if err := validateTree(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(b)
}

func extProcAddress(s string) (*corev3.Address, error) {
	if path, ok := strings.CutPrefix(s, "unix://"); ok {
		if path == "" {
			return nil, fmt.Errorf("ExtProcAddress %q: empty socket path", s)
		}
		return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path}}}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("ExtProcAddress %q: %w", s, err)
	}
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("ExtProcAddress %q: host must be an IP address (the cluster is STATIC)", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, fmt.Errorf("ExtProcAddress %q: bad port", s)
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}, nil
}

func setUpstreamCA(b *bootstrapv3.Bootstrap, file string) error {
	c := findCluster(b, ForwardProxyCluster)
	if c == nil {
		return fmt.Errorf("envoy bootstrap: no cluster %q", ForwardProxyCluster)
	}
	var tc tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tc); err != nil {
		return fmt.Errorf("envoy bootstrap: %s transport socket: %w", ForwardProxyCluster, err)
	}
	vc := tc.GetCommonTlsContext().GetValidationContext()
	if vc == nil {
		return fmt.Errorf("envoy bootstrap: %s has no validation_context", ForwardProxyCluster)
	}
	vc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: file}}
	a, err := anypb.New(&tc)
	if err != nil {
		return err
	}
	c.GetTransportSocket().ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
	return nil
}

func findCluster(b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func findListener(b *bootstrapv3.Bootstrap, name string) *listenerv3.Listener {
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == name {
			return l
		}
	}
	return nil
}
