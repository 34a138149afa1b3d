// The nonstop web IDE: wires the panes together, keeps the address (#/service/S/PATH:LINE)
// in step, and polls rules and agents while responses stream live.

import { h, fill, toast } from './dom.js';
import { api, signIn, onAuthError, splitAt, samePath } from './api.js';
import { FileTree } from './tree.js';
import { CodeView } from './code.js';
import { RulesPane, ruleStatus } from './rules.js';
import { openRuleForm } from './ruleform.js';
import { Responses } from './responses.js';
import { renderAgents } from './agents.js';
import { initPanes } from './panes.js';

const $ = (id) => document.getElementById(id);
const state = {
  service: '',
  services: [],
  agents: [],
  rules: [],
  files: [],
  path: null,
  line: 0,
  hash: '',
  signedOut: false,
};

// ---- theme

function initTheme() {
  const saved = localStorage.getItem('nonstop.theme');
  if (saved) document.documentElement.dataset.theme = saved;
  $('theme').addEventListener('click', toggleTheme);
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === 'dark'
    : matchMedia('(prefers-color-scheme: dark)').matches;
  const next = dark ? 'light' : 'dark';
  document.documentElement.dataset.theme = next;
  localStorage.setItem('nonstop.theme', next);
}

// ---- token

function showSignIn(err) {
  if (state.signedOut) return;
  state.signedOut = true;
  $('ide').hidden = true;
  $('signin').hidden = false;
  $('signin-msg').textContent = err.message;
  $('live').textContent = 'signed out';
  $('live').className = 'badge err';
  $('signin-token').focus();
}

function initSignInForm() {
  $('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const err = await signIn($('signin-token').value.trim());
    if (err) $('signin-msg').textContent = err.message;
    else location.replace(`/${location.hash}`);
  });
}

// ---- messages in place

function message(el, text, kind = 'info') {
  el.hidden = !text;
  el.className = `msg ${kind}`;
  el.textContent = text || '';
  return el;
}

// ---- services and sources

async function loadServices() {
  state.services = await api('/services');
  const sel = $('service');
  const names = state.services.map((s) => s.service);
  if (state.service && !names.includes(state.service)) names.push(state.service);
  names.sort();
  renderSourceStatus();
  // Rebuilt only when the set changes, so an open picker is not closed under the mouse.
  if (names.join('\n') === state.serviceNames) return;
  state.serviceNames = names.join('\n');
  const cur = sel.value;
  fill(sel, names.length === 0 ? h('option', { value: '' }, 'no services yet') : null,
    names.map((n) => h('option', { value: n }, n)));
  sel.value = state.service || cur;
  const svc = $('resp-service');
  const had = svc.value;
  fill(svc, h('option', { value: '' }, 'all services'), names.map((n) => h('option', { value: n }, n)));
  svc.value = names.includes(had) ? had : '';
}

function serviceInfo(name = state.service) {
  return state.services.find((s) => s.service === name);
}

function renderSourceStatus() {
  const el = $('source-status');
  const s = serviceInfo();
  if (!s) {
    el.textContent = state.service ? 'no source' : '';
    el.className = 'badge';
    return;
  }
  const src = s.source;
  const where = !src ? 'no source' : src.kind === 'git' ? `git ${src.url}${src.branch ? ` #${src.branch}` : ''}` : `folder ${src.path}`;
  el.textContent = s.status === 'error' ? `${where}: ${s.error}` : `${where} · ${s.status}`;
  el.title = el.textContent;
  el.className = `badge ${s.status === 'ready' ? 'ok' : s.status === 'error' ? 'err' : s.status === 'cloning' ? 'warn' : ''}`;
}

async function selectService(name, { keepFile = false } = {}) {
  state.service = name;
  $('service').value = name;
  localStorage.setItem('nonstop.service', name);
  renderSourceStatus();
  if (!keepFile) {
    state.path = null;
    codeView.clear('Pick a file in the tree.');
    $('code-path').textContent = 'No file open';
    $('code-at').textContent = '';
    message($('code-msg'), '');
    setHash();
  }
  await loadTree();
}

