package proxymod

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// testRoute returns a fresh route (not in the registry) for table tests.
func testRoute(name string) *route {
	return newRoute(name)
}

// canaryTable builds a blue/canary/green table with canary at the given
// share (basis points), green at 0, blue the rest.
func canaryTable(r *route, canary state.Weight) *RoutingTable {
	svc := service(r.name, map[string]state.Weight{"blue": state.Total - canary, "canary": canary, "green": 0}, map[string][]string{
		"blue": {"10.0.0.1:80"}, "canary": {"10.0.0.2:80"}, "green": {"10.0.0.3:80"},
	})
	return r.buildTable(svc, false, nil, newRouteRegistry().backendHealth)
}

// provisioned returns h with its choice settings prepared as Provision does.
func provisioned(t testing.TB, h *Handler) *Handler {
	t.Helper()
	if h.Service == "" {
		h.Service = "svc"
	}
	if err := h.provisionChoice(); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestMixIsInvertible(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, x := range []uint64{0, 1, 1 << 63, ^uint64(0), rng.Uint64(), rng.Uint64()} {
		if got := unmix(mix(x)); got != x {
			t.Errorf("unmix(mix(%#x)) = %#x", x, got)
		}
		if got := mix(unmix(x)); got != x {
			t.Errorf("mix(unmix(%#x)) = %#x", x, got)
		}
	}
	for b := range slotCount {
		if got := tokenBucket(tokenFor(b)); got != b {
			t.Fatalf("tokenFor(%d) lands in bucket %d", b, got)
		}
	}
}

// testSeal seals cookies as a node with testStickyKey does.
var testSeal = func() *cookieSeal {
	s, err := newCookieSeal(testStickyKey)
	if err != nil {
		panic(err)
	}
	return s
}()

func TestCookieSealRoundTrip(t *testing.T) {
	for _, tok := range []uint64{0, 0xff, 0x0123456789abcdef, ^uint64(0)} {
		s := testSeal.seal(tok)
		if len(s) != tokenDigits {
			t.Errorf("seal(%#x) = %q: not %d digits", tok, s, tokenDigits)
		}
		if got, ok := testSeal.open(s); !ok || got != tok {
			t.Errorf("open(%q) = %#x, %v", s, got, ok)
		}
		if got, ok := testSeal.open(strings.ToUpper(s)); !ok || got != tok {
			t.Errorf("open(%q) = %#x, %v", strings.ToUpper(s), got, ok)
		}
	}
	other, _ := newCookieSeal([]byte("another-key-16by"))
	for _, bad := range []string{"", "ff", "00000000000000ff", // the unsealed format of old
		strings.Repeat("0", tokenDigits), strings.Repeat("g", tokenDigits), testSeal.seal(7) + "0", " " + testSeal.seal(7)[1:],
		other.seal(7), // sealed by another cluster
	} {
		if _, ok := testSeal.open(bad); ok {
			t.Errorf("open(%q) accepted", bad)
		}
	}
}

func TestStickyToken(t *testing.T) {
	const name = "cbproxy_svc"
	ff, one, two := testSeal.seal(0xff), testSeal.seal(1), testSeal.seal(2)
	tests := []struct {
		name  string
		lines []string
		want  uint64
		ok    bool
	}{
		{"alone", []string{"cbproxy_svc=" + ff}, 0xff, true},
		{"among others", []string{"a=1; cbproxy_svc=" + ff + "; b=2"}, 0xff, true},
		{"spaces", []string{"a=1;  cbproxy_svc = " + ff + " ;b=2"}, 0xff, true},
		{"quoted", []string{`cbproxy_svc="` + ff + `"`}, 0xff, true},
		{"second header line", []string{"a=1", "cbproxy_svc=" + one}, 1, true},
		{"invalid first, valid second", []string{"cbproxy_svc=zz; cbproxy_svc=" + two}, 2, true},
		{"forged", []string{"cbproxy_svc=00000000000000ff"}, 0, false},
		{"missing", []string{"a=1; b=2"}, 0, false},
		{"longer name", []string{"xcbproxy_svc=" + ff}, 0, false},
		{"prefix of name", []string{"cbproxy_sv=" + ff}, 0, false},
		{"not a token", []string{"cbproxy_svc=hello"}, 0, false},
		{"no value", []string{"cbproxy_svc"}, 0, false},
		{"empty", nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := stickyToken(tt.lines, name, testSeal)
			if ok != tt.ok || got != tt.want {
				t.Fatalf("stickyToken(%q) = %#x, %v; want %#x, %v", tt.lines, got, ok, tt.want, tt.ok)
			}
		})
	}
	if _, ok := stickyToken([]string{"cbproxy_svc=" + ff}, name, nil); ok {
		t.Error("without a seal no cookie is honoured")
	}
}

