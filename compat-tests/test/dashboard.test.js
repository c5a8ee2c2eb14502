'use strict';

// The operator's dashboard in a real browser: headless Chromium (Debian's package) driven by
// playwright-core opens /dashboard on one of two nodes sharing a redis, logs in with HTTP Basic
// auth, and checks that both nodes are listed, that a publish burst moves the chart, and that a
// failed task appears in the dead letter and retrying it (after confirming) empties it. The
// nodes are examples/dashboard_demo.rs, which adds one flaky task to a node. A screenshot is
// saved under target/.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');
const {
  EventLog, Scope, TEST_TIMEOUT_MS, connectOver, publish, startRedis, startServer, subscribe,
} = require('./helpers');

const PASSWORD = 'dashboard-compat';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const DEMO_BIN = process.env.DASHBOARD_DEMO_BIN ||
  path.resolve(__dirname, '../../target/release/examples/dashboard_demo');
const SCREENSHOT = path.resolve(__dirname, '../../target/dashboard.png');

describe('dashboard in headless Chromium, two nodes on redis', () => {
  let redisServer;
  let a;
  let b;
  let browser;

  before(async () => {
    redisServer = await startRedis();
    const extraArgs = ['--redis', redisServer.url, '--dashboard-password', PASSWORD];
    a = await startServer('ours', { bin: DEMO_BIN, timeout: 10, extraArgs });
    b = await startServer('ours', { bin: DEMO_BIN, timeout: 10, extraArgs });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    if (browser) await browser.close();
    if (a) await a.stop();
    if (b) await b.stop();
    if (redisServer) await redisServer.stop();
  });

  it('logs in, lists both nodes, charts a burst, and retries a failed task', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const origin = new URL(a.url).origin;
    const wrong = await browser.newContext({ httpCredentials: { username: 'ops', password: 'guess' } });
    const refused = await (await wrong.newPage()).goto(`${origin}/dashboard`);
    assert.equal(refused.status(), 401, 'a wrong password is refused');
    await wrong.close();

    const context = await browser.newContext({
      httpCredentials: { username: 'ops', password: PASSWORD },
      viewport: { width: 1280, height: 900 },
    });
    t.after(() => context.close());
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(err.message));
    page.on('dialog', (dialog) => dialog.accept());
    const response = await page.goto(`${origin}/dashboard`);
    assert.equal(response.status(), 200);

    // Both nodes, each sharing its samples every 2 s.
    await page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr[data-node]').length === 2,
      null, { timeout: 15_000 });

    // A publish burst through node b moves the cluster's chart.
    const scope = new Scope(t);
    const { client: listener, probe: listenerProbe } = scope.client(a.url, 'websocket');
    await subscribe(listener, '/burst', () => {});
    await listenerProbe.transport('websocket');
    const { client: publisher, probe } = scope.client(b.url, 'websocket');
    await connectOver(publisher, probe, 'websocket');
    for (let i = 0; i < 300; i++) await publish(publisher, '/burst', { i });
    await page.waitForFunction(() => Number(document.getElementById('chart-published').dataset.peak) > 0,
      null, { timeout: 15_000 });
    await page.waitForFunction(() => Number(document.getElementById('chart-delivered').dataset.peak) > 0,
      null, { timeout: 15_000 });

    // A failed task appears in the dead letter.
    await publish(publisher, '/demo/enqueue', { nonce: `${Date.now()}-${Math.random()}` });
    await page.waitForSelector('#failed tbody button[data-action="retry"]', { timeout: 15_000 });
    assert.match(await page.textContent('#failed tbody'), /demo:flaky/);
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // Heal both nodes (each answers on /demo/healed), then retry from the page.
    const healed = new EventLog('nodes healed');
    await subscribe(publisher, '/demo/healed', (data) => healed.push(data.node));
    await publish(publisher, '/demo/heal', {});
    await healed.waitForCount(2);
    await page.click('#failed tbody button[data-action="retry"]');
    await page.waitForFunction(() => document.getElementById('failed-count').textContent === '(0)' &&
      !document.querySelector('#failed tbody button[data-action="retry"]'), null, { timeout: 15_000 });
    assert.deepEqual(errors, [], 'no script errors on the page');
  });
});
