// The rules pane: every rule with its action, condition, state, hits and status on each
// agent (errors with their message), and a metric rule's values (metrics.js). Disable/enable,
// edit, delete; click the location to open it.

import { h, fill, ago } from './dom.js';
import { api, splitAt } from './api.js';
import { MetricsPanel } from './metrics.js';

const WORST_FIRST = ['error', 'rate-limited', 'pending', 'armed', 'disabled', 'expired', 'done'];

/** One status for a rule over its agents: the worst one; `done`/`expired` once over. */
export function ruleStatus(view) {
  if (view.state && view.state !== 'active') return view.state;
  if (view.enabled === false) return 'disabled';
  const seen = new Set((view.agents || []).map((a) => a.status));
  return WORST_FIRST.find((s) => seen.has(s)) || 'pending';
}

/** An agent's status on a rule as shown: `disabled` for what a disabled rule left behind. */
function shown(view, a) {
  return view.enabled === false && ['armed', 'pending', 'rate-limited'].includes(a.status) ? 'disabled' : a.status;
}

/** A one-line description of what a rule does. */
export function describe(rule) {
  switch (rule.action) {
    case 'log':
      return `log "${rule.template}"`;
    case 'metric': {
      const m = rule.metric || {};
      return `${m.kind} ${m.name}${m.value ? ` = ${m.value}` : ''}`;
    }
    default:
      return 'snapshot';
  }
}

export class RulesPane {
  constructor(el, { onOpen, onChange, onEdit }) {
    this.el = el;
    this.onOpen = onOpen;
    this.onEdit = onEdit;
    this.lastHit = new Map();
    this.onChange = onChange;
    this.views = [];
    this.json = '';
    this.current = null;
    this.metrics = new MetricsPanel();
  }

  /** Fetches the rules; re-renders only when something changed. */
  async refresh() {
    const views = await api('/rules');
    const json = JSON.stringify(views);
    if (json === this.json) return;
    this.json = json;
    this.views = views;
    this.metrics.retain(new Set(views.map((v) => v.rule.id)));
    this.render();
    this.onChange(views);
  }

  /** Notes a response's time as its rule's last hit (shown at the next render). */
  hit(response) {
    this.lastHit.set(response.rule, response.time);
  }

  render() {
    if (this.views.length === 0) {
      fill(this.el, h('p', { class: 'empty' }, 'No rules yet. Open a file and click a line to add one.'));
      return;
    }
    const sorted = [...this.views].sort((a, b) => (b.created || '').localeCompare(a.created || ''));
    fill(this.el, sorted.map((v) => this.card(v)));
  }

  card(v) {
    const r = v.rule;
    const status = ruleStatus(v);
    const at = splitAt(r.at);
    const agents = v.agents || [];
    return h('div', { class: `rule${r.id === this.current ? ' current' : ''}`, dataset: { rule: r.id } },
      h('div', { class: 'head' },
        h('span', { class: `pill ${status}`, title: `state ${v.state}` }, status),
        at ? h('button', { class: 'link at', title: 'open in the code pane', onclick: () => this.onOpen(r, at) }, r.at)
          : h('span', { class: 'at' }, r.at),
        h('span', { class: 'muted' }, `${v.hits} hit${v.hits === 1 ? '' : 's'}`,
          this.lastHit.has(r.id) ? `, last ${ago(this.lastHit.get(r.id))}` : ''),
        h('span', { class: 'actions' },
          v.state === 'active' ? h('button', {
            class: 'toggle',
            title: v.enabled === false ? `send rule ${r.id} to its agents again` : `take rule ${r.id} from its agents, keeping its history`,
            'aria-label': `${v.enabled === false ? 'enable' : 'disable'} rule ${r.id}`,
            'aria-pressed': String(v.enabled !== false),
            onclick: () => this.toggle(r.id, v.enabled === false),
          }, v.enabled === false ? 'Enable' : 'Disable') : null,
          h('button', { title: `edit rule ${r.id}`, 'aria-label': `edit rule ${r.id}`, onclick: () => this.onEdit(r) }, 'Edit'),
          h('button', { class: 'danger', title: `delete rule ${r.id}`, 'aria-label': `delete rule ${r.id}`, onclick: () => this.remove(r.id) }, 'Delete'))),
      h('div', { class: 'what' }, describe(r), r.when ? ` when ${r.when}` : ''),
      h('div', { class: 'what' }, `${r.id} · ${r.service || 'every service'}`,
        Object.keys(r.labels || {}).length ? ` · ${Object.entries(r.labels).map(([k, x]) => `${k}=${x}`).join(',')}` : '',
        r.max_hits ? ` · max ${r.max_hits}` : '', r.rate ? ` · ${r.rate}` : '',
        v.expires_at ? ` · expires ${new Date(v.expires_at).toLocaleTimeString()}` : ''),
      (v.deliveries || []).length
        ? h('ul', { class: 'statuses deliveries' }, v.deliveries.map((d) => h('li', { dataset: { target: d.target } },
          h('span', { class: `pill ${d.failed || d.dropped ? 'error' : d.pending ? 'pending' : 'armed'}` }, `to ${d.target}`), ' ',
          `${d.sent} sent`, d.pending ? ` · ${d.pending} pending` : '', d.failed ? ` · ${d.failed} failed` : '',
          d.dropped ? ` · ${d.dropped} dropped` : '')))
        : null,
      agents.length === 0
        ? h('ul', { class: 'statuses' }, h('li', { class: 'muted' }, 'no agent of this service is connected yet'))
        : h('ul', { class: 'statuses' }, agents.map((a) => h('li', {},
          // A disabled rule left every agent's set: its last "armed" is history, not now.
          h('span', { class: `pill ${shown(v, a)}` }, shown(v, a)), ' ', h('span', { class: 'mono' }, a.agent),
          a.connected ? '' : h('span', { class: 'muted' }, ' (gone)'),
          ` · ${a.hits} hits`, a.dropped ? ` · ${a.dropped} dropped` : '', a.probes ? ` · ${a.probes} probe${a.probes === 1 ? '' : 's'}` : '',
          h('span', { class: 'muted' }, ` · ${ago(a.updated)}`),
          a.message ? h('div', { class: a.status === 'error' ? 'error' : 'muted' }, a.message) : null))),
      r.action === 'metric' ? this.metrics.block(r) : null);
  }

  /** Enables or disables a rule; its hits and responses stay either way. */
  async toggle(id, enable) {
    try {
      await api(`/rules/${encodeURIComponent(id)}/${enable ? 'enable' : 'disable'}`, { method: 'POST' });
    } catch (e) {
      const card = this.el.querySelector(`[data-rule="${CSS.escape(id)}"]`);
      if (card) card.append(h('div', { class: 'error' }, e.message));
      return;
    }
    await this.refresh().catch(() => {});
  }

  async remove(id) {
    try {
      await api(`/rules/${encodeURIComponent(id)}`, { method: 'DELETE' });
    } catch (e) {
      const card = this.el.querySelector(`[data-rule="${CSS.escape(id)}"]`);
      if (card) card.append(h('div', { class: 'error' }, e.message));
      return;
    }
    await this.refresh().catch(() => {});
  }
}
