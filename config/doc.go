// Package config loads ampproxy.yaml and each project's amp.yaml manifest
// (DESIGN §4), with the provider catalog and its override file.
//
// Loading is strict and complete: unknown fields are errors, and every
// problem in the server config, the manifests and the catalog override is
// reported at once, each as "file:line: field.path: what is wrong", so
// `ampproxy check` can list them all. Relative paths are resolved against
// the directory of the file that names them. When the catalog override
// fails to load, manifests and providerApps are still checked, against the
// embedded catalog; only names the broken override declares go unchecked.
//
// It owns parsing and validation and the project API-key ring (KeyRing):
// keys are compared as SHA-256 digests in constant time, and keys given by
// file are re-read when the file changes, since Kubernetes rotates mounted
// Secrets in place. A key file must hold at least MinAPIKeyLen (32) bytes
// once surrounding whitespace is trimmed, and no placeholder such as
// REPLACE_ME in any case: the Kubernetes bases ship one, and a deployment
// nobody filled in must not start. A key given by its sha256 cannot be
// judged. It does not open the store or listen on anything.
//
// # Reloading
//
// `ampproxy serve` reloads on SIGHUP and when the config file, a manifest
// or the catalog override file changes (checked every 2 s). A reload is
// whole or nothing: a file with problems is rejected with a log line that
// names it, and the running config stays. Projects, API keys, manifests,
// provider apps, the catalog override and shutdown.drainTimeout take
// effect at once; client secret files are read at each token request.
// grpc (listen and messageTimeout), admin.listen, admin.pprof, storage,
// throttle and log (level and format) are read only at start: a reload
// that changes them logs which ones, keeps their running values, and
// applies the rest.
//
// shutdown.drainTimeout (default 20s) bounds how long open ext_proc
// streams may finish after SIGTERM; a Kubernetes pod's
// terminationGracePeriodSeconds must exceed it.
//
// # Caveats
//
// A Config is immutable once loaded; reloading builds a new one and swaps
// it. KeyRing.Refresh compares file metadata (mtime, size, inode), and the
// server calls it on a timer rather than relying on inotify, which does
// not see Kubernetes' symlink swaps reliably. A key file that disappears,
// cannot be read, or turns empty, short or a placeholder keeps its last
// key, so that a swap caught half-way never locks callers out; Refresh
// returns each such problem once (serve logs it as a warning, naming the
// file, never the key) and takes the file's key again once it is good.
// Rotate a key by changing the file, and revoke one by rotating it or by
// removing its entry from the config: deleting the file does not revoke.
package config
