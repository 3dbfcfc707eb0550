package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// get fetches path from the console over loopback HTTP, without following
// redirects.
func get(t *testing.T, srv *httptest.Server, method, path string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func checkSecurityHeaders(t *testing.T, path string, h http.Header) {
	t.Helper()
	for name, want := range map[string]string{
		"Content-Security-Policy": ContentSecurityPolicy,
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %s = %q, want %q", path, name, got, want)
		}
	}
}

// TestFilesServedWithTypesAndSecurityHeaders loads the page and every file
// it refers to (the stylesheet, the module script and the modules they
// import), as a browser would, and checks each answer's content type,
// security headers and cache validation.
func TestFilesServedWithTypesAndSecurityHeaders(t *testing.T) {
	mux := http.NewServeMux()
	h := NewHandler()
	mux.Handle(Prefix, h)
	mux.Handle("/ui", h)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, page := get(t, srv, "GET", "/ui/")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET /ui/: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	checkSecurityHeaders(t, "/ui/", resp.Header)

	// The policy forbids inline script, inline style and eval: the page
	// must not need them.
	for _, bad := range []string{"'unsafe-inline'", "'unsafe-eval'", "*"} {
		if strings.Contains(ContentSecurityPolicy, bad) {
			t.Errorf("the policy allows %s", bad)
		}
	}
	if m := regexp.MustCompile(`<script(?:[^>]*)>[^<]+</script>|<style|\sstyle=|\son[a-z]+=`).FindString(page); m != "" {
		t.Errorf("the page has inline code or style the policy refuses: %q", m)
	}

	// Every file the page and its modules refer to, with its type.
	wantType := map[string]string{".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
	refs := regexp.MustCompile(`(?:src|href)="([a-z]+\.(?:js|css))"|from '\./([a-z]+\.js)'`)
	seen := map[string]bool{}
	queue := []string{page}
	for len(queue) > 0 {
		text := queue[0]
		queue = queue[1:]
		for _, m := range refs.FindAllStringSubmatch(text, -1) {
			name := m[1] + m[2]
			if seen[name] {
				continue
			}
			seen[name] = true
			resp, body := get(t, srv, "GET", Prefix+name)
			ext := name[strings.LastIndex(name, "."):]
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != wantType[ext] {
				t.Errorf("GET %s: %d %q, want 200 %q", name, resp.StatusCode, resp.Header.Get("Content-Type"), wantType[ext])
			}
			checkSecurityHeaders(t, name, resp.Header)
			if strings.Contains(body, "eval(") || strings.Contains(body, "new Function") || strings.Contains(body, "innerHTML") {
				t.Errorf("%s builds code or markup from strings", name)
			}
			queue = append(queue, body)
		}
	}
	for _, name := range []string{"console.css", "console.js", "api.js", "stream.js", "view.js"} {
		if !seen[name] {
			t.Errorf("the page never loads %s", name)
		}
	}
	if len(seen) != len(h.files)-2 { // "" and index.html are the page
		t.Errorf("the page loads %d files, the console embeds %d besides the page: an unused file, or one not found", len(seen), len(h.files)-2)
	}

	// Revalidation: the same ETag gives 304 with no body; Cache-Control
	// makes the browser ask every time, so an upgrade is seen at once.
	etag := resp.Header.Get("ETag")
	if etag == "" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("GET /ui/: ETag %q, Cache-Control %q", etag, resp.Header.Get("Cache-Control"))
	}
	if resp, body := get(t, srv, "GET", "/ui/", "If-None-Match", etag); resp.StatusCode != 304 || body != "" {
		t.Fatalf("GET /ui/ with its ETag: %d %q, want 304", resp.StatusCode, body)
	}
	if resp, _ := get(t, srv, "GET", "/ui/console.js", "If-None-Match", etag); resp.StatusCode != 200 {
		t.Fatalf("another file's ETag revalidated console.js: %d", resp.StatusCode)
	}

	// /ui goes to /ui/; unknown files and writes are refused, with the
	// same headers.
	if resp, _ := get(t, srv, "GET", "/ui"); resp.StatusCode != 301 || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("GET /ui: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := get(t, srv, "GET", "/ui/../secret"); resp.StatusCode == 200 {
		t.Fatalf("GET /ui/../secret: %d", resp.StatusCode)
	}
	resp, _ = get(t, srv, "GET", "/ui/nothing.js")
	if resp.StatusCode != 404 {
		t.Fatalf("GET /ui/nothing.js: %d", resp.StatusCode)
	}
	checkSecurityHeaders(t, "/ui/nothing.js", resp.Header)
	if resp, _ := get(t, srv, "POST", "/ui/"); resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST /ui/: %d %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	if resp, body := get(t, srv, "HEAD", "/ui/console.js"); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD /ui/console.js: %d %q", resp.StatusCode, body)
	}
}
