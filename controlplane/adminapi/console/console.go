// Package console is the web console of the admin listener: a page under
// /ui/ that shows the services, rollouts and event trail of the node that
// serves it, live, and acts on them through the admin API (docs/console.md).
//
// The files are plain HTML, CSS and JavaScript modules written by hand and
// embedded in the binary: nothing to build, nothing fetched from elsewhere.
// They hold no secret; every call the page makes goes through the API's own
// token and role checks, so serving them needs no token.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// Prefix is where the console is served.
const Prefix = "/ui/"

//go:embed files
var files embed.FS

// ContentSecurityPolicy is sent with every console answer: scripts and
// styles only from the page's own files (no inline script or style element,
// no eval), connections only to the node that served it, and no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// contentTypes are the types of the console's files, fixed here rather than
// taken from the host's MIME tables (which differ between machines: a
// module script served as anything but JavaScript does not run under
// nosniff).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".svg":  "image/svg+xml",
}

// file is one embedded file, ready to serve.
type file struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the console: GET and HEAD of /ui/ (the page) and the files
// it loads, each with its content type, a strong ETag of its content (a
// browser revalidates and gets 304 until the binary changes) and the
// security headers. /ui redirects to /ui/.
type Handler struct {
	files map[string]file // by path under Prefix; "" is index.html
}

// NewHandler reads the embedded files once.
func NewHandler() *Handler {
	h := &Handler{files: map[string]file{}}
	err := fs.WalkDir(files, "files", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		name := strings.TrimPrefix(p, "files/")
		ctype, ok := contentTypes[path.Ext(name)]
		if !ok {
			return fmt.Errorf("%s: no content type for its extension", p)
		}
		f := file{body: body, contentType: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		h.files[name] = f
		if name == "index.html" {
			h.files[""] = f
		}
		return nil
	})
	if err != nil {
		// The files are in the binary: failing to read them is a build defect.
		panic("console: reading the embedded files: " + err.Error())
	}
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", ContentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Referrer-Policy", "no-referrer")
	if r.URL.Path == strings.TrimSuffix(Prefix, "/") {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, r.Method+" is not allowed on the console; use GET", http.StatusMethodNotAllowed)
		return
	}
	f, ok := h.files[strings.TrimPrefix(r.URL.Path, Prefix)]
	if !ok {
		http.Error(w, "no such console file "+r.URL.Path+"; the console is at "+Prefix, http.StatusNotFound)
		return
	}
	hdr.Set("Content-Type", f.contentType)
	hdr.Set("ETag", f.etag)
	// Revalidate every time: the ETag makes that a 304 until an upgrade
	// brings new files, so a browser never runs an old page on a new API.
	hdr.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
