// The responses pane: the live stream (Server-Sent Events), newest first. At most
// `PAGE` rows are in the page at once (more on "load more"), and at most `KEEP`
// responses in memory, so thousands streamed stay responsive. Rows are cheap: the
// variables and the stack are built when a row is opened.

import { h, fill, clock, toast } from './dom.js';
import { api } from './api.js';

const PAGE = 500;
const KEEP = 10000;

export class Responses {
  /** `el`: the list; `onFrame(file, line, response)`: a stack frame was clicked. */
  constructor(el, { onFrame, onCount, onLive, onRules }) {
    this.el = el;
    this.onFrame = onFrame;
    this.onCount = onCount;
    this.onLive = onLive;
    this.onRules = onRules;
    this.all = []; // oldest first
    this.shown = 0; // rows in the page
    this.limit = PAGE;
    this.queue = [];
    this.paused = false;
    this.pausedNew = 0;
    this.filter = { rule: '', service: '' };
    this.frame = 0;
    this.list = h('div', { class: 'list' });
    this.moreButton = h('button', { class: 'more', onclick: () => this.loadMore(), hidden: true }, 'Load more');
    this.empty = h('p', { class: 'empty' }, 'Responses appear here, live, as soon as a rule is hit.');
    fill(el, this.empty, this.list, this.moreButton);
  }

  /** Loads the recent history, then follows the live stream. */
  async start() {
    try {
      const recent = await api('/responses', { query: { limit: 500 } });
      for (const r of recent || []) this.all.push(r);
      this.rerender();
    } catch (e) {
      toast(`cannot load recent responses: ${e.message}`, 'error');
    }
    this.connect();
  }

  connect() {
    this.source = new EventSource('/api/v1/responses/stream');
    this.source.onopen = () => this.onLive('live', 'ok');
    this.source.onmessage = (ev) => {
      let r;
      try {
        r = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.add(r);
    };
    // After a reconnect the server resumes where the stream left off; what retention
    // pruned meanwhile is gone, and it says how much.
    this.source.addEventListener('missed', (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      toast(`${m.count} responses were pruned from the store before this page got them`, 'warn');
    });
    this.source.onerror = () => {
      if (this.source.readyState === EventSource.CLOSED) {
        this.onLive('stream closed: reload the page', 'err');
        // Find out why (a token that stopped working shows its message in place).
        api('/agents').catch(() => {});
      } else this.onLive('reconnecting…', 'warn');
    };
  }

  /** Takes one response (from the stream or a test). */
  add(r) {
    this.all.push(r);
    if (this.all.length > KEEP) this.all.splice(0, this.all.length - KEEP);
    this.onRules(r);
    if (!this.matches(r)) return;
    this.queue.push(r);
    if (this.paused) this.pausedNew++;
    // One render (or, paused, one count) per frame, however fast responses come.
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  matches(r) {
    return (!this.filter.rule || r.rule === this.filter.rule) && (!this.filter.service || r.service === this.filter.service);
  }

  /** Renders what arrived since the last frame, in one go. */
  flush() {
    this.frame = 0;
    if (this.paused) {
      // Keep what waits bounded too: only the newest page can ever be shown at once.
      if (this.queue.length > this.limit) this.queue.splice(0, this.queue.length - this.limit);
      this.count();
      return;
    }
    if (this.queue.length === 0) return;
    const batch = this.queue.length > this.limit ? this.queue.slice(-this.limit) : this.queue;
    this.queue = [];
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.append(this.row(batch[i]));
    this.list.prepend(frag);
    this.shown += batch.length;
    // Keep the page bounded: drop the oldest rows that are not open.
    while (this.shown > this.limit && this.list.lastChild) {
      this.list.lastChild.remove();
      this.shown--;
    }
    this.count();
  }

  count() {
    const total = this.all.filter((r) => this.matches(r)).length;
    this.empty.hidden = total > 0;
    this.moreButton.hidden = this.shown >= total - (this.paused ? this.pausedNew : 0);
    const waiting = this.paused && this.pausedNew ? `, ${this.pausedNew} new while paused` : '';
    this.onCount(`${this.shown} shown of ${total}${waiting}`);
  }

  rerender() {
    this.queue = [];
    this.pausedNew = 0;
    const matching = this.all.filter((r) => this.matches(r));
    const rows = matching.slice(-this.limit).reverse().map((r) => this.row(r));
    this.list.replaceChildren(...rows);
    this.shown = rows.length;
    this.count();
  }

  loadMore() {
    this.limit += PAGE;
    this.rerender();
  }

  setFilter(filter) {
    this.filter = { ...this.filter, ...filter };
    this.limit = PAGE;
    this.rerender();
  }

  setPaused(p) {
    this.paused = p;
    if (!p) this.pausedNew = 0;
    if (!p && this.queue.length) this.flush();
    this.count();
  }

  clear() {
    this.all = [];
    this.rerender();
  }

  row(r) {
    const loc = r.location || {};
    const d = h('details', { class: 'resp', dataset: { rule: r.rule } },
      h('summary', {},
        h('span', { class: 'time', title: r.time }, clock(r.time)),
        h('span', { class: 'who', title: `agent ${r.agent}` }, `${r.service} · ${shortAgent(r.agent)}`),
        h('span', { class: 'loc', title: loc.function || '' }, `${tail(loc.file)}:${loc.line}`),
        h('span', { class: 'msg-text' }, r.message ?? h('span', { class: 'muted' }, `${watchCount(r)}${Object.keys(r.locals || {}).length} variables · ${loc.function || ''}`))));
    d.addEventListener('toggle', () => {
      if (d.open && d.children.length === 1) d.append(this.body(r));
    }, { once: false });
    return d;
  }

  body(r) {
    // A snapshot rule's watch expressions come first: they are what the user asked to see.
    const watches = Object.entries(r.watch || {});
    const watch = watches.length === 0 ? null : h('div', {}, h('h4', {}, 'Watch'),
      h('div', { class: 'vars watch' }, watches.map(([expr, v]) => valueTree(expr, v, 0))));
    const vars = h('div', { class: 'vars' });
    const locals = Object.entries(r.locals || {});
    if (locals.length === 0) vars.append(h('p', { class: 'muted' }, 'no variables'));
    for (const [name, v] of locals) vars.append(valueTree(name, v, 0));
    const frame = (f) => f.file && f.line
      ? h('button', { class: 'link', title: `${f.file}:${f.line}`, onclick: () => this.onFrame(f.file, f.line, r) },
        `${f.function} `, h('span', { class: 'muted' }, `${tail(f.file)}:${f.line}`))
      : h('span', {}, f.function, h('span', { class: 'muted' }, ' (no source)'));
    // A run of the runtime's own frames comes folded (`folded` keeps them): unfold on click.
    const frames = h('ol', { class: 'frames' }, (r.frames || []).map((f) =>
      (f.folded && f.folded.length > 0)
        ? h('li', { class: 'folded' }, h('details', {},
          h('summary', { class: 'muted' }, f.function),
          h('ol', { class: 'frames' }, f.folded.map((g) => h('li', {}, frame(g))))))
        : h('li', {}, frame(f))));
    const copy = h('button', {
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(JSON.stringify(r, null, 2));
          toast('copied as JSON');
        } catch {
          toast('the browser refused the clipboard: select the JSON below instead', 'error');
          copy.after(h('pre', { class: 'preview' }, JSON.stringify(r, null, 2)));
        }
      },
    }, 'Copy JSON');
    return h('div', { class: 'body' },
      h('div', {}, watch, h('h4', {}, 'Variables'), vars),
      h('div', {}, h('h4', {}, `Stack · thread ${r.thread}`), frames, h('p', {}, copy, ' ',
        h('span', { class: 'muted' }, `rule ${r.rule} · agent ${r.agent}`))));
  }
}

