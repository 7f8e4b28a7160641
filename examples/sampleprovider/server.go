package sampleprovider

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Client authentication styles at the token endpoint, named as in the catalog.
const (
	AuthStyleInHeader = "inHeader" // HTTP Basic with the url-encoded client ID and secret
	AuthStyleInParams = "inParams" // client_id and client_secret form fields
)

// Options configures a [Server]. The zero value serves only /healthz and
// rejects every API call; set the credentials the test needs.
type Options struct {
	// Hosts are the names the leaf certificate covers, such as
	// "api.sample.test" or "*.sample.test"; an entry that parses as an IP
	// address becomes an IP SAN. 127.0.0.1 is always covered.
	Hosts []string

	// APIKey is the accepted API key, sent as the X-Api-Key header or the
	// api_key query parameter. Empty disables API-key authentication.
	APIKey string

	// BasicUser and BasicPassword are the accepted HTTP Basic credentials for
	// API calls. Both empty disables Basic authentication.
	BasicUser, BasicPassword string

	// ClientID and ClientSecret identify the one OAuth2 client. Empty
	// ClientID makes every token request fail with invalid_client.
	ClientID, ClientSecret string

	// ClientAuthStyle restricts how the client authenticates at the token
	// endpoint: AuthStyleInHeader or AuthStyleInParams. Empty accepts both.
	// Restricting it lets a test prove a caller uses the configured style
	// and does not probe one after the other (see [Server.TokenRequests]).
	ClientAuthStyle string

	// AccessTokenTTL is the lifetime of access tokens the token endpoint
	// issues. Zero means one hour.
	AccessTokenTTL time.Duration

	// Now is the clock for every expiry (codes, access tokens). Nil means
	// time.Now. Certificates use the real clock, as TLS peers do.
	Now func() time.Time

	// ExternalTokens, when set, also accepts bearer tokens it approves,
	// so that tokens issued by another authorization server (a test's
	// OAuth2 server) open the API too.
	ExternalTokens func(token string) bool

	// PlainHTTP also serves every endpoint over plain HTTP on another
	// loopback port ([Server.HTTPAddr]), for a process that cannot be handed
	// the certificate authority: ampproxy's catalog accepts an http token
	// URL on a loopback address, so a demo's ampproxy can refresh tokens
	// here without trusting the demo's CA.
	PlainHTTP bool

	// Logger receives one debug record per request (method, path, status,
	// auth mode; never a credential) and the HTTP server's errors. Nil
	// discards everything.
	Logger *slog.Logger
}

// Server is a running sample provider. Its methods are safe for concurrent
// use.
type Server struct {
	external               func(string) bool
	apiKey                 string
	basicUser, basicPass   string
	clientID, clientSecret string
	clientAuthStyle        string
	ttl                    time.Duration
	now                    func() time.Time
	log                    *slog.Logger
	addr                   string
	caPEM                  []byte
	caPool                 *x509.CertPool
	srv                    *http.Server
	transport              *http.Transport
	served                 chan struct{} // closed when Serve returns
	httpAddr               string        // with PlainHTTP
	httpSrv                *http.Server  // with PlainHTTP
	httpServed             chan struct{} // with PlainHTTP: closed when its Serve returns
	closeOnce              sync.Once
	tokenRequests          atomic.Int64
	mu                     sync.Mutex
	access                 map[string]time.Time // access token → expiry
	refresh                map[string]struct{}
	codes                  map[string]authCode
	limits                 map[string]*rateLimit
	grants                 map[string]int64 // token requests by grant_type
	holds                  map[string]chan struct{}
	hits                   map[string]int64
	total                  int64
	last                   *Seen
}

type rateLimit struct {
	status  int
	headers map[string]string
	left    int // < 0: until cleared
}