async function loadTree() {
  const service = state.service;
  const msg = $('source-msg');
  tree.setFiles([]);
  state.files = [];
  if (!service) {
    message(msg, 'No service yet: start an instrumented program, or set a source with "source…".');
    return;
  }
  message(msg, 'loading files… (a repository is cloned on first use)');
  let resp;
  try {
    resp = await api(`/services/${encodeURIComponent(service)}/files`);
  } catch (e) {
    if (service === state.service) message(msg, e.message, 'err');
    await loadServices().catch(() => {});
    return;
  }
  if (service !== state.service) return;
  state.files = resp.files;
  state.at = resp.at;
  tree.setFiles(resp.files);
  const notes = [];
  if (resp.status === 'error' && resp.error) notes.push(`last fetch failed: ${resp.error}`);
  if (resp.at && resp.at.warning) notes.push(resp.at.warning);
  if (resp.truncated) notes.push(`only the first ${resp.files.length} files are listed`);
  message(msg, notes.join('\n'), notes.length ? 'warn' : 'info');
  await loadServices().catch(() => {});
}

function openSourceDialog() {
  const dialog = $('source-dialog');
  const s = serviceInfo();
  const src = (s && s.source) || {};
  const svc = h('input', { id: 'sd-service', value: state.service || '', spellcheck: false });
  const kind = h('select', { id: 'sd-kind' }, h('option', { value: 'git' }, 'Git repository'), h('option', { value: 'folder' }, 'Folder on the server'));
  kind.value = src.kind === 'folder' ? 'folder' : 'git';
  const url = h('input', { id: 'sd-url', value: src.url || '', placeholder: 'https://…/repo.git, git://…, file:///…', spellcheck: false });
  const branch = h('input', { id: 'sd-branch', value: src.branch || '', placeholder: 'default branch', spellcheck: false });
  const token = h('input', { id: 'sd-token', type: 'password', placeholder: src.has_token ? 'kept (type to replace)' : 'optional, for private HTTPS repositories', autocomplete: 'off' });
  const subdir = h('input', { id: 'sd-subdir', value: src.subdir || '', placeholder: 'optional: the folder with this service\'s code', spellcheck: false });
  const path = h('input', { id: 'sd-path', value: src.path || '', placeholder: '/absolute/path/on/the/server', spellcheck: false });
  const error = h('div', { class: 'form-error', role: 'alert', id: 'sd-error' });
  const gitRows = [h('label', { for: 'sd-url' }, 'URL'), url, h('label', { for: 'sd-branch' }, 'Branch'), branch,
    h('label', { for: 'sd-token' }, 'Access token'), token, h('label', { for: 'sd-subdir' }, 'Sub-folder'), subdir];
  const folderRows = [h('label', { for: 'sd-path' }, 'Folder'), path];
  const sync = () => {
    for (const e of gitRows) e.hidden = kind.value !== 'git';
    for (const e of folderRows) e.hidden = kind.value === 'git';
  };
  kind.addEventListener('change', sync);
  const submit = async (ev) => {
    ev.preventDefault();
    const name = svc.value.trim();
    const body = kind.value === 'git'
      ? { url: url.value.trim(), branch: branch.value.trim() || undefined, token: token.value || undefined, subdir: subdir.value.trim() || undefined }
      : { path: path.value.trim() };
    try {
      await api(`/services/${encodeURIComponent(name)}/source`, { method: 'PUT', body });
    } catch (e) {
      error.textContent = e.message;
      return;
    }
    dialog.close();
    await loadServices().catch(() => {});
    await selectService(name);
  };
  fill(dialog, h('form', { onsubmit: submit },
    h('h2', {}, 'Where the code of a service is'),
    h('p', { class: 'muted' }, 'Files are shown at the commit the service\'s agents report (NONSTOP_COMMIT), else at the branch head with a warning.'),
    h('div', { class: 'form' }, h('label', { for: 'sd-service' }, 'Service'), svc, h('label', { for: 'sd-kind' }, 'Kind'), kind,
      gitRows, folderRows, h('div', { class: 'full' }, error)),
    h('div', { class: 'buttons' }, h('button', { type: 'button', onclick: () => dialog.close() }, 'Cancel'),
      h('button', { type: 'submit', class: 'primary', id: 'sd-save' }, 'Save'))));
  sync();
  dialog.showModal();
}

// ---- code

function fileUrl(service, path) {
  return `/services/${encodeURIComponent(service)}/files/${path.split('/').map(encodeURIComponent).join('/')}`;
}

