package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// defaultAdmin is the admin API a command talks to without --admin or
// CBPROXY_ADMIN: the default admin_listen of a local node.
const defaultAdmin = "http://127.0.0.1:7101"

// usageError is a syntax error found before anything was sent (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// errHelp means -h or --help was given: print the help and exit 0.
var errHelp = errors.New("help requested")

// flagSpec is one flag a command accepts.
type flagSpec struct {
	name string
	// value is the placeholder of the flag's value in the usage ("N"), or ""
	// for a boolean flag.
	value string
	usage string
	// check, if set, judges the syntax of the value.
	check func(string) error
}

func (f flagSpec) synopsis() string {
	if f.value == "" {
		return "--" + f.name
	}
	return "--" + f.name + " " + f.value
}

var globalFlags = []flagSpec{
	{name: "admin", value: "URL", usage: "admin API of any node (env CBPROXY_ADMIN, default " + defaultAdmin + ")"},
	{name: "token", value: "T", usage: "bearer token (env CBPROXY_TOKEN)"},
	{name: "json", usage: "print the API's JSON instead of a table"},
}

// nonNegativeInt checks the value of --if-version and --limit.
func nonNegativeInt(v string) error {
	if _, err := strconv.ParseUint(v, 10, 64); err != nil {
		return fmt.Errorf("want a non-negative integer, not %q", v)
	}
	return nil
}

// invocation is one parsed command line, ready to run.
type invocation struct {
	args  []string          // positional arguments
	flags map[string]string // flags given, by name; booleans are "true" or "false"
	admin *url.URL
	token string
	json  bool

	out    *bufio.Writer // stdout; flushed at the end, and by streams after each item
	client *client
	// getenv reads the environment (a fake in tests).
	getenv func(string) string
}

// flag reports whether the boolean flag name was given and is true.
func (inv *invocation) flag(name string) bool {
	return inv.flags[name] == "true"
}

// parseArgs parses argv (what follows the command's name) against cmd. Flags
// may come before, between or after the positional arguments, as --name value
// or --name=value (one dash works too); "--" ends the flags. Global flags fall
// back to the environment.
func parseArgs(cmd *command, argv []string, getenv func(string) string) (*invocation, error) {
	inv := &invocation{flags: map[string]string{}, getenv: getenv}
	specs := slices.Concat(cmd.flags, globalFlags)
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" {
			inv.args = append(inv.args, argv[i+1:]...)
			break
		}
		if len(arg) < 2 || arg[0] != '-' {
			inv.args = append(inv.args, arg)
			continue
		}
		if isHelp(arg) {
			return nil, errHelp
		}
		name, value, hasValue := strings.Cut(flagName(arg), "=")
		k := slices.IndexFunc(specs, func(f flagSpec) bool { return f.name == name })
		if k < 0 {
			return nil, usagef("unknown flag %q", arg)
		}
		spec := specs[k]
		switch {
		case spec.value == "" && hasValue:
			b, err := strconv.ParseBool(value)
			if err != nil {
				return nil, usagef("flag --%s takes no value (or true/false), not %q", name, value)
			}
			value = strconv.FormatBool(b)
		case spec.value == "":
			value = "true"
		case !hasValue:
			if i+1 >= len(argv) {
				return nil, usagef("flag --%s needs a value (%s)", name, spec.value)
			}
			i++
			value = argv[i]
		}
		if spec.check != nil {
			if err := spec.check(value); err != nil {
				return nil, usagef("flag --%s: %v", name, err)
			}
		}
		inv.flags[name] = value
	}
	if err := checkCount(cmd.params, inv.args); err != nil {
		return nil, err
	}

	admin, source := inv.flags["admin"], "--admin"
	if admin == "" {
		admin, source = getenv("CBPROXY_ADMIN"), "CBPROXY_ADMIN"
	}
	if admin == "" {
		admin = defaultAdmin
	}
	u, err := parseAdmin(admin)
	if err != nil {
		return nil, usagef("%s: %v", source, err)
	}
	inv.admin = u
	inv.token = inv.flags["token"]
	if inv.token == "" {
		inv.token = getenv("CBPROXY_TOKEN")
	}
	inv.json = inv.flags["json"] == "true"
	return inv, nil
}

// flagName strips the one or two dashes of a flag.
func flagName(arg string) string {
	return strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
}

// isHelp reports whether arg asks for help: -h, --help, -help or --h.
func isHelp(arg string) bool {
	name := flagName(arg)
	return strings.HasPrefix(arg, "-") && (name == "h" || name == "help")
}

// checkCount checks the number of positional arguments against params.
func checkCount(params, args []string) error {
	for i, p := range params {
		optional := strings.HasPrefix(p, "[")
		if i >= len(args) {
			if optional {
				return nil
			}
			return usagef("missing %s", strings.TrimSuffix(p, "..."))
		}
		if strings.HasSuffix(p, "...") {
			return nil
		}
	}
	if len(args) > len(params) {
		return usagef("unexpected argument %q", args[len(params)])
	}
	return nil
}

// parseAdmin parses the admin API address. A bare host:port means http.
func parseAdmin(s string) (*url.URL, error) {
	full := s
	if !strings.Contains(s, "://") {
		full = "http://" + s
	}
	u, err := url.Parse(full)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("%q is not an admin API address like %s", s, defaultAdmin)
	}
	return u, nil
}

// decimal is the syntax of a weight: a JSON number without exponent, so the
// server gets the user's exact text and judges its decimals and range.
var decimal = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)

// parseWeights parses POOL=PCT arguments. PCT keeps its exact text; only
// leading zeros, which JSON does not allow, are dropped.
func parseWeights(args []string) (map[string]json.Number, error) {
	weights := make(map[string]json.Number, len(args))
	for _, arg := range args {
		pool, pct, ok := strings.Cut(arg, "=")
		if !ok || pool == "" {
			return nil, usagef("%q is not POOL=PCT (for example blue=95)", arg)
		}
		if !decimal.MatchString(pct) {
			return nil, usagef("weight %q of pool %q is not a decimal number of percent", pct, pool)
		}
		if _, dup := weights[pool]; dup {
			return nil, usagef("pool %q given twice", pool)
		}
		weights[pool] = json.Number(trimLeadingZeros(pct))
	}
	return weights, nil
}

// trimLeadingZeros turns "007.5" into "7.5" and "-00" into "-0".
func trimLeadingZeros(pct string) string {
	sign, digits := "", pct
	if strings.HasPrefix(pct, "-") {
		sign, digits = "-", pct[1:]
	}
	for len(digits) > 1 && digits[0] == '0' && digits[1] != '.' {
		digits = digits[1:]
	}
	return sign + digits
}

// eventLimit checks --limit: the server keeps 1 to 1000 events per answer.
func eventLimit(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return fmt.Errorf("must be a number from 1 to 1000, not %q", v)
	}
	return nil
}
