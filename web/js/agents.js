// The agents view: every instance of every service, connected or gone.

import { h, fill, ago } from './dom.js';

export function renderAgents(el, agents) {
  if (agents.length === 0) {
    fill(el, h('p', { class: 'empty' }, 'No agent has connected yet. Start a program with `nonstop run -- PROGRAM`, or link nonstop-agent into it.'));
    return;
  }
  const sorted = [...agents].sort((a, b) => (b.connected - a.connected) || a.service.localeCompare(b.service) || a.id.localeCompare(b.id));
  fill(el, h('table', { class: 'agents' },
    h('thead', {}, h('tr', {}, ['service', 'instance', 'version', 'commit', 'labels', 'state', 'last seen', 'dropped'].map((c) => h('th', {}, c)))),
    h('tbody', {}, sorted.map((a) => h('tr', { dataset: { agent: a.id } },
      h('td', {}, a.service),
      h('td', { class: 'mono', title: `started ${a.started || '?'}` }, a.id, h('div', { class: 'muted' }, `${a.host || '?'} · pid ${a.pid}`)),
      h('td', {}, a.version || '—'),
      h('td', { class: 'mono', title: a.commit || '' }, a.commit ? a.commit.slice(0, 10) : '—'),
      h('td', { class: 'mono' }, Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'),
      h('td', {}, h('span', { class: `pill ${a.connected ? 'connected' : 'gone'}` }, a.connected ? 'connected' : 'gone')),
      h('td', { title: a.last_seen }, ago(a.last_seen)),
      h('td', { class: a.dropped ? 'error' : '' , title: 'responses the agent dropped because its buffer was full; should be 0' }, String(a.dropped)))))));
}
