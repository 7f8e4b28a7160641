package tokens

import (
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// dropResident tells the kernel that the pages of the bbolt file mapped
// while loading are not needed any more (madvise MADV_DONTNEED). Open
// reads every record once into memory and the request path never reads
// the file again, but the pages it touched would otherwise stay in the
// process's resident set, as large as the file. The mapping is shared and
// read-only, so the pages stay in the page cache and a later read or
// write transaction faults the few it needs back in; nothing is lost.
//
// It must run while nothing else uses the database: a write that grows
// the file remaps it, and advice given for an old mapping's addresses
// could then land on memory that is not the file's. Open's own load
// transaction calls it too, between records: a write transaction changes
// copies of pages on the heap and remaps only when it commits.
func dropResident(db *bolt.DB, size int64) {
	info := db.Info()
	if info == nil || info.Data == 0 || size <= 0 {
		return
	}
	// Advice only: an error leaves the pages resident, nothing worse.
	syscall.Syscall(syscall.SYS_MADVISE, info.Data, uintptr(size), syscall.MADV_DONTNEED)
}
