package proxymod

import (
	"fmt"
	"reflect"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// Notifier is a webhook the cluster's leader sends events to
// (docs/caddyfile.md "notify"). In the app block it hears every service's
// events and the cluster's own; in a service's block, only that service's.
// It seeds the replicated notifier of that name: created only if the
// cluster has never seen the name (the API changes or deletes it after).
type Notifier struct {
	// The notifier's name, cluster-wide.
	Name string `json:"name,omitempty"`
	// Where the notifications are POSTed: an http or https URL. May be a
	// placeholder, such as `{env.SLACK_WEBHOOK_URL}`.
	URL string `json:"url,omitempty"`
	// The notification kinds it wants; none means all.
	Events []string `json:"events,omitempty"`
	// The HMAC-SHA256 key of the X-Cbproxy-Signature header; none sends
	// unsigned. May be (and should be) a placeholder.
	Secret string `json:"secret,omitempty"`
	// json (default) or slack.
	Format string `json:"format,omitempty"`
	// How long one delivery attempt may take. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// unmarshalNotify reads `notify <name> <url> { events …; secret …; format
// …; timeout … }`, the block optional.
func unmarshalNotify(d *caddyfile.Dispenser, where string) (Notifier, error) {
	args, err := lineArgs(d, where, "notify <name> <url> { ... }", 2, 2)
	if err != nil {
		return Notifier{}, err
	}
	n := Notifier{Name: args[0], URL: args[1]}
	if err := state.ValidateNotifierName(n.Name); err != nil {
		return n, d.Errf("%s: notify: %v", where, err)
	}
	where += " notify " + n.Name
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] {
			return n, d.Errf("%s: %s is given twice; keep one", where, sub)
		}
		seen[sub] = true
		switch sub {
		case "events":
			n.Events, err = lineArgs(d, where, "events <kind...>", 1, -1)
		case "secret":
			var a []string
			if a, err = lineArgs(d, where, "secret <secret>", 1, 1); err == nil {
				n.Secret = a[0]
			}
		case "format":
			var a []string
			if a, err = lineArgs(d, where, "format json|slack", 1, 1); err == nil {
				n.Format = a[0]
			}
		case "timeout":
			var a []string
			if a, err = lineArgs(d, where, "timeout <duration>", 1, 1); err == nil {
				var t state.Duration
				t, err = parseDuration(d, where+": timeout", a[0])
				n.Timeout = caddy.Duration(t)
			}
		default:
			return n, d.Errf("%s: unknown setting %q; expected events, secret, format or timeout", where, sub)
		}
		if err != nil {
			return n, err
		}
	}
	if err := state.CheckNotifierSpec(n.spec("", nil)); err != nil && !hasPlaceholder(n.URL) {
		return n, d.Errf("%s: %v", where, err)
	}
	return n, nil
}

// hasPlaceholder reports whether s holds a {…} placeholder, replaced only
// when the config is loaded.
func hasPlaceholder(s string) bool { return caddy.NewReplacer().ReplaceKnown(s, "\x00") != s }

// spec is the notifier's replicated definition, placeholders replaced
// with repl (nil: kept as written).
func (n Notifier) spec(service string, repl *caddy.Replacer) state.NotifierSpec {
	s := state.NotifierSpec{URL: n.URL, Service: service, Events: n.Events, Secret: n.Secret,
		Format: state.NotifyFormat(n.Format), Timeout: state.Duration(time.Duration(n.Timeout))}
	if repl != nil {
		s.URL, s.Secret = repl.ReplaceKnown(s.URL, ""), repl.ReplaceKnown(s.Secret, "")
	}
	return s
}

// addNotifier checks a notifier of the app (service "") or of a service's
// block and registers its seed; Start hands it to the node. Two blocks may
// define the same name only alike.
func (a *App) addNotifier(n Notifier, service string) error {
	if err := state.ValidateNotifierName(n.Name); err != nil {
		return err
	}
	repl := caddy.NewReplacer()
	spec := n.spec(service, repl)
	if err := state.CheckNotifierSpec(spec); err != nil {
		return fmt.Errorf("notify %s: %w", n.Name, err)
	}
	warnLiteralSecrets(a.logger, repl, namedSecret{"notify " + n.Name + " secret", n.Secret})
	if prev, ok := a.notifierSeeds[n.Name]; ok && !reflect.DeepEqual(prev, spec) {
		return fmt.Errorf("notifier %q is defined twice, differently; give each its own name", n.Name)
	}
	if a.notifierSeeds == nil {
		a.notifierSeeds = map[string]state.NotifierSpec{}
	}
	a.notifierSeeds[n.Name] = spec
	return nil
}
