package state

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Notifiers are webhooks the leader sends the cluster's events to
// (docs/api.md "Notifications"). They are replicated, so that one API call
// configures the whole cluster and any leader knows them, and so is each
// notifier's delivery cursor: the index through which the events were
// handled, which a new leader resumes from.

// Kinds of the notification commands.
const (
	KindPutNotifier    Kind = 0x0B
	KindDeleteNotifier Kind = 0x0C
	KindNotifyCursor   Kind = 0x0D
	KindRecordEvent    Kind = 0x0E
)

// Event actions of the notification commands and of the events a node
// records (RecordEvent).
const (
	ActionNotifierPut    EventAction = "notifier_put"
	ActionNotifierDelete EventAction = "notifier_delete"
	// ActionGateRefused: the health gate refused a switch or weights
	// change (412); the refusing node records it.
	ActionGateRefused EventAction = "gate_refused"
	// ActionNodeLost: the leader has not reached a voter for longer than
	// the threshold.
	ActionNodeLost EventAction = "node_lost"
)

// NotifyFormat is the body a notifier sends.
type NotifyFormat string

// Notifier body formats.
const (
	FormatJSON  NotifyFormat = "json"  // cbproxy's notification object
	FormatSlack NotifyFormat = "slack" // {"text": …, "blocks": …}, for a Slack incoming webhook
)

// DefaultNotifyTimeout is the time one delivery attempt may take; a
// notifier may set it within MinNotifyTimeout and MaxNotifyTimeout.
const (
	DefaultNotifyTimeout = Duration(5 * time.Second)
	MinNotifyTimeout     = Duration(100 * time.Millisecond)
	MaxNotifyTimeout     = Duration(time.Minute)
)

// NotifierSpec is what a PUT of a notifier (or a Caddyfile `notify`) defines.
type NotifierSpec struct {
	// URL receives the notifications (http or https), by POST.
	URL string `json:"url"`
	// Service limits the notifier to one service's events ("" = every
	// service, and the cluster's own events).
	Service string `json:"service,omitempty"`
	// Events are the notification kinds wanted (NotificationKinds); empty
	// means all.
	Events []string `json:"events,omitempty"`
	// Secret keys the HMAC-SHA256 signature of every body; empty sends
	// unsigned. Never returned by the API, never logged.
	Secret string `json:"secret,omitempty"`
	// Format is json (default) or slack.
	Format NotifyFormat `json:"format,omitempty"`
	// Timeout bounds one delivery attempt (default 5s, 100ms to 1m).
	Timeout Duration `json:"timeout,omitempty"`
}

// Notifier is one configured webhook and how its deliveries went.
type Notifier struct {
	Name string `json:"name"`
	// Version is the Raft index of the notifier's last definition.
	Version uint64 `json:"version"`
	NotifierSpec
	Delivery NotifierDelivery `json:"delivery"`
}

