package throttle

import "github.com/ampproxy/ampproxy/tokens"

// StorePersister keeps windows in s's bbolt file (its lockouts bucket).
func StorePersister(s *tokens.Store) Persister { return storePersister{s} }

type storePersister struct{ s *tokens.Store }

var _ Persister = storePersister{}

func (p storePersister) SaveLockouts(ws []Window) error {
	ls := make([]tokens.Lockout, len(ws))
	for i, w := range ws {
		ls[i] = tokens.Lockout(w)
	}
	return p.s.SaveLockouts(ls)
}

func (p storePersister) LoadLockouts() ([]Window, error) {
	ls, err := p.s.LoadLockouts()
	if err != nil {
		return nil, err
	}
	ws := make([]Window, len(ls))
	for i, l := range ls {
		ws[i] = Window(l)
	}
	return ws, nil
}

func (p storePersister) DeleteLockouts(connectionIDs []string) error {
	return p.s.DeleteLockouts(connectionIDs)
}
