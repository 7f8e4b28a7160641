package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Installation selects the installation a request is for: by ID, or by
// integration name and group ref (DESIGN §2).
type Installation struct {
	ID          string
	Integration string
	GroupRef    string
}

// Options configure a run. Target, ProjectID, APIKey and Installations
// are required (the no-op server ignores the last three, but the requests
// are the same for both servers); so is one of Duration and Requests.
type Options struct {
	// Target is host:port or unix:///path.sock.
	Target string
	// Conns is the number of client connections (HTTP/2 connections);
	// workers share them round-robin. Zero means 1, as Envoy uses one
	// connection to an ext_proc cluster per worker thread and the
	// streams of all its requests are multiplexed on it.
	Conns int
	// Workers is the number of requests in flight at once (closed loop),
	// or of pacing goroutines (open loop). Zero means 1.
	Workers int

	// Duration bounds the measured phase. With Requests also set, the run
	// ends at whichever comes first.
	Duration time.Duration
	// Requests is the number of streams to run in the measured phase;
	// zero means no limit.
	Requests uint64
	// Warmup runs the same load before the measured phase, unrecorded:
	// connections are up, buffers and caches warm, the server's heap has
	// grown to its working size.
	Warmup time.Duration

	// TargetRate, in requests per second over all workers, switches to an
	// open loop: each worker starts a stream every Workers/TargetRate
	// seconds, on a fixed schedule, whether or not the previous one has
	// finished late. Latency is measured from the scheduled start, so a
	// stall counts against every request it delays (no coordinated
	// omission). Zero means a closed loop: each worker starts the next
	// stream as soon as the last one ends, which finds the maximum rate.
	TargetRate float64

	// Share429 is the share (0 to 1) of requests whose response phase
	// carries :status 429 with a retry-after of RetryAfter seconds, spread
	// evenly; the rest get 200.
	Share429   float64
	RetryAfter int // default 30

	// The proxy request.
	ProjectID     string
	APIKey        string
	Installations []Installation // used in turn, each worker from its own place
	ThrottleMode  bool           // send x-amp-rate-limiter-mode: throttle
	Method        string         // default GET
	Path          string         // default /v1/items?limit=10
	Authority     string         // the caller's :authority; default localhost:10000

	// ExpectImmediate makes an ImmediateResponse to the request headers a
	// success (the stream then ends there, as Envoy ends it). Otherwise it
	// is an error, counted under "immediate <status>".
	ExpectImmediate bool

	// ServerStats, when set, is read before and after the measured phase
	// to report the server's cost per request.
	ServerStats ServerStats

	// DialOptions are added to the client connections' options.
	DialOptions []grpc.DialOption
	// ConnectTimeout bounds waiting for the connections to be ready;
	// default 10 s.
	ConnectTimeout time.Duration
}

func (o *Options) check() error {
	var errs []error
	if o.Target == "" {
		errs = append(errs, errors.New("target is required"))
	}
	if o.Duration <= 0 && o.Requests == 0 {
		errs = append(errs, errors.New("one of duration and requests is required"))
	}
	if o.Workers < 0 || o.Conns < 0 {
		errs = append(errs, errors.New("workers and conns must not be negative"))
	}
	if o.TargetRate < 0 {
		errs = append(errs, errors.New("target rate must not be negative"))
	}
	if o.Share429 < 0 || o.Share429 > 1 {
		errs = append(errs, fmt.Errorf("share of 429s %v is not between 0 and 1", o.Share429))
	}
	if o.ProjectID == "" || o.APIKey == "" {
		errs = append(errs, errors.New("project ID and API key are required"))
	}
	if len(o.Installations) == 0 {
		errs = append(errs, errors.New("at least one installation is required"))
	}
	byID := 0
	for i, in := range o.Installations {
		switch {
		case in.ID != "":
			byID++
		case in.Integration == "" || in.GroupRef == "":
			errs = append(errs, fmt.Errorf("installations[%d]: give an ID, or an integration and a group ref", i))
		}
	}
	if byID != 0 && byID != len(o.Installations) {
		errs = append(errs, errors.New("installations: select all by ID or all by integration and group ref"))
	}
	return errors.Join(errs...)
}

