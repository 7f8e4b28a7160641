// Package tokens owns ampproxy's persistent state about provider
// credentials: connections (a group's credential for one provider, with its
// metadata), installations (a group's use of an integration, bound to a
// connection), and the encryption of those credentials at rest.
//
// A Store keeps everything in one bbolt file. Each connection's credential
// is sealed on its own with AES-256-GCM under a 32-byte key (see LoadKey),
// bound to the connection's ID, so no secret is ever written in plaintext
// and a sealed credential cannot be moved to another record. At Open the
// whole file is read and every credential decrypted once; from then on the
// look-ups on the request path (Connection, ConnectionByGroup, Installation,
// InstallationByGroup) are served from memory, without allocation, disk
// access or decryption. Each write is one bbolt transaction, and memory
// changes only after it has committed.
//
// The package does not refresh OAuth2 tokens, talk to providers, validate
// provider metadata against the catalog, check that a connection's provider
// fits an integration, or authenticate callers: those belong to the code
// that calls it. Nor does it keep lockout windows.
//
// Consumers depend on the few methods they use through interfaces of their
// own (extproc.Store, for instance), so a second implementation backed by a
// distributed store can take the place of this one (DESIGN §7).
//
// # Caveats
//
//   - One process per file. bbolt takes an exclusive lock on the file; a
//     second Open, from another process or the same one, waits
//     Options.OpenTimeout and then fails with ErrLocked. Several replicas
//     need the planned distributed store, not a shared file.
//   - Everything is held in memory, so the store's size is bounded by RAM;
//     the file never shrinks after deletions.
//   - Key rotation is not yet supported: a store opens only with the key it
//     was created with, and losing the key loses every credential. Back the
//     key file up apart from the data file. With random nonces one key
//     should seal no more than 2^32 credentials over its life, far beyond
//     what token refreshes produce, but a bound rotation will have to keep.
//   - Decrypted credentials live in process memory for the life of the
//     Store; their String, GoString, LogValue and MarshalJSON redact them,
//     but a core dump would not.
package tokens
