package tokens

import (
	"context"
	"sync"
	"time"
)

// Run refreshes, every RefresherOptions.Background, the tokens of
// connections used within RecentUse that expire within twice their
// margin, or half their lifetime if that is shorter, so that requests
// rarely wait for a refresh. At most Concurrency
// of its refreshes run at once; each goes through the same one-refresh-
// per-connection rule as the request path, and a connection that is
// backing off or bad_credentials is left alone. Run returns once ctx has
// ended and the refreshes it started have finished.
func (r *Refresher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.sweep(ctx, &wg)
		}
	}
}

// sweep starts the background refreshes due now; wg counts them.
func (r *Refresher) sweep(ctx context.Context, wg *sync.WaitGroup) {
	now := r.now()
	var due []string
	r.states.Range(func(k, v any) bool {
		id, st := k.(string), v.(*connRefresh)
		c, ok := r.store.Connection(id)
		if !ok {
			r.drop(id, st)
			return true
		}
		if now.Sub(time.Unix(0, st.lastUse.Load())) <= r.recent && r.dueAhead(c, st, now) {
			due = append(due, id)
		}
		return true
	})
	for _, id := range due {
		select {
		case r.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		release := func() {
			<-r.slots
			wg.Done()
		}
		if !r.startAhead(id, release) {
			release()
		}
	}
}

// dueAhead reports whether c should be refreshed in the background.
func (r *Refresher) dueAhead(c *Connection, st *connRefresh, now time.Time) bool {
	switch {
	case c.Status == StatusBadCredentials,
		c.AuthScheme != SchemeOAuth2AuthorizationCode && c.AuthScheme != SchemeOAuth2ClientCredentials,
		c.AuthScheme == SchemeOAuth2AuthorizationCode && c.Credential.RefreshToken == "":
		return false
	case c.Credential.AccessToken == "", st.isStale(c.Credential.AccessToken):
		return true
	}
	exp := c.Credential.Expiry
	return !exp.IsZero() && !now.Add(r.aheadFor(c)).Before(exp)
}

// aheadFor is how long before its expiry c's token is refreshed in the
// background: twice the margin, so that requests seldom find a token
// inside it, but at most half the token's lifetime as the store saw it.
// The margin is capped at half the lifetime too, so for a short-lived
// token both come to half its life: a token just issued is never due, and
// a connection is refreshed about twice per token lifetime, not on every
// sweep.
func (r *Refresher) aheadFor(c *Connection) time.Duration {
	ahead := 2 * r.marginFor(c)
	if life := c.Credential.Expiry.Sub(c.UpdateTime); life > 0 {
		ahead = min(ahead, life/2)
	}
	return ahead
}

// startAhead starts a background refresh of connection id unless one is
// running, the connection is backing off or bad, or it no longer needs
// one. release runs when a started refresh ends.
func (r *Refresher) startAhead(id string, release func()) bool {
	st := r.state(id)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.dead || st.flight != nil {
		return false
	}
	// Read again under st.mu, as the request path does.
	c, ok := r.store.Connection(id)
	if ok {
		st.observe(c)
	}
	now := r.now()
	if !ok || now.Before(st.retryAt) || (!st.badAt.IsZero() && c.UpdateTime.Equal(st.badAt)) || !r.dueAhead(c, st, now) {
		return false
	}
	return r.start(st, c, st.isStale(c.Credential.AccessToken), release) != nil
}

// drop forgets the state of a deleted connection. A caller holding it
// sees dead and looks the state up again.
func (r *Refresher) drop(id string, st *connRefresh) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.flight != nil {
		return
	}
	st.dead = true
	r.states.CompareAndDelete(id, st)
}
