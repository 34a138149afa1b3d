// The web IDE against `nonstop demo`: the real shop under the real agent. Run by
// web/tests/demo-test.sh, which starts the demo and passes NONSTOP_URL and NONSTOP_TOKEN.
// Through the UI: open pricing.rs at the line the demo suggests (deep link), add a log
// rule from the template, see the program's real values arrive, add a snapshot, expand
// its variables, click its stack frame, delete both rules. Fails on any page or console error.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BASE = process.env.NONSTOP_URL;
const TOKEN = process.env.NONSTOP_TOKEN;
assert.ok(BASE && TOKEN, 'NONSTOP_URL and NONSTOP_TOKEN must be set');
const pricing = readFileSync(fileURLToPath(new URL('../../examples/shop/src/pricing.rs', import.meta.url)), 'utf8');
const LINE = pricing.split('\n').findIndex((l) => l.includes('applied.push(AppliedDiscount {')) + 1;
assert.ok(LINE > 0, 'the suggested line is in pricing.rs');

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
let step = 'start';
const page = await browser.newPage({ viewport: { width: 1440, height: 900 }, colorScheme: 'dark' });
page.setDefaultTimeout(30000);
page.on('pageerror', (e) => errors.push(`[${step}] page error: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error') errors.push(`[${step}] console error: ${m.text()}`); });

async function check(name, f) {
  step = name;
  const t0 = Date.now();
  await f();
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}

async function addRule(template) {
  await page.click(`#code .line[data-n="${LINE}"] .src`);
  await page.locator('#rule-dialog[open]').waitFor();
  if (template) {
    await page.click('#rule-dialog button[data-template=log]');
    await page.fill('#rf-template', template);
  }
  await page.click('#rf-create');
  await page.waitForFunction(() => !document.querySelector('#rule-dialog').open);
  const card = page.locator('#rules .rule', { hasText: template ? 'cents off' : 'snapshot' }).first();
  await card.waitFor();
  return card.getAttribute('data-rule');
}

let logRule;
let snapRule;
try {
  await check('the deep link opens the shop\'s pricing.rs at the suggested line', async () => {
    await page.goto(`${BASE}/?token=${TOKEN}#/service/shop/src/pricing.rs:${LINE}`);
    await page.locator('body[data-ready=true]').waitFor();
    await page.locator(`#code .line.cursor[data-n="${LINE}"]`).waitFor();
  });

  await check('a log rule from the template is armed by the real agent', async () => {
    logRule = await addRule('{reason}: {cents} cents off');
    await page.locator(`#rules .rule[data-rule="${logRule}"] .statuses .pill.armed`).waitFor();
    await page.locator(`#code .line[data-n="${LINE}"] .mark[data-status=armed]`).waitFor();
  });

  await check('the program\'s real values arrive live', async () => {
    await page.selectOption('#resp-rule', logRule);
    const row = page.locator(`#responses .resp[data-rule="${logRule}"]`).first();
    await row.waitFor();
    const text = await row.locator('summary').textContent();
    assert.match(text, /: \d+ cents off/, text);
    console.log(`  ${text.replace(/\s+/g, ' ').trim()}`);
  });

  await check('the log rule is deleted from the rules pane', async () => {
    // (The agent arms one rule per address today: a second rule on the line would say
    // "a probe is already armed", on the rule and its gutter marker.)
    await page.locator(`#rules .rule[data-rule="${logRule}"] button.danger`).click();
    await page.locator(`#rules .rule[data-rule="${logRule}"]`).waitFor({ state: 'detached' });
  });

  await check('a snapshot shows the variables in scope; a frame opens its line', async () => {
    snapRule = await addRule(null);
    await page.selectOption('#resp-rule', snapRule);
    const row = page.locator(`#responses .resp[data-rule="${snapRule}"]`).first();
    await row.waitFor();
    await page.click('#resp-pause');
    await row.locator('summary').first().click();
    // The body is built on the row's `toggle` event, which fires after the click returns.
    await row.locator('.vars .name').first().waitFor();
    const names = await row.locator('.vars .name').allTextContents();
    console.log(`  variables: ${names.join(', ')}`);
    assert.ok(names.includes('cents') && names.includes('reason'), names.join(','));
    const nested = row.locator('.vars details > summary').first();
    if (await nested.count()) await nested.click();
    await row.locator('.frames button').first().click();
    await page.locator(`#code .line.cursor[data-n="${LINE}"]`).waitFor();
    await page.click('#resp-pause');
  });

  await check('the snapshot rule is deleted', async () => {
    for (const id of [snapRule]) {
      await page.locator(`#rules .rule[data-rule="${id}"] button.danger`).click();
      await page.locator(`#rules .rule[data-rule="${id}"]`).waitFor({ state: 'detached' });
    }
  });
} catch (e) {
  console.log(`not ok - ${step}: ${e.message}`);
  console.log(`  rules pane: ${(await page.textContent('#rules').catch(() => '')).replace(/\s+/g, ' ')}`);
  errors.push(`[${step}] ${e.stack || e.message}`);
} finally {
  await browser.close();
}
if (errors.length) {
  console.log(`FAILED:\n${errors.join('\n')}`);
  process.exit(1);
}
console.log('all demo checks passed');
