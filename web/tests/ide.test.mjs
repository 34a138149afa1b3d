// The web IDE in Debian's Chromium, driven by playwright-core. Started by
// crates/nonstop-server/tests/ui_browser.rs, which runs the server (a folder source
// `shop`, a Git source `billing` on git daemon) and agents that hit every rule.
//
// Env: NONSTOP_URL, NONSTOP_TOKEN, NONSTOP_SCREENSHOT (where to write the screenshot),
// NONSTOP_COMMIT (the billing agent's commit). Prints `FIGURE name value` lines.
// Fails on any uncaught page error or console error (network errors of the requests the
// test provokes on purpose — 401, 404, 503 — are logged by Chromium as console errors
// named "Failed to load resource"; those are counted apart and must be ones we asked for).

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';

const BASE = process.env.NONSTOP_URL;
const TOKEN = process.env.NONSTOP_TOKEN;
const SHOT = process.env.NONSTOP_SCREENSHOT;
const COMMIT = process.env.NONSTOP_COMMIT;
assert.ok(BASE && TOKEN, 'NONSTOP_URL and NONSTOP_TOKEN must be set');

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
const provoked = [];
let step = 'start';

function watch(page) {
  page.on('pageerror', (e) => errors.push(`[${step}] page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/^Failed to load resource: the server responded with a status of (400|401|404|503)/.test(m.text())) provoked.push(`[${step}] ${m.text()}`);
    else errors.push(`[${step}] console error: ${m.text()}`);
  });
}

async function check(name, f) {
  step = name;
  const t0 = Date.now();
  await f();
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}

function figure(name, value) {
  console.log(`FIGURE ${name} ${value}`);
}

const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, colorScheme: 'dark' });
context.setDefaultTimeout(15000);
const page = await context.newPage();
watch(page);

try {
  await check('first load of the page, in a fresh browser context', async () => {
    const fresh = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const p = await fresh.newPage();
    watch(p);
    const t0 = Date.now();
    await p.goto(`${BASE}/?token=${TOKEN}`);
    await p.locator('body[data-ready=true]').waitFor();
    figure('first_load_ready_ms', Date.now() - t0);
    const perf = await p.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const res = performance.getEntriesByType('resource').filter((r) => r.name.includes('/assets/'));
      return {
        transferred: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
        decoded: nav.decodedBodySize + res.reduce((s, r) => s + r.decodedBodySize, 0),
        dcl: nav.domContentLoadedEventEnd,
        ready: window.nonstopReadyMs,
        assets: res.length,
      };
    });
    figure('first_load_bytes_transferred', perf.transferred);
    figure('first_load_bytes_uncompressed', perf.decoded);
    figure('first_load_asset_requests', perf.assets);
    figure('first_load_dom_content_loaded_ms', Math.round(perf.dcl));
    figure('first_load_interactive_ms', Math.round(perf.ready));
    await fresh.close();
  });

  await check('a wrong token shows what to do, in place', async () => {
    await page.goto(`${BASE}/?token=wrong`);
    await page.locator('#signin').waitFor();
    await page.locator('#signin-msg', { hasText: 'wrong token' }).waitFor();
    assert.equal(await page.locator('#ide').isVisible(), false);
    assert.ok(!page.url().includes('token='), 'the token leaves the address bar');
  });

  await check('the token from the address signs in and leaves the address', async () => {
    await page.goto(`${BASE}/?token=${TOKEN}#/service/shop`);
    await page.locator('body[data-ready=true]').waitFor();
    assert.ok(!page.url().includes('token='));
  });

  await check('the tree lists code files of the folder source, and search finds them', async () => {
    await page.locator('#tree button.file[data-path="src/cart.rs"]').waitFor();
    assert.equal(await page.locator('#tree button.file[data-path="logo.png"]').count(), 0, 'no binary files');
    await page.keyboard.press('/');
    await page.keyboard.type('cart');
    await page.locator('#tree button.file[data-path="src/cart.rs"] mark').waitFor();
    await page.fill('#file-search', '');
  });

  await check('a file opens highlighted, with line numbers', async () => {
    await page.click('#tree button.file[data-path="src/cart.rs"]');
    await page.locator('#code .line[data-n="18"]').waitFor();
    assert.ok(await page.locator('#code .t-kw').count() > 5, 'keywords coloured');
    assert.ok(await page.locator('#code .t-com').count() > 0, 'comments coloured');
    assert.ok(await page.locator('#code .t-str').count() > 0, 'strings coloured');
    assert.match(page.url(), /#\/service\/shop\/src\/cart\.rs/);
  });

  let ruleId;
  await check('clicking a line opens the form; a log rule from the template is created', async () => {
    await page.click('#code .line[data-n="18"] .src');
    await page.locator('#rule-dialog[open]').waitFor();
    assert.equal(await page.inputValue('#rf-at'), 'src/cart.rs:18');
    await page.click('#rule-dialog button[data-template=log]');
    await page.fill('#rf-template', 'total is {total} for {qty}');
    assert.match(await page.textContent('#rf-preview'), /"action": "log"/);
    assert.match(await page.textContent('#rf-reach'), /1 connected agent/);
    await page.click('#rf-create');
    await page.locator('#rule-dialog[open]').waitFor({ state: 'detached' }).catch(() => {});
    await page.waitForFunction(() => !document.querySelector('#rule-dialog').open);
    const card = page.locator('#rules .rule', { hasText: 'src/cart.rs:18' });
    await card.waitFor();
    ruleId = await card.getAttribute('data-rule');
    const views = await page.evaluate(async () => (await fetch('/api/v1/rules')).json());
    const v = views.find((x) => x.rule.id === ruleId);
    assert.ok(v, 'the rule is in the API');
    assert.equal(v.rule.action, 'log');
    assert.equal(v.rule.template, 'total is {total} for {qty}');
    assert.equal(v.rule.service, 'shop');
  });

  await check('the gutter marker turns armed, and the rule shows its agent', async () => {
    await page.locator('#code .line[data-n="18"] .mark[data-status=armed]').waitFor();
    await page.locator(`#rules .rule[data-rule="${ruleId}"] .statuses .pill.armed`).waitFor();
  });

  await check('the form\'s template buttons come from the server, with a version field', async () => {
    const served = await page.evaluate(async () => (await fetch('/api/v1/templates')).json());
    await page.click('#code .line[data-n="18"] .src');
    await page.locator('#rule-dialog[open]').waitFor();
    const titles = await page.locator('#rule-dialog button[data-template]').allTextContents();
    assert.deepEqual(titles, served.map((t) => t.title));
    assert.equal(titles[0], 'Dump frame');
    await page.fill('#rf-version', '9.9.9');
    assert.match(await page.textContent('#rf-preview'), /"version": "9.9.9"/);
    assert.match(await page.textContent('#rf-reach'), /Reaches no connected agent/);
    await page.click('#rule-dialog .buttons button[type=button]');
    await page.waitForFunction(() => !document.querySelector('#rule-dialog').open);
  });

  await check('a rule toggles off and on in the rules pane, keeping its hits', async () => {
    const card = page.locator(`#rules .rule[data-rule="${ruleId}"]`);
    await card.locator(`button[aria-label="disable rule ${ruleId}"]`).click();
    await card.locator('.head .pill.disabled').waitFor();
    const off = await page.evaluate(async (id) => (await fetch(`/api/v1/rules/${id}`)).json(), ruleId);
    assert.equal(off.enabled, false);
    assert.equal(off.state, 'active');
    await card.locator(`button[aria-label="enable rule ${ruleId}"]`).click();
    await card.locator(`button[aria-label="disable rule ${ruleId}"]`).waitFor();
    const on = await page.evaluate(async (id) => (await fetch(`/api/v1/rules/${id}`)).json(), ruleId);
    assert.equal(on.enabled, true);
    assert.ok(on.hits >= off.hits, `hits kept: ${off.hits} -> ${on.hits}`);
    await page.locator(`#rules .rule[data-rule="${ruleId}"] .statuses .pill.armed`).waitFor();
  });

  await check('the live response arrives; a variable expands with its marks', async () => {
    await page.locator('#responses .resp', { hasText: 'total is' }).first().waitFor();
    await page.waitForFunction(() => document.querySelectorAll('#responses .resp').length >= 4);
    // Pause, so that the rows stay where they are while we look (new ones wait).
    await page.click('#resp-pause');
    await page.locator('#resp-pause', { hasText: 'Resume' }).waitFor();
    const row = page.locator('#responses .resp').first();
    assert.match(await row.textContent(), /total is \d+ for 1/);
    await row.locator('summary').first().click();
    await row.locator('.vars summary', { hasText: 'self' }).click();
    await row.locator('.vars .name', { hasText: 'owner' }).waitFor();
    await row.locator('.vars .flag.truncated').waitFor();
    await row.locator('.vars .flag.redacted').waitFor();
    await row.locator('.vars .flag.error', { hasText: 'optimized out' }).waitFor();
    await row.locator('.vars summary', { hasText: 'items' }).click();
    await row.locator('.vars summary', { hasText: /^0/ }).click();
    await row.locator('.vars .name', { hasText: 'sku' }).first().waitFor();
    await page.locator('#resp-count', { hasText: 'new while paused' }).waitFor();
  });

  await check('the screenshot of the IDE in use', async () => {
    await page.locator('#rules .rule .statuses .pill.armed').first().waitFor();
    await page.locator('#rules .rule .head', { hasText: /[1-9]\d* hits?/ }).first().waitFor();
    await page.locator('#toasts .toast').first().waitFor({ state: 'detached' });
    await page.screenshot({ path: SHOT });
  });

  await check('the runtime\'s frames come folded into one and unfold on click', async () => {
    const row = page.locator('#responses .resp[open]').first();
    const folded = row.locator('.frames li.folded').first();
    await folded.locator('summary', { hasText: '2 runtime frames' }).click();
    await folded.locator('li', { hasText: 'std::rt::lang_start' }).waitFor();
    await folded.locator('summary').click();
  });

  await check('a stack frame opens its file at its line (agent path mapped by suffix)', async () => {
    const row = page.locator('#responses .resp[open]').first();
    await row.locator('.frames button', { hasText: 'shop::main' }).click();
    await page.locator('#code-path', { hasText: 'src/main.rs' }).waitFor();
    await page.locator('#code .line.cursor[data-n="4"]').waitFor();
    assert.match(page.url(), /src\/main\.rs:4$/);
    await page.click('#resp-pause');
    await page.locator('#resp-pause', { hasText: 'Pause' }).waitFor();
  });

  await check('a bad limit and an invalid condition: the API\'s 400 messages appear in the form', async () => {
    await page.click('#tree button.file[data-path="src/cart.rs"]');
    await page.locator('#code .line[data-n="20"]').waitFor();
    await page.click('#code .line[data-n="20"] .src');
    await page.locator('#rule-dialog[open]').waitFor();
    await page.fill('#rf-when', 'qty > 1');
    // Watch expressions, one a line (blank lines skipped), go into the snapshot's JSON.
    await page.fill('#rf-watch', 'qty * 2\n\nlen(items)');
    await page.locator('#rf-preview', { hasText: '"watch"' }).waitFor();
    assert.deepEqual(JSON.parse(await page.locator('#rf-preview').textContent()).watch, ['qty * 2', 'len(items)']);
    await page.fill('#rf-expires', 'soon');
    await page.click('#rf-create');
    await page.locator('#rf-error', { hasText: 'soon' }).waitFor();
    assert.ok(await page.locator('#rule-dialog[open]').isVisible(), 'the form stays open');
    // An invalid condition: the server's parse error, with its column, appears in place.
    await page.fill('#rf-expires', '');
    await page.fill('#rf-when', 'qty >');
    await page.click('#rf-create');
    await page.locator('#rf-error', { hasText: 'when: unexpected end of input at column 6' }).waitFor();
    assert.ok(await page.locator('#rule-dialog[open]').isVisible(), 'the form stays open');
    await page.keyboard.press('Escape');
  });

  await check('a snapshot rule\'s watch values show above its locals', async () => {
    const created = await page.evaluate(async () => {
      const res = await fetch('/api/v1/rules', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ at: 'src/cart.rs:22', action: 'snapshot', service: 'shop',
          watch: ['total * 2', 'self.owner', 'self.api_token', 'total / 0'] }),
      });
      return { status: res.status, body: await res.json() };
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.rule.id;
    await page.locator(`#responses .resp[data-rule="${id}"]`).first().waitFor();
    // Pause, so that the row stays first while we look (new responses wait).
    await page.click('#resp-pause');
    await page.locator('#resp-pause', { hasText: 'Resume' }).waitFor();
    const row = page.locator(`#responses .resp[data-rule="${id}"]`).first();
    assert.match(await row.locator('summary').first().textContent(), /4 watched · 5 variables/);
    await row.locator('summary').first().click();
    const watch = row.locator('.vars.watch');
    // The body is built on the toggle event, which fires after the click returns.
    await watch.locator('.name', { hasText: 'total / 0' }).waitFor();
    // Above the locals, in the rule's order, with their types and marks.
    assert.deepEqual(await watch.locator(':scope > .leaf > .name').allTextContents(),
      ['total * 2', 'self.owner', 'self.api_token', 'total / 0']);
    assert.match(await watch.locator('.leaf', { hasText: 'total * 2' }).textContent(), /^total \* 2: i64 = (84|168|252)$/);
    assert.equal(await watch.locator('.leaf', { hasText: 'self.owner' }).textContent(), 'self.owner: &str = "ann"');
    await watch.locator('.leaf', { hasText: 'self.api_token' }).locator('.flag.redacted').waitFor();
    await watch.locator('.flag.error', { hasText: 'division by zero in `total / 0`' }).waitFor();
    const heads = await row.locator('.body h4').allTextContents();
    assert.deepEqual(heads.slice(0, 2), ['Watch', 'Variables']);
    await row.locator('summary').first().click();
    await page.evaluate(async (rid) => fetch(`/api/v1/rules/${rid}`, { method: 'DELETE' }), id);
    await page.click('#resp-pause');
    await page.locator('#resp-pause', { hasText: 'Pause' }).waitFor();
  });

  await check('opening a 5,000-line file', async () => {
    const t0 = Date.now();
    await page.click('#tree button.file[data-path="src/big.rs"]');
    await page.locator('#code .line[data-n="5000"]').waitFor({ state: 'attached' });
    figure('open_5000_line_file_ms', Date.now() - t0);
    figure('render_5000_line_file_ms', Math.round(await page.evaluate(() => window.nonstopLastRenderMs)));
  });

  await check('responses pane under 200 responses/s (agent → server → SSE → page)', async () => {
    await page.click('#tree button.file[data-path="src/load.rs"]');
    await page.locator('#code .line[data-n="1"]').waitFor();
    await page.evaluate(() => {
      window.loadStats = { frames: [], start: performance.now(), count: 0 };
      const n0 = window.nonstop.responses.all.length;
      const tick = (t) => {
        const s = window.loadStats;
        s.frames.push(t);
        s.count = window.nonstop.responses.all.length - n0;
        if (t - s.start < 9000) requestAnimationFrame(tick);
      };
      requestAnimationFrame(tick);
    });
    await page.click('#code .line[data-n="1"] .src');
    await page.locator('#rule-dialog[open]').waitFor();
    await page.click('#rule-dialog button[data-template=log]');
    await page.click('#rf-create');
    await page.waitForFunction(() => window.loadStats.count >= 900, null, { timeout: 20000 });
    const stats = await page.evaluate(() => {
      const f = window.loadStats.frames;
      let worst = 0;
      for (let i = 1; i < f.length; i++) worst = Math.max(worst, f[i] - f[i - 1]);
      return { frames: f.length, span: f[f.length - 1] - f[0], worst, rows: document.querySelectorAll('#responses .resp').length, count: window.loadStats.count };
    });
    figure('load_responses_received', stats.count);
    figure('load_fps', Math.round((stats.frames / stats.span) * 1000));
    figure('load_worst_frame_ms', Math.round(stats.worst));
    figure('load_rows_in_dom', stats.rows);
    assert.ok(stats.rows <= 500, 'the page keeps at most 500 rows');
    // 10,000 more, at once: the page stays bounded and responsive.
    const burst = await page.evaluate(async () => {
      const r = window.nonstop.responses;
      const proto = r.all[r.all.length - 1];
      const t0 = performance.now();
      for (let i = 0; i < 10000; i++) r.add({ ...proto, message: `burst ${i}` });
      await new Promise((res) => requestAnimationFrame(() => requestAnimationFrame(res)));
      return { ms: performance.now() - t0, rows: document.querySelectorAll('#responses .resp').length };
    });
    figure('burst_10000_responses_ms', Math.round(burst.ms));
    assert.ok(burst.rows <= 500);
    await page.click('#responses .more');
    await page.waitForFunction(() => document.querySelectorAll('#responses .resp').length > 500);
    const views = await page.evaluate(async () => (await fetch('/api/v1/rules')).json());
    for (const v of views.filter((x) => x.rule.at === 'src/load.rs:1')) {
      await page.evaluate(async (id) => fetch(`/api/v1/rules/${id}`, { method: 'DELETE' }), v.rule.id);
    }
  });

  await check('editing a rule replaces it', async () => {
    await page.click(`#rules .rule[data-rule="${ruleId}"] button[aria-label^="edit"]`);
    await page.locator('#rule-dialog[open]').waitFor();
    assert.equal(await page.inputValue('#rf-template'), 'total is {total} for {qty}');
    await page.fill('#rf-template', 'total={total}');
    await page.click('#rf-create');
    await page.locator(`#rules .rule[data-rule="${ruleId}"]`).waitFor({ state: 'detached' });
    const card = page.locator('#rules .rule', { hasText: 'total={total}' });
    await card.waitFor();
    ruleId = await card.getAttribute('data-rule');
  });

  await check('the rule is deleted from the rules pane', async () => {
    await page.click('#tree button.file[data-path="src/cart.rs"]');
    await page.locator(`#rules .rule[data-rule="${ruleId}"] button.danger`).click();
    await page.locator(`#rules .rule[data-rule="${ruleId}"]`).waitFor({ state: 'detached' });
    const views = await page.evaluate(async () => (await fetch('/api/v1/rules')).json());
    assert.ok(!views.some((v) => v.rule.id === ruleId), 'gone from the API');
    await page.waitForFunction(() => !document.querySelector('#code .line[data-n="18"] .mark[data-status]'));
  });

  await check('a metric rule shows its values per service and tags, polled only while visible', async () => {
    // The test's agent reports fixed series for metric rules (ui_browser.rs, metric_series):
    // a tagged count of 7 gold and 3 silver; a histogram of ten values from 0.2 to 1200.
    const polls = [];
    page.on('request', (r) => { if (r.url().includes('/api/v1/metrics?rule=')) polls.push(new URL(r.url()).searchParams.get('rule')); });
    await page.click('#code .line[data-n="18"] .src');
    await page.locator('#rule-dialog[open]').waitFor();
    await page.click('#rule-dialog button[data-template=count]');
    await page.fill('#rf-metric', 'cart_adds');
    await page.fill('#rf-tags', 'tier=item.sku');
    assert.match(await page.textContent('#rf-preview'), /"tags": \{\s*"tier": "item.sku"\s*\}/);
    await page.click('#rf-create');
    await page.waitForFunction(() => !document.querySelector('#rule-dialog').open);
    const count = page.locator('#rules .rule', { hasText: 'count cart_adds' });
    await count.waitFor();
    const countId = await count.getAttribute('data-rule');

    await page.click('#code .line[data-n="19"] .src');
    await page.locator('#rule-dialog[open]').waitFor();
    await page.click('#rule-dialog button[data-template=measure]');
    await page.fill('#rf-metric', 'cart_total');
    await page.selectOption('#rf-metric-kind', 'histogram');
    await page.fill('#rf-value', 'total');
    await page.click('#rf-create');
    await page.waitForFunction(() => !document.querySelector('#rule-dialog').open);
    const hist = page.locator('#rules .rule', { hasText: 'histogram cart_total = total' });
    await hist.waitFor();
    const histId = await hist.getAttribute('data-rule');

    const gold = count.locator('.metrics tr[data-tags="tier=gold"]');
    await gold.locator('td[data-k=count]', { hasText: /^7$/ }).waitFor();
    assert.deepEqual(await gold.locator('td').allTextContents(), ['shop', 'tier=gold', '7']);
    assert.deepEqual(await count.locator('.metrics tr[data-tags="tier=silver"] td').allTextContents(), ['shop', 'tier=silver', '3']);
    assert.equal(await count.locator('.metrics tbody tr').count(), 2);
    await count.locator('.head', { hasText: '10 hits' }).waitFor();
    assert.match(await count.locator('.metrics .hint').last().textContent(), /Prometheus: \/metrics as cart_adds_total/);

    const row = hist.locator('.metrics tbody tr[data-service=shop]');
    await row.locator('td[data-k=count]', { hasText: /^10$/ }).waitFor();
    assert.deepEqual(await hist.locator('.metrics thead th').allTextContents(), ['service', 'count', 'sum', 'mean', 'p50', 'p90', 'p99']);
    assert.deepEqual(await row.locator('td').allTextContents(), ['shop', '10', '2280.7', '228.07', '≤ 50', '≤ 1000', '≤ 2500']);
    assert.match(await hist.locator('.metrics').textContent(), /p50\/p90\/p99 are upper bounds/);
    assert.equal(await hist.locator('.metrics a').getAttribute('href'), '/metrics');
    // The link works from the page (the sign-in cookie opens /metrics too).
    const prom = await page.evaluate(async () => (await fetch('/metrics')).text());
    assert.ok(prom.includes('cart_adds_total{service="shop",tier="gold"} 7\n'), prom);
    assert.ok(prom.includes('cart_total_count{service="shop"} 10\n'), prom);

    // Every 2 s while on screen; not while the agents tab hides the rules.
    // Two more polls of the card come (waited for as events, not timed: the machine may be slow).
    for (let i = 0; i < 2; i++) {
      await page.waitForRequest((r) => r.url().includes(`/api/v1/metrics?rule=${countId}`), { timeout: 20000 });
    }
    await page.click('#tab-agents');
    await page.waitForTimeout(300);
    const before = polls.length;
    await page.waitForTimeout(4500);
    assert.equal(polls.length - before, 0, 'no polling while hidden');
    await page.click('#tab-rules');
    for (const id of [countId, histId]) {
      await page.evaluate(async (x) => fetch(`/api/v1/rules/${x}`, { method: 'DELETE' }), id);
    }
    await hist.waitFor({ state: 'detached' });
  });

  await check('the agents view lists both agents with their commit', async () => {
    await page.click('#tab-agents');
    await page.locator('#agents tr[data-agent="shop-7f3a"]', { hasText: 'connected' }).waitFor();
    await page.locator('#agents tr[data-agent="billing-1"]', { hasText: COMMIT.slice(0, 10) }).waitFor();
    await page.click('#tab-rules');
  });

  await check('the Git source shows files at the agent\'s commit', async () => {
    await page.selectOption('#service', 'billing');
    await page.locator('#tree button.file[data-path="src/pay.c"]').waitFor();
    assert.equal(await page.locator('#tree button.file[data-path="src/new.c"]').count(), 0, 'new.c is newer than the agent');
    await page.click('#tree button.file[data-path="src/pay.c"]');
    await page.locator('#code .line[data-n="3"] .t-kw').first().waitFor();
    assert.equal(await page.textContent('#code-at'), `at ${COMMIT.slice(0, 10)}`);
    assert.ok(await page.locator('#code .t-pp').count() > 0, 'preprocessor line coloured');
  });

  await check('a file missing at the agent\'s commit says so in place (deep link)', async () => {
    await page.goto(`${BASE}/#/service/billing/src/new.c:1`);
    await page.locator('body[data-ready=true]').waitFor();
    await page.locator('#code-msg', { hasText: 'not in billing\'s repository at commit' }).waitFor();
  });

  await check('an unreachable repository shows the source error in place', async () => {
    await page.click('#source-edit');
    await page.locator('#source-dialog[open]').waitFor();
    await page.fill('#sd-service', 'ghost');
    await page.selectOption('#sd-kind', 'git');
    await page.fill('#sd-url', 'git://127.0.0.1:1/nothing.git');
    await page.fill('#sd-branch', '');
    await page.click('#sd-save');
    await page.locator('#source-msg.err', { hasText: 'cannot clone' }).waitFor();
    await page.locator('#source-status.err').waitFor();
  });

  await check('the light theme toggles', async () => {
    await page.click('#theme');
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'light');
  });
} catch (e) {
  console.log(`not ok - ${step}: ${e.message}`);
  await page.screenshot({ path: `${tmpdir()}/nonstop-ide-failed.png` }).catch(() => {});
  errors.push(`[${step}] ${e.stack || e.message}`);
} finally {
  await browser.close();
}

for (const p of provoked) console.log(`  (expected) ${p}`);
if (errors.length) {
  console.log(`FAILED:\n${errors.join('\n')}`);
  process.exit(1);
}
console.log('all browser checks passed');
