// console.js: the page. It reads everything from the admin API
// (docs/api.md), follows the event stream to re-read what changed, polls the
// figures that are not events (health, in-flight, a rollout's verdict), and
// sends the actions, each after a confirmation dialog that shows what will
// change. No framework: DOM built with h(), never from HTML strings, so no
// API text can become markup.

import { call, svcPath, token, setToken, APIError } from './api.js';
import { EventStream } from './stream.js';
import { h, $, clear, fmtPct, fmtMs, fmtWeight, fmtTime, fmtAgo, parseDuration, weightsLine, badge } from './view.js';

const READ_ONLY = 'read only';
const ACTIVE = new Set(['running', 'waiting', 'paused']);
const TRAIL_MAX = 200;
const POLL_ROLLOUT_MS = 1500; // a running rollout's figures
const POLL_SERVICE_MS = 5000; // health and in-flight of the shown service
const POLL_LIST_MS = 15000; // the list's health summary

const S = {
  services: new Map(), // name -> service body
  lastRollout: new Map(), // name -> GET …/rollout body (also after it ended)
  selected: '',
  events: [], // oldest first, deduplicated by index
  readOnly: '', // why actions are refused (a 403), '' while not known to be
  banner: '', // what the banner is about: a failed read, or 'read only'
  node: '',
  cluster: null,
  notifiers: null, // GET /v1/notifiers' list; null until read (or refused)
  stream: null,
};

// ---------- loading ----------

async function loadServices() {
  const { data, node } = await call('GET', '/v1/services');
  S.node = node;
  const seen = new Set();
  for (const s of data.services) {
    S.services.set(s.name, s);
    seen.add(s.name);
  }
  for (const name of [...S.services.keys()]) if (!seen.has(name)) S.services.delete(name);
}

async function loadService(name) {
  try {
    const { data } = await call('GET', svcPath(name));
    S.services.set(name, data);
  } catch (e) {
    if (e.status === 404) S.services.delete(name);
    else throw e;
  }
}

async function loadRollout(name) {
  try {
    const { data } = await call('GET', svcPath(name, 'rollout'));
    S.lastRollout.set(name, data);
  } catch (e) {
    if (e.status === 404) S.lastRollout.delete(name);
    else throw e;
  }
}

async function loadCluster() {
  try {
    const { data, node } = await call('GET', '/v1/cluster');
    S.cluster = data;
    S.node = node;
  } catch (e) {
    if (e.status === 401) throw e;
    S.cluster = null; // a node without quorum still shows its services
  }
}

// loadNotifiers reads the webhook notifiers and the leader's committed
// delivery record of each. Their cursors move without events, so the list
// is polled with the services'.
async function loadNotifiers() {
  try {
    const { data } = await call('GET', '/v1/notifiers');
    S.notifiers = data.notifiers || [];
  } catch (e) {
    if (e.status === 401) throw e;
    S.notifiers = null; // a node without quorum still shows its services
  }
}

// loadTrail reads the newest events and returns the index to follow the
// stream from: everything up to it is in the answer (the node stamps its
// applied index before it reads the trail).
async function loadTrail() {
  const { data, index } = await call('GET', '/v1/events?limit=' + TRAIL_MAX);
  S.events = data.events;
  const newest = S.events.length ? S.events[S.events.length - 1].index : 0;
  return Math.max(index, newest);
}

// guarded runs a read and handles the refusals every read can get: 401 asks
// for a token; anything else shows in the banner.
async function guarded(what, f) {
  try {
    await f();
    // The node answers again: a failed read's banner goes (not read-only's).
    if (S.banner && S.banner !== READ_ONLY) {
      S.banner = '';
      showBanner('');
    }
    return true;
  } catch (e) {
    if (e instanceof APIError && e.status === 401) {
      await askToken(e.message);
      return false;
    }
    S.banner = what;
    showBanner(`${what}: ${e.message}`);
    return false;
  }
}

// ---------- the event stream ----------

// refreshQueue holds what events changed: service names, '' for the
// cluster, NOTIFIERS for the notifiers (a symbol: no service has its name).
const NOTIFIERS = Symbol('notifiers');
const refreshQueue = new Set();
let refreshTimer = null;

// onEvent re-reads what an event changed, a few at a time: a burst of
// events re-reads each service once.
function onEvent(frame) {
  let ev;
  try { ev = JSON.parse(frame.data); } catch { return; }
  if (frame.event === 'reconnect') return; // the stream reconnects by itself
  if (frame.event === 'gap') {
    ev.index = Number(frame.id);
    ev.reason = ev.reason || 'events lost';
  }
  if (!S.events.length || ev.index > S.events[S.events.length - 1].index) {
    S.events.push(ev);
    if (S.events.length > TRAIL_MAX * 2) S.events.splice(0, S.events.length - TRAIL_MAX);
  }
  renderTrail();
  if (ev.action && ev.action.startsWith('notifier_')) refreshQueue.add(NOTIFIERS);
  else if (ev.service) refreshQueue.add(ev.service);
  if (ev.action === 'node_join' || ev.action === 'node_remove') refreshQueue.add('');
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(flushRefresh, 100);
}

