package k8s

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Local mirrors of the Envoy Gateway, Gateway API and Istio custom
// resources the manifests use. They hold only the fields the manifests
// set, spelled as those projects' API types spell them
// (envoyproxy/gateway api/v1alpha1: ext_proc_types.go,
// envoyextensionypolicy_types.go, envoypatchpolicy_types.go,
// backend_types.go, envoyproxy_types.go; Gateway API v1; Istio's
// networking v1alpha3 EnvoyFilter and v1 ServiceEntry, DestinationRule and
// Sidecar),
// so that strict decoding turns a misspelt or invented field into a test
// failure. Optional scalars are pointers so that an explicit false or 0
// survives the round trip that decodeStrict checks.

type crdMeta struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
}

// Gateway API.

type gatewayAPIGateway struct {
	crdMeta
	Spec struct {
		GatewayClassName string `json:"gatewayClassName"`
		Infrastructure   *struct {
			ParametersRef *struct {
				Group string `json:"group"`
				Kind  string `json:"kind"`
				Name  string `json:"name"`
			} `json:"parametersRef,omitempty"`
		} `json:"infrastructure,omitempty"`
		Listeners []struct {
			Name          string `json:"name"`
			Protocol      string `json:"protocol"`
			Port          int32  `json:"port"`
			AllowedRoutes *struct {
				Namespaces *struct {
					From string `json:"from"`
				} `json:"namespaces,omitempty"`
			} `json:"allowedRoutes,omitempty"`
		} `json:"listeners"`
	} `json:"spec"`
}

type httpRoute struct {
	crdMeta
	Spec struct {
		ParentRefs []struct {
			Name        string `json:"name"`
			SectionName string `json:"sectionName,omitempty"`
		} `json:"parentRefs"`
		Hostnames []string `json:"hostnames,omitempty"`
		Rules     []struct {
			BackendRefs []objectRef `json:"backendRefs"`
		} `json:"rules"`
	} `json:"spec"`
}

// objectRef is Gateway API's BackendObjectReference and Envoy Gateway's
// BackendRef, as far as used.
type objectRef struct {
	Group     *string `json:"group,omitempty"`
	Kind      *string `json:"kind,omitempty"`
	Name      string  `json:"name"`
	Namespace *string `json:"namespace,omitempty"`
	Port      *int32  `json:"port,omitempty"`
}

// Envoy Gateway.

type envoyProxy struct {
	crdMeta
	Spec struct {
		Provider struct {
			Type       string `json:"type"`
			Kubernetes *struct {
				EnvoyService *struct {
					Type string `json:"type"`
				} `json:"envoyService,omitempty"`
			} `json:"kubernetes,omitempty"`
		} `json:"provider"`
	} `json:"spec"`
}

type egBackend struct {
	crdMeta
	Spec struct {
		Type *string `json:"type,omitempty"`
		TLS  *struct {
			WellKnownCACertificates *string `json:"wellKnownCACertificates,omitempty"`
			InsecureSkipVerify      *bool   `json:"insecureSkipVerify,omitempty"`
		} `json:"tls,omitempty"`
	} `json:"spec"`
}

type policyTargetRef struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
	Name  string `json:"name"`
}

type envoyExtensionPolicy struct {
	crdMeta
	Spec struct {
		TargetRefs []policyTargetRef `json:"targetRefs"`
		ExtProc    []egExtProc       `json:"extProc"`
	} `json:"spec"`
}

type egExtProc struct {
	BackendRefs    []objectRef `json:"backendRefs"`
	MessageTimeout *string     `json:"messageTimeout,omitempty"`
	FailOpen       *bool       `json:"failOpen,omitempty"`
	ProcessingMode *struct {
		Request           *egProcessingModeOptions `json:"request,omitempty"`
		Response          *egProcessingModeOptions `json:"response,omitempty"`
		AllowModeOverride *bool                    `json:"allowModeOverride,omitempty"`
	} `json:"processingMode,omitempty"`
}

type egProcessingModeOptions struct {
	Body       *string  `json:"body,omitempty"`
	Attributes []string `json:"attributes,omitempty"`
}

type envoyPatchPolicy struct {
	crdMeta
	Spec struct {
		TargetRef   policyTargetRef `json:"targetRef"`
		Type        string          `json:"type"`
		JSONPatches []struct {
			Type      string `json:"type"`
			Name      string `json:"name"`
			Operation struct {
				Op       string          `json:"op"`
				JSONPath *string         `json:"jsonPath,omitempty"`
				Path     *string         `json:"path,omitempty"`
				Value    json.RawMessage `json:"value,omitempty"`
			} `json:"operation"`
		} `json:"jsonPatches"`
	} `json:"spec"`
}

// Istio.

type istioEnvoyFilter struct {
	crdMeta
	Spec struct {
		WorkloadSelector *struct {
			Labels map[string]string `json:"labels"`
		} `json:"workloadSelector,omitempty"`
		ConfigPatches []struct {
			ApplyTo string `json:"applyTo"`
			Match   struct {
				Context  string `json:"context"`
				Listener *struct {
					PortNumber  *uint32 `json:"portNumber,omitempty"`
					FilterChain *struct {
						Filter *struct {
							Name      string `json:"name"`
							SubFilter *struct {
								Name string `json:"name"`
							} `json:"subFilter,omitempty"`
						} `json:"filter,omitempty"`
					} `json:"filterChain,omitempty"`
				} `json:"listener,omitempty"`
			} `json:"match"`
			Patch struct {
				Operation string          `json:"operation"`
				Value     json.RawMessage `json:"value"`
			} `json:"patch"`
		} `json:"configPatches"`
	} `json:"spec"`
}

type istioServiceEntry struct {
	crdMeta
	Spec struct {
		Hosts      []string `json:"hosts"`
		Location   string   `json:"location"`
		Resolution string   `json:"resolution"`
		Ports      []struct {
			Number     uint32 `json:"number"`
			Name       string `json:"name"`
			Protocol   string `json:"protocol"`
			TargetPort uint32 `json:"targetPort,omitempty"`
		} `json:"ports"`
	} `json:"spec"`
}

type istioDestinationRule struct {
	crdMeta
	Spec struct {
		Host          string `json:"host"`
		TrafficPolicy struct {
			PortLevelSettings []struct {
				Port struct {
					Number uint32 `json:"number"`
				} `json:"port"`
				TLS struct {
					Mode string `json:"mode"`
					SNI  string `json:"sni,omitempty"`
				} `json:"tls"`
			} `json:"portLevelSettings"`
		} `json:"trafficPolicy"`
	} `json:"spec"`
}

type istioPeerAuthentication struct {
	crdMeta
	Spec struct {
		Selector *struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector,omitempty"`
		MTLS *struct {
			Mode string `json:"mode"`
		} `json:"mtls,omitempty"`
		// Keyed by port number.
		PortLevelMTLS map[string]struct {
			Mode string `json:"mode"`
		} `json:"portLevelMtls,omitempty"`
	} `json:"spec"`
}

type istioSidecar struct {
	crdMeta
	Spec struct {
		WorkloadSelector *struct {
			Labels map[string]string `json:"labels"`
		} `json:"workloadSelector,omitempty"`
		OutboundTrafficPolicy *struct {
			Mode string `json:"mode"`
		} `json:"outboundTrafficPolicy,omitempty"`
	} `json:"spec"`
}
