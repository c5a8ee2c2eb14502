'use strict';

// The server process as the helpers use it: the listening line, --mount,
// failing clearly when the port is taken, and stopping on SIGTERM while
// clients hold connections.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const {
  MODES, Scope, TEST_TIMEOUT_MS, abandon, connectOver, faye, publish, selectedServers, startServer,
  subscribe, EventLog, Probe,
} = require('./helpers');

for (const kind of selectedServers()) {
  describe(`server process [${kind}]`, () => {
    it('prints exactly one listening line and serves Bayeux at /faye by default', { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const server = await startServer(kind);
      const scope = new Scope(t);
      scope.defer(() => server.stop());
      assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/faye$/);
      assert.ok(server.port > 0);

      for (const mode of MODES) {
        const { client, probe } = scope.client(server.url, mode);
        const inbox = new EventLog(`${mode} subscriber`);
        await subscribe(client, '/hello', (data) => inbox.push(data));
        await probe.transport(mode);
        await publish(client, '/hello', { mode });
        assert.deepEqual(await inbox.waitForCount(1), [{ mode }]);
      }
      await scope.close();
      await server.stop();
      assert.deepEqual(server.extraStdout, [], 'nothing but the listening line on stdout');
    });

    it('honours --mount', { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const server = await startServer(kind, { mount: '/bayeux' });
      const scope = new Scope(t);
      scope.defer(() => server.stop());
      assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/bayeux$/);
      for (const mode of MODES) {
        const { client, probe } = scope.client(server.url, mode);
        const inbox = new EventLog(`${mode} subscriber`);
        await subscribe(client, '/mounted', (data) => inbox.push(data));
        await probe.transport(mode);
        await publish(client, '/mounted', { mode });
        assert.deepEqual(await inbox.waitForCount(1), [{ mode }]);
      }
    });

    it('exits with an error, before printing its line, when the port is taken', { timeout: TEST_TIMEOUT_MS }, async () => {
      const blocker = net.createServer();
      await new Promise((resolve, reject) => {
        blocker.once('error', reject);
        blocker.listen(0, '127.0.0.1', resolve);
      });
      try {
        const { port } = blocker.address();
        await assert.rejects(startServer(kind, { port }), (err) => {
          assert.match(err.message, /exited \(code [1-9]\d*, signal null\) before printing its listening line/);
          return true;
        });
      } finally {
        await new Promise((resolve) => blocker.close(resolve));
      }
    });

    it('exits promptly on SIGTERM while clients hold connections', { timeout: TEST_TIMEOUT_MS }, async () => {
      const server = await startServer(kind, { timeout: 30 });
      const clients = [];
      try {
        for (const mode of MODES) {
          const client = new faye.Client(server.url, { retry: 0.5 });
          if (mode === 'long-polling') client.disable('websocket');
          clients.push(client);
          const probe = new Probe(client, mode);
          await subscribe(client, '/held', () => {});
          await connectOver(client, probe, mode);
        }
        const started = Date.now();
        // stop() rejects if the process is still alive 10 s after SIGTERM.
        const status = await server.stop();
        assert.ok(status.code !== null || status.signal !== null);
        assert.ok(Date.now() - started < 10_000);
      } finally {
        // The server is gone: nothing to disconnect from.
        for (const client of clients) abandon(client);
        await server.stop().catch(() => {});
      }
    });
  });
}