async function flushRefresh() {
  const names = [...refreshQueue];
  refreshQueue.clear();
  await guarded('reading what changed', async () => {
    await Promise.all(names.map((n) => (n === '' ? loadCluster() : n === NOTIFIERS ? loadNotifiers() : loadService(n))));
    if (names.includes(S.selected)) await loadRollout(S.selected);
  });
  renderAll();
}

function streamState(state, detail) {
  const el = $('#stream');
  el.dataset.state = state;
  el.textContent = { connecting: 'events: connecting…', live: 'events: live', retrying: 'events: reconnecting…', refused: 'events: refused' }[state] || state;
  el.title = detail || '';
}

// ---------- polling ----------

let lastListPoll = 0;
let lastServicePoll = 0;

async function poll() {
  const now = Date.now();
  const s = S.services.get(S.selected);
  const rolling = s && s.rollout && ACTIVE.has(s.rollout.state);
  if (S.selected && (rolling || now - lastServicePoll >= POLL_SERVICE_MS)) {
    lastServicePoll = now;
    await guarded('reading the service', async () => {
      await loadService(S.selected);
      if (rolling) await loadRollout(S.selected);
    });
  }
  if (now - lastListPoll >= POLL_LIST_MS) {
    lastListPoll = now;
    await guarded('reading the services', async () => { await loadServices(); await loadCluster(); await loadNotifiers(); });
  }
  renderAll();
  setTimeout(poll, POLL_ROLLOUT_MS);
}

// ---------- rendering ----------

function renderAll() {
  renderHeader();
  renderList();
  renderService();
  renderNotifiers();
}

// renderNotifiers shows each webhook notifier and how its deliveries went
// (docs/api.md "Notifications"); changing them is the CLI's and the API's.
function renderNotifiers() {
  const tbody = $('#notifiers');
  clear(tbody);
  if (S.notifiers === null) {
    tbody.append(h('tr', {}, h('td', { colspan: '8', class: 'muted' }, 'not known: the notifiers could not be read')));
    return;
  }
  for (const n of S.notifiers) {
    const d = n.delivery || {};
    tbody.append(h('tr', { 'data-notifier': n.name },
      h('td', {}, h('strong', {}, n.name)),
      h('td', { class: 'mono' }, n.url),
      h('td', {}, n.service || 'all services'),
      h('td', {}, n.events && n.events.length ? n.events.join(', ') : 'all events'),
      h('td', {}, n.format, n.secret_set ? ' · signed' : ' · unsigned'),
      h('td', { class: 'num through' }, String(d.through || 0)),
      h('td', { class: 'num deliveries' }, `${d.sent || 0} sent`, d.failed ? ` · ${d.failed} failed` : ''),
      h('td', { class: 'what' }, d.last_error ? badge('unhealthy', d.last_error_at || '', 'failing') : badge('healthy', d.last_success_at || '', 'ok'), d.last_error ? ' ' + d.last_error : '')));
  }
  if (!S.notifiers.length) {
    tbody.append(h('tr', {}, h('td', { colspan: '8', class: 'muted' }, 'no notifiers: `cbproxy notifier set` or notify in the Caddyfile adds one')));
  }
}

function renderHeader() {
  const c = S.cluster;
  let text = S.node ? `node ${S.node}` : '';
  if (c) {
    const nodes = c.nodes || [];
    const me = nodes.find((n) => n.id === S.node);
    if (me) text += ` (${me.state})`;
    if (c.leader !== S.node) text += c.leader ? ` · leader ${c.leader}` : ' · no leader';
    text += ` · cluster of ${nodes.length}`;
  }
  $('#node').textContent = text;
  $('#who').textContent = token() ? 'token set' : 'no token';
}

function showBanner(text) {
  const b = $('#banner');
  b.textContent = text;
  b.hidden = !text;
}

function availableBackends(pool) {
  return pool.backends.filter((b) => b.health !== 'unhealthy' && !b.draining).length;
}

// Renders are skipped when what they show has not changed, so a poll
// does not replace the buttons under the pointer.
const drawn = { list: '', service: '' };

