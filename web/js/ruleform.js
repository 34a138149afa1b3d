// The rule form: a template (the server's list, GET /api/v1/templates: snapshot, log line,
// count hits, measure value, trace arguments) expands to plain rule JSON, shown as it is
// typed; limits show their defaults; the API's answer (an error included) appears in place.

import { h, fill, toast, basename } from './dom.js';
import { api } from './api.js';
import { enclosingFunction, languageOf } from './highlight.js';

/** The templates this form knows how to fill in; their titles and order come from the server. */
const KNOWN = new Set(['snapshot', 'log', 'count', 'measure', 'trace']);

let templates = null;

/** The server's templates (fetched once): [{name, title, description, …}]. */
export async function loadTemplates() {
  if (!templates) templates = (await api('/templates')).filter((t) => KNOWN.has(t.name));
  return templates;
}

/**
 * Metric tags from `tier=user.tier,sku=item.sku`: a comma starts a new tag only where a
 * name and `=` follow, so an expression may hold commas (`matches(tier, Gold)`).
 */
export function parseTags(text) {
  const parts = text.split(/,(?=\s*[A-Za-z_]\w*\s*=(?!=))/).map((p) => p.trim()).filter(Boolean);
  if (parts.length === 0) return undefined;
  const tags = {};
  for (const p of parts) {
    const m = /^([A-Za-z_]\w*)\s*=(?!=)\s*(.+)$/.exec(p);
    if (!m) throw new Error(`tag ${JSON.stringify(p)}: write name=expression, e.g. tier=user.tier`);
    tags[m[1]] = m[2].trim();
  }
  return tags;
}

/** The server's defaults (DESIGN.md), shown as placeholders. */
const DEFAULTS = {
  snapshot: { max_hits: '100', rate: '1/s', expires: '1h' },
  other: { max_hits: 'no limit', rate: '5000/s', expires: '24h' },
  limits: { depth: 3, string: 255, collection: 100, fields: 20, frames: 20 },
};

/**
 * Opens the form for `path:line` of `service`. `lines`: the file's text lines (to find
 * the enclosing function); `agents`: the agents list; `onCreated(view)` after a 201.
 */