// TestForgedStickyCookie: a client that writes itself a cookie for a bucket
// in canary's range (the attack: pin itself to canary, then push its P95 up
// with slow requests or dilute its errors with fast ones) is not pinned: it
// is a new client, and the split chooses its pool.
func TestForgedStickyCookie(t *testing.T) {
	r := testRoute("svc")
	tbl := canaryTable(r, 100) // canary owns buckets [9900, 10000)
	h := provisioned(t, &Handler{Sticky: &Sticky{Mode: stickyCookie}})
	forgeries := []string{
		// The unsealed format of old, for bucket 9950: it used to pin.
		fmt.Sprintf("%016x", tokenFor(9950)),
		// A sealed-looking value for the same token, sealed with a guess.
		func() string { s, _ := newCookieSeal([]byte("guessed-key-16by")); return s.seal(tokenFor(9950)) }(),
	}
	for _, forged := range forgeries {
		canary := 0
		for range 1000 {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Cookie", "cbproxy_svc="+forged)
			i, how := h.choosePool(tbl, req)
			if how != byNewKey {
				t.Fatalf("forged cookie %q was honoured (chosen by %d)", forged, how)
			}
			if tbl.pools[i].name == "canary" {
				canary++
			}
		}
		if canary > 20 {
			t.Errorf("forged cookie %q: %d of 1000 requests on canary at 1 %%", forged, canary)
		}
	}
}

func TestChoosePoolOverride(t *testing.T) {
	r := testRoute("svc")
	// canary weight 0 but with a backend; green has none available.
	svc := service("svc", map[string]state.Weight{"blue": 10000, "canary": 0, "green": 0}, map[string][]string{
		"blue": {"10.0.0.1:80"}, "canary": {"10.0.0.2:80"}, "green": {"~10.0.0.3:80"},
	})
	tbl := r.buildTable(svc, false, nil, newRouteRegistry().backendHealth)
	plain := provisioned(t, &Handler{OverrideHeader: &OverrideHeader{Name: "x-cbproxy-pool"}})
	secret := provisioned(t, &Handler{OverrideHeader: &OverrideHeader{Name: "X-Cbproxy-Pool", Secret: "s3cret"}})
	tests := []struct {
		name    string
		h       *Handler
		value   string
		want    string
		present bool
	}{
		{"pool name", plain, "canary", "canary", true},
		{"unknown pool", plain, "purple", "blue", true},
		{"pool without available backend", plain, "green", "blue", true},
		{"secret form without secret configured", plain, "canary;s3cret", "blue", true},
		{"no header", plain, "", "blue", false},
		{"with secret", secret, "canary;s3cret", "canary", true},
		{"wrong secret", secret, "canary;s3creT", "blue", true},
		{"secret too short", secret, "canary;s3cre", "blue", true},
		{"missing secret", secret, "canary", "blue", true},
		{"empty secret", secret, "canary;", "blue", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tt.present {
				req.Header.Set("X-Cbproxy-Pool", tt.value)
			}
			i, how := tt.h.choosePool(tbl, req)
			if got := tbl.pools[i].name; got != tt.want || (how == byOverride) != (got == tt.value || strings.HasPrefix(tt.value, got+";")) {
				t.Fatalf("override %q: pool %s (chosen by %d), want %s", tt.value, got, how, tt.want)
			}
			if _, ok := req.Header["X-Cbproxy-Pool"]; ok {
				t.Fatal("the override header must be removed before proxying")
			}
		})
	}
}

func TestChoosePoolSplit(t *testing.T) {
	r := testRoute("svc")
	tbl := canaryTable(r, 100)
	h := provisioned(t, &Handler{})
	counts := map[string]int{}
	for range slotCount {
		i, how := h.choosePool(tbl, httptest.NewRequest(http.MethodGet, "/", nil))
		if how != bySplit {
			t.Fatal("no cookie without stickiness")
		}
		counts[tbl.pools[i].name]++
	}
	if counts["blue"] != 9900 || counts["canary"] != 100 || counts["green"] != 0 {
		t.Fatalf("10,000 requests at 99/1 split %v", counts)
	}
}

// stickyClient plays a browser: it keeps the cookie it is given.
type stickyClient struct{ cookie string }

