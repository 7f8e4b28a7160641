package admin

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/ampproxy/ampproxy/catalog"
	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/internal/problem"
	"github.com/ampproxy/ampproxy/tokens"
)

// Field names as they appear in request bodies, for details.
const (
	fieldAPIKey            = "apiKey"
	fieldBasicAuth         = "basicAuth"
	fieldClientCredentials = "oauth2ClientCredentials"
	fieldAuthorizationCode = "oauth2AuthorizationCode"
	fieldWorkspaceRef      = "providerWorkspaceRef"
	fieldMetadata          = "providerMetadata"

	workspaceKey = "workspace"
)

// Size limits of request fields.
const (
	maxRefLen        = 256
	maxMetadata      = 32
	maxMetadataName  = 64
	maxMetadataValue = 1024
	maxSecretLen     = 16 << 10
	maxScopes        = 100
	maxScopeLen      = 256
)

func (s *server) generateConnection(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	var req GenerateConnectionRequest
	if !s.decode(w, r, &req) {
		return
	}
	c, p := s.buildConnection(state(r).cfg, proj, &req)
	if p != nil {
		s.problem(w, r, p)
		return
	}
	out, err := s.store.PutConnection(c)
	if err != nil {
		s.internal(w, r, fmt.Errorf("storing connection: %w", err))
		return
	}
	w.Header().Set("Location", projectsPrefix+url.PathEscape(proj.ID)+"/connections/"+url.PathEscape(out.ID))
	writeJSON(w, http.StatusCreated, out)
}

// buildConnection validates a generate request completely before anything
// is stored, so that a bad request changes nothing.
func (s *server) buildConnection(cfg *config.Config, proj *config.Project, req *GenerateConnectionRequest) (*tokens.Connection, *problem.Problem) {
	for _, f := range []struct{ name, v string }{
		{"groupRef", req.GroupRef},
		{"consumerRef", req.ConsumerRef},
		{"provider", req.Provider},
	} {
		if p := checkRef(f.name, f.v); p != nil {
			return nil, p
		}
	}
	var prov *catalog.Provider
	if cfg.Providers != nil {
		prov, _ = cfg.Providers.Provider(req.Provider)
	}
	if prov == nil {
		return nil, badRequest("provider %q is not in the provider catalog", req.Provider)
	}

	scheme, cred, p := s.credential(proj, prov, req)
	if p != nil {
		return nil, p
	}
	meta, p := metadata(prov, req.ProviderWorkspaceRef, req.ProviderMetadata, nil)
	if p != nil {
		return nil, p
	}
	now := s.now().UTC()
	return &tokens.Connection{
		ProjectID:    proj.ID,
		Provider:     prov.Name,
		GroupRef:     req.GroupRef,
		ConsumerRef:  req.ConsumerRef,
		WorkspaceRef: meta[workspaceKey],
		Metadata:     meta,
		AuthScheme:   scheme,
		// Every new connection starts as created: ampproxy has not yet seen
		// the provider accept the credential. The proxy path moves it to
		// working or bad_credentials.
		Status:     tokens.StatusCreated,
		CreateTime: now,
		UpdateTime: now,
		Credential: cred,
	}, nil
}

// wantKind is the request field a provider's authType calls for; "" for a
// provider that takes no credential.
func wantKind(prov *catalog.Provider) (string, tokens.AuthScheme) {
	switch prov.AuthType {
	case catalog.AuthAPIKey:
		return fieldAPIKey, tokens.SchemeAPIKey
	case catalog.AuthBasic:
		return fieldBasicAuth, tokens.SchemeBasic
	case catalog.AuthOAuth2:
		if prov.OAuth2 != nil && prov.OAuth2.GrantType == catalog.GrantClientCredentials {
			return fieldClientCredentials, tokens.SchemeOAuth2ClientCredentials
		}
		return fieldAuthorizationCode, tokens.SchemeOAuth2AuthorizationCode
	}
	return "", tokens.SchemeNone
}

func authTypeName(prov *catalog.Provider) string {
	if prov.AuthType == catalog.AuthOAuth2 && prov.OAuth2 != nil {
		return "oauth2 (" + string(prov.OAuth2.GrantType) + ")"
	}
	return string(prov.AuthType)
}

