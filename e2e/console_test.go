package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
)

// The console test drives the web console (/ui/, docs/console.md) in a real
// headless Chromium against the real binary. Without a Chromium it skips,
// unless CBPROXY_REQUIRE_BROWSER is set (make test sets it): then a missing
// browser fails. With CBPROXY_SCREENSHOTS=<dir> it also saves the
// screenshots of docs/console/ there (make screenshots).

const (
	consoleOpsToken    = "ops-secret-7c1e"
	consoleViewerToken = "viewer-secret-2b9d"
)

// findChromium returns the browser to drive: CBPROXY_CHROMIUM, else Debian's
// chromium, else one on PATH; "" when there is none.
func findChromium() string {
	if p := os.Getenv("CBPROXY_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browserPage is one tab of a fresh headless Chromium, closed at the end
// of t. Every wait on it is bounded.
type browserPage struct {
	t     *testing.T
	ctx   context.Context
	shots string // directory for screenshots, "" for none

	mu       sync.Mutex
	problems []string // exceptions, CSP refusals and console errors of the page
}

func newBrowserPage(t *testing.T) *browserPage {
	t.Helper()
	path := findChromium()
	if path == "" {
		if os.Getenv("CBPROXY_REQUIRE_BROWSER") != "" {
			t.Fatal("no Chromium found (looked for CBPROXY_CHROMIUM, /usr/bin/chromium, chromium on PATH) and CBPROXY_REQUIRE_BROWSER is set: install it (make tools)")
		}
		t.Skip("no Chromium found: install Debian's chromium (make tools) or set CBPROXY_CHROMIUM; set CBPROXY_REQUIRE_BROWSER to make this a failure")
	}
	// Without the background-networking flags Chromium keeps trying to reach
	// Google's services, which a closed network turns into stalls.
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 960),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	p := &browserPage{t: t, ctx: ctx, shots: os.Getenv("CBPROXY_SCREENSHOTS")}
	// The first run starts the browser; it must not carry a timeout (that
	// would stop the browser with it), so the bound is a watchdog here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.EmulateViewport(1440, 960)) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting Chromium (%s): %v", path, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("Chromium (%s) did not start within 60 s", path)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			// Network errors of refused API calls (401, 409, 412) are the
			// page's business; an exception, a console.error or a refusal by
			// the Content-Security-Policy is a defect of the page.
			if m.IsException() || m.Source == "security" || (m.Source == "" && m.Type == chromedp.ConsoleError) {
				p.mu.Lock()
				p.problems = append(p.problems, m.String())
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// do runs actions within 30 s.
func (p *browserPage) do(t *testing.T, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v\npage text:\n%s", what, err, p.text())
	}
}

// eval evaluates a JavaScript expression that gives a string.
func (p *browserPage) eval(js string) (string, error) {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[string](js))
}

// text is what the page shows, for failure messages.
func (p *browserPage) text() string {
	s, err := p.eval(`document.body ? document.body.innerText : ''`)
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return tail(s, 3000)
}

// waitText waits until the JavaScript expression gives a string that
// contains want.
func (p *browserPage) waitText(t *testing.T, what, js, want string, d time.Duration) string {
	t.Helper()
	var got string
	deadline := time.Now().Add(d)
	for {
		s, err := p.eval(`(() => { try { return String(` + js + `) } catch (e) { return 'error: ' + e.message } })()`)
		if err == nil {
			got = s
			if strings.Contains(s, want) {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %q does not contain %q (eval error %v)\npage text:\n%s", d, what, got, want, err, p.text())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clickButton clicks the visible button with this label. The page redraws
// a panel when what it shows changed, which can replace the button between
// finding it and clicking it: then it is found again (bounded).
func (p *browserPage) clickButton(t *testing.T, label string) {
	t.Helper()
	sel := chromedp.Search(fmt.Sprintf(`//button[normalize-space(.)=%q]`, label))
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		err := chromedp.Do(ctx, chromedp.Click(sel))
		cancel()
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "Could not find node") || time.Now().After(deadline) {
			t.Fatalf("clicking %s: %v\npage text:\n%s", label, err, p.text())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shot saves a screenshot as <shots>/<name>.png when screenshots are asked for.
func (p *browserPage) shot(t *testing.T, name string) {
	t.Helper()
	if p.shots == "" {
		return
	}
	// Let the page finish the render the last answer started.
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(p.shots, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.shots, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (p *browserPage) checkNoProblems(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.problems) > 0 {
		t.Fatalf("the page reported %d problem(s):\n%s", len(p.problems), strings.Join(p.problems, "\n"))
	}
}

// consoleCaddyfile is a single node with tokens (an operator and a
// viewer), an active health check, and an SLO that test traffic can pass.
func consoleCaddyfile(n *node, hook string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	cbproxy {
		node_id        node1
		data_dir       %s
		cluster_listen 127.0.0.1:%d
		admin_listen   127.0.0.1:%d
		bootstrap
		token ops    %s operate
		token viewer %s read
	}
}

http://127.0.0.1:%d {
	cbproxy codingbrain {
		pool blue %s {
			version v1.4.1
		}
		pool green %s {
			version v1.4.1
		}
		pool canary %s {
			version v1.5.0-rc2
		}
		weights blue=100
		health /health/ready 250ms timeout 1s fails 2 passes 1
		latency_histogram
		notify pager %s {
			secret s3cret
			events rollout_started rollout_step rollout_rolled_back
		}
		slo {
			advance  error_rate<5%% p95<500ms
			rollback error_rate>50%% p95>2s
			window       30s
			min_requests 20
			consecutive  3
		}
	}
}
`, n.caddyAdmin, filepath.Join(n.dir, "data"), n.clusterPort, n.adminPort, consoleOpsToken, consoleViewerToken,
		n.httpPort, n.backends["blue"], n.backends["green"], n.backends["canary"], hook)
}

// TestConsole loads the console in a headless Chromium, gives it a token,
// sees the service and its pools, starts a canary through the page and
// watches its step advance live, rolls back through the page's dialog (the
// weights change on the page and in the API), and sees refusals in words: a
// version conflict (409), the health gate (412) and a read-only token (403).
func TestConsole(t *testing.T) {
	p := newBrowserPage(t)
	n := newNode(t)
	// The service's webhook receiver: the notifications panel shows its
	// deliveries.
	var delivered atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()
	if err := os.WriteFile(n.caddyfile, []byte(consoleCaddyfile(n, hook.URL+"/hook")), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t)
	ops := []string{"Authorization", "Bearer " + consoleOpsToken}
	svc := n.admin() + "/v1/services/codingbrain"
	load := startSteadyLoad([]string{n.proxy() + "/"}, 100, 4*time.Minute)
	defer load.finish()

	step(t, "the page asks for a token, then shows the service and its pools", func(t *testing.T) {
		p.do(t, "loading /ui/", chromedp.Navigate(n.admin()+"/ui/"))
		p.do(t, "the token dialog", chromedp.WaitVisible(chromedp.CSS("#token-dialog[open] #token-input")))
		p.do(t, "typing the token",
			chromedp.SendKeys(chromedp.CSS("#token-input"), consoleOpsToken),
			chromedp.Click(chromedp.CSS("#token-form button.primary")))
		p.waitText(t, "the service", `document.querySelector('#service h2').textContent`, "codingbrain", 30*time.Second)
		for _, pool := range []string{"blue", "green", "canary"} {
			p.waitText(t, "pool "+pool, fmt.Sprintf(`document.querySelector('tr.pool[data-pool=%s]').textContent`, pool), pool, 10*time.Second)
		}
		p.waitText(t, "blue's weight", `document.querySelector('[data-weight=blue]').textContent`, "100 %", 10*time.Second)
		p.waitText(t, "a healthy backend", `document.querySelector('#service').textContent`, n.backends["canary"], 10*time.Second)
		p.waitText(t, "healthy badges after the first checks", `document.querySelectorAll('#service .b-healthy').length`, "3", 20*time.Second)
		p.waitText(t, "the event stream", `document.querySelector('#stream').textContent`, "live", 20*time.Second)
		// A mark that a reload would wipe: every later change must arrive live.
		if _, err := p.eval(`String(window.cbproxyNoReload = 'kept')`); err != nil {
			t.Fatal(err)
		}
		p.shot(t, "console-services")
	})

	t.Run("the page's event-stream parser, fed in chunks split anywhere", func(t *testing.T) {
		// Frames as the API sends them (\n), and with \r\n and \r line
		// ends, a comment, a two-line data field and a multi-byte character;
		// every split of the bytes into three chunks must give the same
		// frames.
		got, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`(async () => {
			const { readFrames } = await import('/ui/stream.js');
			const body = 'id: 7\nevent: weights\ndata: {"why":"blue 100 → 0"}\n\n: keepalive\n\n' +
				'id: 8\r\nevent: gap\r\ndata: {"b":\r\ndata: 2}\r\n\r\nid: 9\rdata: x\r\r';
			const want = JSON.stringify([{id: '7', event: 'weights', data: '{"why":"blue 100 → 0"}'},
				{id: '8', event: 'gap', data: '{"b":\n2}'}, {id: '9', event: 'message', data: 'x'}]);
			const bytes = new TextEncoder().encode(body);
			for (let i = 0; i <= bytes.length; i++) {
				for (let j = i; j <= bytes.length; j++) {
					const chunks = [bytes.slice(0, i), bytes.slice(i, j), bytes.slice(j)];
					const stream = new ReadableStream({ start(c) { for (const x of chunks) c.enqueue(x); c.close(); } });
					const frames = [];
					await readFrames(stream, (f) => frames.push(f));
					if (JSON.stringify(frames) !== want) return 'split at ' + i + ',' + j + ': ' + JSON.stringify(frames);
				}
			}
			return 'ok';
		})()`, chromedp.EvalAwaitPromise))
		if err != nil || got != "ok" {
			t.Fatalf("readFrames: %q %v", got, err)
		}
	})

	step(t, "a canary started in the page advances its step live", func(t *testing.T) {
		p.clickButton(t, "Start rollout…")
		p.do(t, "filling the rollout dialog",
			chromedp.WaitVisible(chromedp.CSS("#confirm[open] #ro-steps")),
			chromedp.SetValue(chromedp.CSS("#ro-to"), "canary"),
			chromedp.SetValue(chromedp.CSS("#ro-steps"), "10:1s,20:1s,30:1h,100"),
			chromedp.Click(chromedp.CSS("#confirm-ok")),
			chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
		p.waitText(t, "the rollout panel", `document.querySelector('#rollout-step').textContent`, "of 4", 15*time.Second)
		p.waitText(t, "step 2", `document.querySelector('#rollout-step').textContent`, "2 of 4", 90*time.Second)
		p.waitText(t, "step 3", `document.querySelector('#rollout-step').textContent`, "3 of 4", 90*time.Second)
		p.waitText(t, "the target's live figures", `document.querySelector('.figures tr[data-pool=canary] [data-figure=requests]').textContent > 0`, "true", 30*time.Second)
		// The trail only grows from the event stream.
		p.waitText(t, "the steps in the trail", `document.querySelector('#trail').textContent`, "rollout_step", 10*time.Second)
		p.waitText(t, "canary's weight on the page", `document.querySelector('[data-weight=canary]').textContent`, "30 %", 10*time.Second)
		p.waitText(t, "no reload", `window.cbproxyNoReload`, "kept", time.Second)
		p.shot(t, "console-rollout")
	})

	step(t, "the notifications panel shows the webhook and its deliveries", func(t *testing.T) {
		row := `document.querySelector('#notifiers tr[data-notifier=pager]').textContent`
		p.waitText(t, "the notifier", row, "signed", 10*time.Second)
		p.waitText(t, "its events", row, "rollout_rolled_back, rollout_started, rollout_step", 10*time.Second)
		// The delivery record moves without an event: the page polls it.
		p.waitText(t, "its deliveries", row, "sent", 10*time.Second)
		p.waitText(t, "a delivery counted", `/^[1-9][0-9]* sent/.test(document.querySelector('#notifiers tr[data-notifier=pager] td.deliveries').textContent)`, "true", 45*time.Second)
		if delivered.Load() == 0 {
			t.Fatal("the page counts deliveries the receiver never got")
		}
		if _, err := p.eval(`(document.querySelector('#notifiers').closest('section').scrollIntoView(), 'ok')`); err != nil {
			t.Fatal(err)
		}
		p.shot(t, "console-notifications")
		if _, err := p.eval(`(window.scrollTo(0, 0), 'ok')`); err != nil {
			t.Fatal(err)
		}
	})

	step(t, "rollback through the page's dialog changes the weights on the page and in the API", func(t *testing.T) {
		p.clickButton(t, "Rollback…")
		p.do(t, "the confirmation dialog", chromedp.WaitVisible(chromedp.CSS("#confirm[open] table.diff")))
		p.waitText(t, "what the rollback changes", `document.querySelector('#confirm-body').textContent`, "ends rolled back", 5*time.Second)
		p.shot(t, "console-confirm")
		p.do(t, "confirming", chromedp.Click(chromedp.CSS("#confirm-ok")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
		p.waitText(t, "canary at 0 on the page", `document.querySelector('[data-weight=canary]').textContent`, "0 %", 15*time.Second)
		p.waitText(t, "blue at 100 on the page", `document.querySelector('[data-weight=blue]').textContent`, "100 %", 5*time.Second)
		p.waitText(t, "the rollout rolled back on the page", `document.querySelector('.rollout .badge').textContent`, "rolled back", 15*time.Second)
		code, body := api(t, "GET", svc, "", ops...)
		if w := weightsOf(body); code != 200 || w["canary"] != 0 || w["blue"] != 100 {
			t.Fatalf("the API after the page's rollback: %d %v", code, body)
		}
		_, ro := api(t, "GET", svc+"/rollout", "", ops...)
		if ro["state"] != "rolled_back" || !strings.Contains(fmt.Sprint(ro["reason"]), "rolled back by ops") {
			t.Fatalf("the rollout after the page's rollback: %v", ro)
		}
		p.waitText(t, "the rollback in the trail", `document.querySelector('#trail').textContent`, "rolled back by ops", 10*time.Second)
	})

	step(t, "a change made elsewhere meanwhile is a 409 in words", func(t *testing.T) {
		p.clickButton(t, "Switch…")
		p.do(t, "the switch dialog", chromedp.WaitVisible(chromedp.CSS("#confirm[open] #switch-to")), chromedp.SetValue(chromedp.CSS("#switch-to"), "green"))
		if code, b := api(t, "PUT", svc+"/weights", `{"weights":{"blue":90,"canary":10}}`, ops...); code != 200 {
			t.Fatalf("weights through the API: %d %v", code, b)
		}
		p.do(t, "confirming", chromedp.Click(chromedp.CSS("#confirm-ok")))
		p.waitText(t, "the 409 in words", `document.querySelector('#confirm-error').textContent`, "Someone else changed this service", 15*time.Second)
		p.do(t, "closing", chromedp.Click(chromedp.CSS("#confirm-cancel")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
		p.waitText(t, "the other change on the page", `document.querySelector('[data-weight=canary]').textContent`, "10 %", 15*time.Second)
	})

	step(t, "a switch to a pool without a healthy backend is the health gate's 412 in words", func(t *testing.T) {
		setBackend(t, n.backends["green"], `{"health":"unhealthy"}`)
		p.waitText(t, "green unhealthy on the page", `document.querySelector('#service .b-unhealthy') ? document.querySelector('#service .b-unhealthy').closest('tr').textContent : ''`, n.backends["green"], 30*time.Second)
		p.clickButton(t, "Switch…")
		p.do(t, "the switch dialog", chromedp.WaitVisible(chromedp.CSS("#confirm[open] #switch-to")), chromedp.SetValue(chromedp.CSS("#switch-to"), "green"))
		p.do(t, "confirming", chromedp.Click(chromedp.CSS("#confirm-ok")))
		msg := p.waitText(t, "the 412 in words", `document.querySelector('#confirm-error').textContent`, "health gate", 15*time.Second)
		for _, want := range []string{"green/" + n.backends["green"] + " is unhealthy", "force"} {
			if !strings.Contains(msg, want) {
				t.Fatalf("the 412 does not say %q: %s", want, msg)
			}
		}
		p.shot(t, "console-error")
		p.do(t, "closing", chromedp.Click(chromedp.CSS("#confirm-cancel")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
		_, body := api(t, "GET", svc, "", ops...)
		if w := weightsOf(body); w["green"] != 0 {
			t.Fatalf("a refused switch changed the weights: %v", w)
		}
		setBackend(t, n.backends["green"], `{"health":"ok"}`)
	})

	step(t, "the stream reconnects after a restart of the node and misses nothing", func(t *testing.T) {
		// The browser holds the page's next stream request until a change
		// was made without it: only since=<the last index it saw> brings it.
		held := make(chan fetch.EventRequestPaused, 4)
		listenCtx, stopListening := context.WithCancel(p.ctx)
		defer stopListening()
		paused := chromedp.Events(listenCtx, fetch.RequestPaused)
		go func() {
			for ev, err := range paused {
				if err != nil {
					return
				}
				held <- ev
			}
		}()
		if _, err := chromedp.Call(p.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/events/stream*"}}}); err != nil {
			t.Fatal(err)
		}
		n.proc.stop(syscall.SIGTERM)
		p.waitText(t, "the page seeing the stream gone", `document.querySelector('#stream').textContent`, "reconnecting", 30*time.Second)
		n.start(t)
		drain := svc + "/pools/green/backends/" + url.PathEscape(n.backends["green"]) + "/drain"
		if code, b := api(t, "POST", drain, "", ops...); code != 200 {
			t.Fatalf("drain through the API: %d %v", code, b)
		}
		select {
		case ev := <-held:
			if !strings.Contains(ev.Request.URL, "since=") || ev.Request.Headers["Authorization"] == nil {
				t.Fatalf("the page reconnected without since= or its token: %s %v", ev.Request.URL, ev.Request.Headers)
			}
			if _, err := chromedp.Call(p.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID}); err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("the page did not try to reconnect within 60 s")
		}
		if _, err := chromedp.Call(p.ctx, fetch.Disable, cdp.Empty{}); err != nil {
			t.Fatal(err)
		}
		p.waitText(t, "the drain in the trail", `document.querySelector('#trail').textContent`, "drain of pool green", 30*time.Second)
		p.waitText(t, "the stream live again", `document.querySelector('#stream').textContent`, "live", 30*time.Second)
		p.waitText(t, "the drained backend on the page", `document.querySelector('#service .b-draining') ? 'draining' : ''`, "draining", 15*time.Second)
		if code, b := api(t, "DELETE", drain, "", ops...); code != 200 {
			t.Fatalf("undrain through the API: %d %v", code, b)
		}
		p.waitText(t, "no reload", `window.cbproxyNoReload`, "kept", time.Second)
	})

	step(t, "a read token watches and gets the 403 explained", func(t *testing.T) {
		p.clickButton(t, "Token…")
		p.do(t, "typing the viewer's token",
			chromedp.WaitVisible(chromedp.CSS("#token-dialog[open] #token-input")),
			chromedp.SendKeys(chromedp.CSS("#token-input"), consoleViewerToken),
			chromedp.Click(chromedp.CSS("#token-form button.primary")),
			chromedp.WaitNotVisible(chromedp.CSS("#token-dialog")))
		p.waitText(t, "the service with the read token", `document.querySelector('#service h2').textContent`, "codingbrain", 15*time.Second)
		p.clickButton(t, "Rollback…")
		p.do(t, "confirming", chromedp.WaitVisible(chromedp.CSS("#confirm[open]")), chromedp.Click(chromedp.CSS("#confirm-ok")))
		p.waitText(t, "the 403 in words", `document.querySelector('#confirm-error').textContent`, `token "viewer" has role read; this call needs operate`, 15*time.Second)
		p.do(t, "closing", chromedp.Click(chromedp.CSS("#confirm-cancel")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
		p.waitText(t, "actions off", `[...document.querySelectorAll('#service button')].every(b => b.disabled)`, "true", 10*time.Second)
		p.waitText(t, "the page saying it is read-only", `document.querySelector('#banner').textContent`, "Read only", 5*time.Second)
		p.waitText(t, "the page still live", `document.querySelector('#stream').textContent`, "live", 20*time.Second)
		p.waitText(t, "no reload", `window.cbproxyNoReload`, "kept", time.Second)
	})

	t.Run("the page reported no exception and no CSP refusal", p.checkNoProblems)
}

// TestConsoleOnFollower loads the console from a follower of a three-node
// cluster (no tokens: loopback callers are admin): it says it is a
// follower and who leads, and its writes reach the cluster through the
// follower's API, which forwards them.
func TestConsoleOnFollower(t *testing.T) {
	p := newBrowserPage(t)
	c := newTestCluster(t)
	leader, followers := c.roles(t, c.nodes...)
	f := followers[0]

	p.do(t, "loading /ui/ from "+f.id, chromedp.Navigate(f.admin()+"/ui/"))
	p.waitText(t, "the follower in the header", `document.querySelector('#node').textContent`, f.id+" (follower) · leader "+leader.id+" · cluster of 3", 30*time.Second)
	p.waitText(t, "the service", `document.querySelector('#service h2').textContent`, "codingbrain", 30*time.Second)
	p.waitText(t, "the event stream", `document.querySelector('#stream').textContent`, "live", 20*time.Second)

	p.clickButton(t, "Weights…")
	p.do(t, "typing the weights",
		chromedp.WaitVisible(chromedp.CSS("#confirm[open] #w-canary")),
		chromedp.Clear(chromedp.CSS("#w-blue")), chromedp.SendKeys(chromedp.CSS("#w-blue"), "90"),
		chromedp.Clear(chromedp.CSS("#w-canary")), chromedp.SendKeys(chromedp.CSS("#w-canary"), "10"))
	p.waitText(t, "the sum", `document.querySelector('#confirm-body .sum').textContent`, "sum 100 %", 5*time.Second)
	p.do(t, "confirming", chromedp.Click(chromedp.CSS("#confirm-ok")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
	p.waitText(t, "canary at 10 on the page", `document.querySelector('[data-weight=canary]').textContent`, "10 %", 15*time.Second)
	p.waitText(t, "the change in the trail", `document.querySelector('#trail').textContent`, "blue 100 → 90", 15*time.Second)
	waitFor(t, "the change on every node", 15*time.Second, func() bool {
		for _, n := range c.nodes {
			if c.weights(t, n)["canary"] != 10 {
				return false
			}
		}
		return true
	})

	p.clickButton(t, "Rollback…")
	p.do(t, "confirming the rollback", chromedp.WaitVisible(chromedp.CSS("#confirm[open] table.diff")), chromedp.Click(chromedp.CSS("#confirm-ok")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
	p.waitText(t, "canary at 0 on the page", `document.querySelector('[data-weight=canary]').textContent`, "0 %", 15*time.Second)
	if w := c.weights(t, leader); w["canary"] != 0 || w["blue"] != 100 {
		t.Fatalf("the leader after the follower's page rolled back: %v", w)
	}
	t.Run("the page reported no exception and no CSP refusal", p.checkNoProblems)
}
