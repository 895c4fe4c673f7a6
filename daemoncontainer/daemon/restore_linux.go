//go:build linux

package daemon

import "log/slog"

// restore takes up what a previous start of this container left in its
// State: the session to resume and the intercepts' mount tokens.
func (d *daemon) restore(log *slog.Logger) error {
	id, err := d.cfg.State.session()
	if err != nil {
		return err
	}
	saved, err := d.cfg.State.mounts()
	if err != nil {
		return err
	}
	if id == "" {
		return nil
	}
	d.conn.savedSession = id
	d.mounts.restore(saved)
	log.Info("restarted: resuming the session of the previous start", "intercepts", len(saved.Owned), "mountTokens", len(saved.Tokens))
	return nil
}
