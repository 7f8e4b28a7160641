//go:build !linux

package tokens

import bolt "go.etcd.io/bbolt"

// dropResident is a no-op where madvise is not used; see the Linux file.
func dropResident(*bolt.DB, int64) {}