function renderList() {
  const ul = $('#service-list');
  const filter = $('#filter').value.trim().toLowerCase();
  const key = JSON.stringify([filter, S.selected, [...S.services.values()].map((s) => [s.name, s.version, s.weights, s.rollout && s.rollout.state,
    Object.values(s.pools).map((p) => p.backends.map((b) => [b.health, b.draining]))])]);
  if (key === drawn.list) return;
  drawn.list = key;
  clear(ul);
  for (const s of S.services.values()) {
    if (filter && !s.name.toLowerCase().includes(filter)) continue;
    const pools = Object.keys(s.pools).sort();
    const down = pools.some((p) => s.weights[p] > 0 && availableBackends(s.pools[p]) === 0);
    const unhealthy = pools.some((p) => s.pools[p].backends.some((b) => b.health === 'unhealthy'));
    const a = h('a', { href: '#/service/' + encodeURIComponent(s.name), class: s.name === S.selected ? 'selected' : '' },
      h('span', { class: 'name' }, s.name),
      s.rollout ? badge(s.rollout.state, 'rollout ' + s.rollout.state) : null,
      down ? badge('unhealthy', 'a pool with traffic has no available backend', 'pool down') : unhealthy ? badge('degraded', 'a backend is unhealthy', 'unhealthy backend') : null,
      h('span', { class: 'weights' }, weightsLine(s.weights)));
    ul.append(h('li', {}, a));
  }
  if (!ul.children.length) ul.append(h('li', { class: 'muted' }, S.services.size ? 'no match' : 'no services'));
}

function actionButton(label, onClick, { danger = false, disabledWhy = '' } = {}) {
  const why = disabledWhy || S.readOnly;
  const b = h('button', { type: 'button', class: danger ? 'danger' : '' }, label);
  if (why) {
    b.disabled = true;
    b.title = why;
  } else {
    b.addEventListener('click', onClick);
  }
  return b;
}

function renderService() {
  const root = $('#service');
  const s = S.services.get(S.selected);
  const key = JSON.stringify([S.selected, s, S.lastRollout.get(S.selected), S.readOnly]);
  if (key === drawn.service) return;
  drawn.service = key;
  clear(root);
  if (!s) {
    root.append(h('p', { class: 'muted' }, S.services.size ? 'Choose a service.' : 'No services yet.'));
    return;
  }
  const ro = s.rollout;
  const busy = ro && ACTIVE.has(ro.state) ? `a rollout is ${ro.state}: pause, promote or abort it, or roll back` : '';
  root.append(h('div', { class: 'panel' },
    h('div', { class: 'panel-head' },
      h('h2', {}, s.name),
      h('span', { class: 'muted' }, `version ${s.version}`),
      h('span', { class: 'muted' }, `guard ${s.guard}`),
      h('span', { class: 'spacer' }),
      actionButton('Switch…', () => switchDialog(s), { disabledWhy: busy }),
      actionButton('Weights…', () => weightsDialog(s), { disabledWhy: busy }),
      actionButton('Start rollout…', () => rolloutStartDialog(s), { disabledWhy: busy }),
      actionButton('Rollback…', () => rollbackDialog(s), { danger: true })),
    poolsTable(s)));
  const shown = ro || S.lastRollout.get(s.name);
  if (shown) root.append(rolloutPanel(s, shown, !!ro));
}

function poolsTable(s) {
  const tbody = h('tbody');
  for (const name of Object.keys(s.pools).sort()) {
    const p = s.pools[name];
    const w = s.weights[name] || 0;
    const avail = availableBackends(p);
    const inFlight = p.backends.reduce((n, b) => n + b.in_flight, 0);
    const longLived = p.backends.reduce((n, b) => n + b.long_lived, 0);
    const bar = h('span', { class: 'bar' }, h('span', { class: 'fill' }));
    bar.firstChild.style.width = Math.min(100, w) + '%';
    tbody.append(h('tr', { class: 'pool', 'data-pool': name },
      h('th', { scope: 'row' }, name),
      h('td', { class: 'label' }, p.version || '—'),
      h('td', { class: 'weight' }, bar, h('span', { class: 'num', 'data-weight': name }, fmtWeight(w))),
      h('td', { class: 'num' }, fmtWeight(s.lkg[name] || 0)),
      h('td', {}, w > 0 && avail === 0
        ? badge('unhealthy', 'this pool has a share but no backend that can take it: its share goes to the other pools', 'no available backend')
        : h('span', { class: 'muted' }, `${avail} of ${p.backends.length} available`)),
      h('td', { class: 'num' }, String(inFlight)),
      h('td', { class: 'num' }, String(longLived)),
      h('td', {})));
    for (const b of p.backends) {
      tbody.append(h('tr', { class: 'backend' },
        h('td', { class: 'addr', colspan: '4' }, b.address),
        h('td', {}, badge(b.health, 'health as this node sees it'), b.draining ? badge('draining', 'drained: takes no new requests') : null),
        h('td', { class: 'num' }, String(b.in_flight)),
        h('td', { class: 'num' }, String(b.long_lived)),
        h('td', { class: 'act' }, b.draining
          ? actionButton('Undrain…', () => drainDialog(s, name, b, false))
          : actionButton('Drain…', () => drainDialog(s, name, b, true)))));
    }
    if (!p.backends.length) tbody.append(h('tr', { class: 'backend' }, h('td', { colspan: '8', class: 'muted' }, 'no backends')));
  }
  return h('table', { class: 'pools' },
    h('thead', {}, h('tr', {},
      h('th', {}, 'pool / backend'), h('th', {}, 'version'), h('th', {}, 'weight'), h('th', { class: 'num' }, 'LKG'),
      h('th', {}, 'health'), h('th', { class: 'num' }, 'in flight'), h('th', { class: 'num' }, 'long-lived'), h('th', {}, ''))),
    tbody);
}

