//go:build !unix

package tokens

import "io/fs"

func ownedBySelf(fs.FileInfo) bool { return false }

// modeBitsMeanAccess: elsewhere (Windows) the permission bits Go reports
// are made up from the read-only attribute and say nothing about who can
// read the file.
const modeBitsMeanAccess = false
