package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/tokens"
)

const adminUsage = `Usage: ampproxy admin RESOURCE VERB [flags]

  connections generate --provider P --group-ref G --consumer-ref C [credential flags]
  connections list     [--provider P] [--group-ref G]
  connections get      ID
  connections delete   ID
  installations create --integration I --group-ref G [--connection ID]
  installations list   [--integration I]
  installations get    --integration I ID
  installations delete --integration I ID

Every command takes:
  --server URL      admin API address (default $AMPPROXY_SERVER or http://127.0.0.1:8081)
  --project ID      project ID (default $AMPPROXY_PROJECT)
  --api-key KEY     the project's API key (default $AMPPROXY_API_KEY; prefer the variable,
                    a flag shows in the process list)
  -o table|json     output format (default table)

Credential flags of connections generate (one kind, matching the provider's auth type).
A value given as @FILE is read from FILE, @- from standard input:
  --provider-key V                          API key
  --username U --password V                 basic auth
  --client-id ID --client-secret V [--scopes a,b]                OAuth2 client credentials
  --access-token V [--refresh-token V] [--expires-at RFC3339] [--scopes a,b]   OAuth2 tokens
  --workspace W, --metadata name=value (repeatable)   connection metadata
`

// adminFlags are the flags every admin command shares.
type adminFlags struct {
	fs      *flag.FlagSet
	server  string
	project string
	apiKey  string
	output  string
	args    []string // positional arguments
}

func newAdminFlags(name string, stderr io.Writer) *adminFlags {
	a := &adminFlags{fs: flag.NewFlagSet("ampproxy admin "+name, flag.ContinueOnError)}
	a.fs.SetOutput(stderr)
	a.fs.Usage = func() { fmt.Fprint(stderr, adminUsage) }
	a.fs.StringVar(&a.server, "server", envOr("AMPPROXY_SERVER", "http://127.0.0.1:8081"), "admin API base URL")
	a.fs.StringVar(&a.project, "project", os.Getenv("AMPPROXY_PROJECT"), "project ID")
	a.fs.StringVar(&a.apiKey, "api-key", os.Getenv("AMPPROXY_API_KEY"), "project API key")
	a.fs.StringVar(&a.output, "o", "table", "output format: table or json")
	return a
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// parse parses args and checks the shared flags; want is the number of
// positional arguments the command takes.
func (a *adminFlags) parse(args []string, want int) error {
	// Flags may come before or after the ID: parse again after each
	// positional argument.
	var pos []string
	for {
		if err := a.fs.Parse(args); err != nil {
			return err
		}
		if a.fs.NArg() == 0 {
			break
		}
		pos = append(pos, a.fs.Arg(0))
		args = a.fs.Args()[1:]
	}
	a.args = pos
	var problems []string
	if a.project == "" {
		problems = append(problems, "--project (or AMPPROXY_PROJECT) is required")
	}
	if a.apiKey == "" {
		problems = append(problems, "--api-key (or AMPPROXY_API_KEY) is required")
	}
	if a.output != "table" && a.output != "json" {
		problems = append(problems, fmt.Sprintf("-o must be table or json, not %q", a.output))
	}
	if len(a.args) != want {
		if len(a.args) > want {
			problems = append(problems, fmt.Sprintf("unexpected argument %q", a.args[want]))
		} else {
			problems = append(problems, "needs the ID as its argument")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s: %s", errUsage, a.fs.Name(), strings.Join(problems, "; "))
	}
	return nil
}

func (a *adminFlags) client() *admin.Client {
	return &admin.Client{BaseURL: strings.TrimRight(a.server, "/"), Project: a.project, APIKey: a.apiKey}
}

// adminCmd runs `ampproxy admin RESOURCE VERB ...`.
func adminCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, adminUsage)
		return nil
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, adminUsage)
		return fmt.Errorf("%w: admin needs a resource and a verb", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, verb, rest := args[0], args[1], args[2:]
	a := newAdminFlags(res+" "+verb, stderr)
	switch res + " " + verb {
	case "connections generate":
		return connectionsGenerate(ctx, a, rest, stdout)
	case "connections list":
		provider := a.fs.String("provider", "", "only connections of this provider")
		group := a.fs.String("group-ref", "", "only connections of this group")
		if err := a.parse(rest, 0); err != nil {
			return err
		}
		var all []*tokens.Connection
		token := ""
		for {
			items, next, err := a.client().ListConnections(ctx, admin.ConnectionFilter{Provider: *provider, GroupRef: *group}, 0, token)
			if err != nil {
				return err
			}
			all = append(all, items...)
			if next == "" {
				break
			}
			token = next
		}
		return printConnections(a.output, stdout, all...)
	case "connections get", "connections delete":
		if err := a.parse(rest, 1); err != nil {
			return err
		}
		id := a.args[0]
		if verb == "delete" {
			if err := a.client().DeleteConnection(ctx, id); err != nil {
				return err
			}
			return printDeleted(a.output, stdout, "connection", id)
		}
		c, err := a.client().GetConnection(ctx, id)
		if err != nil {
			return err
		}
		return printConnections(a.output, stdout, c)
	case "installations create":
		integ := a.fs.String("integration", "", "integration name from the manifest (required)")
		group := a.fs.String("group-ref", "", "group (required)")
		connID := a.fs.String("connection", "", "connection ID (default: the group's newest connection of the integration's provider)")
		if err := a.parse(rest, 0); err != nil {
			return err
		}
		if err := required(a, map[string]string{"--integration": *integ, "--group-ref": *group}); err != nil {
			return err
		}
		in, err := a.client().CreateInstallation(ctx, *integ, *group, *connID)
		if err != nil {
			return err
		}
		return printInstallations(a.output, stdout, in)
	case "installations list":
		integ := a.fs.String("integration", "", "only installations of this integration")
		if err := a.parse(rest, 0); err != nil {
			return err
		}
		var all []*tokens.Installation
		token := ""
		for {
			items, next, err := a.client().ListInstallations(ctx, *integ, 0, token)
			if err != nil {
				return err
			}
			all = append(all, items...)
			if next == "" {
				break
			}
			token = next
		}
		return printInstallations(a.output, stdout, all...)
	case "installations get", "installations delete":
		integ := a.fs.String("integration", "", "integration name (required)")
		if err := a.parse(rest, 1); err != nil {
			return err
		}
		if err := required(a, map[string]string{"--integration": *integ}); err != nil {
			return err
		}
		id := a.args[0]
		if verb == "delete" {
			if err := a.client().DeleteInstallation(ctx, *integ, id); err != nil {
				return err
			}
			return printDeleted(a.output, stdout, "installation", id)
		}
		in, err := a.client().GetInstallation(ctx, *integ, id)
		if err != nil {
			return err
		}
		return printInstallations(a.output, stdout, in)
	default:
		fmt.Fprint(stderr, adminUsage)
		return fmt.Errorf("%w: unknown admin command %q", errUsage, res+" "+verb)
	}
}