function rolloutPanel(s, ro, active) {
  const n = ro.steps.length;
  const cur = ro.steps[ro.step - 1] || {};
  const steps = h('ol', { class: 'steps' });
  ro.steps.forEach((st, i) => {
    const cls = i + 1 < ro.step ? 'done' : i + 1 === ro.step ? 'current' : '';
    steps.append(h('li', { class: cls }, `${fmtWeight(st.weight)}`, st.hold ? h('small', {}, ` ${st.hold}`) : null));
  });
  const head = h('div', { class: 'panel-head' },
    h('h2', {}, active ? 'Rollout' : 'Last rollout'),
    h('span', { class: 'mono' }, ro.id),
    badge(ro.state, 'rollout state'),
    h('span', { class: 'spacer' }));
  if (active) {
    head.append(
      ro.state === 'paused'
        ? actionButton('Resume…', () => rolloutActionDialog(s, 'resume'))
        : actionButton('Pause…', () => rolloutActionDialog(s, 'pause')),
      actionButton('Promote…', () => rolloutActionDialog(s, 'promote')),
      actionButton('Abort…', () => rolloutActionDialog(s, 'abort'), { danger: true }));
  }
  const facts = h('dl', { class: 'facts' },
    h('dt', {}, 'moves'), h('dd', {}, `${ro.from} → ${ro.to}`, h('span', { class: 'muted' }, ` · ${ro.strategy}, ${ro.gate} gate`)),
    h('dt', {}, 'step'), h('dd', { id: 'rollout-step' }, `${ro.step} of ${n}`, h('span', { class: 'muted' }, ` · ${ro.to} at ${fmtWeight(cur.weight)}`)),
    h('dt', {}, active ? 'held' : 'ended'), active
      ? h('dd', { id: 'rollout-held', 'data-since': ro.step_started, 'data-hold': cur.hold || '' }, heldText(ro.step_started, cur.hold))
      : h('dd', {}, fmtTime(ro.ended, true)),
    ro.reason ? h('dt', {}, 'reason') : null, ro.reason ? h('dd', {}, ro.reason) : null);
  return h('div', { class: 'panel rollout' }, head, steps, facts, verdictView(s, ro));
}

// heldText is how long the step has been held, against its hold; a
// ticker refreshes it every second without redrawing the panel.
function heldText(since, hold) {
  const age = fmtAgo(Date.now() - Date.parse(since));
  return parseDuration(hold || '') ? `${age} of ${hold}` : `${age} (no hold)`;
}

function tickHeld() {
  const el = document.getElementById('rollout-held');
  if (el) el.textContent = heldText(el.dataset.since, el.dataset.hold);
}

function verdictView(s, ro) {
  const v = ro.verdict;
  if (!v) return h('p', { class: 'muted' }, 'No verdict yet (the leader judges every second once there is traffic).');
  const slo = s.slo;
  const tbody = h('tbody');
  const order = [ro.to, ro.from, ...Object.keys(v.pools).filter((p) => p !== ro.to && p !== ro.from)];
  for (const pool of order) {
    const f = v.pools[pool];
    if (!f) continue;
    const rateClass = f.error_rate_low > slo.rollback.error_rate ? 'bad' : f.error_rate < slo.advance.error_rate ? 'good' : 'warn';
    const p95Class = f.p95_ms > slo.rollback.p95_ms ? 'bad' : f.p95_ms < slo.advance.p95_ms ? 'good' : 'warn';
    tbody.append(h('tr', { 'data-pool': pool },
      h('th', { scope: 'row' }, pool, h('small', { class: 'muted' }, pool === ro.to ? ' target' : pool === ro.from ? ' baseline' : '')),
      h('td', { class: 'num', 'data-figure': 'requests' }, String(f.requests)),
      h('td', { class: 'num' }, String(f.errors)),
      h('td', { class: 'num ' + rateClass }, fmtPct(f.error_rate),
        h('small', { class: 'muted' }, ` (${fmtPct(f.error_rate_low)}–${fmtPct(f.error_rate_high)})`)),
      h('td', { class: 'muted' }, `< ${fmtPct(slo.advance.error_rate)} to advance, > ${fmtPct(slo.rollback.error_rate)} rolls back`),
      h('td', { class: 'num ' + p95Class }, fmtMs(f.p95_ms)),
      h('td', { class: 'muted' }, `< ${fmtMs(slo.advance.p95_ms)} to advance, > ${fmtMs(slo.rollback.p95_ms)} rolls back`),
      h('td', { class: 'num' }, `${f.nodes_reporting} of ${f.nodes_expected}`,
        f.nodes_missing && f.nodes_missing.length ? h('small', { class: 'bad' }, ' missing ' + f.nodes_missing.join(', ')) : null)));
  }
  return h('div', { class: 'verdict' },
    h('p', {}, badge(v.result, 'the leader\'s latest verdict'), ' ', h('span', { id: 'verdict-reason' }, v.reason.replace(new RegExp('^' + v.result + ': '), ''))),
    h('table', { class: 'figures' },
      h('caption', {}, `Live figures over the last ${slo.window}, every node merged; at least ${slo.min_requests} requests to advance`),
      h('thead', {}, h('tr', {},
        h('th', {}, 'pool'), h('th', { class: 'num' }, 'requests'), h('th', { class: 'num' }, 'errors'),
        h('th', { class: 'num' }, 'error rate (95 % interval)'), h('th', {}, 'bound'),
        h('th', { class: 'num' }, 'P95'), h('th', {}, 'bound'), h('th', { class: 'num' }, 'nodes'))),
      tbody));
}

