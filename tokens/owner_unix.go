//go:build unix

package tokens

import (
	"io/fs"
	"os"
	"syscall"
)

// ownedBySelf reports whether the process's effective user owns the file.
func ownedBySelf(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}

// modeBitsMeanAccess: on unix the permission bits are what the kernel checks.
const modeBitsMeanAccess = true