func (o *Options) defaults() {
	if o.Workers == 0 {
		o.Workers = 1
	}
	if o.Conns == 0 {
		o.Conns = 1
	}
	if o.RetryAfter == 0 {
		o.RetryAfter = 30
	}
	if o.Method == "" {
		o.Method = "GET"
	}
	if o.Path == "" {
		o.Path = "/v1/items?limit=10"
	}
	if o.Authority == "" {
		o.Authority = "localhost:10000"
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
}

// Run plays Envoy's side of ext_proc against o.Target and reports what it
// measured. It returns an error only when the run could not take place
// (bad options, no connection); failed requests are counted in the
// result. Cancelling ctx ends the run early: streams cut short by it are
// counted neither as requests nor as errors.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	o.defaults()

	conns := make([]*grpc.ClientConn, o.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := Dial(ctx, o.Target, o.ConnectTimeout, o.DialOptions...)
		if err != nil {
			return nil, err
		}
		conns[i] = c
	}

	names, vals := selectors(o.Installations)
	workers := make([]*worker, o.Workers)
	for i := range workers {
		workers[i] = &worker{
			o:      &o,
			client: extprocv3.NewExternalProcessorClient(conns[i%len(conns)]),
			msgs:   newMessages(&o, names, vals, i*len(vals)/len(workers)),
		}
	}

	if o.Warmup > 0 {
		runPhase(ctx, &o, workers, o.Warmup, 0)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for _, w := range workers {
			w.reset()
		}
	}

	var before ServerCounters
	var statsErr error
	if o.ServerStats != nil {
		before, statsErr = o.ServerStats()
	}
	elapsed := runPhase(ctx, &o, workers, o.Duration, o.Requests)
	var after ServerCounters
	if o.ServerStats != nil && statsErr == nil {
		after, statsErr = o.ServerStats()
	}

	r := &Result{
		Target:     o.Target,
		Conns:      o.Conns,
		Workers:    o.Workers,
		TargetRate: o.TargetRate,
		Elapsed:    elapsed,
	}
	var h Histogram
	for _, w := range workers {
		h.Merge(&w.hist)
		r.Responses429 += w.n429
		for k, n := range w.errs {
			if r.Errors == nil {
				r.Errors = map[string]uint64{}
			}
			r.Errors[k] += n
		}
	}
	r.Requests = h.Count()
	if elapsed > 0 {
		r.RPS = float64(r.Requests) / elapsed.Seconds()
	}
	r.Latency = summarize(&h)
	if o.ServerStats != nil {
		switch streams := r.Requests + r.TotalErrors(); {
		case statsErr != nil:
			r.ServerStatsError = statsErr.Error()
		case streams > 0:
			r.Server = perRequest(before, after, streams)
		}
	}
	return r, nil
}