// Start generates a fresh ECDSA certificate authority and leaf certificate
// and serves HTTP/1.1 and HTTP/2 over TLS on 127.0.0.1 at a free port.
// Close the server when done.
func Start(opts Options) (*Server, error) {
	var errs []error
	for i, h := range opts.Hosts {
		if h == "" {
			errs = append(errs, fmt.Errorf("sampleprovider: Hosts[%d] is empty", i))
		}
	}
	switch opts.ClientAuthStyle {
	case "", AuthStyleInHeader, AuthStyleInParams:
	default:
		errs = append(errs, fmt.Errorf("sampleprovider: ClientAuthStyle %q must be %q, %q or empty",
			opts.ClientAuthStyle, AuthStyleInHeader, AuthStyleInParams))
	}
	if opts.AccessTokenTTL < 0 {
		errs = append(errs, errors.New("sampleprovider: AccessTokenTTL must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	s := &Server{
		apiKey:          opts.APIKey,
		basicUser:       opts.BasicUser,
		external:        opts.ExternalTokens,
		basicPass:       opts.BasicPassword,
		clientID:        opts.ClientID,
		clientSecret:    opts.ClientSecret,
		clientAuthStyle: opts.ClientAuthStyle,
		ttl:             opts.AccessTokenTTL,
		now:             opts.Now,
		log:             opts.Logger,
		served:          make(chan struct{}),
		access:          map[string]time.Time{},
		refresh:         map[string]struct{}{},
		codes:           map[string]authCode{},
		limits:          map[string]*rateLimit{},
		grants:          map[string]int64{},
		holds:           map[string]chan struct{}{},
		hits:            map[string]int64{},
	}
	if s.ttl == 0 {
		s.ttl = time.Hour
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}

	caCert, leaf, err := newCertificates(opts.Hosts)
	if err != nil {
		return nil, fmt.Errorf("sampleprovider: certificates: %w", err)
	}
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})
	s.caPool = x509.NewCertPool()
	s.caPool.AddCert(caCert)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sampleprovider: listen: %w", err)
	}
	s.addr = ln.Addr().String()
	var plainLn net.Listener
	if opts.PlainHTTP {
		if plainLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			ln.Close()
			return nil, fmt.Errorf("sampleprovider: listen (plain HTTP): %w", err)
		}
		s.httpAddr = plainLn.Addr().String()
	}

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	s.srv = &http.Server{
		Handler:           s.routes(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12},
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.transport = &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: s.caPool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, s.addr)
		},
	}
	go func() {
		defer close(s.served)
		// ServeTLS adds "h2" to the ALPN list; the error is ErrServerClosed
		// after Close, and anything else has nowhere better to go than the log.
		if err := s.srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("sampleprovider: serve", "err", err)
		}
	}()
	if plainLn != nil {
		s.httpSrv = &http.Server{
			Handler:           s.srv.Handler,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          s.srv.ErrorLog,
		}
		s.httpServed = make(chan struct{})
		go func() {
			defer close(s.httpServed)
			if err := s.httpSrv.Serve(plainLn); !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("sampleprovider: serve plain HTTP", "err", err)
			}
		}()
	}
	return s, nil
}

// newCertificates makes a self-signed CA and a leaf it signs for hosts and
// 127.0.0.1.
func newCertificates(hosts []string) (*x509.Certificate, tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "sampleprovider test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, tls.Certificate{}, err
	}

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "sampleprovider"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leafTmpl.IPAddresses = append(leafTmpl.IPAddresses, ip)
		} else {
			leafTmpl.DNSNames = append(leafTmpl.DNSNames, h)
		}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	leafCert, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	return caCert, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey, Leaf: leafCert}, nil
}

