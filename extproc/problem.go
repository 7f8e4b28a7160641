package extproc

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/ampproxy/ampproxy/internal/problem"
)

// Problem is an error ampproxy answers itself instead of forwarding.
type Problem = problem.Problem

// ProblemTypePrefix starts every problem type URI.
const ProblemTypePrefix = problem.TypePrefix

// The problems of DESIGN §2's table.
func badRequest(slug, detail string) *Problem { return problem.New(400, slug, detail) }

func unauthorized() *Problem {
	return problem.New(401, "unauthenticated", "unknown project or invalid API key")
}

func forbidden(slug, detail string) *Problem { return problem.New(403, slug, detail) }

func notFound(slug, detail string) *Problem { return problem.New(404, slug, detail) }

func failedDependency(slug, detail string) *Problem { return problem.New(424, slug, detail) }

// immediate turns a problem into the ext_proc answer that makes Envoy reply
// to the caller directly, so the request never reaches the provider.
func immediate(p *Problem) *extprocv3.ProcessingResponse {
	set := make([]*corev3.HeaderValueOption, 0, 1+len(p.Headers))
	set = append(set, header("content-type", problem.ContentType))
	for _, h := range p.Headers {
		set = append(set, header(h[0], h[1]))
	}
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ImmediateResponse{
			ImmediateResponse: &extprocv3.ImmediateResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(p.Status)},
				Headers: &extprocv3.HeaderMutation{SetHeaders: set},
				Body:    p.JSON(),
				// Details lands in Envoy's access log (%RESPONSE_CODE_DETAILS%).
				Details: "ampproxy_" + p.Slug(),
			},
		},
	}
}

// header builds a mutation entry the way Envoy reads it: the value in
// raw_value only (a value set through `value` arrives empty), append unset
// so that it overwrites (DESIGN §6).
func header(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, RawValue: []byte(value)}}
}
