// Package k8s holds no code: it is the home of the Kubernetes manifests
// under this directory and of the tests that render and check them.
//
// The manifests are kustomize bases:
//
//   - sidecar: an application Deployment with Envoy and ampproxy as native
//     sidecars, ext_proc over a unix socket in a shared emptyDir.
//   - gateway/envoy-gateway and gateway/istio: ampproxy as its own
//     Deployment and Service, attached to Envoy Gateway or to an Istio mesh.
//
// The tests render every kustomization in-process with kustomize's krusty,
// decode each object strictly into its Kubernetes API type (or, for the
// Envoy Gateway and Istio custom resources, into small local types that
// mirror the fields used), and check that ports, socket paths and file
// paths agree across the config, the Envoy bootstrap and the manifests.
// They read only files in the repository and need no cluster.
//
// # Caveats
//
// kustomize refuses files outside a kustomization's directory, so
// sidecar/envoy.yaml is a copy of envoy/envoy.yaml. The tests fail when the
// two differ; `make generate` (go generate) refreshes the copy.
//
// The Envoy Gateway and Istio objects are checked against local types, not
// against those projects' CRD schemas: a field those projects rename is
// caught only where the tests pin it.
package k8s

//go:generate cp ../envoy/envoy.yaml sidecar/envoy.yaml