function renderTrail() {
  const tbody = $('#trail');
  clear(tbody);
  const all = $('#trail-all').checked || !S.selected;
  const rows = S.events.filter((e) => all || e.service === S.selected || !e.service).slice(-60).reverse();
  for (const e of rows) {
    const what = e.action === 'gap' ? e.reason : e.reason || (e.before && e.after ? weightsLine(e.after, e.before) : '');
    tbody.append(h('tr', { class: 'ev-' + e.action },
      h('td', { class: 'num muted' }, String(e.index)),
      h('td', { class: 'mono', title: e.time || '' }, e.time ? fmtTime(e.time) : ''),
      h('td', {}, e.service || ''),
      h('td', {}, h('span', { class: 'action' }, e.action)),
      h('td', {}, e.actor || ''),
      h('td', { class: 'what' }, what)));
  }
  if (!rows.length) tbody.append(h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'no events yet')));
}

// ---------- actions ----------

// explain turns a refused call into words for the dialog.
function explain(e, svc) {
  const b = e.body || {};
  switch (true) {
    case e.status === 412 && e.code === 'gate_refused':
      return [
        h('p', {}, h('strong', {}, 'Refused by the health gate: '), 'the pool would get traffic without a healthy backend. Nothing changed.'),
        h('ul', {}, ...(b.failing || []).map((f) => h('li', {}, `${f.pool}/${f.address} is ${f.health}${f.draining ? ', draining' : ''}`, f.error ? h('span', { class: 'muted' }, ` — ${f.error}`) : null))),
        h('p', {}, 'Fix the backends, or tick “force” to skip the gate (the API’s "force": true) and confirm again.'),
      ];
    case e.status === 409 && e.code === 'version_mismatch':
      return [h('p', {}, h('strong', {}, 'Someone else changed this service '),
        `while this dialog was open (it is now at version ${b.version}). Nothing changed. The page has read it again: close this dialog, check what changed, and try again.`)];
    case e.status === 409 && e.code === 'rollout_running':
      return [h('p', {}, h('strong', {}, 'A rollout is running: '), b.error)];
    case e.status === 401:
      return [h('p', {}, h('strong', {}, 'The API wants a token: '), b.error || e.message, '. Set one with “Token…”.')];
    case e.status === 403:
      return [h('p', {}, h('strong', {}, 'Your token may not do this: '), b.error || e.message,
        '. Watching works; acting needs a token with role operate (admin for services and pools).')];
    case e.status === 503 && e.code === 'no_quorum':
      return [h('p', {}, h('strong', {}, 'No leader took the write within 5 s; nothing was applied. '), 'Try again in a few seconds. ', h('span', { class: 'muted' }, b.error))];
    case e.status === 0:
      return [h('p', {}, h('strong', {}, 'No answer: '), e.message)];
    default:
      return [h('p', {}, h('strong', {}, `Refused (${e.status} ${e.code || ''}): `), b.error || e.message)];
  }
}

let dialogState = null;

// confirmDialog opens the confirmation dialog. body is what will change;
// send() makes the API call and may read inputs in the body. The dialog
// stays open on a refusal, with the API's error in words.
function confirmDialog({ title, body, ok, danger = false, send, svc, valid }) {
  const d = $('#confirm');
  $('#confirm-title').textContent = title;
  clear($('#confirm-body')).append(...body);
  const err = $('#confirm-error');
  clear(err);
  err.hidden = true;
  const okButton = $('#confirm-ok');
  okButton.textContent = ok;
  okButton.className = danger ? 'danger' : 'primary';
  okButton.disabled = false;
  $('#confirm-cancel').textContent = 'Cancel';
  dialogState = { send, svc, valid };
  if (valid) valid();
  d.showModal();
}