export async function openRuleForm(dialog, { service, path, line, lines, agents, onCreated, existing }) {
  const list = await loadTemplates();
  const lang = languageOf(path);
  const fn = lines && lines.length ? enclosingFunction(lines, line, lang || 'rust') : null;
  const metricName = `${basename(path).replace(/\.\w+$/, '')}_${line}`.replace(/[^A-Za-z0-9_]/g, '_');
  let kind = 'snapshot';

  const f = {
    at: h('input', { id: 'rf-at', value: `${path}:${line}`, spellcheck: false }),
    template: h('input', { id: 'rf-template', spellcheck: false, value: `reached ${basename(path)}:${line}` }),
    metricName: h('input', { id: 'rf-metric', spellcheck: false, value: metricName }),
    metricKind: h('select', { id: 'rf-metric-kind' }, h('option', { value: 'histogram' }, 'histogram'), h('option', { value: 'gauge' }, 'gauge')),
    value: h('input', { id: 'rf-value', spellcheck: false, placeholder: 'an expression, e.g. order.total' }),
    tags: h('input', { id: 'rf-tags', spellcheck: false, placeholder: 'optional: tier=user.tier,sku=item.sku (one series per value)' }),
    watch: h('textarea', { id: 'rf-watch', rows: 2, spellcheck: false, placeholder: 'optional, one expression a line, shown with each snapshot: order.total - discount' }),
    when: h('input', { id: 'rf-when', spellcheck: false, placeholder: 'optional, e.g. user.id == 7 && cart.items.len() > 3' }),
    labels: h('input', { id: 'rf-labels', spellcheck: false, placeholder: 'optional: region=eu,tier=canary' }),
    version: h('input', { id: 'rf-version', spellcheck: false, placeholder: 'optional: only agents reporting this version, e.g. 1.4.2' }),
    maxHits: h('input', { id: 'rf-max-hits', inputmode: 'numeric' }),
    rate: h('input', { id: 'rf-rate' }),
    expires: h('input', { id: 'rf-expires' }),
  };
  // Where the responses go: the IDE always, and any configured target (GET /api/v1/targets).
  let targets = [];
  try {
    targets = await api('/targets');
  } catch {
    targets = [];
  }
  const toBoxes = targets.map((t) => h('input', {
    type: 'checkbox', id: `rf-to-${t.name}`, value: t.name, dataset: { target: t.name },
  }));
  const toGroup = h('div', { class: 'templates', id: 'rf-to', role: 'group', 'aria-label': 'Send to' },
    h('label', { title: 'the IDE always gets the responses' }, h('input', { type: 'checkbox', checked: true, disabled: true }), ' ui'),
    targets.map((t, i) => h('label', { title: `${t.kind} target, ${t.status}` }, toBoxes[i], ` ${t.name}`,
      h('span', { class: 'muted' }, ` (${t.kind}${t.status === 'active' ? '' : ', disabled'})`))),
    targets.length ? '' : h('span', { class: 'muted' }, 'add targets with `nonstop targets add NAME --webhook URL` (or --otlp, --sentry, …)'));
  const limits = Object.fromEntries(Object.entries(DEFAULTS.limits).map(([k, d]) =>
    [k, h('input', { id: `rf-limit-${k}`, inputmode: 'numeric', placeholder: String(d) })]));
  const error = h('div', { class: 'form-error', role: 'alert', id: 'rf-error' });
  const preview = h('pre', { class: 'preview', id: 'rf-preview' });
  const reach = h('div', { class: 'muted full', id: 'rf-reach' });
  const buttons = list.map((t) =>
    h('button', { type: 'button', title: t.description, 'aria-pressed': String(t.name === kind), dataset: { template: t.name }, onclick: () => choose(t.name) }, t.title));
  const rows = {
    template: [h('label', { for: 'rf-template' }, 'Message'), f.template],
    metric: [h('label', { for: 'rf-metric' }, 'Metric name'), f.metricName],
    measure: [h('label', { for: 'rf-value' }, 'Value'), h('div', { class: 'templates' }, f.metricKind, f.value)],
    tags: [h('label', { for: 'rf-tags' }, 'Tags'), f.tags],
    watch: [h('label', { for: 'rf-watch' }, 'Watch'), f.watch],
  };

  function choose(k) {
    kind = k;
    for (const b of buttons) b.setAttribute('aria-pressed', String(b.dataset.template === k));
    const show = (row, on) => row.forEach((e) => { e.hidden = !on; });
    show(rows.template, k === 'log' || k === 'trace');
    show(rows.metric, k === 'count' || k === 'measure');
    show(rows.measure, k === 'measure');
    show(rows.tags, k === 'count' || k === 'measure');
    show(rows.watch, k === 'snapshot');
    if (k === 'trace') {
      if (fn) {
        f.at.value = `${path}:${fn.line}`;
        f.template.value = `${fn.name}(${fn.params.map((p) => `${p}={${p}:?}`).join(', ')})`;
      } else error.textContent = 'no function found above this line: write the location and message yourself';
    } else if (f.at.value !== `${path}:${line}` && (k === 'snapshot' || k === 'count' || k === 'measure')) {
      f.at.value = `${path}:${line}`;
    }
    const d = k === 'snapshot' ? DEFAULTS.snapshot : DEFAULTS.other;
    f.maxHits.placeholder = d.max_hits;
    f.rate.placeholder = d.rate;
    f.expires.placeholder = d.expires;
    update();
  }

  /** The rule JSON the form stands for; throws on a bad number. */
  function rule() {
    const r = { at: f.at.value.trim() };
    if (kind === 'snapshot') {
      r.action = 'snapshot';
      const watch = f.watch.value.split('\n').map((s) => s.trim()).filter(Boolean);
      if (watch.length) r.watch = watch;
    }
    else if (kind === 'log' || kind === 'trace') {
      r.action = 'log';
      r.template = f.template.value;
    } else {
      r.action = 'metric';
      r.metric = kind === 'count'
        ? { kind: 'count', name: f.metricName.value.trim() }
        : { kind: f.metricKind.value, name: f.metricName.value.trim(), value: f.value.value.trim() || undefined };
      const tags = parseTags(f.tags.value);
      if (tags) r.metric.tags = tags;
    }
    if (f.when.value.trim()) r.when = f.when.value;
    if (service) r.service = service;
    if (f.version.value.trim()) r.version = f.version.value.trim();
    const labels = f.labels.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (labels.length) {
      r.labels = {};
      for (const l of labels) {
        const [k, ...v] = l.split('=');
        if (!k || v.length === 0) throw new Error(`label ${JSON.stringify(l)}: write key=value`);
        r.labels[k.trim()] = v.join('=').trim();
      }
    }
    const num = (input, name) => {
      const s = input.value.trim();
      if (!s) return undefined;
      if (!/^\d+$/.test(s)) throw new Error(`${name} must be a whole number, not ${JSON.stringify(s)}`);
      return Number(s);
    };
    const maxHits = num(f.maxHits, 'max hits');
    if (maxHits !== undefined) r.max_hits = maxHits;
    if (f.rate.value.trim()) r.rate = f.rate.value.trim();
    if (f.expires.value.trim()) r.expires = f.expires.value.trim();
    const lim = {};
    for (const [k, input] of Object.entries(limits)) {
      const v = num(input, `limit ${k}`);
      if (v !== undefined) lim[k] = v;
    }
    if (Object.keys(lim).length) r.limits = lim;
    const to = toBoxes.filter((b) => b.checked).map((b) => b.value);
    if (to.length) r.to = ['ui', ...to];
    return r;
  }

  function update() {
    try {
      const r = rule();
      preview.textContent = JSON.stringify(r, null, 1);
      if (!error.dataset.api) error.textContent = '';
      const mine = (agents || []).filter((a) => a.connected && (!r.service || a.service === r.service)
        && (!r.version || a.version === r.version)
        && Object.entries(r.labels || {}).every(([k, v]) => (a.labels || {})[k] === v));
      reach.textContent = mine.length === 0
        ? `Reaches no connected agent of ${service || 'any service'} yet; it waits for them.`
        : `Reaches ${mine.length} connected agent${mine.length === 1 ? '' : 's'}: ${mine.slice(0, 5).map((a) => a.id).join(', ')}${mine.length > 5 ? ', …' : ''}`;
    } catch (e) {
      preview.textContent = '';
      error.textContent = e.message;
    }
  }

  async function submit(ev) {
    ev.preventDefault();
    delete error.dataset.api;
    let r;
    try {
      r = rule();
    } catch (e) {
      error.textContent = e.message;
      return;
    }
    create.disabled = true;
    try {
      const view = await api('/rules', { method: 'POST', body: r });
      dialog.close();
      toast(`rule ${view.rule.id} added at ${view.rule.at}`);
      onCreated(view);
    } catch (e) {
      error.dataset.api = '1';
      error.textContent = e.message;
    } finally {
      create.disabled = false;
    }
  }

  const create = h('button', { type: 'submit', class: 'primary', id: 'rf-create' }, 'Add rule');
  const form = h('form', { onsubmit: submit, oninput: () => { delete error.dataset.api; update(); } },
    h('h2', {}, `New rule at ${basename(path)}:${line}`, fn ? h('span', { class: 'muted' }, ` in ${fn.name}`) : ''),
    h('div', { class: 'form' },
      h('label', {}, 'Template'), h('div', { class: 'templates', role: 'group', 'aria-label': 'Template' }, buttons),
      h('label', { for: 'rf-at' }, 'Location'), f.at,
      rows.template, rows.metric, rows.measure, rows.tags, rows.watch,
      h('label', { for: 'rf-when' }, 'Condition'), f.when,
      h('label', { for: 'rf-labels' }, 'Agents'), f.labels,
      h('label', { for: 'rf-version' }, 'Version'), f.version, reach,
      h('label', {}, 'Limits'),
      h('div', { class: 'limits' },
        h('label', {}, 'max hits', f.maxHits), h('label', {}, 'rate', f.rate), h('label', {}, 'expires', f.expires),
        Object.entries(limits).map(([k, input]) => h('label', {}, k === 'string' ? 'string length' : k, input))),
      h('label', { for: 'rf-to' }, 'Send to'), toGroup,
      h('div', { class: 'full' }, preview),
      h('div', { class: 'full' }, error)),
    h('div', { class: 'buttons' }, h('button', { type: 'button', onclick: () => dialog.close() }, 'Cancel'), create));
  fill(dialog, form);
  if (existing) {
    // Editing makes a new rule from the old one's fields; the old one goes once the new one is in.
    const m = existing.metric || {};
    const k = existing.action === 'log' ? 'log'
      : existing.action === 'metric' ? (m.kind === 'count' ? 'count' : 'measure') : 'snapshot';
    choose(k);
    f.at.value = existing.at;
    if (existing.template) f.template.value = existing.template;
    if (m.name) f.metricName.value = m.name;
    if (m.kind && m.kind !== 'count') f.metricKind.value = m.kind;
    if (m.value) f.value.value = m.value;
    f.tags.value = Object.entries(m.tags || {}).map(([a, b]) => `${a}=${b}`).join(',');
    f.watch.value = (existing.watch || []).join('\n');
    f.when.value = existing.when || '';
    f.labels.value = Object.entries(existing.labels || {}).map(([a, b]) => `${a}=${b}`).join(',');
    f.version.value = existing.version || '';
    f.maxHits.value = existing.max_hits ?? '';
    f.rate.value = existing.rate || '';
    f.expires.value = existing.expires || '';
    for (const [name, input] of Object.entries(limits)) input.value = (existing.limits || {})[name] ?? '';
    for (const b of toBoxes) b.checked = (existing.to || []).includes(b.value);
    form.querySelector('h2').textContent = `Edit rule ${existing.id} (saving replaces it)`;
    create.textContent = 'Replace rule';
    update();
  } else choose('snapshot');
  dialog.showModal();
  f.at.focus();
  return { choose };
}
