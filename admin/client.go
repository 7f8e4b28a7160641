package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ampproxy/ampproxy/internal/problem"
	"github.com/ampproxy/ampproxy/tokens"
)

// Client calls the admin API of one project. The zero HTTP uses a client
// with a 30 s timeout. A Client is safe for concurrent use.
type Client struct {
	// BaseURL is the admin listener, e.g. http://127.0.0.1:8081.
	BaseURL string
	// Project is the project ID every call is made for.
	Project string
	// APIKey is one of the project's API keys, sent as x-api-key.
	APIKey string
	// HTTP makes the requests; nil means a client with a 30 s timeout.
	HTTP *http.Client
}

// Error is an error answer of the admin API. Problem is the problem+json
// body; for a body that is not one, it is synthesised from the status and
// the start of the body.
type Error struct {
	Status  int
	Problem problem.Problem
}

// Error formats as "<status> <title>: <detail>".
func (e *Error) Error() string {
	title := e.Problem.Title
	if title == "" {
		title = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, title, e.Problem.Detail)
}

// maxResponseBytes bounds what the client reads: a 1000-item page is well
// under it.
const maxResponseBytes = 32 << 20

var defaultHTTP = &http.Client{Timeout: 30 * time.Second}

// GenerateConnection creates a connection with the credential in req.
func (c *Client) GenerateConnection(ctx context.Context, req GenerateConnectionRequest) (*tokens.Connection, error) {
	var out tokens.Connection
	if err := c.do(ctx, http.MethodPost, c.projectPath("connections:generate"), nil, req, http.StatusCreated, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListConnections returns one page of the project's connections matching
// f, and the token of the next page ("" on the last). A pageSize of 0
// means the server's default.
func (c *Client) ListConnections(ctx context.Context, f ConnectionFilter, pageSize int, pageToken string) ([]*tokens.Connection, string, error) {
	q := pageQuery(pageSize, pageToken)
	if f.Provider != "" {
		q.Set("provider", f.Provider)
	}
	if f.GroupRef != "" {
		q.Set("groupRef", f.GroupRef)
	}
	var out ConnectionList
	if err := c.do(ctx, http.MethodGet, c.projectPath("connections"), q, nil, http.StatusOK, &out); err != nil {
		return nil, "", err
	}
	return out.Items, out.NextPageToken, nil
}

// GetConnection returns one connection as the server shows it: with the
// end of its lockout window (RateLimitedUntil, Retryable) while throttle
// mode holds it back.
func (c *Client) GetConnection(ctx context.Context, id string) (*ConnectionView, error) {
	if id == "" {
		return nil, errors.New("admin: connection ID is required")
	}
	out := ConnectionView{Connection: &tokens.Connection{}}
	if err := c.do(ctx, http.MethodGet, c.projectPath("connections", id), nil, nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateConnection replaces a connection's credential and/or merges its
// metadata (see UpdateConnectionRequest), which also sets its status back
// to created.
func (c *Client) UpdateConnection(ctx context.Context, id string, req UpdateConnectionRequest) (*tokens.Connection, error) {
	if id == "" {
		return nil, errors.New("admin: connection ID is required")
	}
	var out tokens.Connection
	if err := c.do(ctx, http.MethodPatch, c.projectPath("connections", id), nil, req, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// OAuthConnect starts the OAuth connect flow and returns the authorization
// URL for the person who owns the provider account to open; it is valid
// for ConnectStateTTL and once. An empty req.ProjectIDOrName means the
// client's Project.
func (c *Client) OAuthConnect(ctx context.Context, req OAuthConnectRequest) (authURL string, err error) {
	if req.ProjectIDOrName == "" {
		req.ProjectIDOrName = c.Project
	}
	data, err := c.send(ctx, http.MethodPost, "/v1/oauth-connect", nil, req, http.StatusOK, "text/plain, "+problem.ContentType)
	if err != nil {
		return "", err
	}
	u := strings.TrimSpace(string(data))
	if p, perr := url.Parse(u); perr != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
		return "", errors.New("admin: POST /v1/oauth-connect: the answer is not an authorization URL")
	}
	return u, nil
}

// DeleteConnection deletes a connection; the server refuses (409) while
// installations use it.
func (c *Client) DeleteConnection(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("admin: connection ID is required")
	}
	return c.do(ctx, http.MethodDelete, c.projectPath("connections", id), nil, nil, http.StatusNoContent, nil)
}

// CreateInstallation installs an integration for a group. An empty
// connectionID lets the server pick the group's newest connection to the
// integration's provider.
func (c *Client) CreateInstallation(ctx context.Context, integration, groupRef, connectionID string) (*tokens.Installation, error) {
	if integration == "" {
		return nil, errors.New("admin: integration name is required")
	}
	var out tokens.Installation
	body := CreateInstallationRequest{GroupRef: groupRef, ConnectionID: connectionID}
	if err := c.do(ctx, http.MethodPost, c.projectPath("integrations", integration, "installations"), nil, body, http.StatusCreated, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListInstallations returns one page of an integration's installations, or
// of every integration's when integration is "".
func (c *Client) ListInstallations(ctx context.Context, integration string, pageSize int, pageToken string) ([]*tokens.Installation, string, error) {
	p := c.projectPath("installations")
	if integration != "" {
		p = c.projectPath("integrations", integration, "installations")
	}
	var out InstallationList
	if err := c.do(ctx, http.MethodGet, p, pageQuery(pageSize, pageToken), nil, http.StatusOK, &out); err != nil {
		return nil, "", err
	}
	return out.Items, out.NextPageToken, nil
}

// GetInstallation returns one installation of an integration.
func (c *Client) GetInstallation(ctx context.Context, integration, id string) (*tokens.Installation, error) {
	if integration == "" || id == "" {
		return nil, errors.New("admin: integration name and installation ID are required")
	}
	var out tokens.Installation
	if err := c.do(ctx, http.MethodGet, c.projectPath("integrations", integration, "installations", id), nil, nil, http.StatusOK, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteInstallation deletes one installation of an integration.
func (c *Client) DeleteInstallation(ctx context.Context, integration, id string) error {
	if integration == "" || id == "" {
		return errors.New("admin: integration name and installation ID are required")
	}
	return c.do(ctx, http.MethodDelete, c.projectPath("integrations", integration, "installations", id), nil, nil, http.StatusNoContent, nil)
}

// projectPath joins escaped segments under /v1/projects/{project}/. The
// last segment of "connections:generate" keeps its colon, which
// PathEscape leaves alone.
func (c *Client) projectPath(segs ...string) string {
	var b strings.Builder
	b.WriteString(projectsPrefix)
	b.WriteString(url.PathEscape(c.Project))
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

func pageQuery(size int, token string) url.Values {
	q := url.Values{}
	if size > 0 {
		q.Set("pageSize", strconv.Itoa(size))
	}
	if token != "" {
		q.Set("pageToken", token)
	}
	return q
}

// do sends one request and decodes a want-status answer into out. Errors
// never contain the API key or the request body.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in any, want int, out any) error {
	data, err := c.send(ctx, method, path, q, in, want, "application/json, "+problem.ContentType)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin: %s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// send sends one request and returns the body of a want-status answer.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, in any, want int, accept string) ([]byte, error) {
	if c.BaseURL == "" || c.Project == "" {
		return nil, errors.New("admin: client needs BaseURL and Project")
	}
	u := strings.TrimRight(c.BaseURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("admin: encoding request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	req.Header.Set(APIKeyHeader, c.APIKey)
	req.Header.Set("Accept", accept)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("admin: %s %s: reading response: %w", method, path, err)
	}
	if resp.StatusCode != want {
		return nil, responseError(resp, data)
	}
	return data, nil
}

// responseError turns a non-success answer into an *Error, whatever its
// body: a proxy in front of ampproxy may answer in HTML or plain text.
func responseError(resp *http.Response, data []byte) *Error {
	e := &Error{Status: resp.StatusCode}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == problem.ContentType || mt == "application/json" {
		var p problem.Problem
		if json.Unmarshal(data, &p) == nil && (p.Title != "" || p.Detail != "" || p.Type != "") {
			e.Problem = p
			if e.Problem.Status == 0 {
				e.Problem.Status = resp.StatusCode
			}
			if e.Problem.RequestID == "" {
				e.Problem.RequestID = resp.Header.Get(RequestIDHeader)
			}
			return e
		}
	}
	e.Problem = problem.Problem{
		Title:     http.StatusText(resp.StatusCode),
		Status:    resp.StatusCode,
		Detail:    snippet(mt, data),
		RequestID: resp.Header.Get(RequestIDHeader),
	}
	return e
}

// snippet is the start of a non-problem body as one printable line.
func snippet(mediaType string, data []byte) string {
	if !strings.HasPrefix(mediaType, "text/plain") && mediaType != "" && mediaType != "application/json" {
		return "unexpected " + mediaType + " response (not application/problem+json)"
	}
	const max = 200
	var b strings.Builder
	for _, r := range strings.TrimSpace(string(data)) {
		if b.Len() >= max {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			r = ' '
		}
		b.WriteRune(r)
	}
	if b.Len() == 0 {
		return "empty response body"
	}
	return b.String()
}
