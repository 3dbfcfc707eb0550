// Package cli holds the cbproxy client commands: status, weights, switch,
// rollout (start, status, pause, resume, promote, abort), rollback, pool,
// backend, events and cluster. They are clients of a node's admin API
// (docs/api.md) and are registered as Caddy commands, so one binary both runs
// the proxy and drives the cluster (docs/cli.md).
//
// Each command parses its own arguments: Caddy's command runner (cobra) exits 1
// on any flag error, and a usage error must exit 2 (docs/cli.md "Exit codes").
package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// Exit codes of the cbproxy commands (docs/cli.md "Exit codes").
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitConflict = 3 // server 409
	exitRefused  = 4 // server 412
	// rollout status --follow: the rollout ended rolled back or aborted, or
	// had not ended when --timeout passed.
	exitRolledBack = 5
	exitAborted    = 6
	exitTimeout    = 7
)

// command is one cbproxy client command. Its name is what the user types after
// "cbproxy": one word, or a group and a subcommand ("pool set").
type command struct {
	name string
	// params are the positional arguments for the usage line and the count
	// check: "SERVICE" is required, "[SERVICE]" optional, and a last "ADDR..."
	// takes one or more.
	params []string
	flags  []flagSpec
	short  string // one line, for the command list
	long   string // what it does, for -h
	run    func(ctx context.Context, inv *invocation) error
}

// groupShort describes the commands that take a subcommand, for Caddy's list.
var groupShort = map[string]string{
	"rollout":  "Move a service's traffic to a pool, judged by its SLO",
	"pool":     "Change the pools of a service",
	"backend":  "Drain or undrain one backend of a pool",
	"cluster":  "Show and change the cluster's members, or recover from a lost quorum",
	"notifier": "Send the cluster's events to webhooks, signed and retried",
}

func init() {
	for _, name := range topLevelNames() {
		caddycmd.RegisterCommand(caddycmd.Command{
			Name:  name,
			Usage: usageLines(name),
			Short: shortFor(name),
			Long:  helpText(name),
			CobraFunc: func(cmd *cobra.Command) {
				cmd.DisableFlagParsing = true
				cmd.RunE = func(_ *cobra.Command, args []string) error {
					ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
					code := defaultRunner().run(ctx, name, args)
					stop()
					// Caddy's Main maps errors to exit codes only through a type
					// of its own, so the contract's codes are set here.
					if code != exitOK {
						os.Exit(code)
					}
					return nil
				}
			},
		})
	}
}

// topLevelNames lists the words registered with Caddy, in command order.
func topLevelNames() []string {
	var names []string
	seen := map[string]bool{}
	for _, c := range commands {
		top, _, _ := strings.Cut(c.name, " ")
		if !seen[top] {
			seen[top] = true
			names = append(names, top)
		}
	}
	return names
}

// subcommands returns the commands under the top-level word top: one command
// without subcommands, or every "top sub" command.
func subcommands(top string) []*command {
	var cmds []*command
	for _, c := range commands {
		if first, _, _ := strings.Cut(c.name, " "); first == top {
			cmds = append(cmds, c)
		}
	}
	return cmds
}

func shortFor(top string) string {
	if s, ok := groupShort[top]; ok {
		return s
	}
	return subcommands(top)[0].short
}

// usageLines is the arguments part of the usage of every command under top,
// as Caddy prints it after the name.
func usageLines(top string) string {
	var lines []string
	for _, c := range subcommands(top) {
		lines = append(lines, strings.TrimPrefix(strings.TrimPrefix(c.usage(), "cbproxy "+top), " "))
	}
	return strings.Join(lines, " | ")
}

// runner runs commands; tests replace its streams and environment.
type runner struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// retryFor bounds how long a write is retried while the cluster has no
	// leader or the node cannot be reached.
	retryFor time.Duration
}

func defaultRunner() *runner {
	return &runner{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, retryFor: 10 * time.Second}
}

