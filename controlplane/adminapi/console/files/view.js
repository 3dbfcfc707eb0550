// view.js: building DOM and formatting figures. Text always goes in as
// text nodes, never as HTML.

export const $ = (sel) => document.querySelector(sel);

// h builds an element: attributes with the value true are set empty, with
// false, null or undefined left out; children are nodes or strings (null
// and false are skipped, arrays flattened).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// badge is a small coloured label: kind picks the colour (a health, a
// state, a verdict), text defaults to kind.
export function badge(kind, title, text) {
  return h('span', { class: 'badge b-' + String(kind).replace(/[^a-z_-]/gi, ''), title: title || null }, text || String(kind).replace('_', ' '));
}

function trim(numText) {
  return numText.includes('.') ? numText.replace(/0+$/, '').replace(/\.$/, '') : numText;
}

// fmtPct shows a fraction (0.01) as a percentage (1 %), with the decimals a
// small rate needs.
export function fmtPct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  const v = x * 100;
  if (v === 0) return '0 %';
  const digits = v < 0.1 ? 3 : v < 10 ? 2 : 1;
  return trim(v.toFixed(digits)) + ' %';
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms >= 1000) return trim((ms / 1000).toFixed(2)) + ' s';
  if (ms >= 10) return Math.round(ms) + ' ms';
  return trim(ms.toFixed(2)) + ' ms';
}

export const fmtWeight = (w) => `${w} %`;

export function fmtTime(iso, withDate = false) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const time = d.toLocaleTimeString('en-GB', { hour12: false });
  return withDate ? d.toLocaleDateString('en-CA') + ' ' + time : time;
}

// fmtAgo shows a duration in ms as 1h2m, 3m4s or 5s.
export function fmtAgo(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${s}s`;
}

// parseDuration reads the API's Go durations ("1h30m", "5m", "500ms") into
// ms; 0 for anything else.
export function parseDuration(text) {
  const units = { h: 3600000, m: 60000, s: 1000, ms: 1, us: 0.001, 'µs': 0.001, ns: 0.000001 };
  let ms = 0;
  const re = /([0-9.]+)(h|ms|m|s|us|µs|ns)/g;
  let m;
  while ((m = re.exec(text)) !== null) ms += Number(m[1]) * units[m[2]];
  return ms;
}

// weightsLine shows weights in one line ("blue 95 · canary 5"), or with
// before, only what changed ("blue 100 → 0 · green 0 → 100").
export function weightsLine(after, before) {
  const pools = Object.keys({ ...(before || {}), ...after }).sort();
  if (!before) return pools.filter((p) => after[p] > 0).map((p) => `${p} ${after[p]}`).join(' · ');
  const changed = pools.filter((p) => (before[p] || 0) !== (after[p] || 0));
  return changed.map((p) => `${p} ${before[p] || 0} → ${after[p] || 0}`).join(' · ') || 'no change';
}