// Dial opens one client connection to target (host:port or
// unix:///path.sock) with grpc-go's default options plus opts, and waits
// until it is ready or timeout passes.
func Dial(ctx context.Context, target string, timeout time.Duration, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	t := target
	if !strings.HasPrefix(t, "unix://") {
		// A fixed address, as Envoy's static cluster for ext_proc: no
		// name resolution on the way.
		t = "passthrough:///" + t
	}
	all := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	c, err := grpc.NewClient(t, all...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c.Connect()
	for {
		s := c.GetState()
		if s == connectivity.Ready {
			return c, nil
		}
		if !c.WaitForStateChange(ctx, s) {
			c.Close()
			return nil, fmt.Errorf("dial %s: not ready after %s (last state %s)", target, timeout, s)
		}
	}
}

// runPhase runs every worker until the phase ends and returns how long it
// took, from its start to the end of the last stream.
func runPhase(ctx context.Context, o *Options, workers []*worker, d time.Duration, limit uint64) time.Duration {
	start := time.Now()
	var end time.Time
	if d > 0 {
		end = start.Add(d)
	}
	var issued atomic.Uint64
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Go(func() {
			if o.TargetRate > 0 {
				w.paced(ctx, start, end, i, len(workers), limit, &issued)
			} else {
				w.closed(ctx, end, limit, &issued)
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// worker is one sequence of streams: at most one in flight at a time.
type worker struct {
	o      *Options
	client extprocv3.ExternalProcessorClient
	msgs   *messages

	hist   Histogram
	errs   map[string]uint64
	n429   uint64
	acc429 float64
}

func (w *worker) reset() {
	w.hist = Histogram{}
	w.errs = nil
	w.n429 = 0
}

// take reports whether another stream may start under the request limit.
func take(limit uint64, issued *atomic.Uint64) bool {
	return limit == 0 || issued.Add(1) <= limit
}

func (w *worker) closed(ctx context.Context, end time.Time, limit uint64, issued *atomic.Uint64) {
	for ctx.Err() == nil {
		t0 := time.Now()
		if !end.IsZero() && !t0.Before(end) {
			return
		}
		if !take(limit, issued) {
			return
		}
		w.record(ctx, t0)
	}
}

// paced starts streams on a fixed schedule: worker i of n starts at
// start + i·interval/n and then every interval, so that the workers
// together start one stream every 1/TargetRate seconds.
func (w *worker) paced(ctx context.Context, start, end time.Time, i, n int, limit uint64, issued *atomic.Uint64) {
	interval := time.Duration(float64(n) / w.o.TargetRate * float64(time.Second))
	next := start.Add(interval * time.Duration(i) / time.Duration(n))
	for ctx.Err() == nil {
		if !end.IsZero() && !next.Before(end) {
			return
		}
		if !take(limit, issued) {
			return
		}
		if wait := time.Until(next); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		w.record(ctx, next)
		next = next.Add(interval)
	}
}

// record runs one stream and files its outcome; latency counts from t0.
func (w *worker) record(ctx context.Context, t0 time.Time) {
	w.msgs.advance()
	kind := w.stream(ctx)
	switch {
	case ctx.Err() != nil:
		// Cut short by the caller: neither a request nor an error.
	case kind == "":
		w.hist.Record(time.Since(t0))
	default:
		if w.errs == nil {
			w.errs = map[string]uint64{}
		}
		w.errs[kind]++
	}
}

// stream is one HTTP request's ext_proc stream as Envoy runs it. It
// returns "" on success, or the kind of error.
func (w *worker) stream(parent context.Context) string {
	// Envoy resets a stream it gives up on; cancelling does the same and
	// frees the stream at once on every error path.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	st, err := w.client.Process(ctx)
	if err != nil {
		return "open: " + status.Code(err).String()
	}
	if kind := w.exchange(st, w.msgs.request, true); kind != "" {
		return kind
	}
	if w.o.ExpectImmediate {
		return w.finish(st)
	}
	resp := w.msgs.ok
	if w.o.Share429 > 0 {
		w.acc429 += w.o.Share429
		if w.acc429 >= 1 {
			w.acc429--
			resp = w.msgs.tooMany
			w.n429++
		}
	}
	if kind := w.exchange(st, resp, false); kind != "" {
		return kind
	}
	return w.finish(st)
}

// exchange sends one message and checks the answer's kind.
func (w *worker) exchange(st extprocv3.ExternalProcessor_ProcessClient, m *extprocv3.ProcessingRequest, first bool) string {
	phase := "response-phase"
	if first {
		phase = "request-phase"
	}
	if err := st.Send(m); err != nil {
		// io.EOF: the server ended the stream; Recv has its status.
		if !errors.Is(err, io.EOF) {
			return phase + " send: " + status.Code(err).String()
		}
	}
	r, err := st.Recv()
	if errors.Is(err, io.EOF) {
		return phase + ": stream closed by server"
	}
	if err != nil {
		return phase + ": " + status.Code(err).String()
	}
	switch x := r.Response.(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if first {
			if w.o.ExpectImmediate {
				return "request-phase: headers response where an immediate response was expected"
			}
			return ""
		}
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		if !first {
			return ""
		}
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		if first && w.o.ExpectImmediate {
			return ""
		}
		return fmt.Sprintf("immediate %d", x.ImmediateResponse.GetStatus().GetCode())
	}
	return fmt.Sprintf("%s: unexpected %T", phase, r.Response)
}

// finish half-closes the stream and waits for the server to end it.
func (w *worker) finish(st extprocv3.ExternalProcessor_ProcessClient) string {
	if err := st.CloseSend(); err != nil {
		return "close: " + status.Code(err).String()
	}
	r, err := st.Recv()
	switch {
	case errors.Is(err, io.EOF):
		return ""
	case err != nil:
		return "close: " + status.Code(err).String()
	default:
		return fmt.Sprintf("close: unexpected %T", r.Response)
	}
}

// Result is what a run measured. Durations are nanoseconds in JSON.
type Result struct {
	Target     string        `json:"target"`
	Conns      int           `json:"conns"`
	Workers    int           `json:"workers"`
	TargetRate float64       `json:"targetRate,omitempty"` // 0: closed loop
	Elapsed    time.Duration `json:"elapsedNs"`

	// Requests is the number of streams that completed without error;
	// RPS is Requests per second of Elapsed.
	Requests uint64  `json:"requests"`
	RPS      float64 `json:"rps"`
	// Errors counts failed streams by kind.
	Errors map[string]uint64 `json:"errors,omitempty"`
	// Responses429 is the number of response phases sent with :status 429.
	Responses429 uint64 `json:"responses429,omitempty"`

	// Latency is per stream, open to close, for successful streams.
	Latency Latency `json:"latency"`

	// Server is set when Options.ServerStats was; ServerStatsError when
	// reading them failed.
	Server           *ServerCost `json:"server,omitempty"`
	ServerStatsError string      `json:"serverStatsError,omitempty"`
}

// Latency summarises a Histogram.
type Latency struct {
	Min  time.Duration `json:"minNs"`
	Mean time.Duration `json:"meanNs"`
	P50  time.Duration `json:"p50Ns"`
	P90  time.Duration `json:"p90Ns"`
	P99  time.Duration `json:"p99Ns"`
	P999 time.Duration `json:"p999Ns"`
	Max  time.Duration `json:"maxNs"`
}

func summarize(h *Histogram) Latency {
	return Latency{
		Min:  h.Min(),
		Mean: h.Mean(),
		P50:  h.Quantile(0.50),
		P90:  h.Quantile(0.90),
		P99:  h.Quantile(0.99),
		P999: h.Quantile(0.999),
		Max:  h.Max(),
	}
}

// TotalErrors is the sum of Errors.
func (r *Result) TotalErrors() uint64 {
	var n uint64
	for _, c := range r.Errors {
		n += c
	}
	return n
}
