package k8s

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The image cannot be built here (no container runtime), so the Dockerfile
// is parsed and its promises checked: a static build in a Go stage, a
// distroless or scratch final stage, a numeric non-root user, the binary as
// entrypoint, and the config path the Kubernetes manifests mount.

// instruction is one Dockerfile instruction after line continuations are
// joined and comments dropped.
type instruction struct {
	Line  int
	Cmd   string   // upper case: FROM, RUN, COPY, …
	Flags []string // leading --flag=value words
	Args  string   // the rest, as written
	JSON  []string // Args in exec (JSON array) form, when it is one
}

type stage struct {
	Base, Name string
	Ins        []instruction
}

// parseDockerfile reads the Dockerfile syntax that matters here: parser
// directives, comments, backslash continuations (comment lines inside a
// continuation are dropped, as Docker does), flags, and the exec form.
func parseDockerfile(data string) ([]instruction, error) {
	var out []instruction
	sc := bufio.NewScanner(strings.NewReader(data))
	escape := `\`
	directives := true
	var cur strings.Builder
	start := 0
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if directives {
			if m := regexp.MustCompile(`^#\s*(\w+)\s*=\s*(\S+)\s*$`).FindStringSubmatch(trimmed); m != nil {
				if strings.EqualFold(m[1], "escape") {
					escape = m[2]
				}
				continue
			}
			directives = false
		}
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if rest, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), escape); ok {
			cur.WriteString(rest)
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		ins, err := parseInstruction(start, cur.String())
		if err != nil {
			return nil, err
		}
		out = append(out, ins)
		cur.Reset()
	}
	if cur.Len() != 0 {
		return nil, fmt.Errorf("line %d: continuation at end of file", start)
	}
	return out, sc.Err()
}

func parseInstruction(line int, s string) (instruction, error) {
	fields := strings.Fields(s)
	ins := instruction{Line: line, Cmd: strings.ToUpper(fields[0])}
	rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), fields[0]))
	for strings.HasPrefix(rest, "--") {
		f, r, _ := strings.Cut(rest, " ")
		ins.Flags = append(ins.Flags, f)
		rest = strings.TrimSpace(r)
	}
	ins.Args = rest
	if strings.HasPrefix(rest, "[") {
		if err := json.Unmarshal([]byte(rest), &ins.JSON); err != nil {
			return ins, fmt.Errorf("line %d: %s: not a JSON array of strings: %v", line, ins.Cmd, err)
		}
	}
	switch ins.Cmd {
	case "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
		"WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER":
	default:
		return ins, fmt.Errorf("line %d: unknown instruction %s", line, ins.Cmd)
	}
	return ins, nil
}

func stages(ins []instruction) ([]stage, error) {
	var out []stage
	for _, in := range ins {
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			st := stage{Base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.Name = f[2]
			} else if len(f) != 1 {
				return nil, fmt.Errorf("line %d: FROM %s", in.Line, in.Args)
			}
			out = append(out, st)
			continue
		}
		if len(out) == 0 {
			if in.Cmd == "ARG" {
				continue
			}
			return nil, fmt.Errorf("line %d: %s before FROM", in.Line, in.Cmd)
		}
		out[len(out)-1].Ins = append(out[len(out)-1].Ins, in)
	}
	return out, nil
}