func (c *stickyClient) visit(t *testing.T, h *Handler, tbl *RoutingTable) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	if c.cookie != "" {
		req.Header.Set("Cookie", c.cookie)
	}
	i, how := h.choosePool(tbl, req)
	if how == byNewKey {
		rec := httptest.NewRecorder()
		h.setStickyCookie(rec, req, &tbl.pools[i])
		cookies := rec.Result().Cookies()
		if len(cookies) != 1 {
			t.Fatalf("want one Set-Cookie, got %q", rec.Header()["Set-Cookie"])
		}
		ck := cookies[0]
		if ck.Name != h.cookieName || ck.Path != "/" || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.MaxAge != h.cookieMaxAge {
			t.Fatalf("cookie attributes: %q", rec.Header()["Set-Cookie"])
		}
		c.cookie = ck.Name + "=" + ck.Value
	} else if c.cookie == "" {
		t.Fatal("a client without a cookie must be given one")
	}
	return tbl.pools[i].name
}

func TestStickyCookieRamp(t *testing.T) {
	r := testRoute("svc")
	h := provisioned(t, &Handler{Sticky: &Sticky{Mode: stickyCookie}})
	if h.cookieName != "cbproxy_svc" || h.cookieMaxAge != 86400 {
		t.Fatalf("cookie defaults: %q, %d s", h.cookieName, h.cookieMaxAge)
	}
	clients := make([]stickyClient, 20000)
	onCanary := map[int]bool{}
	tbl := canaryTable(r, 100) // 1 %
	for i := range clients {
		pool := clients[i].visit(t, h, tbl)
		if again := clients[i].visit(t, h, tbl); again != pool {
			t.Fatalf("client %d moved from %s to %s without a weight change", i, pool, again)
		}
		if pool == "canary" {
			onCanary[i] = true
		}
	}
	// The split placed new clients exactly.
	if len(onCanary) != 200 {
		t.Fatalf("%d of %d new clients on canary at 1 %%, want 200", len(onCanary), len(clients))
	}
	for _, pct := range []state.Weight{500, 2500, 5000} {
		tbl := canaryTable(r, pct)
		canaryNow := 0
		for i := range clients {
			pool := clients[i].visit(t, h, tbl)
			if onCanary[i] && pool != "canary" {
				t.Fatalf("client %d left canary at %v %%", i, pct)
			}
			if pool == "canary" {
				canaryNow++
			}
		}
		// Clients are spread over buckets: the share follows the weight.
		if want := len(clients) * int(pct) / slotCount; canaryNow < want*8/10 || canaryNow > want*12/10 {
			t.Errorf("at %v %%: %d of %d clients on canary, want about %d", pct, canaryNow, len(clients), want)
		}
	}
	// Rollback: canary back to 0 moves every client off it.
	tbl = canaryTable(r, 0)
	for i := range clients {
		if pool := clients[i].visit(t, h, tbl); pool == "canary" {
			t.Fatalf("client %d still on canary after rollback", i)
		}
	}
}

func TestStickyHeader(t *testing.T) {
	r := testRoute("svc")
	h := provisioned(t, &Handler{Sticky: &Sticky{Mode: stickyHeader, Name: "x-user-id"}})
	choose := func(tbl *RoutingTable, user string) string {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if user != "" {
			req.Header.Set("X-User-Id", user)
		}
		i, how := h.choosePool(tbl, req)
		if how == byNewKey {
			t.Fatal("header mode never sets a cookie")
		}
		return tbl.pools[i].name
	}
	at1 := canaryTable(r, 100)
	var canaryUsers []string
	for u := range 50000 {
		user := "user-" + strconv.Itoa(u)
		if choose(at1, user) == "canary" {
			canaryUsers = append(canaryUsers, user)
		}
	}
	if n := len(canaryUsers); n < 350 || n > 650 {
		t.Fatalf("%d of 50000 users on canary at 1 %%, want about 500", n)
	}
	at5, at0 := canaryTable(r, 500), canaryTable(r, 0)
	for _, u := range canaryUsers {
		if choose(at5, u) != "canary" {
			t.Fatalf("user %s left canary at 5 %%", u)
		}
		if choose(at0, u) == "canary" {
			t.Fatalf("user %s on canary at 0 %%", u)
		}
	}
	// Without the header: the exact split.
	counts := map[string]int{}
	for range slotCount {
		counts[choose(at1, "")]++
	}
	if counts["canary"] != 100 {
		t.Errorf("requests without a key: %v, want exactly 100 on canary", counts)
	}
}

