package admin

import (
	"bytes"
	"html/template"
	"net/http"
)

// pageData is what the OAuth callback shows a person in a browser. Every
// value is escaped by html/template; none is a secret.
type pageData struct {
	Title     string
	Message   string
	Details   []pageDetail
	Next      string
	RequestID string
	Success   bool
}

type pageDetail struct{ Name, Value string }

// pageCSP allows nothing but the page's own inline style: the page loads
// no script, image, font or frame, and cannot be framed.
const pageCSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{.Title}} · ampproxy</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.4rem;margin:0 0 .5rem}
h1.ok{color:#1a7f37}h1.fail{color:#cf222e}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}
dt{font-weight:600}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
</style>
</head>
<body>
<h1 class="{{if .Success}}ok{{else}}fail{{end}}">{{.Title}}</h1>
<p>{{.Message}}</p>
{{- if or .Details .RequestID}}
<dl>
{{- range .Details}}
<dt>{{.Name}}</dt><dd>{{.Value}}</dd>
{{- end}}
{{- with .RequestID}}
<dt>Request ID</dt><dd>{{.}}</dd>
{{- end}}
</dl>
{{- end}}
{{- with .Next}}
<p>{{.}}</p>
{{- end}}
</body>
</html>
`))

// page answers with a small HTML page and headers that keep it from
// being cached, framed, sniffed or leaking the callback URL (which holds
// the code) as a referrer.
func (s *server) page(w http.ResponseWriter, r *http.Request, status int, d pageData) {
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, d); err != nil {
		// The template and its data are fixed; this does not happen.
		state(r).err = err
		status = http.StatusInternalServerError
		b.Reset()
		b.WriteString("<!doctype html><title>Error</title><p>Internal error.</p>\n")
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

func internalPage(requestID string, details []pageDetail) pageData {
	return pageData{
		Title:     "Internal error",
		Message:   "The server could not finish the connection. Nothing was stored.",
		Details:   details,
		Next:      "Ask the operator to look up the request ID in the server log, then start the connection again.",
		RequestID: requestID,
	}
}
