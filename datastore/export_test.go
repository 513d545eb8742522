package datastore

// Content returns a copy of s without its change list, so that tests can compare the
// content of snapshots made by different syncers.
func Content(s *Snapshot) *Snapshot {
	if s == nil {
		return nil
	}
	c := *s
	c.changes = nil
	return &c
}
