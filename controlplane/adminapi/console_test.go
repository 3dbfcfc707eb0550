package adminapi

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/cbproxy/cbproxy/controlplane/adminapi/console"
)

// TestConsoleIsPublicItsCallsAreNot: with tokens configured, the console's
// files are served without a token (they hold no secret), with the security
// headers; every write the console makes is the API's own route, which a
// read token is refused (403 naming the role) before anything is proposed;
// and the documented answers around it stay as they were ("/" is still a
// JSON 404).
func TestConsoleIsPublicItsCallsAreNot(t *testing.T) {
	api := serveTestAPI(t,
		Token{Name: "viewer", Secret: "read-secret", Role: RoleRead},
		Token{Name: "root", Secret: "admin-secret", Role: RoleAdmin})
	base := "http://" + api.server.Addr()

	for _, path := range []string{"/ui/", "/ui/console.js"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(body) == 0 {
			t.Fatalf("GET %s without a token: %d", path, resp.StatusCode)
		}
		if resp.Header.Get("Content-Security-Policy") != console.ContentSecurityPolicy || resp.Header.Get("X-Frame-Options") != "DENY" ||
			resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("GET %s: security headers missing: %v", path, resp.Header)
		}
	}
	if a := api.call(t, "", "GET", "/", ""); a.status != 404 || a.body["code"] != "not_found" {
		t.Fatalf("GET /: %d %v, want the API's JSON 404", a.status, a.body)
	}
	if a := api.call(t, "", "GET", "/v1/services", ""); a.status != 401 {
		t.Fatalf("the API without a token: %d %v", a.status, a.body)
	}

	version := api.putShop(t, "admin-secret")
	proposed := api.node.proposals.Load()
	v := `{"if_version":` + strconv.FormatUint(version, 10) + `}`
	drain := "/v1/services/shop/pools/canary/backends/" + url.PathEscape("127.0.0.1:9003") + "/drain"
	// The calls the console's actions make (console.js), as it makes them.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/services/shop/switch", `{"to":"canary","force":false,"if_version":` + strconv.FormatUint(version, 10) + `}`},
		{"PUT", "/v1/services/shop/weights", `{"weights":{"blue":50,"canary":50},"force":false,"if_version":` + strconv.FormatUint(version, 10) + `}`},
		{"POST", "/v1/services/shop/rollout", `{"to":"canary","strategy":"canary","gate":"auto","steps":[{"weight":10,"hold":"1m"},{"weight":100}],"force":false,"if_version":` + strconv.FormatUint(version, 10) + `}`},
		{"POST", "/v1/services/shop/rollout/pause", v},
		{"POST", "/v1/services/shop/rollout/resume", v},
		{"POST", "/v1/services/shop/rollout/promote", v},
		{"POST", "/v1/services/shop/rollout/abort", v},
		{"POST", "/v1/services/shop/rollback", v},
		{"POST", drain, v},
		{"DELETE", drain, v},
	} {
		a := api.call(t, "read-secret", c.method, c.path, c.body)
		if a.status != 403 || a.body["code"] != "forbidden" || !strings.Contains(a.body["error"].(string), `token "viewer" has role read; this call needs operate`) {
			t.Fatalf("%s %s with a read token: %d %v", c.method, c.path, a.status, a.body)
		}
	}
	if n := api.node.proposals.Load() - proposed; n != 0 {
		t.Fatalf("%d refused console calls reached the state machine", n)
	}
}
