package cli

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/cbproxy/cbproxy/controlplane/state"
)

// notifierCommands are the notifier commands (docs/cli.md "notifier"),
// after the others in the help. They are part of commands before any init
// runs: cli.go's init registers the top-level words with Caddy, and a command
// appended later would be unknown to the binary.
var notifierCommands = []*command{
	&command{
		name:   "notifier list",
		params: []string{"[NAME]"},
		short:  "Show the webhook notifiers and how their deliveries went",
		long: `Lists the notifiers (or only NAME): URL (scheme and host only), service,
events, format, whether a secret is set, and the leader's committed delivery
record (cursor, sent, failed, last error). With --json it prints the API's
body as is. The secret is never shown.`,
		run: runNotifierList,
	},
	&command{
		name:   "notifier set",
		params: []string{"NAME", "URL"},
		flags: []flagSpec{
			{name: "events", value: "KIND,...", usage: "notification kinds to send (default all)"},
			{name: "service", value: "SERVICE", usage: "only this service's events"},
			{name: "format", value: "json|slack", usage: "body format (default json)"},
			{name: "timeout", value: "DURATION", usage: "one delivery attempt (default 5s)", check: notifyTimeoutFlag},
			{name: "secret-env", value: "VAR", usage: "read the HMAC secret from environment variable VAR (default: keep the current one)"},
			{name: "no-secret", usage: "remove the secret: send unsigned"},
			{name: "if-version", value: "N", usage: "change only if the notifier is at version N (0: must not exist; else exit 3)", check: nonNegativeInt},
		},
		short: "Create or replace a webhook notifier",
		long: `Creates or replaces notifier NAME, which the leader sends the cluster's
events to (docs/api.md "Notifications"). The secret is read from the
environment (--secret-env), never from the command line, where other users
could see it; without --secret-env or --no-secret the notifier keeps its
secret.`,
		run: runNotifierSet,
	},
	&command{
		name:   "notifier delete",
		params: []string{"NAME"},
		short:  "Delete a webhook notifier",
		long:   `Deletes notifier NAME; a Caddyfile notify never re-creates it.`,
		run:    runNotifierDelete,
	},
	&command{
		name:   "notifier test",
		params: []string{"NAME"},
		short:  "Send a test notification now",
		long: `Sends one notification of kind "test" to NAME from the node asked, once, and
says whether the receiver took it (exit 1 when it did not).`,
		run: runNotifierTest,
	},
}

// notifyTimeoutFlag checks --timeout of notifier set as the node will: a
// duration within the bounds of one delivery attempt.
func notifyTimeoutFlag(v string) error {
	d, err := state.ParseDuration(v)
	if err != nil {
		return err
	}
	if d < state.MinNotifyTimeout || d > state.MaxNotifyTimeout {
		return fmt.Errorf("%s is not within %s and %s", v, state.MinNotifyTimeout, state.MaxNotifyTimeout)
	}
	return nil
}

type notifierBody struct {
	Name      string   `json:"name"`
	Version   uint64   `json:"version"`
	URL       string   `json:"url"`
	Service   string   `json:"service"`
	Events    []string `json:"events"`
	Format    string   `json:"format"`
	Timeout   string   `json:"timeout"`
	SecretSet bool     `json:"secret_set"`
	Delivery  struct {
		Through   uint64 `json:"through"`
		Sent      uint64 `json:"sent"`
		Failed    uint64 `json:"failed"`
		LastError string `json:"last_error"`
	} `json:"delivery"`
}

func runNotifierList(ctx context.Context, inv *invocation) error {
	var list struct {
		Notifiers []notifierBody `json:"notifiers"`
	}
	if len(inv.args) == 1 {
		var one notifierBody
		if done, err := inv.get(ctx, pathf("/v1/notifiers/%s", inv.args[0]), nil, &one); done || err != nil {
			return err
		}
		list.Notifiers = append(list.Notifiers, one)
	} else if done, err := inv.get(ctx, "/v1/notifiers", nil, &list); done || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(inv.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tURL\tSERVICE\tEVENTS\tFORMAT\tSIGNED\tTHROUGH\tSENT\tFAILED\tLAST ERROR")
	for _, n := range list.Notifiers {
		service, events, lastErr := n.Service, strings.Join(n.Events, ","), n.Delivery.LastError
		if service == "" {
			service = "(all)"
		}
		if events == "" {
			events = "(all)"
		}
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", n.Name, n.Version, n.URL, service, events, n.Format,
			yesNo(n.SecretSet), n.Delivery.Through, n.Delivery.Sent, n.Delivery.Failed, lastErr)
	}
	return tw.Flush()
}

func runNotifierSet(ctx context.Context, inv *invocation) error {
	body := map[string]any{"url": inv.args[1]}
	if v, ok := inv.flags["events"]; ok {
		body["events"] = strings.Split(v, ",")
	}
	for _, f := range []string{"service", "format", "timeout"} {
		if v, ok := inv.flags[f]; ok {
			body[f] = v
		}
	}
	if v, ok := inv.flags["secret-env"]; ok {
		secret := inv.getenv(v)
		if secret == "" {
			return &usageError{msg: fmt.Sprintf("--secret-env %s: the variable is empty or unset", v)}
		}
		body["secret"] = secret
	}
	if inv.flag("no-secret") {
		body["secret"] = ""
	}
	req := request{method: http.MethodPut, path: pathf("/v1/notifiers/%s", inv.args[0]), body: body}
	if v, ok := inv.flags["if-version"]; ok {
		req.header = http.Header{"If-Match": {v}}
	}
	return inv.notifierWrite(ctx, req)
}

func runNotifierDelete(ctx context.Context, inv *invocation) error {
	return inv.notifierWrite(ctx, request{method: http.MethodDelete, path: pathf("/v1/notifiers/%s", inv.args[0])})
}

// notifierWrite sends a notifier write and prints the answer: as is with
// --json, else one line.
func (inv *invocation) notifierWrite(ctx context.Context, req request) error {
	raw, err := inv.client.do(ctx, req)
	if err != nil {
		return err
	}
	if inv.json {
		return writeJSON(inv.out, raw)
	}
	var n struct {
		notifierBody
		Deleted bool `json:"deleted"`
	}
	if err := decode(raw, &n); err != nil {
		return err
	}
	if n.Deleted {
		_, err = fmt.Fprintf(inv.out, "notifier %s deleted (version %d)\n", n.Name, n.Version)
		return err
	}
	_, err = fmt.Fprintf(inv.out, "notifier %s version %d: %s, format %s, signed %s\n", n.Name, n.Version, n.URL, n.Format, yesNo(n.SecretSet))
	return err
}

func runNotifierTest(ctx context.Context, inv *invocation) error {
	raw, err := inv.client.do(ctx, request{method: http.MethodPost, path: pathf("/v1/notifiers/%s/test", inv.args[0])})
	if err != nil {
		return err
	}
	if inv.json {
		return writeJSON(inv.out, raw)
	}
	var res struct {
		ID string `json:"id"`
	}
	if err := decode(raw, &res); err != nil {
		return err
	}
	_, err = fmt.Fprintf(inv.out, "test notification %s delivered to %s\n", res.ID, inv.args[0])
	return err
}