async function submitConfirm(ev) {
  ev.preventDefault();
  const st = dialogState;
  if (!st) return;
  const okButton = $('#confirm-ok');
  const err = $('#confirm-error');
  okButton.disabled = true;
  err.hidden = true;
  try {
    await st.send();
    $('#confirm').close();
    dialogState = null;
  } catch (e) {
    if (!(e instanceof APIError)) throw e;
    clear(err).append(...explain(e, st.svc));
    err.hidden = false;
    if (e.status === 403) markReadOnly(e);
    if (e.status === 401) {
      okButton.disabled = false;
      askToken(e.message);
    } else if (e.status === 409 && e.code === 'version_mismatch') {
      $('#confirm-cancel').textContent = 'Close';
    } else if (e.status === 403) {
      okButton.disabled = true;
    } else {
      okButton.disabled = false;
      if (st.valid) st.valid();
    }
  }
  if (st.svc) {
    await guarded('reading the service', async () => { await loadService(st.svc); await loadRollout(st.svc); });
    renderAll();
  }
}

function markReadOnly(e) {
  S.readOnly = (e.body && e.body.error) || e.message;
  showBanner(`Read only: ${S.readOnly}. The page keeps watching; the action buttons are off until you set another token.`);
  S.banner = READ_ONLY;
}

function weightsTable(before, after, lkgNote) {
  const pools = Object.keys({ ...before, ...after }).sort();
  return h('table', { class: 'diff' },
    h('thead', {}, h('tr', {}, h('th', {}, 'pool'), h('th', { class: 'num' }, 'now'), h('th', {}, ''), h('th', { class: 'num' }, lkgNote || 'after'))),
    h('tbody', {}, ...pools.map((p) => {
      const a = before[p] || 0;
      const b = after[p] || 0;
      return h('tr', { class: a !== b ? 'changed' : '' },
        h('th', { scope: 'row' }, p), h('td', { class: 'num' }, fmtWeight(a)), h('td', {}, a !== b ? '→' : ''), h('td', { class: 'num' }, fmtWeight(b)));
    })));
}

function forceBox() {
  return h('label', { class: 'check' }, h('input', { type: 'checkbox', id: 'force' }), ' force: skip the health gate (sends "force": true)');
}
const forced = () => !!($('#force') && $('#force').checked);

function switchDialog(s) {
  const pools = Object.keys(s.pools).sort();
  const current = pools.reduce((a, p) => ((s.weights[p] || 0) > (s.weights[a] || 0) ? p : a), pools[0]);
  const target = pools.find((p) => p !== current) || current;
  const select = h('select', { id: 'switch-to' }, ...pools.map((p) => h('option', { value: p, selected: p === target }, p)));
  const diff = h('div');
  const show = () => {
    const after = Object.fromEntries(pools.map((p) => [p, p === select.value ? 100 : 0]));
    clear(diff).append(weightsTable(s.weights, after));
  };
  select.addEventListener('change', show);
  confirmDialog({
    title: `Switch ${s.name}`, ok: 'Switch', svc: s.name,
    body: [h('label', { class: 'field' }, 'All traffic to', select), diff,
      h('p', { class: 'muted' }, 'The weights in force now become the LKG, and the pool that gains traffic is guarded for ' + s.guard + '.'), forceBox()],
    send: () => call('POST', svcPath(s.name, 'switch'), { to: select.value, force: forced(), if_version: s.version }),
  });
  show();
}

function weightsDialog(s) {
  const pools = Object.keys(s.pools).sort();
  const inputs = Object.fromEntries(pools.map((p) => [p, h('input', { type: 'number', min: '0', max: '100', step: '0.01', value: String(s.weights[p] || 0), id: 'w-' + p })]));
  const sum = h('p', { class: 'sum' });
  const diff = h('div');
  const read = () => Object.fromEntries(pools.map((p) => [p, Number(inputs[p].value || 0)]));
  const valid = () => {
    const w = read();
    const total = Math.round(Object.values(w).reduce((a, b) => a + b, 0) * 100) / 100;
    sum.textContent = `sum ${total} %` + (total === 100 ? '' : ' — must be exactly 100');
    sum.className = total === 100 ? 'sum' : 'sum bad';
    $('#confirm-ok').disabled = total !== 100;
    clear(diff).append(weightsTable(s.weights, w));
  };
  for (const i of Object.values(inputs)) i.addEventListener('input', valid);
  confirmDialog({
    title: `Weights of ${s.name}`, ok: 'Set weights', svc: s.name, valid,
    body: [h('div', { class: 'grid' }, ...pools.map((p) => h('label', { class: 'field' }, p + ' %', inputs[p]))), sum, diff,
      h('p', { class: 'muted' }, 'The weights in force now become the LKG; pools that gain share are guarded for ' + s.guard + '. A pool raised from 0 must pass the health gate.'), forceBox()],
    send: () => call('PUT', svcPath(s.name, 'weights'), { weights: read(), force: forced(), if_version: s.version }),
  });
}