func TestSetStickyCookieSecure(t *testing.T) {
	r := testRoute("svc")
	tbl := canaryTable(r, 5000)
	h := provisioned(t, &Handler{Sticky: &Sticky{Mode: stickyCookie, Name: "sid", MaxAge: 0}})
	req := httptest.NewRequest(http.MethodGet, "https://example.com/", nil)
	rec := httptest.NewRecorder()
	h.setStickyCookie(rec, req, &tbl.pools[1])
	if sc := rec.Header().Get("Set-Cookie"); !strings.HasPrefix(sc, "sid=") || !strings.Contains(sc, "Secure") {
		t.Errorf("cookie over TLS: %q, want sid=… with Secure", sc)
	}
}

func BenchmarkChoosePool(b *testing.B) {
	r := testRoute("svc")
	tbl := canaryTable(r, 100)
	b.Run("split", func(b *testing.B) {
		h := provisioned(b, &Handler{})
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		b.ReportAllocs()
		for b.Loop() {
			h.choosePool(tbl, req)
		}
	})
	b.Run("split_pool_down", func(b *testing.B) {
		// Canary's share is owed but it has no backend: every choice also
		// reads the owners' slot and counts a displaced request.
		svc := service("svc", map[string]state.Weight{"blue": 9900, "canary": 100}, map[string][]string{
			"blue": {"10.0.0.1:80"}, "canary": {"~10.0.0.2:80"},
		})
		down := r.buildTable(svc, false, nil, newRouteRegistry().backendHealth)
		h := provisioned(b, &Handler{})
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		b.ReportAllocs()
		for b.Loop() {
			h.choosePool(down, req)
		}
	})
	b.Run("sticky_cookie", func(b *testing.B) {
		h := provisioned(b, &Handler{Sticky: &Sticky{Mode: stickyCookie}})
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Cookie", "session=abc; cbproxy_svc="+testSeal.seal(tokenFor(9950))+"; theme=dark")
		b.ReportAllocs()
		for b.Loop() {
			if i, _ := h.choosePool(tbl, req); tbl.pools[i].name != "canary" {
				b.Fatal("wrong pool")
			}
		}
	})
	b.Run("override", func(b *testing.B) {
		h := provisioned(b, &Handler{OverrideHeader: &OverrideHeader{Name: "X-Cbproxy-Pool", Secret: "a-long-secret-that-does-not-fit-on-the-stack"}})
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		value := []string{"canary;a-long-secret-that-does-not-fit-on-the-stack"}
		b.ReportAllocs()
		for b.Loop() {
			req.Header["X-Cbproxy-Pool"] = value // choosePool removes it
			if i, _ := h.choosePool(tbl, req); tbl.pools[i].name != "canary" {
				b.Fatal("wrong pool")
			}
		}
	})
}

func FuzzStickyCookie(f *testing.F) {
	for _, seed := range []string{
		"cbproxy_svc=" + testSeal.seal(0xff),
		"a=1; cbproxy_svc = \"" + testSeal.seal(0x0123456789abcdef) + "\" ;b=2",
		"cbproxy_svc=zz; cbproxy_svc=" + strings.ToUpper(testSeal.seal(2)),
		"cbproxy_svc=00000000000000ff", "cbproxy_svc", ";;;=;", "cbproxy_svc=0123456789ABCDEF0",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		token, ok := stickyToken([]string{line}, "cbproxy_svc", testSeal)
		if !ok {
			return
		}
		if b := tokenBucket(token); b < 0 || b >= slotCount {
			t.Fatalf("bucket %d out of range", b)
		}
		// The token is one a client could have been given.
		if again, ok := stickyToken([]string{"cbproxy_svc=" + testSeal.seal(token)}, "cbproxy_svc", testSeal); !ok || again != token {
			t.Fatalf("token %#x from %q does not round-trip", token, line)
		}
	})
}

func FuzzOverrideHeader(f *testing.F) {
	r := testRoute("svc")
	tbl := canaryTable(r, 100)
	plain := provisioned(f, &Handler{OverrideHeader: &OverrideHeader{Name: "X-Pool"}})
	secret := provisioned(f, &Handler{OverrideHeader: &OverrideHeader{Name: "X-Pool", Secret: "s3cret"}})
	for _, seed := range []string{"canary", "canary;s3cret", "canary;s3cre", ";", "blue;s3cret;x", "", ";s3cret", "blue"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		if i := plain.overridePool(tbl, value); i >= 0 && tbl.pools[i].name != value {
			t.Fatalf("override %q honoured as pool %s", value, tbl.pools[i].name)
		}
		if i := secret.overridePool(tbl, value); i >= 0 && tbl.pools[i].name+";s3cret" != value {
			t.Fatalf("override %q honoured as pool %s without the exact secret", value, tbl.pools[i].name)
		}
	})
}
