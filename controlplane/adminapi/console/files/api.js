// api.js: every call the console makes goes through here, to the admin API
// of the node that served the page (docs/api.md), with the bearer token of
// this tab when there is one.

const TOKEN_KEY = 'cbproxy.token';

// The token lives in this tab's sessionStorage: never in the address, never
// logged, gone when the tab closes.
export function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

// APIError is a refused or failed call: status 0 when the API did not
// answer at all; body is the API's JSON error ({"error","code",…}).
export class APIError extends Error {
  constructor(status, body, method, path) {
    super((body && body.error) || `${method} ${path} answered ${status}`);
    this.status = status;
    this.code = (body && body.code) || '';
    this.body = body || {};
  }
}

// call sends one request and returns {data, node, index}; any answer but a
// 2xx throws an APIError.
export async function call(method, path, body) {
  const init = { method, cache: 'no-store', headers: authHeaders({ Accept: 'application/json' }) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new APIError(0, { error: `the admin API did not answer (${e.message}): is the node up?`, code: 'unreachable' }, method, path);
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text.trim() }; }
  if (!resp.ok) throw new APIError(resp.status, data, method, path);
  return {
    data,
    node: resp.headers.get('X-Cbproxy-Node') || '',
    index: Number(resp.headers.get('X-Cbproxy-Index') || 0),
  };
}

// svcPath builds /v1/services/{svc}/… with every part escaped (a backend
// address may be https://…).
export function svcPath(svc, ...rest) {
  return '/v1/services/' + [svc, ...rest].map(encodeURIComponent).join('/');
}
