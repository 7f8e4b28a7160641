package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ampproxy/ampproxy/admin"
	"github.com/ampproxy/ampproxy/tokens"
)

const adminUsage = `Usage: ampproxy admin RESOURCE VERB [flags]

  connect --provider P --group-ref G --consumer-ref C [--workspace W] [--metadata name=value]
                       print the URL where the account owner connects an OAuth2 provider
  connections generate --provider P --group-ref G --consumer-ref C [credential flags]
  connections update   ID [--workspace W] [--metadata name=value] [credential flags]
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

Credential flags of connections generate and update (one kind, matching the provider's auth
type). A value given as @FILE is read from FILE, @- from standard input:
  --provider-key V                          API key
  --username U --password V                 basic auth
  --client-id ID --client-secret V [--scopes a,b]                OAuth2 client credentials
  --access-token V [--refresh-token V] [--expires-at RFC3339] [--scopes a,b]   OAuth2 tokens
  --workspace W, --metadata name=value (repeatable)   connection metadata

connections update replaces the credential when one is given, sets the metadata named (an
empty value, --metadata name=, removes it; other names keep their values) and sets the
connection's status back to created, clearing bad_credentials.

connect prints an authorization URL that is valid once and for 10 minutes. Whoever opens it
logs in at the provider and consents; the provider then sends the browser to the project's
providerApps.<provider>.redirectURL (this server's /v1/oauth/callback), which stores the
connection. The provider needs authType oauth2 with an authorization-code grant, and the
project a providerApps entry for it.
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
		if err := parseFlags(a.fs, args); err != nil {
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
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if len(args) > 0 && args[0] == "connect" {
		return oauthConnect(ctx, newAdminFlags("connect", stderr), args[1:], stdout, stderr)
	}
	if len(args) < 2 {
		fmt.Fprint(stderr, adminUsage)
		return fmt.Errorf("%w: admin needs a resource and a verb", errUsage)
	}
	res, verb, rest := args[0], args[1], args[2:]
	a := newAdminFlags(res+" "+verb, stderr)
	switch res + " " + verb {
	case "connections generate":
		return connectionsGenerate(ctx, a, rest, stdout)
	case "connections update":
		return connectionsUpdate(ctx, a, rest, stdout)
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
		v, err := a.client().GetConnection(ctx, id)
		if err != nil {
			return err
		}
		return printConnectionView(a.output, stdout, v)
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

// credentialFlags are the credential and metadata flags of connections
// generate and update.
type credentialFlags struct {
	workspace    *string
	meta         metadataFlag
	providerKey  *string
	username     *string
	password     *string
	clientID     *string
	clientSecret *string
	accessToken  *string
	refreshToken *string
	expiresAt    *string
	scopes       *string
}

func addCredentialFlags(fs *flag.FlagSet) *credentialFlags {
	f := &credentialFlags{meta: metadataFlag{}}
	f.workspace = fs.String("workspace", "", "provider workspace (the workspace metadata value)")
	fs.Var(f.meta, "metadata", "connection metadata name=value (repeatable)")
	f.providerKey = fs.String("provider-key", "", "API key for the provider (or @FILE)")
	f.username = fs.String("username", "", "basic auth user name")
	f.password = fs.String("password", "", "basic auth password (or @FILE)")
	f.clientID = fs.String("client-id", "", "OAuth2 client ID (client credentials)")
	f.clientSecret = fs.String("client-secret", "", "OAuth2 client secret (or @FILE)")
	f.accessToken = fs.String("access-token", "", "OAuth2 access token (or @FILE)")
	f.refreshToken = fs.String("refresh-token", "", "OAuth2 refresh token (or @FILE)")
	f.expiresAt = fs.String("expires-at", "", "access token expiry, RFC 3339")
	f.scopes = fs.String("scopes", "", "OAuth2 scopes, comma separated")
	return f
}

// credential reads @FILE values and returns the request with the
// credential fields set (at most one kind) and kinds, the number of kinds
// the flags gave.
func (f *credentialFlags) credential() (req admin.GenerateConnectionRequest, kinds int, err error) {
	var scopeList []string
	if *f.scopes != "" {
		scopeList = strings.Split(*f.scopes, ",")
	}
	read := func(name string, v *string) {
		if err == nil && *v != "" {
			*v, err = secretValue(name, *v)
		}
	}
	read("--provider-key", f.providerKey)
	read("--password", f.password)
	read("--client-secret", f.clientSecret)
	read("--access-token", f.accessToken)
	read("--refresh-token", f.refreshToken)
	if err != nil {
		return req, 0, err
	}
	if *f.providerKey != "" {
		kinds++
		req.APIKey = *f.providerKey
	}
	if *f.username != "" || *f.password != "" {
		kinds++
		req.BasicAuth = &admin.BasicAuth{Username: *f.username, Password: *f.password}
	}
	if *f.clientID != "" || *f.clientSecret != "" {
		kinds++
		req.OAuth2ClientCredentials = &admin.OAuth2ClientCredentials{ClientID: *f.clientID, ClientSecret: *f.clientSecret, Scopes: scopeList}
	}
	if *f.accessToken != "" || *f.refreshToken != "" {
		kinds++
		ac := &admin.OAuth2AuthorizationCode{Scopes: scopeList}
		ac.AccessToken.Token = *f.accessToken
		ac.RefreshToken.Token = *f.refreshToken
		if *f.expiresAt != "" {
			t, perr := time.Parse(time.RFC3339, *f.expiresAt)
			if perr != nil {
				return req, 0, fmt.Errorf("%w: --expires-at: %q is not an RFC 3339 time", errUsage, *f.expiresAt)
			}
			ac.AccessToken.ExpiresAt = t
		}
		req.OAuth2AuthorizationCode = ac
	}
	if kinds > 1 {
		return req, 0, fmt.Errorf("%w: give the credential flags of one kind only (API key, basic, client credentials or tokens)", errUsage)
	}
	return req, kinds, nil
}

func connectionsGenerate(ctx context.Context, a *adminFlags, args []string, stdout io.Writer) error {
	fs := a.fs
	provider := fs.String("provider", "", "provider name from the catalog (required)")
	group := fs.String("group-ref", "", "group the connection belongs to (required)")
	consumer := fs.String("consumer-ref", "", "consumer (user) who made the connection (required)")
	cf := addCredentialFlags(fs)
	if err := a.parse(args, 0); err != nil {
		return err
	}
	if err := required(a, map[string]string{"--provider": *provider, "--group-ref": *group, "--consumer-ref": *consumer}); err != nil {
		return err
	}
	req, _, err := cf.credential()
	if err != nil {
		return err
	}
	req.GroupRef, req.ConsumerRef, req.Provider = *group, *consumer, *provider
	req.ProviderWorkspaceRef = *cf.workspace
	if len(cf.meta) > 0 {
		req.ProviderMetadata = cf.meta
	}
	c, err := a.client().GenerateConnection(ctx, req)
	if err != nil {
		return err
	}
	return printConnections(a.output, stdout, c)
}

func connectionsUpdate(ctx context.Context, a *adminFlags, args []string, stdout io.Writer) error {
	cf := addCredentialFlags(a.fs)
	if err := a.parse(args, 1); err != nil {
		return err
	}
	cred, kinds, err := cf.credential()
	if err != nil {
		return err
	}
	if kinds == 0 && *cf.workspace == "" && len(cf.meta) == 0 {
		return fmt.Errorf("%w: %s: give --workspace, --metadata or credential flags", errUsage, a.fs.Name())
	}
	req := admin.UpdateConnectionRequest{
		ProviderWorkspaceRef:    *cf.workspace,
		APIKey:                  cred.APIKey,
		BasicAuth:               cred.BasicAuth,
		OAuth2ClientCredentials: cred.OAuth2ClientCredentials,
		OAuth2AuthorizationCode: cred.OAuth2AuthorizationCode,
	}
	if len(cf.meta) > 0 {
		req.ProviderMetadata = cf.meta
	}
	c, err := a.client().UpdateConnection(ctx, a.args[0], req)
	if err != nil {
		return err
	}
	return printConnections(a.output, stdout, c)
}

// oauthConnect prints the authorization URL alone on stdout, so that
// scripts can take it as is; the hint goes to stderr.
func oauthConnect(ctx context.Context, a *adminFlags, args []string, stdout, stderr io.Writer) error {
	fs := a.fs
	provider := fs.String("provider", "", "OAuth2 provider name from the catalog (required)")
	group := fs.String("group-ref", "", "group the connection will belong to (required)")
	consumer := fs.String("consumer-ref", "", "consumer (user) who connects (required)")
	workspace := fs.String("workspace", "", "provider workspace, when the authorization URL needs it")
	meta := metadataFlag{}
	fs.Var(meta, "metadata", "connection metadata name=value (repeatable)")
	if err := a.parse(args, 0); err != nil {
		return err
	}
	if err := required(a, map[string]string{"--provider": *provider, "--group-ref": *group, "--consumer-ref": *consumer}); err != nil {
		return err
	}
	req := admin.OAuthConnectRequest{
		ProjectIDOrName:      a.project,
		Provider:             *provider,
		GroupRef:             *group,
		ConsumerRef:          *consumer,
		ProviderWorkspaceRef: *workspace,
	}
	if len(meta) > 0 {
		req.ProviderMetadata = meta
	}
	u, err := a.client().OAuthConnect(ctx, req)
	if err != nil {
		return err
	}
	if a.output == "json" {
		return printJSON(stdout, map[string]string{"authorizationUrl": u})
	}
	fmt.Fprintf(stderr, "Open this URL in a browser to connect %s for group %s (valid once, for %d minutes):\n",
		*provider, *group, int(admin.ConnectStateTTL.Minutes()))
	_, err = fmt.Fprintln(stdout, u)
	return err
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

// printConnectionView prints one connection with its lockout window:
// RATE-LIMITED-UNTIL and RETRYABLE are "-" while no window is open, and
// the JSON is the server's view, rateLimitedUntil and retryable included
// while a window is open.
func printConnectionView(format string, w io.Writer, v *admin.ConnectionView) error {
	if format == "json" {
		return printJSON(w, v)
	}
	c := v.Connection
	until, retryable := "-", "-"
	if v.RateLimitedUntil != nil {
		until = v.RateLimitedUntil.UTC().Format(time.RFC3339)
	}
	if v.Retryable != nil {
		retryable = strconv.FormatBool(*v.Retryable)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROVIDER\tGROUP\tCONSUMER\tWORKSPACE\tAUTH\tSTATUS\tCREATED\tRATE-LIMITED-UNTIL\tRETRYABLE")
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Provider, c.GroupRef, c.ConsumerRef,
		dash(c.WorkspaceRef), c.AuthScheme, c.Status, c.CreateTime.UTC().Format(time.RFC3339), until, retryable)
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