// run runs the command under the top-level word top with argv (what follows it
// on the command line) and returns the exit code.
func (r *runner) run(ctx context.Context, top string, argv []string) int {
	asJSON := wantsJSON(argv)
	cmd, argv, err := pick(top, argv)
	if err == nil {
		err = r.runCommand(ctx, cmd, argv)
	}
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp) && cmd == nil:
		fmt.Fprint(r.stdout, helpText(top))
		return exitOK
	case errors.Is(err, errHelp):
		fmt.Fprint(r.stdout, cmd.help())
		return exitOK
	}
	name := top
	if cmd != nil {
		name = cmd.name
	}
	code := exitCode(err)
	if errors.As(err, &ue) {
		code = exitUsage
	}
	if asJSON {
		writeErrorJSON(r.stderr, name, usageOf(top, cmd), code, err)
		return code
	}
	msg := oneLine(err.Error())
	if code == exitUsage {
		fmt.Fprintf(r.stderr, "cbproxy %s: %s (usage: %s)\n", name, msg, usageOf(top, cmd))
		return code
	}
	fmt.Fprintf(r.stderr, "cbproxy %s: %s\n", name, msg)
	return code
}

func (r *runner) runCommand(ctx context.Context, cmd *command, argv []string) error {
	inv, err := parseArgs(cmd, argv, r.getenv)
	if err != nil {
		return err
	}
	// One write per 64 kB instead of one per table cell: at 1,000 services
	// the cells of 'status' were thousands of write system calls. Streams
	// flush after each item; what is buffered is written before an error
	// is reported on stderr.
	out := bufio.NewWriterSize(r.stdout, 64<<10)
	inv.out = out
	inv.client = newClient(inv.admin, inv.token, r.retryFor)
	err = cmd.run(ctx, inv)
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	return err
}

// pick finds the command under top that argv names, and returns the rest of
// argv. A nil command with errHelp asks for the group's help.
func pick(top string, argv []string) (*command, []string, error) {
	cmds := subcommands(top)
	if len(cmds) == 1 && cmds[0].name == top {
		return cmds[0], argv, nil
	}
	// Flags may come before the subcommand too (cbproxy --admin URL cluster
	// status): the subcommand is the first word that is neither a flag nor a
	// flag's value.
	valued := map[string]bool{"admin": true, "token": true}
	for _, c := range cmds {
		for _, f := range c.flags {
			valued[f.name] = valued[f.name] || f.value != ""
		}
	}
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if isHelp(a) {
			return nil, nil, errHelp
		}
		if a == "--" {
			break
		}
		if name, ok := strings.CutPrefix(strings.TrimPrefix(a, "-"), "-"); ok || strings.HasPrefix(a, "-") && a != "-" {
			if !ok {
				name = a[1:]
			}
			if !strings.Contains(name, "=") && valued[name] {
				i++
			}
			continue
		}
		for _, c := range cmds {
			if c.name == top+" "+a {
				return c, append(argv[:i:i], argv[i+1:]...), nil
			}
		}
		return nil, nil, usagef("unknown subcommand %q", a)
	}
	return nil, nil, usagef("missing subcommand")
}

// usageOf is the usage for a one-line error: the command's own, or every
// subcommand's when none was picked.
func usageOf(top string, cmd *command) string {
	if cmd != nil {
		return cmd.usage()
	}
	var lines []string
	for _, c := range subcommands(top) {
		lines = append(lines, c.usage())
	}
	return strings.Join(lines, " | ")
}

// usage is the command's synopsis: "cbproxy weights SERVICE POOL=PCT... [--force]".
func (c *command) usage() string {
	parts := append([]string{"cbproxy", c.name}, c.params...)
	for _, f := range c.flags {
		parts = append(parts, "["+f.synopsis()+"]")
	}
	return strings.Join(parts, " ")
}

// help is the text -h prints.
func (c *command) help() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s\n\n%s\n", c.usage(), c.long)
	writeFlags(&b, "Flags", c.flags)
	writeFlags(&b, "Global flags", globalFlags)
	return b.String()
}

// helpText is the help of every command under top.
func helpText(top string) string {
	cmds := subcommands(top)
	if len(cmds) == 1 && cmds[0].name == top {
		return cmds[0].help()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s.\n\nCommands:\n", groupShort[top])
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, c := range cmds {
		fmt.Fprintf(tw, "  %s\t%s\n", c.usage(), c.short)
	}
	tw.Flush()
	fmt.Fprintf(&b, "\nRun 'cbproxy %s -h' for one command's help.\n", cmds[0].name)
	return b.String()
}

func writeFlags(w io.Writer, title string, flags []flagSpec) {
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s:\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range flags {
		fmt.Fprintf(tw, "  %s\t%s\n", f.synopsis(), f.usage)
	}
	tw.Flush()
}

// oneLine folds a message onto one line, whatever the server put in it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