// parseSteps reads "1:5m,5:10m,100" (the CLI's --steps) into the API's
// steps; the API checks them.
function parseSteps(text) {
  return text.split(',').map((x) => x.trim()).filter(Boolean).map((x) => {
    const [w, hold] = x.split(':');
    const step = { weight: Number(w) };
    if (hold) step.hold = hold.trim();
    return step;
  });
}

function rolloutStartDialog(s) {
  const pools = Object.keys(s.pools).sort();
  const target = pools.find((p) => !s.weights[p]) || pools[pools.length - 1];
  const to = h('select', { id: 'ro-to' }, ...pools.map((p) => h('option', { value: p, selected: p === target }, p)));
  const from = h('select', { id: 'ro-from' }, h('option', { value: '' }, '(the largest other pool)'), ...pools.map((p) => h('option', { value: p }, p)));
  const strategy = h('select', { id: 'ro-strategy' }, h('option', { value: 'canary' }, 'canary (steps)'), h('option', { value: 'blue-green' }, 'blue-green (all at once, then bake)'));
  const steps = h('input', { id: 'ro-steps', type: 'text', value: '1:5m,5:10m,25:15m,50:15m,100', spellcheck: 'false' });
  const bake = h('input', { id: 'ro-bake', type: 'text', value: '5m', spellcheck: 'false' });
  const gate = h('select', { id: 'ro-gate' }, h('option', { value: 'auto' }, 'auto: the watcher moves on after each pass'), h('option', { value: 'manual' }, 'manual: wait for promote after each step'));
  const plan = h('p', { class: 'plan' });
  const valid = () => {
    const canary = strategy.value === 'canary';
    steps.disabled = !canary;
    bake.disabled = canary;
    plan.textContent = canary
      ? `${to.value} gets ${parseSteps(steps.value).map((x) => fmtWeight(x.weight) + (x.hold ? ' for ' + x.hold : '')).join(', then ')}; each step moves on only on a passing verdict.`
      : `${to.value} gets 100 % at once, then bakes ${bake.value} under the rollback SLO.`;
    plan.append(h('br'), 'The weights in force now become the LKG: a breach of the rollback SLO (', fmtPct(s.slo.rollback.error_rate), ' errors, P95 ', fmtMs(s.slo.rollback.p95_ms), ') brings them back.');
  };
  for (const el of [to, from, strategy, steps, bake, gate]) el.addEventListener('input', valid);
  confirmDialog({
    title: `Start a rollout of ${s.name}`, ok: 'Start rollout', svc: s.name, valid,
    body: [h('div', { class: 'grid' },
      h('label', { class: 'field' }, 'to (gains traffic)', to), h('label', { class: 'field' }, 'from (loses it)', from),
      h('label', { class: 'field' }, 'strategy', strategy), h('label', { class: 'field' }, 'gate', gate),
      h('label', { class: 'field wide' }, 'steps: weight:hold, …', steps), h('label', { class: 'field' }, 'bake', bake)),
    plan, forceBox()],
    send: () => {
      const body = { to: to.value, strategy: strategy.value, gate: gate.value, force: forced(), if_version: s.version };
      if (from.value) body.from = from.value;
      if (strategy.value === 'canary') body.steps = parseSteps(steps.value);
      else body.bake = bake.value;
      return call('POST', svcPath(s.name, 'rollout'), body);
    },
  });
}

const ROLLOUT_ACTIONS = {
  pause: ['Pause', 'The weights stay; no step is taken until resume. A breach still rolls back.'],
  resume: ['Resume', 'The rollout runs again; the current step’s hold starts over.'],
  promote: ['Promote', 'The next step now, without waiting for the hold or the verdict. On the last step the rollout ends promoted.'],
  abort: ['Abort', 'The LKG weights come back now, on every node; the rollout ends aborted.'],
};

function rolloutActionDialog(s, action) {
  const [label, what] = ROLLOUT_ACTIONS[action];
  const ro = s.rollout;
  const body = [h('p', {}, `Rollout ${ro.id} (${ro.from} → ${ro.to}) is ${ro.state} at step ${ro.step} of ${ro.steps.length}.`), h('p', {}, what)];
  if (action === 'abort') body.push(weightsTable(s.weights, s.lkg, 'LKG'));
  if (action === 'promote' && ro.step < ro.steps.length) {
    const next = ro.steps[ro.step];
    body.push(h('p', {}, `${ro.to} goes to ${fmtWeight(next.weight)}.`));
  }
  confirmDialog({
    title: `${label} the rollout of ${s.name}`, ok: label, danger: action === 'abort', svc: s.name, body,
    send: () => call('POST', svcPath(s.name, 'rollout', action), { if_version: s.version }),
  });
}