func serial() *big.Int {
	// rand.Int fails only if the system randomness source does, which
	// crypto/rand treats as fatal anyway.
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// Addr is the listening address, 127.0.0.1:port.
func (s *Server) Addr() string { return s.addr }

// HTTPAddr is the plain-HTTP listening address, 127.0.0.1:port, or ""
// without [Options.PlainHTTP].
func (s *Server) HTTPAddr() string { return s.httpAddr }

// CACertPool returns a pool holding only the server's certificate authority.
// Each call returns a new pool.
func (s *Server) CACertPool() *x509.CertPool { return s.caPool.Clone() }

// CAPEM returns the certificate authority in PEM, to write a CA file for
// other processes (Envoy, a demo client).
func (s *Server) CAPEM() []byte { return bytes.Clone(s.caPEM) }

// Client returns an HTTP client that trusts the server's certificate
// authority and connects every request to [Server.Addr] whatever its host,
// so that "https://api.sample.test/v1/x" reaches this server and verifies the
// certificate for api.sample.test. Close closes its idle connections.
func (s *Server) Client() *http.Client { return &http.Client{Transport: s.transport} }

// Close stops the server, waiting up to five seconds for requests in flight,
// and returns once the serving goroutine has exited. It is safe to call more
// than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.transport.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
		}
		<-s.served
		if s.httpSrv != nil {
			if err := s.httpSrv.Shutdown(ctx); err != nil {
				_ = s.httpSrv.Close()
			}
			<-s.httpServed
		}
	})
}

// Hits returns how many API requests (paths under /v1/) arrived for path,
// whatever their outcome: authenticated or not, rate-limited or not. A
// request counts once the server has decided its answer and before that
// answer is written, so a caller that has the response sees the count.
// /oauth/*, /healthz and unknown paths are not counted.
func (s *Server) Hits(path string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

// TotalHits is the sum of [Server.Hits] over all paths.
func (s *Server) TotalHits() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// LastRequest returns a copy of the last API request counted by
// [Server.Hits], or nil before the first one.
func (s *Server) LastRequest() *Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		return nil
	}
	c := *s.last
	c.Header = s.last.Header.Clone()
	return &c
}

// SetRateLimit makes the next n authenticated API requests to path (exact
// match on the URL path) answer status with headers and the body
// {"error":"rate_limited"}, as a provider does when a credential is over its
// limit. Status 0 means 429; n < 0 keeps the limit until it is replaced; n = 0
// clears it. Unauthenticated requests still get 401: providers check the
// credential first. A status outside 200–599 other than 0 panics.
func (s *Server) SetRateLimit(path string, status int, headers map[string]string, n int) {
	if status == 0 {
		status = http.StatusTooManyRequests
	}
	if status < 200 || status > 599 {
		panic(fmt.Sprintf("sampleprovider: SetRateLimit status %d is not a final HTTP status", status))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n == 0 {
		delete(s.limits, path)
		return
	}
	s.limits[path] = &rateLimit{status: status, headers: maps.Clone(headers), left: n}
}

// takeRateLimit consumes one use of path's limit, if there is one.
func (s *Server) takeRateLimit(path string) (rateLimit, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rl, ok := s.limits[path]
	if !ok {
		return rateLimit{}, false
	}
	if rl.left > 0 {
		rl.left--
		if rl.left == 0 {
			delete(s.limits, path)
		}
	}
	return *rl, true
}

// Hold makes API requests to path (exact match on the URL path) wait, once
// counted by [Server.Hits], until release is called or their client goes
// away, so that a test decides when requests in flight finish. release
// lets every held request go, and later ones pass; it may be called more
// than once.
func (s *Server) Hold(path string) (release func()) {
	gate := make(chan struct{})
	s.mu.Lock()
	s.holds[path] = gate
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.holds[path] == gate {
				delete(s.holds, path)
			}
			s.mu.Unlock()
			close(gate)
		})
	}
}

// held returns the gate a request to path waits on, or nil.
func (s *Server) held(path string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds[path]
}

// TokenRequests returns how many requests reached /oauth/token, whatever
// their outcome.
func (s *Server) TokenRequests() int64 { return s.tokenRequests.Load() }

// TokenGrants returns how many requests to /oauth/token asked for
// grantType ("authorization_code", "refresh_token", "client_credentials"),
// whatever their outcome, so that a test or demo can tell refreshes from
// other token requests.
func (s *Server) TokenGrants(grantType string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grants[grantType]
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/oauth/authorize", s.handleAuthorize)
	mux.HandleFunc("/oauth/token", s.handleToken)
	mux.HandleFunc("/v1/", s.handleAPI)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "not_found"})
	})
	return mux
}