async function openFile(path, line = 0) {
  const service = state.service;
  state.path = path;
  state.line = line;
  tree.reveal(path);
  $('code-path').textContent = path;
  $('code-at').textContent = 'loading…';
  setHash();
  let resp;
  try {
    resp = await api(fileUrl(service, path));
  } catch (e) {
    if (state.path !== path) return;
    $('code-at').textContent = '';
    codeView.clear();
    message($('code-msg'), e.message, 'err');
    return;
  }
  if (state.path !== path || state.service !== service) return;
  const t0 = performance.now();
  codeView.show(path, resp.content);
  window.nonstopLastRenderMs = performance.now() - t0;
  const at = resp.at || {};
  $('code-at').textContent = at.commit ? `at ${at.commit.slice(0, 10)}` : '';
  $('code-at').title = at.commit || '';
  message($('code-msg'), at.warning || '', 'warn');
  paintMarkers();
  if (line) codeView.setCursor(line);
  codeView.el.focus({ preventScroll: true });
}

function paintMarkers() {
  if (!state.path) return;
  const worst = ['error', 'rate-limited', 'pending', 'armed', 'disabled', 'expired', 'done'];
  const marks = new Map();
  for (const v of state.rules) {
    const at = splitAt(v.rule.at);
    if (!at || !samePath(at.file, state.path)) continue;
    if (v.rule.service && v.rule.service !== state.service) continue;
    const status = ruleStatus(v);
    const errors = (v.agents || []).filter((a) => a.message).map((a) => `${a.agent}: ${a.message}`);
    const title = `rule ${v.rule.id}: ${status}${errors.length ? `\n${errors.join('\n')}` : ''}`;
    const old = marks.get(at.line);
    if (!old || worst.indexOf(status) < worst.indexOf(old.status)) marks.set(at.line, { status, title: old ? `${title}\n${old.title}` : title });
    else old.title += `\n${title}`;
  }
  codeView.setMarkers(marks);
}

/** Opens an agent's file path (absolute, from debug info) in `service`'s source. */
async function openAgentPath(service, file, line) {
  if (service && service !== state.service) await selectService(service);
  if (state.files.includes(file)) return openFile(file, line);
  try {
    const r = await api(`/services/${encodeURIComponent(state.service)}/resolve`, { query: { path: file } });
    if (r.path) return openFile(r.path, line);
    message($('code-msg'), `${file} matches several files of the source: ${r.candidates.join(', ')}; opening the first`, 'warn');
    return openFile(r.candidates[0], line);
  } catch (e) {
    message($('code-msg'), e.message, 'err');
  }
}

// ---- address

function setHash() {
  let hash = state.service ? `#/service/${encodeURIComponent(state.service)}` : '';
  if (state.service && state.path) hash += `/${state.path}${state.line ? `:${state.line}` : ''}`;
  state.hash = hash;
  if (location.hash !== hash) history.replaceState(null, '', `${location.pathname}${hash}`);
}

function parseHash() {
  const m = /^#\/service\/([^/]+)(?:\/(.+?))?(?::(\d+))?$/.exec(decodeURI(location.hash));
  return m ? { service: decodeURIComponent(m[1]), path: m[2] || null, line: m[3] ? Number(m[3]) : 0 } : null;
}

async function followHash() {
  const want = parseHash();
  if (!want) return;
  if (want.service !== state.service) await selectService(want.service, { keepFile: true });
  if (want.path) await openFile(want.path, want.line);
}

// ---- polling

async function pollRules() {
  try {
    await rulesPane.refresh();
  } catch (e) {
    if (e.status === 0) setLive('server unreachable', 'err');
  }
}

async function pollAgents() {
  try {
    state.agents = await api('/agents');
    renderAgents($('agents'), state.agents);
    $('agents-count').textContent = `${state.agents.filter((a) => a.connected).length}/${state.agents.length}`;
    await loadServices();
  } catch (e) {
    if (e.status === 0) setLive('server unreachable', 'err');
  }
}

function setLive(text, kind) {
  $('live').textContent = text;
  $('live').className = `badge ${kind}`;
}

// ---- wiring

