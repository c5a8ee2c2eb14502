'use strict';

// The helpers themselves, exercised against the node.js Faye reference server
// (test/faye-server.js): if these fail, the harness is wrong, not a server.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, LISTENING_LINE, Scope, TEST_TIMEOUT_MS, connectOver, freePort, publish, startServer,
  subscribe, withTimeout,
} = require('./helpers');

describe('helpers against the faye reference server', () => {
  it('startServer parses the listening line, the server works, stop() awaits the exit', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const port = await freePort();
    const server = await startServer('faye-reference', { port, timeout: 5 });
    assert.equal(server.url, `http://127.0.0.1:${port}/faye`);
    assert.equal(server.port, port);
    assert.equal(server.mount, '/faye');
    assert.equal(server.running, true);

    const scope = new Scope(t);
    scope.defer(() => server.stop());
    const { client: sub, probe } = scope.client(server.url, 'websocket');
    const { client: pub, probe: pubProbe } = scope.client(server.url, 'long-polling');
    const inbox = new EventLog('subscriber');
    await subscribe(sub, '/ref', (data, channel) => inbox.push([channel, data]));
    await probe.transport('websocket');
    await connectOver(pub, pubProbe, 'long-polling');
    await publish(pub, '/ref', { hello: 'reference' });
    assert.deepEqual(await inbox.waitForCount(1), [['/ref', { hello: 'reference' }]]);

    const handshake = await probe.meta('/meta/handshake', (m) => m.successful);
    assert.match(handshake.clientId, /^[0-9a-z]{31}$/);
    assert.equal(handshake.version, '1.0');

    await scope.close();
    const status = await server.stop();
    assert.equal(server.running, false);
    assert.deepEqual(status, server.exitStatus);
    assert.deepEqual(await server.stop(), status, 'a second stop() is harmless');
    assert.deepEqual(server.extraStdout, []);

    // The port is free again: the recovery scenario restarts on it.
    const again = await startServer('faye-reference', { port, timeout: 5 });
    assert.equal(again.port, port);
    await again.stop();
  });

  it('startServer fails clearly when the process exits before listening', { timeout: TEST_TIMEOUT_MS }, async () => {
    const first = await startServer('faye-reference');
    try {
      await assert.rejects(startServer('faye-reference', { port: first.port }), (err) => {
        assert.match(err.message, /faye-reference exited \(code 1, signal null\) before printing its listening line/);
        assert.match(err.message, /EADDRINUSE/, 'the error carries the server\'s stderr');
        return true;
      });
    } finally {
      await first.stop();
    }
  });

  it('startServer fails clearly when our binary is missing', async () => {
    await assert.rejects(startServer('ours', { bin: '/nonexistent/actioncluster' }),
      /actioncluster binary not found or not executable at \/nonexistent\/actioncluster/);
  });

  it('the listening line is parsed strictly', () => {
    assert.ok(LISTENING_LINE.test('actioncluster listening on http://127.0.0.1:8000/faye'));
    assert.ok(!LISTENING_LINE.test('actioncluster listening on http://0.0.0.0:8000/faye'));
    assert.ok(!LISTENING_LINE.test('listening on http://127.0.0.1:8000/faye'));
    assert.ok(!LISTENING_LINE.test('actioncluster listening on http://127.0.0.1:8000/faye extra'));
  });

  it('waits end with a clear error at their upper bound', async () => {
    await assert.rejects(withTimeout(new Promise(() => {}), 20, 'nothing'),
      /timed out after 20 ms waiting for nothing/);
    const log = new EventLog('test log');
    setTimeout(() => log.push('late'), 10);
    assert.equal(await log.waitFor((x) => x === 'late', { timeoutMs: 1000 }), 'late');
    await assert.rejects(log.waitForCount(2, { timeoutMs: 20 }),
      /timed out after 20 ms waiting for 2 item\(s\) on test log; it holds 1 item\(s\), the last: \["late"\]/);
  });
});
