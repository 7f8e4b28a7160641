package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/ampproxy/ampproxy/config"
	"github.com/ampproxy/ampproxy/tokens"
)

// integration finds the route's integration in the project's manifest.
func (s *server) integration(w http.ResponseWriter, r *http.Request, proj *config.Project) (*config.Integration, bool) {
	name := r.PathValue("integration")
	var in *config.Integration
	if proj.Integrations != nil {
		in, _ = proj.Integrations.Integration(name)
	}
	if in == nil {
		s.problem(w, r, notFound("integration %q is not in the manifest of project %s", clip(name), proj.ID))
		return nil, false
	}
	return in, true
}

func (s *server) createInstallation(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	integ, ok := s.integration(w, r, proj)
	if !ok {
		return
	}
	var req CreateInstallationRequest
	if !s.decode(w, r, &req) {
		return
	}
	if p := checkRef("groupRef", req.GroupRef); p != nil {
		s.problem(w, r, p)
		return
	}
	var conn *tokens.Connection
	if req.ConnectionID != "" {
		if p := checkRef("connectionId", req.ConnectionID); p != nil {
			s.problem(w, r, p)
			return
		}
		c, ok := s.store.Connection(req.ConnectionID)
		if !ok || c.ProjectID != proj.ID {
			s.problem(w, r, notFound("connectionId: connection %q not found in project %s", clip(req.ConnectionID), proj.ID))
			return
		}
		if c.Provider != integ.Provider {
			s.problem(w, r, badRequest("connectionId: connection %s is for provider %s, but integration %s uses provider %s",
				c.ID, c.Provider, integ.Name, integ.Provider))
			return
		}
		// A group is a customer of the project; one customer's
		// installation must not run on another customer's credential.
		if c.GroupRef != req.GroupRef {
			s.problem(w, r, badRequest("connectionId: connection %s belongs to another group than groupRef %q", c.ID, req.GroupRef))
			return
		}
		conn = c
	} else {
		c, ok := s.store.ConnectionByGroup(proj.ID, integ.Provider, req.GroupRef)
		if !ok {
			s.problem(w, r, notFound("group %q has no connection to provider %s; create one with connections:generate or give connectionId",
				req.GroupRef, integ.Provider))
			return
		}
		conn = c
	}
	out, err := s.store.CreateInstallation(&tokens.Installation{
		ProjectID:    proj.ID,
		Integration:  integ.Name,
		GroupRef:     req.GroupRef,
		ConnectionID: conn.ID,
		CreateTime:   s.now().UTC(),
	})
	switch {
	case errors.Is(err, tokens.ErrConflict):
		s.problem(w, r, conflict("group %q already has an installation of integration %s; delete it first to install again", req.GroupRef, integ.Name))
		return
	case errors.Is(err, tokens.ErrNotFound):
		s.problem(w, r, notFound("connectionId: connection %s was deleted meanwhile", conn.ID))
		return
	case err != nil:
		s.internal(w, r, fmt.Errorf("creating installation: %w", err))
		return
	}
	w.Header().Set("Location", projectsPrefix+url.PathEscape(proj.ID)+"/integrations/"+url.PathEscape(integ.Name)+"/installations/"+url.PathEscape(out.ID))
	writeJSON(w, http.StatusCreated, out)
}

// listInstallations serves both the per-integration list and the
// project-wide one (the route without {integration}).
func (s *server) listInstallations(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	name := ""
	if r.PathValue("integration") != "" {
		integ, ok := s.integration(w, r, proj)
		if !ok {
			return
		}
		name = integ.Name
	}
	pg, p := page(r.URL.Query())
	if p != nil {
		s.problem(w, r, p)
		return
	}
	items, next, err := s.store.ListInstallations(proj.ID, name, pg)
	switch {
	case errors.Is(err, tokens.ErrBadPageToken):
		s.problem(w, r, badPageToken())
		return
	case err != nil:
		s.internal(w, r, fmt.Errorf("listing installations: %w", err))
		return
	}
	if items == nil {
		items = []*tokens.Installation{}
	}
	writeJSON(w, http.StatusOK, InstallationList{Items: items, NextPageToken: next})
}

// installation finds an installation of the project and the route's
// integration. The integration need not be in the manifest any more, so
// that installations of a removed integration can still be read and
// deleted.
func (s *server) installation(w http.ResponseWriter, r *http.Request, proj *config.Project) (*tokens.Installation, bool) {
	id, name := r.PathValue("id"), r.PathValue("integration")
	in, ok := s.store.Installation(id)
	if !ok || in.ProjectID != proj.ID || in.Integration != name {
		s.problem(w, r, notFound("installation %q of integration %q not found in project %s", clip(id), clip(name), proj.ID))
		return nil, false
	}
	return in, true
}

func (s *server) getInstallation(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	in, ok := s.installation(w, r, proj)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, in)
}

func (s *server) deleteInstallation(w http.ResponseWriter, r *http.Request) {
	proj, ok := s.project(w, r)
	if !ok {
		return
	}
	in, ok := s.installation(w, r, proj)
	if !ok {
		return
	}
	switch err := s.store.DeleteInstallation(proj.ID, in.ID); {
	case err == nil:
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, tokens.ErrNotFound):
		s.problem(w, r, notFound("installation %q of integration %q not found in project %s", clip(in.ID), clip(in.Integration), proj.ID))
	default:
		s.internal(w, r, fmt.Errorf("deleting installation: %w", err))
	}
}