function rollbackDialog(s) {
  const ro = s.rollout;
  confirmDialog({
    title: `Roll back ${s.name}`, ok: 'Roll back', danger: true, svc: s.name,
    body: [h('p', {}, 'The last known good weights come back now, on every node, in one commit.'),
      weightsTable(s.weights, s.lkg, 'LKG'),
      ro && ACTIVE.has(ro.state) ? h('p', {}, `Rollout ${ro.id} ends rolled back.`) : null,
      h('p', { class: 'muted' }, 'WebSockets and event streams to pools going to 0 close after the short rollback delay.')].filter(Boolean),
    send: () => call('POST', svcPath(s.name, 'rollback'), { if_version: s.version }),
  });
}

function drainDialog(s, pool, b, drain) {
  const others = s.pools[pool].backends.filter((x) => x !== b && x.health !== 'unhealthy' && !x.draining).length;
  confirmDialog({
    title: `${drain ? 'Drain' : 'Undrain'} ${b.address}`, ok: drain ? 'Drain' : 'Undrain', danger: drain, svc: s.name,
    body: drain
      ? [h('p', {}, `${pool}/${b.address} gets no new requests on any node; its ${b.in_flight} request(s) in flight here finish, and its long-lived connections close after the stream close delay.`),
        others ? h('p', { class: 'muted' }, `${others} other backend(s) of ${pool} take its share.`)
          : h('p', { class: 'warn' }, `It is the last backend of ${pool} able to take requests: the pool’s share (${fmtWeight(s.weights[pool] || 0)}) goes to the other pools.`)]
      : [h('p', {}, `${pool}/${b.address} takes requests again on every node.`)],
    send: () => call(drain ? 'POST' : 'DELETE', svcPath(s.name, 'pools', pool, 'backends', b.address, 'drain'), { if_version: s.version }),
  });
}

// ---------- token ----------

let tokenWaiters = [];

// askToken opens the token dialog and resolves once a token is set.
function askToken(why) {
  const d = $('#token-dialog');
  $('#token-why').textContent = why || '';
  $('#token-input').value = '';
  if (!d.open) d.showModal();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

async function tokenChanged() {
  S.readOnly = '';
  S.banner = '';
  showBanner('');
  const waiters = tokenWaiters;
  tokenWaiters = [];
  for (const w of waiters) w();
  await boot();
}

// ---------- start ----------

function selectFromHash() {
  const m = location.hash.match(/^#\/service\/(.+)$/);
  const name = m ? decodeURIComponent(m[1]) : '';
  if (name && name !== S.selected) {
    S.selected = name;
    lastServicePoll = 0;
    guarded('reading the rollout', () => loadRollout(name)).then(renderAll);
  }
  renderAll();
  renderTrail();
}

let booted = false;

async function boot() {
  let since = 0;
  const ok = await guarded('reading the services', async () => {
    await loadServices();
    await loadCluster();
    await loadNotifiers();
    since = await loadTrail();
  });
  if (!ok) return;
  if (!S.selected || !S.services.has(S.selected)) {
    const first = S.services.keys().next().value;
    if (first && !location.hash) history.replaceState(null, '', '#/service/' + encodeURIComponent(first));
    S.selected = '';
  }
  selectFromHash();
  if (S.stream) {
    S.stream.last = Math.max(S.stream.last, since);
    S.stream.restart();
  } else {
    S.stream = new EventStream({
      since, onEvent, onState: streamState,
      onRefused: (status, body) => (status === 401 ? askToken(body.error) : new Promise((r) => setTimeout(r, 5000))),
    });
    S.stream.start();
  }
  if (!booted) {
    booted = true;
    setTimeout(poll, POLL_ROLLOUT_MS);
    setInterval(tickHeld, 1000);
  }
}

function wire() {
  window.addEventListener('hashchange', selectFromHash);
  $('#filter').addEventListener('input', renderList);
  $('#trail-all').addEventListener('change', renderTrail);
  $('#confirm-form').addEventListener('submit', (ev) => { submitConfirm(ev).catch((e) => showBanner(e.message)); });
  $('#confirm-cancel').addEventListener('click', () => { $('#confirm').close(); dialogState = null; });
  $('#token-button').addEventListener('click', () => askToken('').then(() => {}));
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    setToken($('#token-input').value.trim());
    $('#token-dialog').close();
    tokenChanged();
  });
  $('#token-forget').addEventListener('click', () => {
    setToken('');
    $('#token-dialog').close();
    tokenChanged();
  });
  // A dialog left with Escape is a cancel.
  $('#confirm').addEventListener('close', () => { dialogState = null; });
}

wire();
boot();
