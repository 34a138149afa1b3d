// The values of metric rules, shown in their cards in the rules pane: per service and tag
// values the count; a gauge's last value; a histogram's count, sum, mean and p50/p90/p99
// (upper bounds read from its buckets). Each card's block polls
// GET /api/v1/metrics?rule=ID every 2 s while it is on screen, and not at all otherwise.

import { h, fill, clock } from './dom.js';
import { api } from './api.js';

const EVERY_MS = 2000;

/** Upper bounds of the histogram buckets: nonstop_model::metrics::HISTOGRAM_BOUNDS. */
export const HISTOGRAM_BOUNDS = [];
for (let k = -3; k <= 9; k++) for (const m of ['1', '2.5', '5']) HISTOGRAM_BOUNDS.push(Number(`${m}e${k}`));

/**
 * An upper bound of the `q`-quantile of a histogram's buckets (counts per bucket, not
 * cumulative; the last counts values above every bound): the bound of the bucket holding
 * the value of rank ⌈q·n⌉. Null without values, Infinity above the last bound.
 */
export function quantileBound(buckets, q) {
  const total = buckets.reduce((s, n) => s + n, 0);
  if (total === 0) return null;
  const rank = Math.min(total, Math.max(1, Math.ceil(q * total)));
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i];
    if (seen >= rank) return i < HISTOGRAM_BOUNDS.length ? HISTOGRAM_BOUNDS[i] : Infinity;
  }
  return Infinity;
}

/** A number for people: whole numbers as such, others to six significant digits. */
export function formatNumber(v) {
  if (v === null || v === undefined) return '–';
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toFixed(0);
  const decimals = Math.min(12, Math.max(0, 5 - Math.floor(Math.log10(Math.abs(v)))));
  const s = v.toFixed(decimals);
  return s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;
}

function bound(b) {
  if (b === null) return '–';
  return b === Infinity ? `> ${formatNumber(HISTOGRAM_BOUNDS[HISTOGRAM_BOUNDS.length - 1])}` : `≤ ${formatNumber(b)}`;
}

/** The name Prometheus sees: invalid characters as `_`, a count as `NAME_total`. */
function exported(metric) {
  let n = String(metric.name || '').replace(/[^A-Za-z0-9_:]/g, '_');
  if (!n || /^\d/.test(n)) n = `_${n}`;
  return metric.kind === 'count' ? `${n}_total` : n;
}

/** `k=v,k=v` of a series' tags, in the server's (sorted) order. */
function tagText(tags) {
  return Object.entries(tags || {}).map(([k, v]) => `${k}=${v}`).join(',');
}

/** The blocks of the metric rules' cards, kept across re-renders of the rules pane. */
export class MetricsPanel {
  constructor() {
    this.blocks = new Map(); // rule id → { el, rule, json, busy }
    this.timer = setInterval(() => this.poll(), EVERY_MS);
  }

  /** The block of a metric rule's card (the same element on every render of the card). */
  block(rule) {
    let b = this.blocks.get(rule.id);
    if (!b) {
      b = { el: h('div', { class: 'metrics', dataset: { metrics: rule.id } }, h('p', { class: 'muted' }, 'loading values…')), json: null, busy: false };
      this.blocks.set(rule.id, b);
      queueMicrotask(() => this.load(rule.id));
    }
    b.rule = rule;
    return b.el;
  }

  /** Forgets the blocks of rules that are gone. */
  retain(ids) {
    for (const id of [...this.blocks.keys()]) if (!ids.has(id)) this.blocks.delete(id);
  }

  /** On screen: in the page, its tab shown, the tab of the browser too, and scrolled into view. */
  visible(el) {
    if (document.hidden || !el.isConnected || el.offsetParent === null) return false;
    const r = el.getBoundingClientRect();
    const pane = el.closest('.pane-body');
    const p = pane ? pane.getBoundingClientRect() : { top: 0, bottom: innerHeight };
    return r.bottom > p.top && r.top < p.bottom;
  }

  poll() {
    for (const [id, b] of this.blocks) if (this.visible(b.el)) this.load(id);
  }

  async load(id) {
    const b = this.blocks.get(id);
    if (!b || b.busy) return;
    b.busy = true;
    try {
      const series = await api('/metrics', { query: { rule: id } });
      const json = JSON.stringify(series);
      if (json !== b.json) {
        b.json = json;
        this.render(b, series);
      }
    } catch (e) {
      b.json = null;
      fill(b.el, h('p', { class: 'error' }, `cannot read the values: ${e.message}`));
    } finally {
      b.busy = false;
    }
  }

  render(b, series) {
    const metric = (b.rule && b.rule.metric) || (series[0] ? { kind: series[0].kind, name: series[0].name } : {});
    const kind = metric.kind || 'count';
    const hint = h('p', { class: 'muted hint' }, 'Prometheus: ',
      h('a', { href: '/metrics', target: '_blank', rel: 'noopener', title: 'the Prometheus text format; a scrape job sends the admin token (README: Metrics for Prometheus)' }, '/metrics'),
      ` as ${exported(metric)}`);
    if (series.length === 0) {
      fill(b.el, h('p', { class: 'muted' }, 'No values yet: they appear about a second after an agent records a hit.'), hint);
      return;
    }
    // A tags column only when the rule has tags: the pane is narrow.
    const cols = [['service', 'service']];
    if (series.some((s) => Object.keys(s.tags || {}).length)) cols.push(['tags', 'tags']);
    cols.push(['count', 'count']);
    if (kind === 'gauge') cols.push(['last', 'last']);
    if (kind === 'histogram') cols.push(['sum', 'sum'], ['mean', 'mean'], ['p50', 'p50'], ['p90', 'p90'], ['p99', 'p99']);
    const cell = (s, k) => {
      switch (k) {
        case 'service': return s.service;
        case 'tags': return tagText(s.tags) || '–';
        case 'count': return formatNumber(s.count);
        case 'last': return formatNumber(s.last);
        case 'sum': return formatNumber(s.sum);
        case 'mean': return s.count > 0 ? formatNumber(s.sum / s.count) : '–';
        default: return bound(quantileBound(s.buckets || [], Number(k.slice(1)) / 100));
      }
    };
    const rows = series.map((s) => h('tr', {
      dataset: { service: s.service, tags: tagText(s.tags) },
      title: `summed over ${s.agents} agent${s.agents === 1 ? '' : 's'} of ${s.service}; last report ${clock(s.received)}`,
    }, cols.map(([k]) => h('td', { class: k === 'service' || k === 'tags' ? '' : 'num', dataset: { k } }, cell(s, k)))));
    const overflow = series.reduce((n, s) => n + (s.overflow || 0), 0);
    fill(b.el,
      h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, cols.map(([, t]) => h('th', {}, t)))), h('tbody', {}, rows))),
      kind === 'histogram' ? h('p', { class: 'muted hint' }, 'p50/p90/p99 are upper bounds: the bound of the bucket (1, 2.5, 5 × 10ᵏ) each quantile falls in.') : null,
      overflow ? h('p', { class: 'error' }, `${overflow} hits not recorded: an agent reached 1000 tag combinations for this rule.`) : null,
      hint);
  }
}
