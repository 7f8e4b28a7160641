package config

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decodeStrict decodes data into v, rejecting unknown fields. It returns the
// document node (for locating later problems) and every decoding problem,
// each prefixed with the file name.
func decodeStrict(data []byte, file string, v any) (*yaml.Node, []error) {
	var errs []error
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		doc.Content = []*yaml.Node{nil}
	}
	root := doc.Content[0]
	if err := dec.Decode(v); err != nil {
		var te *yaml.TypeError
		switch {
		case errors.As(err, &te):
			for _, e := range te.Errors {
				errs = append(errs, locateTypeError(file, root, e))
			}
		case err.Error() == "EOF":
			errs = append(errs, fmt.Errorf("%s: file is empty", file))
			return nil, errs
		default:
			errs = append(errs, fmt.Errorf("%s: %w", file, err))
			return nil, errs
		}
	}
	return root, errs
}

// locateTypeError turns the decoder's "line N: message" into
// "file:N: field.path: message", naming the field as every other problem
// does.
func locateTypeError(file string, root *yaml.Node, e string) error {
	rest, ok := strings.CutPrefix(e, "line ")
	if !ok {
		return fmt.Errorf("%s: %s", file, e)
	}
	num, msg, ok := strings.Cut(rest, ": ")
	line, err := strconv.Atoi(num)
	if !ok || err != nil {
		return fmt.Errorf("%s: %s", file, e)
	}
	if path := pathAtLine(root, line, ""); path != "" {
		return fmt.Errorf("%s:%d: %s: %s", file, line, path, msg)
	}
	return fmt.Errorf("%s:%d: %s", file, line, msg)
}

// pathAtLine finds the dotted path of the value that starts on line.
func pathAtLine(n *yaml.Node, line int, prefix string) string {
	if n == nil {
		return ""
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if v.Line == line && v.Kind == yaml.ScalarNode {
				return p
			}
			if found := pathAtLine(v, line, p); found != "" {
				return found
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			if c.Line == line && c.Kind == yaml.ScalarNode {
				return p
			}
			if found := pathAtLine(c, line, p); found != "" {
				return found
			}
		}
	}
	return ""
}

// locator turns a field path into "file:line: path" for messages.
type locator struct {
	file string
	root *yaml.Node
}

// at formats the location of a dotted path such as "projects[0].apiKeys[1].sha256".
func (l locator) at(path string) string {
	line := l.line(path)
	if line > 0 {
		return fmt.Sprintf("%s:%d: %s", l.file, line, path)
	}
	return fmt.Sprintf("%s: %s", l.file, path)
}

// line finds the line of the deepest node on path that exists.
func (l locator) line(path string) int {
	n := l.root
	if n == nil {
		return 0
	}
	line := n.Line
	for part := range strings.SplitSeq(path, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			idx, _ = strconv.Atoi(part[i+1 : len(part)-1])
		}
		if name != "" {
			n = mapValue(n, name)
			if n == nil {
				return line
			}
			line = n.Line
		}
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// problems collects located errors.
type problems struct {
	loc  locator
	errs []error
}

func (p *problems) add(path, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", p.loc.at(path), fmt.Sprintf(format, args...)))
}
