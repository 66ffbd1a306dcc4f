// The monitor's console in a real browser (Debian's Chromium through playwright-core): every
// page checked against the traffic .ci/console sent, for its Content-Security-Policy and for
// requests to anywhere but the console; an entry's inclusion proof recomputed here from what the
// page shows; screenshots for the README.
//
// Environment: CONSOLE_URL (the monitor's console), SCREENSHOTS (a directory), CHROMIUM
// (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const console_ = process.env.CONSOLE_URL;
const shots = process.env.SCREENSHOTS ?? 'screenshots';
mkdirSync(shots, { recursive: true });
let browser;
let context;
const elsewhere = [];

before(async () => {
  assert.ok(console_, 'CONSOLE_URL is not set');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  context = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  context.on('request', (request) => {
    if (!request.url().startsWith(console_)) elsewhere.push(request.url());
  });
});

after(async () => {
  await browser?.close();
});

async function open(path) {
  const page = await context.newPage();
  const response = await page.goto(console_ + path);
  assert.equal(response.status(), 200, path);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /default-src 'none'/, `${path}: ${csp}`);
  assert.doesNotMatch(csp, /unsafe/, `${path}: ${csp}`);
  return page;
}

test('now: the verified checkpoint and a healthy monitor', async () => {
  const page = await open('/');
  assert.equal(await page.locator('h1').textContent(), 'Now');
  assert.match(await page.locator('main').textContent(), /verifying/);
  const size = Number(await page.locator('tr:has(th:text("Verified size")) td').textContent());
  assert.ok(size > 0, `size ${size}`);
  await page.screenshot({ path: `${shots}/console-now.png`, fullPage: true });
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await phone.goto(console_ + '/');
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a phone`);
  await phone.close();
});

test('accesses: the reads refused from Singapore appear as refused', async () => {
  const page = await open('/accesses');
  const rows = await page.locator('table').first().locator('tr').allTextContents();
  assert.ok(rows.some((r) => r.includes('sg') && r.includes('refused')), rows.join('\n'));
  assert.ok(rows.some((r) => r.includes('eu') && r.includes('allowed, full')), rows.join('\n'));
  const chart = await page.locator('img[src="/accesses.svg"]').evaluate((img) => img.naturalWidth);
  assert.ok(chart > 0, 'the chart did not load');
  await page.screenshot({ path: `${shots}/console-accesses.png`, fullPage: true });
});

test('alerts: the policy change and the refusals raised alerts, filterable by severity', async () => {
  const page = await open('/alerts');
  const text = await page.locator('main').textContent();
  assert.match(text, /policy-or-configuration-change/);
  assert.match(text, /refusals-from-origin/);
  await page.screenshot({ path: `${shots}/console-alerts.png`, fullPage: true });
  await page.selectOption('select[name="severity"]', 'warning');
  await Promise.all([page.waitForURL(/severity=warning/), page.click('button[type="submit"]')]);
  const severities = await page.locator('table').first().locator('td:nth-child(3)').allTextContents();
  assert.ok(severities.length > 0);
  assert.ok(severities.every((s) => s === 'warning'), severities.join(','));
});

test("an entry's permalink: its proof leads to the verified root, checked here", async () => {
  const alerts = await open('/alerts?rule=refusals-from-origin');
  await Promise.all([alerts.waitForURL(/\/entries\/\d+$/), alerts.locator('a[href^="/entries/"]').first().click()]);
  const page = alerts;
  assert.match(await page.locator('main').textContent(), /Included/);
  const index = Number(page.url().split('/').pop());
  const leaf = Buffer.from(await page.locator('p:has-text("Leaf hash") code').textContent(), 'base64');
  const path = (await page.locator('ol li code').allTextContents()).map((h) => Buffer.from(h, 'base64'));
  const now = await open('/');
  const size = Number(await now.locator('tr:has(th:text("Verified size")) td').textContent());
  const root = Buffer.from(await now.locator('tr:has(th:text("Root")) code').textContent(), 'base64');
  // RFC 9162 §2.1.3.2: the root from a leaf and its inclusion path.
  const node = (l, r) => createHash('sha256').update(Buffer.concat([Buffer.from([1]), l, r])).digest();
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    assert.ok(sn > 0, 'the proof is too long');
    if (fn % 2 === 1 || fn === sn) {
      r = node(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) { fn >>= 1; sn >>= 1; }
      }
    } else {
      r = node(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  assert.equal(sn, 0, 'the proof is too short');
  assert.deepEqual(r, root, 'the proof does not lead to the verified root');
  await page.screenshot({ path: `${shots}/console-entry.png`, fullPage: true });
});

test('government requests and keys and configuration: what the log says, in order', async () => {
  const page = await open('/government');
  const rows = await page.locator('table').first().locator('tr').allTextContents();
  assert.ok(rows.some((r) => r.includes('ie') && r.includes('production-order')), rows.join('\n'));
  await page.screenshot({ path: `${shots}/console-government.png`, fullPage: true });
  const changes = await open('/changes');
  const text = await changes.locator('main').textContent();
  assert.match(text, /policies reloaded/);
  assert.match(text, /keys created/);
});

test('no page asked anything of another origin', () => {
  assert.deepEqual(elsewhere, []);
});
