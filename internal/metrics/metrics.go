// Package metrics defines every Prometheus metric ampproxy exports, on a
// private registry served at GET /metrics on the admin listener.
//
// Every metric is named ampproxy_…, and every label has bounded
// cardinality: projects, integrations and providers come from the config,
// manifests and catalog (a request that fails authentication is counted
// with empty project and integration, never with what the caller sent);
// outcomes and results are fixed sets. Group refs, connection IDs,
// installation IDs and paths are never labels.
//
// The hot path resolves label values through a small cache keyed by
// struct, so counting a request does not allocate. A nil *Metrics is
// valid and records nothing, which keeps tests and tools simple.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds ampproxy's collectors and the registry they live in.
type Metrics struct {
	reg *prometheus.Registry

	requests          *prometheus.CounterVec
	phase             [2]prometheus.Observer
	providerResponses *prometheus.CounterVec
	refreshes         *prometheus.CounterVec
	refreshSeconds    *prometheus.HistogramVec
	lockoutsOpened    *prometheus.CounterVec
	lockoutsExtended  *prometheus.CounterVec
	persistFailures   prometheus.Counter
	shortCircuited    *prometheus.CounterVec

	mu        sync.RWMutex
	reqCache  map[requestKey]prometheus.Counter
	respCache map[respKey]prometheus.Counter
}

type requestKey struct{ project, integration, provider, outcome string }

type respKey struct {
	provider string
	status   int
}

// Phase names the ext_proc message a latency is observed for.
type Phase int

// The two phases ampproxy processes.
const (
	RequestHeaders Phase = iota
	ResponseHeaders
)

// New registers every collector, the Go runtime and process collectors
// and a build-info gauge on a fresh registry.
func New(version string) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg:       reg,
		reqCache:  map[requestKey]prometheus.Counter{},
		respCache: map[respKey]prometheus.Counter{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ampproxy_requests_total",
			Help: "Proxy requests by project, integration, provider and outcome (forwarded, short-circuited, or the problem type of an error).",
		}, []string{"project", "integration", "provider", "outcome"}),
		providerResponses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ampproxy_provider_responses_total",
			Help: "Provider response statuses seen in the response-headers phase.",
		}, []string{"provider", "code"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ampproxy_token_refreshes_total",
			Help: "Requests made to OAuth2 token endpoints, by provider and result: ok (a token was issued and stored), invalid_grant (the connection's credentials were rejected), error (anything else). A request refused while its connection backs off makes none; it counts in ampproxy_requests_total with outcome token-unavailable.",
		}, []string{"provider", "result"}),
		refreshSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ampproxy_token_refresh_duration_seconds",
			Help:    "Time taken by requests to OAuth2 token endpoints.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"provider"}),
		lockoutsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ampproxy_lockout_windows_opened_total",
			Help: "Lockout windows opened by a provider 429 on a connection that had none open.",
		}, []string{"provider"}),
		lockoutsExtended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ampproxy_lockout_windows_extended_total",
			Help: "Open lockout windows whose end a later provider 429 moved later.",
		}, []string{"provider"}),
		persistFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ampproxy_lockout_persist_failures_total",
			Help: "Failed writes of lockout windows to the store, retries included; the windows apply in memory and are retried.",
		}),
		shortCircuited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ampproxy_throttle_short_circuited_total",
			Help: "Throttle-mode requests answered 429 by ampproxy because their connection was locked out.",
		}, []string{"provider"}),
	}
	phase := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ampproxy_extproc_phase_duration_seconds",
		Help: "ampproxy's own processing time per ext_proc message.",
		// From 5 µs, since the request phase takes a few microseconds, to
		// about 0.3 s, past Envoy's default 200 ms message_timeout: a phase
		// slow enough to fail requests lands in a finite bucket.
		Buckets: prometheus.ExponentialBuckets(5e-6, 3, 11),
	}, []string{"phase"})
	m.phase[RequestHeaders] = phase.WithLabelValues("request_headers")
	m.phase[ResponseHeaders] = phase.WithLabelValues("response_headers")
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ampproxy_build_info",
		Help: "Build information; the value is always 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(m.requests, phase, m.providerResponses, m.refreshes, m.refreshSeconds,
		m.lockoutsOpened, m.lockoutsExtended, m.persistFailures, m.shortCircuited, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the collectors live; tests gather from it.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// GaugeFunc registers a gauge read at scrape time, such as the number of
// open lockout windows or the store's size.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// CounterFunc registers a counter read at scrape time from a total kept
// elsewhere, such as the bytes the log's destination refused. f must never
// go down.
func (m *Metrics) CounterFunc(name, help string, f func() float64) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// Request counts one finished proxy request.
func (m *Metrics) Request(project, integration, provider, outcome string) {
	if m == nil {
		return
	}
	k := requestKey{project, integration, provider, outcome}
	m.mu.RLock()
	c, ok := m.reqCache[k]
	m.mu.RUnlock()
	if !ok {
		c = m.requests.WithLabelValues(project, integration, provider, outcome)
		m.mu.Lock()
		m.reqCache[k] = c
		m.mu.Unlock()
	}
	c.Inc()
}

// Phase observes ampproxy's own time for one ext_proc message.
func (m *Metrics) Phase(p Phase, d time.Duration) {
	if m == nil {
		return
	}
	m.phase[p].Observe(d.Seconds())
}

// ProviderResponse counts a provider status.
func (m *Metrics) ProviderResponse(provider string, status int) {
	if m == nil {
		return
	}
	k := respKey{provider, status}
	m.mu.RLock()
	c, ok := m.respCache[k]
	m.mu.RUnlock()
	if !ok {
		c = m.providerResponses.WithLabelValues(provider, strconv.Itoa(status))
		m.mu.Lock()
		m.respCache[k] = c
		m.mu.Unlock()
	}
	c.Inc()
}

// Refresh records one request made to an OAuth2 token endpoint and how
// long it took (tokens.RefresherOptions.OnRefresh).
func (m *Metrics) Refresh(provider, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.refreshes.WithLabelValues(provider, result).Inc()
	m.refreshSeconds.WithLabelValues(provider).Observe(d.Seconds())
}

// LockoutOpened counts a window opened on a connection that had none open.
func (m *Metrics) LockoutOpened(provider string) {
	if m == nil {
		return
	}
	m.lockoutsOpened.WithLabelValues(provider).Inc()
}

// LockoutExtended counts an open window whose end a 429 moved later.
func (m *Metrics) LockoutExtended(provider string) {
	if m == nil {
		return
	}
	m.lockoutsExtended.WithLabelValues(provider).Inc()
}

// LockoutPersistFailed counts a failed write of lockout windows.
func (m *Metrics) LockoutPersistFailed() {
	if m == nil {
		return
	}
	m.persistFailures.Inc()
}

// ShortCircuited counts a throttle-mode request answered by ampproxy.
func (m *Metrics) ShortCircuited(provider string) {
	if m == nil {
		return
	}
	m.shortCircuited.WithLabelValues(provider).Inc()
}
