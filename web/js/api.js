// The server's REST API. Every failure becomes an ApiError with the server's message.

/** An error from the API: `status` (0 when the server could not be reached) and the message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const listeners = new Set();

/** Calls `f(error)` whenever a request is refused for its token (401/403). */
export function onAuthError(f) {
  listeners.add(f);
}

/** Calls the API: `api('/rules')`, `api('/rules', {method: 'POST', body: {...}})`. */
export async function api(path, { method = 'GET', body, query } = {}) {
  let url = `/api/v1${path}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    if (s) url += `?${s}`;
  }
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, `cannot reach the nonstop server (${e.message}): is \`nonstop serve\` still running?`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const message = (data && data.error) || `${resp.status} ${resp.statusText}`;
    const err = new ApiError(resp.status, message);
    if (resp.status === 401 || resp.status === 403) for (const f of listeners) f(err);
    throw err;
  }
  return data;
}

/**
 * Trades a `?token=` in the page's address for the server's cookie (the API sets it on
 * the first request that carries the token), then drops it from the address bar.
 * Resolves to null when the token works, else to the ApiError.
 */
export async function signIn(token) {
  try {
    const resp = await fetch(`/api/v1/agents?token=${encodeURIComponent(token)}`, { credentials: 'same-origin' });
    if (resp.ok) return null;
    const data = await resp.json().catch(() => null);
    return new ApiError(resp.status, (data && data.error) || `${resp.status} ${resp.statusText}`);
  } catch (e) {
    return new ApiError(0, `cannot reach the nonstop server (${e.message})`);
  }
}

/** The file part and line of a rule's `at` (`src/cart.rs:42`), or null for a function. */
export function splitAt(at) {
  const m = /^(.*[^:]):(\d+)$/.exec(at || '');
  return m ? { file: m[1], line: Number(m[2]) } : null;
}

/** Whether two paths name the same file: one ends with the other, by whole parts. */
export function samePath(a, b) {
  if (!a || !b) return false;
  const x = a.split('/').filter(Boolean);
  const y = b.split('/').filter(Boolean);
  const n = Math.min(x.length, y.length);
  for (let i = 1; i <= n; i++) if (x[x.length - i] !== y[y.length - i]) return false;
  return n > 0;
}
