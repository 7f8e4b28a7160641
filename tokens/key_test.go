package tokens

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestLoadKey(t *testing.T) {
	raw := sha256.Sum256([]byte("a key"))
	b64 := base64.StdEncoding.EncodeToString(raw[:])
	short := base64.StdEncoding.EncodeToString(raw[:16])
	const garbage = "hunter2-this-is-not-a-key!"

	tests := []struct {
		name    string
		content []byte
		want    []byte
		wantErr []string // substrings of the error; nil means success
		secret  string   // must not appear in the error
	}{
		{name: "raw 32 bytes", content: raw[:], want: raw[:]},
		{name: "raw 32 bytes with newline byte inside", content: bytes.Repeat([]byte{'\n'}, 32), want: bytes.Repeat([]byte{'\n'}, 32)},
		{name: "base64", content: []byte(b64), want: raw[:]},
		{name: "base64 with newline", content: []byte(b64 + "\n"), want: raw[:]},
		{name: "base64 with CRLF and spaces", content: []byte(b64 + "  \r\n"), want: raw[:]},
		{name: "garbage", content: []byte(garbage), wantErr: []string{"neither 32 raw bytes nor valid standard base64", "32 random bytes"}, secret: garbage},
		{name: "base64 of 16 bytes", content: []byte(short + "\n"), wantErr: []string{"decodes to 16 bytes", "32 random bytes"}, secret: short},
		{name: "raw 31 bytes", content: raw[:31], wantErr: []string{"32 random bytes"}, secret: string(raw[:31])},
		{name: "raw 33 bytes", content: append(raw[:], 'x'), wantErr: []string{"32 random bytes"}, secret: string(raw[:])},
		{name: "empty", content: nil, wantErr: []string{"is empty"}},
		{name: "only whitespace", content: []byte(" \n"), wantErr: []string{"is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "master.key")
			if err := os.WriteFile(path, tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, create := range []bool{false, true} {
				got, err := LoadKey(path, create)
				if tt.wantErr == nil {
					if err != nil {
						t.Fatalf("LoadKey(create=%v): %v", create, err)
					}
					if !bytes.Equal(got, tt.want) {
						t.Fatalf("LoadKey(create=%v) returned a different key", create)
					}
					continue
				}
				if err == nil {
					t.Fatalf("LoadKey(create=%v) succeeded, want an error", create)
				}
				msg := err.Error()
				for _, s := range append(tt.wantErr, path) {
					if !strings.Contains(msg, s) {
						t.Errorf("error %q does not contain %q", msg, s)
					}
				}
				if tt.secret != "" && strings.Contains(msg, tt.secret) {
					t.Errorf("error echoes the file's content: %q", msg)
				}
			}
			// A bad key file is never replaced, even with create.
			if after, _ := os.ReadFile(path); !bytes.Equal(after, tt.content) {
				t.Error("the key file was changed")
			}
		})
	}
}

func TestLoadKeyMissing(t *testing.T) {
	t.Run("without create", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "master.key")
		_, err := LoadKey(path, false)
		if err == nil {
			t.Fatal("LoadKey succeeded on a missing file")
		}
		for _, s := range []string{path, "storage.createKey", "provide the key"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not contain %q", err, s)
			}
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("LoadKey without create left a file behind: %v", err)
		}
	})

	t.Run("with create", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "new", "dir")
		path := filepath.Join(dir, "master.key")
		key, err := LoadKey(path, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(key) != KeySize || bytes.Equal(key, make([]byte, KeySize)) {
			t.Fatalf("created key is %d bytes or all zero", len(key))
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if runtime.GOOS != "windows" {
			if perm := fi.Mode().Perm(); perm != 0o600 {
				t.Errorf("key file mode %o, want 600", perm)
			}
			di, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if perm := di.Mode().Perm(); perm != 0o700 {
				t.Errorf("key directory mode %o, want 700", perm)
			}
		}
		content, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if want := base64.StdEncoding.EncodeToString(key) + "\n"; string(content) != want {
			t.Error("key file is not the key in base64 with a newline")
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 {
			t.Errorf("directory holds %d entries, want only the key file", len(entries))
		}

		// The created key is the one read back, with or without create,
		// and it opens a store.
		for _, create := range []bool{false, true} {
			again, err := LoadKey(path, create)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, key) {
				t.Fatalf("LoadKey(create=%v) after creation returned another key", create)
			}
		}
		s, err := Open(filepath.Join(dir, "store.db"), key, Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
}

func TestCreateKeyKeepsExistingFile(t *testing.T) {
	// Another process may create the key between LoadKey's read and its
	// link: the file that is there wins.
	path := filepath.Join(t.TempDir(), "master.key")
	theirs := sha256.Sum256([]byte("theirs"))
	if err := os.WriteFile(path, theirs[:], 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := createKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, theirs[:]) {
		t.Error("createKey did not return the key already in place")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, theirs[:]) {
		t.Error("createKey replaced an existing key file")
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key file", len(entries))
	}
}

// TestLooseKeyPermissions: others' access always counts, the group's only
// when the process owns the file (a Secret mounted through fsGroup is
// owned by root and readable by the group, which is how the process reads
// it).
func TestLooseKeyPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("permission bits do not describe access on Windows")
	}
	path := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode  os.FileMode
		loose bool
	}{
		{0o600, false},
		{0o400, false},
		{0o640, true},
		{0o620, true},
		{0o604, true},
		{0o644, true},
		{0o602, true},
	} {
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		mode, loose, err := LooseKeyPermissions(path)
		if err != nil || mode != tc.mode || loose != tc.loose {
			t.Errorf("mode %v: LooseKeyPermissions = %v, %v, %v; want loose %v", tc.mode, mode, loose, err, tc.loose)
		}
	}
	if _, _, err := LooseKeyPermissions(path + ".missing"); err == nil {
		t.Error("a missing file gave no error")
	}
	// Owned by another user, group access is how the process reads it.
	if os.Geteuid() != 0 {
		t.Log("not root: the case of a file owned by another user is not run")
		return
	}
	if err := os.Chown(path, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode  os.FileMode
		loose bool
	}{{0o440, false}, {0o640, false}, {0o444, true}} {
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		if _, loose, _ := LooseKeyPermissions(path); loose != tc.loose {
			t.Errorf("mode %v owned by another user: loose = %v, want %v", tc.mode, loose, tc.loose)
		}
	}
}