// credential checks that the request carries the credential the provider
// needs, and nothing else, and turns it into the stored form.
func (s *server) credential(proj *config.Project, prov *catalog.Provider, req *GenerateConnectionRequest) (tokens.AuthScheme, tokens.Credential, *problem.Problem) {
	var cred tokens.Credential
	given := req.credentialKinds()
	want, scheme := wantKind(prov)
	switch {
	case len(given) > 1:
		return "", cred, badRequest("give only one of apiKey, basicAuth, oauth2ClientCredentials and oauth2AuthorizationCode; the body has %s",
			strings.Join(given, " and "))
	case want == "" && len(given) == 1:
		return "", cred, badRequest("%s must be absent: provider %s uses authType none and takes no credential", given[0], prov.Name)
	case want != "" && len(given) == 0:
		return "", cred, badRequest("%s is required: provider %s uses authType %s", want, prov.Name, authTypeName(prov))
	case want != "" && given[0] != want:
		return "", cred, badRequest("%s does not fit provider %s, which uses authType %s; give %s instead",
			given[0], prov.Name, authTypeName(prov), want)
	}

	switch want {
	case fieldAPIKey:
		if p := checkSecret(fieldAPIKey, req.APIKey, true); p != nil {
			return "", cred, p
		}
		cred.APIKey = req.APIKey
	case fieldBasicAuth:
		b := req.BasicAuth
		if p := checkSecret(fieldBasicAuth+".username", b.Username, true); p != nil {
			return "", cred, p
		}
		if strings.Contains(b.Username, ":") {
			// RFC 7617: the first colon ends the user-id.
			return "", cred, badRequest("%s.username must not contain ':'", fieldBasicAuth)
		}
		if p := checkSecret(fieldBasicAuth+".password", b.Password, false); p != nil {
			return "", cred, p
		}
		cred.Username, cred.Password = b.Username, b.Password
	case fieldClientCredentials:
		c := req.OAuth2ClientCredentials
		if p := checkSecret(fieldClientCredentials+".clientId", c.ClientID, true); p != nil {
			return "", cred, p
		}
		if p := checkSecret(fieldClientCredentials+".clientSecret", c.ClientSecret, true); p != nil {
			return "", cred, p
		}
		if p := checkScopes(fieldClientCredentials+".scopes", c.Scopes); p != nil {
			return "", cred, p
		}
		cred.ClientID, cred.ClientSecret, cred.Scopes = c.ClientID, c.ClientSecret, slices.Clone(c.Scopes)
	case fieldAuthorizationCode:
		c := req.OAuth2AuthorizationCode
		f := fieldAuthorizationCode
		_, hasApp := proj.ProviderApps[prov.Name]
		access, refresh := c.AccessToken.Token != "", c.RefreshToken.Token != ""
		switch {
		case !access && !refresh:
			return "", cred, badRequest("%s.accessToken.token is required (with refreshToken.token when ampproxy should refresh it)", f)
		case !access && !c.AccessToken.ExpiresAt.IsZero():
			return "", cred, badRequest("%s.accessToken.token is required with accessToken.expiresAt", f)
		case !access && !hasApp:
			return "", cred, badRequest("%s.accessToken.token is required: project %s has no providerApps.%s to refresh a token with", f, proj.ID, prov.Name)
		}
		if access {
			if p := checkSecret(f+".accessToken.token", c.AccessToken.Token, true); p != nil {
				return "", cred, p
			}
			cred.AccessToken = c.AccessToken.Token
			if !c.AccessToken.ExpiresAt.IsZero() {
				cred.Expiry = c.AccessToken.ExpiresAt.UTC()
			}
		}
		if refresh {
			if p := checkSecret(f+".refreshToken.token", c.RefreshToken.Token, true); p != nil {
				return "", cred, p
			}
			cred.RefreshToken = c.RefreshToken.Token
		}
		if !refresh && !cred.Expiry.IsZero() && !cred.Expiry.After(s.now()) {
			return "", cred, badRequest("%s.accessToken.expiresAt is in the past and there is no refreshToken to renew it", f)
		}
		if p := checkScopes(f+".scopes", c.Scopes); p != nil {
			return "", cred, p
		}
		cred.Scopes = slices.Clone(c.Scopes)
	}
	return scheme, cred, nil
}