func TestDockerfileParser(t *testing.T) {
	ins, err := parseDockerfile("# syntax=docker/dockerfile:1\n# a comment\nFROM a AS b\nRUN x \\\n  # dropped\n  y\nCOPY --from=b /x /y\nCMD [\"a\", \"b\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%d|%s|%v|%q", len(ins), strings.Join(strings.Fields(ins[1].Args), " "), ins[2].Flags, ins[3].JSON)
	if want := `4|x y|[--from=b]|["a" "b"]`; got != want {
		t.Errorf("parsed %q, want %q", got, want)
	}
	for _, bad := range []string{"FROM a\nCMD [\"a\"\n", "FROM a\nRUN x \\\n", "RUNN x\n"} {
		if _, err := parseDockerfile(bad); err == nil {
			t.Errorf("%q parsed without error", bad)
		}
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	ins, err := parseDockerfile(string(data))
	if err != nil {
		t.Fatal(err)
	}
	sts, err := stages(ins)
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) < 2 {
		t.Fatalf("%d stage(s): want a build stage and a run stage", len(sts))
	}
	build, final := sts[0], sts[len(sts)-1]

	// The build stage: the Go of go.mod, modules cached in their own layer,
	// a static, trimmed build of cmd/ampproxy.
	gomod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	if want := "golang:" + string(m[1]); build.Base != want && !strings.HasPrefix(build.Base, want+"-") && !strings.HasPrefix(build.Base, want+".") {
		t.Errorf("build stage FROM %s, want %s (go.mod says go %s)", build.Base, want, m[1])
	}
	if build.Name == "" {
		t.Error("build stage has no name for the final stage to copy from")
	}
	var modCopy, download, srcCopy, goBuild = -1, -1, -1, -1
	var out string
	for i, in := range build.Ins {
		switch {
		case in.Cmd == "COPY" && strings.Fields(in.Args)[0] == "go.mod" && strings.Contains(in.Args, "go.sum"):
			modCopy = i
		case in.Cmd == "RUN" && strings.Contains(in.Args, "go mod download"):
			download = i
		case in.Cmd == "COPY" && strings.HasPrefix(in.Args, ". "):
			srcCopy = i
		case in.Cmd == "RUN" && strings.Contains(in.Args, "go build"):
			goBuild = i
			for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "-X main.version=", "./cmd/ampproxy"} {
				if !strings.Contains(in.Args, want) {
					t.Errorf("line %d: go build without %s", in.Line, want)
				}
			}
			if o := regexp.MustCompile(`-o\s+(\S+)`).FindStringSubmatch(in.Args); o != nil {
				out = o[1]
			}
		}
	}
	if !(modCopy >= 0 && modCopy < download && download < srcCopy && srcCopy < goBuild) {
		t.Error("want COPY go.mod go.sum, RUN go mod download, COPY . ., RUN go build, in that order, so that the module layer is cached")
	}
	if out == "" {
		t.Fatal("go build names no output file (-o)")
	}

	// The final stage: distroless or scratch, the binary from the build
	// stage, nothing run, a numeric non-root user.
	if !strings.HasPrefix(final.Base, "gcr.io/distroless/static") && final.Base != "scratch" {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static… or scratch", final.Base)
	}
	var binary, user string
	var entrypoint, cmd []string
	var exposed []string
	for _, in := range final.Ins {
		switch in.Cmd {
		case "COPY":
			if slices.Contains(in.Flags, "--from="+build.Name) && strings.HasPrefix(in.Args, out+" ") {
				binary = strings.Fields(in.Args)[1]
			}
		case "RUN", "ADD", "VOLUME":
			// RUN needs a shell that distroless lacks; VOLUME would put
			// state where the manifests mount nothing.
			t.Errorf("line %d: %s in the final stage", in.Line, in.Cmd)
		case "USER":
			user = in.Args
		case "ENTRYPOINT":
			entrypoint = in.JSON
			if in.JSON == nil {
				t.Errorf("line %d: ENTRYPOINT in shell form needs a shell; use the exec form", in.Line)
			}
		case "CMD":
			cmd = in.JSON
			if in.JSON == nil {
				t.Errorf("line %d: CMD in shell form; use the exec form", in.Line)
			}
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(in.Args)...)
		}
	}
	if binary == "" {
		t.Fatalf("the final stage does not copy %s from stage %s", out, build.Name)
	}
	if len(entrypoint) != 1 || entrypoint[0] != binary {
		t.Errorf("ENTRYPOINT %q, want [%q]", entrypoint, binary)
	}
	u := regexp.MustCompile(`^(\d+)(:(\d+))?$`).FindStringSubmatch(user)
	if u == nil {
		t.Errorf("USER %q: want a numeric uid[:gid], so that runAsNonRoot can verify it", user)
	} else if uid, _ := strconv.Atoi(u[1]); uid == 0 {
		t.Error("USER is root")
	} else if u[3] == "0" {
		t.Error("USER's group is root")
	}

	// The image's default command is the one the manifests run, and it
	// exposes the admin port they probe.
	s := loadSidecar(t)
	want := append([]string(nil), s.ampproxy.Args...)
	if s.ampproxy.Command != nil {
		t.Errorf("the sidecar overrides the image's entrypoint with %q", s.ampproxy.Command)
	}
	if fmt.Sprint(cmd) != fmt.Sprint(want) {
		t.Errorf("CMD %q, the manifests run %q", cmd, want)
	}
	cfg := loadConfig(t, s.r, s.pod, s.ampproxy, s.configPath)
	if admin := strconv.Itoa(int(port(t, cfg.Admin.Listen))); !slices.Contains(exposed, admin) && !slices.Contains(exposed, admin+"/tcp") {
		t.Errorf("EXPOSE %v lacks the admin port %s", exposed, admin)
	}
}

// TestDockerignoreKeepsBuildInputs: the build context keeps what the build
// reads (go.mod, go.sum, every package of cmd/ampproxy and every file a
// //go:embed names) and drops the repository's history and binaries.
func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf("exception %q: not understood by this test", l)
		}
		patterns = append(patterns, path.Clean(strings.TrimPrefix(l, "/")))
	}
	ignored := func(p string) bool {
		for _, pat := range patterns {
			for q := p; q != "." && q != "/"; q = path.Dir(q) {
				if ok, _ := path.Match(pat, q); ok {
					return true
				}
				if rest, found := strings.CutPrefix(pat, "**/"); found {
					if ok, _ := path.Match(rest, path.Base(q)); ok {
						return true
					}
				}
			}
		}
		return false
	}
	for _, p := range []string{".git", "bin/ampproxy"} {
		if !ignored(p) {
			t.Errorf("%s is sent to the build", p)
		}
	}
	needed := []string{"go.mod", "go.sum", "cmd/ampproxy/main.go"}
	embedRe := regexp.MustCompile(`(?m)^//go:embed\s+(.+)$`)
	err = filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, ".."+string(filepath.Separator)))
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && p != ".." || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range embedRe.FindAllStringSubmatch(string(src), -1) {
			for _, f := range strings.Fields(m[1]) {
				needed = append(needed, path.Join(path.Dir(rel), f))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range needed {
		if ignored(p) && !strings.HasPrefix(p, "k8s/") {
			t.Errorf(".dockerignore drops %s, which the build needs", p)
		}
	}
}