// NotifierDelivery is the leader's committed record of a notifier's
// deliveries. Through only grows: every event at or below it was
// delivered, given up on, or not wanted.
type NotifierDelivery struct {
	Through       uint64    `json:"through"`
	Sent          uint64    `json:"sent,omitempty"`
	Failed        uint64    `json:"failed,omitempty"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorAt   time.Time `json:"last_error_at,omitzero"`
	LastSuccessAt time.Time `json:"last_success_at,omitzero"`
}

// NotificationKinds are what a notifier may ask for, each derived from an
// event (docs/api.md "Notifications").
var NotificationKinds = []string{
	"rollout_started", "rollout_step", "rollout_paused", "rollout_resumed",
	"rollout_promoted", "rollout_rolled_back", "rollout_aborted",
	"guard_breach", "rollback", "gate_refused",
	"node_lost", "node_joined", "node_removed",
	"test",
}

// PutNotifier creates or replaces the notifier Name. A seed (Caddyfile)
// applies only to a name the cluster has never seen.
type PutNotifier struct {
	Notifier string        `json:"notifier"`
	Spec     *NotifierSpec `json:"notifier_spec,omitempty"`
	Seed     bool          `json:"notifier_seed,omitempty"`
}

// DeleteNotifier deletes the notifier Name.
type DeleteNotifier struct {
	Notifier string `json:"notifier"`
}

// NotifyCursor is the leader's record of a notifier's deliveries: it never
// moves Through back, and records no event (it would be notified).
type NotifyCursor struct {
	Notifier string           `json:"notifier"`
	Delivery NotifierDelivery `json:"delivery"`
}

// RecordEvent adds an event that is not a change of the state to the
// trail: a gate refusal, a node lost. The envelope's service may be empty.
type RecordEvent struct {
	Action  EventAction    `json:"event_action"`
	Figures map[string]any `json:"event_figures,omitempty"`
}

func (PutNotifier) Kind() Kind    { return KindPutNotifier }
func (DeleteNotifier) Kind() Kind { return KindDeleteNotifier }
func (NotifyCursor) Kind() Kind   { return KindNotifyCursor }
func (RecordEvent) Kind() Kind    { return KindRecordEvent }

func (PutNotifier) aboutCluster()    {}
func (DeleteNotifier) aboutCluster() {}
func (NotifyCursor) aboutCluster()   {}

// Notifier commands check IfVersion against the notifier, not a service.
func (p PutNotifier) versionedName() string    { return p.Notifier }
func (p DeleteNotifier) versionedName() string { return p.Notifier }

type notifierVersioned interface{ versionedName() string }

// A RecordEvent names a service or none.
func (RecordEvent) serviceOptional() {}

type serviceOptionalPayload interface{ serviceOptional() }

var notifierName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidateNotifierName checks a notifier name: 1 to 63 lowercase letters,
// digits, '-' or '_', starting with a letter or digit.
func ValidateNotifierName(name string) error {
	if !notifierName.MatchString(name) {
		return fmt.Errorf("notifier name %q is not valid: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit", name)
	}
	return nil
}

// CheckNotifierSpec checks a notifier's definition: an absolute http or
// https URL with a host and no user info, known event kinds, a known
// format, a timeout from 100ms to 1m, a service name when one is given.
func CheckNotifierSpec(s NotifierSpec) error {
	u, err := url.Parse(s.URL)
	switch {
	case s.URL == "":
		return errors.New(`a notifier needs a "url"`)
	case err != nil:
		return fmt.Errorf("notifier url %q is not valid: %v", s.URL, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("notifier url %q must start with http:// or https://", s.URL)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("notifier url %q has no host", s.URL)
	case u.User != nil:
		return fmt.Errorf("notifier url %q must not carry a user or password; use \"secret\" to sign instead", RedactedURL(s.URL))
	case len(s.URL) > 2048:
		return errors.New("notifier url is longer than 2048 characters")
	}
	if s.Service != "" {
		if err := ValidateServiceName(s.Service); err != nil {
			return err
		}
	}
	for _, e := range s.Events {
		if !slices.Contains(NotificationKinds, e) {
			return fmt.Errorf("notifier event %q is not one of %s", e, strings.Join(NotificationKinds, ", "))
		}
	}
	switch s.Format {
	case "", FormatJSON, FormatSlack:
	default:
		return fmt.Errorf("notifier format %q is not json or slack", s.Format)
	}
	if s.Timeout != 0 && (s.Timeout < MinNotifyTimeout || s.Timeout > MaxNotifyTimeout) {
		return fmt.Errorf("notifier timeout %s is not within %s and %s", s.Timeout, MinNotifyTimeout, MaxNotifyTimeout)
	}
	if len(s.Secret) > 1024 {
		return errors.New("notifier secret is longer than 1024 characters")
	}
	return nil
}

// NormalizeNotifierSpec fills the defaults of a checked spec.
func NormalizeNotifierSpec(s NotifierSpec) NotifierSpec {
	if s.Format == "" {
		s.Format = FormatJSON
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultNotifyTimeout
	}
	s.Events = slices.Clone(s.Events)
	slices.Sort(s.Events)
	s.Events = slices.Compact(s.Events)
	return s
}

// Wants reports whether the notifier sends a notification of kind about
// service ("" for the cluster's own events, which every notifier without
// a service gets).
func (n *Notifier) Wants(kind, service string) bool {
	if n.Service != "" && n.Service != service {
		return false
	}
	return len(n.Events) == 0 || slices.Contains(n.Events, kind) || kind == "test"
}

func checkPutNotifier(_ *Envelope, p PutNotifier) error {
	if err := ValidateNotifierName(p.Notifier); err != nil {
		return err
	}
	if p.Spec == nil {
		return errors.New("a notifier needs a definition")
	}
	return CheckNotifierSpec(*p.Spec)
}

func checkNotifierName(_ *Envelope, p DeleteNotifier) error { return ValidateNotifierName(p.Notifier) }

func checkNotifyCursor(_ *Envelope, p NotifyCursor) error { return ValidateNotifierName(p.Notifier) }

func checkRecordEvent(_ *Envelope, p RecordEvent) error {
	switch p.Action {
	case ActionGateRefused, ActionNodeLost:
		return nil
	}
	return fmt.Errorf("recorded event %q is not gate_refused or node_lost", p.Action)
}

// applyPutNotifier creates or replaces a notifier. A new one starts its
// cursor at its own index: it is sent what happens from then on, not the
// trail before it. A redefinition keeps the cursor and delivery record.
func applyPutNotifier(v *View, _ *Service, index uint64, e *Envelope, p PutNotifier) (Result, *effect) {
	cur := v.Notifiers[p.Notifier]
	if p.Seed {
		if _, deleted := v.NotifiersDeleted[p.Notifier]; deleted || cur != nil {
			return Result{}, nil
		}
	}
	spec := NormalizeNotifierSpec(*p.Spec)
	n := &Notifier{Name: p.Notifier, Version: index, NotifierSpec: spec, Delivery: NotifierDelivery{Through: index}}
	if cur != nil {
		if notifierSpecEqual(cur.NotifierSpec, spec) {
			return Result{Version: cur.Version}, nil
		}
		n.Delivery = cur.Delivery
	}
	ev := Event{Action: ActionNotifierPut, Reason: fmt.Sprintf("notifier %s: %s", p.Notifier, spec.Describe())}
	return Result{Version: index, Changed: true}, &effect{notifier: n, notifierName: p.Notifier, event: ev}
}

func notifierSpecEqual(a, b NotifierSpec) bool {
	return a.URL == b.URL && a.Service == b.Service && slices.Equal(a.Events, b.Events) && a.Secret == b.Secret && a.Format == b.Format && a.Timeout == b.Timeout
}

// RedactedURL is a notifier URL as the API, events and logs show it: the
// scheme and host, and "/…" for a path or query, which often carry the
// receiver's token (a Slack incoming webhook's path is its secret).
func RedactedURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(invalid url)"
	}
	s := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		s += "/…"
	}
	return s
}

// Describe is the notifier in words, without its secret or the URL's path
// (events, logs).
func (s NotifierSpec) Describe() string {
	d := RedactedURL(s.URL) + ", format " + string(s.Format)
	if s.Service != "" {
		d += ", service " + s.Service
	}
	if len(s.Events) > 0 {
		d += ", events " + strings.Join(s.Events, ",")
	}
	if s.Secret != "" {
		d += ", signed"
	}
	return d
}

func applyDeleteNotifier(v *View, _ *Service, _ uint64, _ *Envelope, p DeleteNotifier) (Result, *effect) {
	if v.Notifiers[p.Notifier] == nil {
		return Result{Code: CodeNotFound, Err: fmt.Sprintf("notifier %q does not exist", p.Notifier)}, nil
	}
	ev := Event{Action: ActionNotifierDelete, Reason: "notifier " + p.Notifier + " deleted"}
	return Result{Changed: true}, &effect{notifierName: p.Notifier, event: ev}
}

// applyNotifyCursor records the leader's deliveries. A cursor behind the
// committed one (a deposed leader's late report) changes nothing.
func applyNotifyCursor(v *View, _ *Service, _ uint64, _ *Envelope, p NotifyCursor) (Result, *effect) {
	cur := v.Notifiers[p.Notifier]
	if cur == nil {
		return Result{Code: CodeNotFound, Err: fmt.Sprintf("notifier %q does not exist", p.Notifier)}, nil
	}
	if p.Delivery.Through < cur.Delivery.Through || p.Delivery == cur.Delivery {
		return Result{Version: cur.Version}, nil
	}
	n := *cur
	n.Delivery = p.Delivery
	return Result{Version: cur.Version, Changed: true}, &effect{notifier: &n, notifierName: p.Notifier, noEvent: true}
}

func applyRecordEvent(v *View, _ *Service, _ uint64, e *Envelope, p RecordEvent) (Result, *effect) {
	if e.Service != "" && v.Services[e.Service] == nil {
		return notFound(e.Service), nil
	}
	return Result{Changed: true}, &effect{eventOnly: true, event: Event{Action: p.Action, Figures: p.Figures}}
}