// metadata merges providerWorkspaceRef into providerMetadata and validates
// the result against the provider (DESIGN §4), naming the request field of
// each bad value. Names in deferred may be missing: the OAuth callback
// fills them in from the token response and validates again.
func metadata(prov *catalog.Provider, workspaceRef string, given map[string]string, deferred map[string]bool) (map[string]string, *problem.Problem) {
	if len(given) > maxMetadata {
		return nil, badRequest("%s holds more than %d entries", fieldMetadata, maxMetadata)
	}
	declared := declaredNames(prov)
	fromRef := workspaceRef != ""
	var meta map[string]string
	if len(given) > 0 || fromRef {
		meta = make(map[string]string, len(given)+1)
	}
	for _, name := range slices.Sorted(maps.Keys(given)) {
		v := given[name]
		if len(name) > maxMetadataName || !printable(name) || name == "" {
			return nil, badRequest("%s has a key that is not a metadata name", fieldMetadata)
		}
		field := fieldMetadata + "." + name
		if !declared[name] {
			return nil, badRequest("%s is not a metadata field of provider %s%s", field, prov.Name, declaredList(prov))
		}
		if p := checkValue(field, v); p != nil {
			return nil, p
		}
		meta[name] = v
	}
	if fromRef {
		if p := checkValue(fieldWorkspaceRef, workspaceRef); p != nil {
			return nil, p
		}
		if !declared[workspaceKey] {
			return nil, badRequest("%s must be absent: provider %s has no workspace metadata%s", fieldWorkspaceRef, prov.Name, declaredList(prov))
		}
		if v, ok := meta[workspaceKey]; ok && v != workspaceRef {
			return nil, badRequest("%s and %s.workspace differ; give the workspace once", fieldWorkspaceRef, fieldMetadata)
		}
		meta[workspaceKey] = workspaceRef
	}
	// A deferred name still missing is validated with a stand-in that is a
	// valid value wherever a template may use it (a label or the whole
	// host, a path segment), so that the other values are checked in full.
	check := meta
	for name := range deferred {
		if meta[name] != "" {
			continue
		}
		if len(check) == len(meta) { // not yet copied
			check = make(map[string]string, len(meta)+len(deferred))
			maps.Copy(check, meta)
		}
		check[name] = deferredStandIn
	}
	if p := metadataProblem(prov, prov.ValidateMetadata(check), check, given); p != nil {
		return nil, p
	}
	return meta, nil
}

// deferredStandIn stands in for a metadata value the token response will
// supply; see metadata.
const deferredStandIn = "deferred.ampproxy.example"

func declaredNames(prov *catalog.Provider) map[string]bool {
	declared := make(map[string]bool, len(prov.Metadata))
	for _, m := range prov.Metadata {
		declared[m.Name] = true
	}
	return declared
}

// metadataProblem turns a catalog error about meta into a 400 naming the
// request fields; nil for a nil error.
func metadataProblem(prov *catalog.Provider, err error, meta, given map[string]string) *problem.Problem {
	if err == nil {
		return nil
	}
	declared := declaredNames(prov)
	fieldOf := func(name string) string {
		if name == workspaceKey {
			if _, inMeta := given[workspaceKey]; !inMeta {
				return fieldWorkspaceRef
			}
		}
		return fieldMetadata + "." + name
	}
	// The catalog checks each template that uses a value (base,
	// authorization and token URLs), so one bad value can come back once
	// per template: report each problem once.
	var parts []string
	seen := make(map[string]bool)
	for _, e := range unjoin(err) {
		if d := metadataDetail(e, declared, meta, fieldOf); !seen[d] {
			seen[d] = true
			parts = append(parts, d)
		}
	}
	return badRequest("%s", strings.Join(parts, "; "))
}

// metadataDetail rewrites a catalog error ("invalid metadata value: NAME:
// reason" or "…: NAME is required") to start with the request field.
func metadataDetail(e error, declared map[string]bool, meta map[string]string, fieldOf func(string) string) string {
	msg := strings.TrimPrefix(e.Error(), catalog.ErrInvalidValue.Error()+": ")
	name, rest, _ := strings.Cut(msg, ":")
	if declared[name] {
		return fieldOf(name) + ":" + rest
	}
	if n, ok := strings.CutSuffix(msg, " is required"); ok && declared[n] {
		return fieldOf(n) + " is required"
	}
	// A reason about the whole host names no value; with one value given,
	// that value is the culprit.
	if len(meta) == 1 {
		for n := range meta {
			return fieldOf(n) + ": " + msg
		}
	}
	return fieldMetadata + ": " + msg
}