const tree = new FileTree($('tree'), (p) => openFile(p));
const codeView = new CodeView($('code'), (line) => {
  if (!state.path) return;
  state.line = line;
  setHash();
  openRuleForm($('rule-dialog'), {
    service: state.service, path: state.path, line, lines: codeView.lines, agents: state.agents,
    onCreated: () => pollRules(),
  }).catch((e) => toast(e.message, 'error'));
});
const rulesPane = new RulesPane($('rules'), {
  onOpen: (rule, at) => openAgentPath(rule.service || state.service, at.file, at.line),
  onEdit: (rule) => {
    const at = splitAt(rule.at) || { file: rule.at, line: 0 };
    openRuleForm($('rule-dialog'), {
      service: rule.service || '', path: at.file, line: at.line,
      lines: state.path && samePath(at.file, state.path) ? codeView.lines : [],
      agents: state.agents, existing: rule,
      onCreated: async () => {
        await api(`/rules/${encodeURIComponent(rule.id)}`, { method: 'DELETE' }).catch((e) => toast(e.message, 'error'));
        pollRules();
      },
    }).catch((e) => toast(e.message, 'error'));
  },
  onChange: (views) => {
    state.rules = views;
    $('rules-count').textContent = String(views.length);
    paintMarkers();
    const sel = $('resp-rule');
    const had = sel.value;
    fill(sel, h('option', { value: '' }, 'all rules'), views.map((v) => h('option', { value: v.rule.id }, `${v.rule.id} · ${v.rule.at}`)));
    sel.value = views.some((v) => v.rule.id === had) ? had : '';
  },
});
const responses = new Responses($('responses'), {
  onFrame: (file, line, r) => openAgentPath(r.service, file, line),
  onCount: (text) => { $('resp-count').textContent = text; },
  onLive: setLive,
  onRules: (r) => rulesPane.hit(r),
});
window.nonstop = { responses, state };

function tab(which) {
  const rules = which === 'rules';
  $('tab-rules').setAttribute('aria-selected', String(rules));
  $('tab-agents').setAttribute('aria-selected', String(!rules));
  $('rules').hidden = !rules;
  $('agents').hidden = rules;
}

function togglePause() {
  const p = !responses.paused;
  responses.setPaused(p);
  $('resp-pause').textContent = p ? 'Resume' : 'Pause';
  $('resp-pause').setAttribute('aria-pressed', String(p));
}

function wire() {
  $('service').addEventListener('change', (e) => selectService(e.target.value));
  $('source-edit').addEventListener('click', openSourceDialog);
  $('file-search').addEventListener('input', (e) => tree.search(e.target.value));
  $('file-search').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      const first = $('tree').querySelector('button.file');
      if (first) openFile(first.dataset.path);
    }
  });
  $('tab-rules').addEventListener('click', () => tab('rules'));
  $('tab-agents').addEventListener('click', () => tab('agents'));
  $('resp-pause').addEventListener('click', togglePause);
  $('resp-clear').addEventListener('click', () => responses.clear());
  $('resp-rule').addEventListener('change', (e) => responses.setFilter({ rule: e.target.value }));
  $('resp-service').addEventListener('change', (e) => responses.setFilter({ service: e.target.value }));
  $('help').addEventListener('click', () => $('help-dialog').showModal());
  window.addEventListener('hashchange', () => {
    if (location.hash !== state.hash) followHash();
  });
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || document.querySelector('dialog[open]')) return;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) {
      if (e.key === 'Escape') t.blur();
      return;
    }
    const keys = {
      '/': () => $('file-search').focus(),
      p: togglePause,
      t: toggleTheme,
      r: () => tab('rules'),
      a: () => tab('agents'),
      '?': () => $('help-dialog').showModal(),
      g: () => {
        const n = Number(prompt('Go to line'));
        if (n > 0) codeView.setCursor(n);
      },
    };
    if (keys[e.key] && !(t.closest && t.closest('#code') && (e.key === 'j' || e.key === 'k'))) {
      e.preventDefault();
      keys[e.key]();
    }
  });
}

async function main() {
  initTheme();
  initSignInForm();
  const token = new URLSearchParams(location.search).get('token');
  if (token !== null) {
    const err = await signIn(token);
    history.replaceState(null, '', `${location.pathname}${location.hash}`);
    if (err) return showSignIn(err);
  }
  onAuthError(showSignIn);
  try {
    await loadServices();
  } catch (e) {
    if (!state.signedOut) {
      $('signin').hidden = false;
      $('signin-msg').textContent = e.message;
    }
    return;
  }
  $('ide').hidden = false;
  initPanes($('ide'));
  wire();
  const want = parseHash();
  const names = state.services.map((s) => s.service);
  const first = (want && want.service) || localStorage.getItem('nonstop.service');
  const start = names.includes(first) || (want && want.service) ? first
    : (state.services.find((s) => s.source) || state.services[0] || {}).service || '';
  await Promise.all([pollRules(), pollAgents()]);
  if (start) await selectService(start, { keepFile: true });
  else await loadTree();
  if (want && want.path && want.service === state.service) await openFile(want.path, want.line);
  responses.start();
  setInterval(pollRules, 2000);
  setInterval(pollAgents, 5000);
  window.nonstopReadyMs = performance.now();
  document.body.dataset.ready = 'true';
}

main().catch((e) => toast(`the IDE failed to start: ${e.message}`, 'error'));