func required(a *adminFlags, flags map[string]string) error {
	var missing []string
	for name, v := range flags {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s: %s is required", errUsage, a.fs.Name(), strings.Join(missing, " and "))
}

// metadataFlag collects repeated --metadata name=value flags.
type metadataFlag map[string]string

func (m metadataFlag) String() string { return "" }

func (m metadataFlag) Set(v string) error {
	name, value, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want name=value, got %q", v)
	}
	m[name] = value
	return nil
}

// secretValue reads a flag value that may be @FILE or @- (stdin), so that
// secrets need not appear on the command line.
func secretValue(flagName, v string) (string, error) {
	path, ok := strings.CutPrefix(v, "@")
	if !ok {
		return v, nil
	}
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

func connectionsGenerate(ctx context.Context, a *adminFlags, args []string, stdout io.Writer) error {
	fs := a.fs
	provider := fs.String("provider", "", "provider name from the catalog (required)")
	group := fs.String("group-ref", "", "group the connection belongs to (required)")
	consumer := fs.String("consumer-ref", "", "consumer (user) who made the connection (required)")
	workspace := fs.String("workspace", "", "provider workspace (the workspace metadata value)")
	meta := metadataFlag{}
	fs.Var(meta, "metadata", "connection metadata name=value (repeatable)")
	providerKey := fs.String("provider-key", "", "API key for the provider (or @FILE)")
	username := fs.String("username", "", "basic auth user name")
	password := fs.String("password", "", "basic auth password (or @FILE)")
	clientID := fs.String("client-id", "", "OAuth2 client ID (client credentials)")
	clientSecret := fs.String("client-secret", "", "OAuth2 client secret (or @FILE)")
	accessToken := fs.String("access-token", "", "OAuth2 access token (or @FILE)")
	refreshToken := fs.String("refresh-token", "", "OAuth2 refresh token (or @FILE)")
	expiresAt := fs.String("expires-at", "", "access token expiry, RFC 3339")
	scopes := fs.String("scopes", "", "OAuth2 scopes, comma separated")
	if err := a.parse(args, 0); err != nil {
		return err
	}
	if err := required(a, map[string]string{"--provider": *provider, "--group-ref": *group, "--consumer-ref": *consumer}); err != nil {
		return err
	}
	req := admin.GenerateConnectionRequest{
		GroupRef:             *group,
		ConsumerRef:          *consumer,
		Provider:             *provider,
		ProviderWorkspaceRef: *workspace,
	}
	if len(meta) > 0 {
		req.ProviderMetadata = meta
	}
	var scopeList []string
	if *scopes != "" {
		scopeList = strings.Split(*scopes, ",")
	}
	var err error
	read := func(name string, v *string) {
		if err == nil && *v != "" {
			*v, err = secretValue(name, *v)
		}
	}
	read("--provider-key", providerKey)
	read("--password", password)
	read("--client-secret", clientSecret)
	read("--access-token", accessToken)
	read("--refresh-token", refreshToken)
	if err != nil {
		return err
	}
	kinds := 0
	if *providerKey != "" {
		kinds++
		req.APIKey = *providerKey
	}
	if *username != "" || *password != "" {
		kinds++
		req.BasicAuth = &admin.BasicAuth{Username: *username, Password: *password}
	}
	if *clientID != "" || *clientSecret != "" {
		kinds++
		req.OAuth2ClientCredentials = &admin.OAuth2ClientCredentials{ClientID: *clientID, ClientSecret: *clientSecret, Scopes: scopeList}
	}
	if *accessToken != "" || *refreshToken != "" {
		kinds++
		ac := &admin.OAuth2AuthorizationCode{Scopes: scopeList}
		ac.AccessToken.Token = *accessToken
		ac.RefreshToken.Token = *refreshToken
		if *expiresAt != "" {
			t, perr := time.Parse(time.RFC3339, *expiresAt)
			if perr != nil {
				return fmt.Errorf("%w: --expires-at: %q is not an RFC 3339 time", errUsage, *expiresAt)
			}
			ac.AccessToken.ExpiresAt = t
		}
		req.OAuth2AuthorizationCode = ac
	}
	if kinds > 1 {
		return fmt.Errorf("%w: give the credential flags of one kind only (API key, basic, client credentials or tokens)", errUsage)
	}
	c, err := a.client().GenerateConnection(ctx, req)
	if err != nil {
		return err
	}
	return printConnections(a.output, stdout, c)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printConnections prints one connection as an object, several as a list.
func printConnections(format string, w io.Writer, cs ...*tokens.Connection) error {
	if format == "json" {
		if len(cs) == 1 {
			return printJSON(w, cs[0])
		}
		return printJSON(w, map[string]any{"items": nonNil(cs)})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROVIDER\tGROUP\tCONSUMER\tWORKSPACE\tAUTH\tSTATUS\tCREATED")
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Provider, c.GroupRef, c.ConsumerRef,
			dash(c.WorkspaceRef), c.AuthScheme, c.Status, c.CreateTime.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func printInstallations(format string, w io.Writer, ins ...*tokens.Installation) error {
	if format == "json" {
		if len(ins) == 1 {
			return printJSON(w, ins[0])
		}
		return printJSON(w, map[string]any{"items": nonNil(ins)})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tINTEGRATION\tGROUP\tCONNECTION\tCREATED")
	for _, in := range ins {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.ID, in.Integration, in.GroupRef, in.ConnectionID,
			in.CreateTime.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func printDeleted(format string, w io.Writer, kind, id string) error {
	if format == "json" {
		return printJSON(w, map[string]string{"deleted": id})
	}
	_, err := fmt.Fprintf(w, "deleted %s %s\n", kind, id)
	return err
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