func declaredList(prov *catalog.Provider) string {
	if len(prov.Metadata) == 0 {
		return ""
	}
	names := make([]string, len(prov.Metadata))
	for i, m := range prov.Metadata {
		names[i] = m.Name
	}
	return " (it takes " + strings.Join(names, ", ") + ")"
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkRef validates a plain identifier-like field: present, bounded, and
// printable, since it ends up in logs, lists and the CLI's tables.
func checkRef(field, v string) *problem.Problem {
	switch {
	case v == "":
		return badRequest("%s is required", field)
	case len(v) > maxRefLen:
		return badRequest("%s must be at most %d bytes", field, maxRefLen)
	case !utf8.ValidString(v):
		return badRequest("%s must be valid UTF-8", field)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return badRequest("%s must not contain control characters", field)
	case strings.TrimSpace(v) != v:
		return badRequest("%s must not start or end with whitespace", field)
	}
	return nil
}

// checkValue validates a metadata value before the catalog checks where it
// is used.
func checkValue(field, v string) *problem.Problem {
	switch {
	case v == "":
		return badRequest("%s must not be empty", field)
	case len(v) > maxMetadataValue:
		return badRequest("%s must be at most %d bytes", field, maxMetadataValue)
	case !utf8.ValidString(v):
		return badRequest("%s must be valid UTF-8", field)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return badRequest("%s must not contain control characters", field)
	}
	return nil
}

// checkSecret validates a credential value. Credentials end up in request
// headers (or a query), where a control character would break the request
// at Envoy, so they are refused here. The detail never includes the value.
func checkSecret(field, v string, required bool) *problem.Problem {
	switch {
	case v == "" && required:
		return badRequest("%s is required", field)
	case len(v) > maxSecretLen:
		return badRequest("%s must be at most %d bytes", field, maxSecretLen)
	case !utf8.ValidString(v):
		return badRequest("%s must be valid UTF-8", field)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return badRequest("%s must not contain control characters", field)
	}
	return nil
}

func checkScopes(field string, scopes []string) *problem.Problem {
	if len(scopes) > maxScopes {
		return badRequest("%s holds more than %d scopes", field, maxScopes)
	}
	for i, sc := range scopes {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case sc == "":
			return badRequest("%s must not be empty", f)
		case len(sc) > maxScopeLen:
			return badRequest("%s must be at most %d bytes", f, maxScopeLen)
		case strings.IndexFunc(sc, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '"' || r == '\\' }) >= 0:
			// RFC 6749 §3.3 scope-token characters.
			return badRequest("%s must be printable ASCII without spaces, quotes or backslashes", f)
		}
	}
	return nil
}

func (s *server) listConnections(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	pg, p := page(q)
	if p != nil {
		s.problem(w, r, p)
		return
	}
	f := tokens.ConnectionFilter{Provider: q.Get("provider"), GroupRef: q.Get("groupRef")}
	for _, x := range []struct{ name, v string }{{"provider", f.Provider}, {"groupRef", f.GroupRef}} {
		if x.v != "" {
			if p := checkRef(x.name, x.v); p != nil {
				s.problem(w, r, p)
				return
			}
		}
	}
	items, next, err := s.store.ListConnections(proj.ID, f, pg)
	switch {
	case errors.Is(err, tokens.ErrBadPageToken):
		s.problem(w, r, badPageToken())
		return
	case err != nil:
		s.internal(w, r, fmt.Errorf("listing connections: %w", err))
		return
	}
	if items == nil {
		items = []*tokens.Connection{}
	}
	writeJSON(w, http.StatusOK, ConnectionList{Items: items, NextPageToken: next})
}

// connection finds a connection of the project; another project's
// connection is as absent as a missing one.
func (s *server) connection(w http.ResponseWriter, r *http.Request, proj *config.Project) (*tokens.Connection, bool) {
	id := r.PathValue("id")
	c, ok := s.store.Connection(id)
	if !ok || c.ProjectID != proj.ID {
		s.problem(w, r, notFound("connection %q not found in project %s", clip(id), proj.ID))
		return nil, false
	}
	return c, true
}

func (s *server) getConnection(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	c, ok := s.connection(w, r, proj)
	if !ok {
		return
	}
	view := ConnectionView{Connection: c}
	if s.locks != nil {
		if win, open := s.locks.Check(c.ID, s.now()); open {
			until, retryable := win.Until.UTC(), win.Retryable
			view.RateLimitedUntil, view.Retryable = &until, &retryable
		}
	}
	writeJSON(w, http.StatusOK, view)
}