function watchCount(r) {
  const n = Object.keys(r.watch || {}).length;
  return n === 0 ? '' : `${n} watched · `;
}

function tail(file) {
  if (!file) return '?';
  const parts = String(file).split('/');
  return parts.slice(-2).join('/');
}

function shortAgent(id) {
  return String(id).length > 18 ? `${String(id).slice(0, 16)}…` : id;
}

function flags(v) {
  return [
    v.truncated ? h('span', { class: 'flag truncated', title: 'cut short by a capture limit' }, 'truncated') : null,
    v.redacted ? h('span', { class: 'flag redacted', title: 'hidden by redaction inside the agent' }, 'redacted') : null,
    v.error ? h('span', { class: 'flag error', title: v.error }, v.error) : null,
    v.refs ? h('span', { class: 'flag refs', title: 'reference counts at the hit' },
      `strong ${v.refs.strong}, weak ${v.refs.weak}`) : null,
  ];
}

function scalar(value) {
  if (value === null || value === undefined) return h('span', { class: 'v-null' }, 'null');
  if (typeof value === 'string') return h('span', { class: 'v-str' }, JSON.stringify(value));
  if (typeof value === 'boolean') return h('span', { class: 'v-bool' }, String(value));
  return h('span', { class: 'v-num' }, String(value));
}

/** A variable as an expandable tree: `name: type = value` with its marks. */
export function valueTree(name, v, depth) {
  if (!v || typeof v !== 'object' || !('value' in v || 'error' in v)) {
    return h('div', { class: 'leaf' }, h('span', { class: 'name' }, name), ' = ', scalar(v));
  }
  const type = h('span', { class: 'type' }, `: ${v.type}${v.variant ? `::${v.variant}` : ''}`);
  const val = v.value;
  if (val !== null && typeof val === 'object') {
    const entries = Array.isArray(val) ? val.map((x, i) => [String(i), x]) : Object.entries(val);
    const sum = h('summary', {}, h('span', { class: 'name' }, name), type,
      h('span', { class: 'muted' }, Array.isArray(val) ? ` [${entries.length}]` : ` {${entries.length}}`), flags(v));
    const d = h('details', { class: 'node' }, sum);
    const kids = h('div', { class: 'kids' });
    d.append(kids);
    d.addEventListener('toggle', () => {
      if (d.open && !kids.hasChildNodes()) {
        for (const [k, x] of entries) kids.append(valueTree(k, x, depth + 1));
        if (entries.length === 0) kids.append(h('div', { class: 'leaf muted' }, 'empty'));
      }
    });
    return d;
  }
  return h('div', { class: 'leaf' }, h('span', { class: 'name' }, name), type, ' = ',
    v.redacted ? h('span', { class: 'muted' }, '•••') : scalar(val), flags(v));
}