// problemError carries a problem out of an UpdateConnection callback.
type problemError struct{ p *problem.Problem }

func (e *problemError) Error() string { return e.p.Detail }

func (s *server) updateConnection(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	var req UpdateConnectionRequest
	if !s.decode(w, r, &req) {
		return
	}
	cred := req.credentials()
	kinds := cred.credentialKinds()
	changesMeta := req.ProviderWorkspaceRef != "" || len(req.ProviderMetadata) > 0
	if !changesMeta && len(kinds) == 0 {
		s.problem(w, r, badRequest("the body changes nothing: give %s, %s, or one of apiKey, basicAuth, oauth2ClientCredentials and oauth2AuthorizationCode",
			fieldWorkspaceRef, fieldMetadata))
		return
	}
	cfg := state(r).cfg
	id := r.PathValue("id")
	// Everything is validated inside the update, against the connection as
	// stored at that moment, so that a token refresh that wrote in between
	// is neither lost (metadata-only update) nor resurrected.
	out, err := s.store.UpdateConnection(proj.ID, id, func(c *tokens.Connection) error {
		var prov *catalog.Provider
		if cfg.Providers != nil {
			prov, _ = cfg.Providers.Provider(c.Provider)
		}
		if prov == nil {
			return &problemError{conflict("provider %s of connection %s is no longer in the provider catalog", c.Provider, clip(c.ID))}
		}
		if len(kinds) > 0 {
			scheme, nc, p := s.credential(proj, prov, &cred)
			if p != nil {
				return &problemError{p}
			}
			c.AuthScheme, c.Credential = scheme, nc
		}
		if changesMeta {
			meta, p := mergeMetadata(prov, c.Metadata, &req)
			if p != nil {
				return &problemError{p}
			}
			c.Metadata, c.WorkspaceRef = meta, meta[workspaceKey]
		}
		// New credentials or metadata have not been seen to work yet; this
		// also clears bad_credentials, so the proxy tries the connection
		// (and its token endpoint) again.
		c.Status = tokens.StatusCreated
		return nil
	})
	var pe *problemError
	switch {
	case errors.As(err, &pe):
		s.problem(w, r, pe.p)
	case errors.Is(err, tokens.ErrNotFound):
		s.problem(w, r, notFound("connection %q not found in project %s", clip(id), proj.ID))
	case err != nil:
		s.internal(w, r, fmt.Errorf("updating connection: %w", err))
	default:
		writeJSON(w, http.StatusOK, out)
	}
}

// mergeMetadata applies an update's metadata to a connection's: a value
// sets a name, an empty value (or JSON null) removes it, providerWorkspaceRef
// sets the workspace. The result is validated whole, as generate does.
func mergeMetadata(prov *catalog.Provider, old map[string]string, req *UpdateConnectionRequest) (map[string]string, *problem.Problem) {
	merged := maps.Clone(old)
	if merged == nil {
		merged = map[string]string{}
	}
	for _, name := range slices.Sorted(maps.Keys(req.ProviderMetadata)) {
		if v := req.ProviderMetadata[name]; v == "" {
			delete(merged, name)
		} else {
			merged[name] = v
		}
	}
	ws := req.ProviderWorkspaceRef
	if ws != "" {
		v, given := req.ProviderMetadata[workspaceKey]
		switch {
		case given && v == "":
			return nil, badRequest("%s sets the workspace that %s.workspace removes; give one of them", fieldWorkspaceRef, fieldMetadata)
		case !given:
			// The new workspace replaces the stored one; metadata checks
			// the two against each other only when both are in the body.
			delete(merged, workspaceKey)
		}
	}
	return metadata(prov, ws, merged, nil)
}

func (s *server) deleteConnection(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	c, ok := s.connection(w, r, proj)
	if !ok {
		return
	}
	switch err := s.store.DeleteConnection(proj.ID, c.ID); {
	case err == nil:
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, tokens.ErrNotFound):
		s.problem(w, r, notFound("connection %q not found in project %s", clip(c.ID), proj.ID))
	case errors.Is(err, tokens.ErrInUse):
		s.problem(w, r, conflict("connection %s is used by installations; delete the installations first", clip(c.ID)))
	default:
		s.internal(w, r, fmt.Errorf("deleting connection: %w", err))
	}
}

// clip bounds an identifier taken from the path before it is quoted in a
// detail.
func clip(id string) string {
	if len(id) > 80 || !printable(id) {
		return "(invalid ID)"
	}
	return id
}
