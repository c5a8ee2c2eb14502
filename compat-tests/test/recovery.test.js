'use strict';

// Scenario 6: a client recovers by itself after the server forgot it. The
// server is restarted on the same port between two publishes: the client's
// next /meta/connect gets `401:<id>:Unknown client` with advice
// reconnect=handshake, and faye must re-handshake, re-subscribe and receive
// what is published after the restart.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, MODES, Scope, TEST_TIMEOUT_MS, connectOver, disconnect, freePort, publish, selectedServers,
  startServer, subscribe,
} = require('./helpers');

// Short, so that the restart does not wait on long holds.
const TIMEOUT_SECS = 2;
const RECOVERY_WAIT_MS = 20_000;

for (const kind of selectedServers()) {
  for (const mode of MODES) {
    describe(`recovery [${kind}, ${mode}]`, () => {
      it('re-handshakes, re-subscribes and receives after a server restart', { timeout: TEST_TIMEOUT_MS }, async (t) => {
        const scope = new Scope(t);
        const port = await freePort();
        let server = await startServer(kind, { port, timeout: TIMEOUT_SECS });
        scope.defer(() => server.stop());

        const { client: sub, probe } = scope.client(server.url, mode);
        const inbox = new EventLog('subscriber');
        await subscribe(sub, '/recovery', (data) => inbox.push(data));
        await probe.transport(mode);
        const firstHandshake = await probe.meta('/meta/handshake', (m) => m.successful === true);
        const oldId = firstHandshake.clientId;
        assert.equal(typeof oldId, 'string');

        const { client: before, probe: beforeProbe } = scope.client(server.url, mode);
        await connectOver(before, beforeProbe, mode);
        await publish(before, '/recovery', { n: 1 });
        assert.deepEqual(await inbox.waitForCount(1), [{ n: 1 }]);
        await disconnect(before);

        const mark = probe.incoming.length;
        const outMark = probe.outgoing.length;
        await server.stop();
        server = await startServer(kind, { port, timeout: TIMEOUT_SECS });
        assert.equal(server.port, port);

        // The new server does not know the client: its connect is refused...
        const refused = await probe.meta('/meta/connect', (m) => m.successful === false,
          { from: mark, timeoutMs: RECOVERY_WAIT_MS });
        assert.equal(refused.error, `401:${oldId}:Unknown client`);
        assert.equal(refused.advice && refused.advice.reconnect, 'handshake', `reply: ${JSON.stringify(refused)}`);
        assert.equal(refused.clientId, undefined, 'a refused connect carries no clientId');

        // ...so it handshakes again and renews its subscription by itself.
        const handshake = await probe.meta('/meta/handshake', (m) => m.successful === true,
          { from: mark, timeoutMs: RECOVERY_WAIT_MS });
        assert.notEqual(handshake.clientId, oldId);
        const resubscribed = await probe.meta('/meta/subscribe', (m) => m.successful === true,
          { from: mark, timeoutMs: RECOVERY_WAIT_MS });
        assert.deepEqual([].concat(resubscribed.subscription), ['/recovery']);
        assert.equal(resubscribed.clientId, handshake.clientId);
        await probe.outgoing.waitFor(
          (m) => m.channel === '/meta/connect' && m.clientId === handshake.clientId && m.connectionType === mode,
          { from: outMark, timeoutMs: RECOVERY_WAIT_MS, what: `a /meta/connect over ${mode} with the new client id` });

        const { client: after, probe: afterProbe } = scope.client(server.url, mode);
        await connectOver(after, afterProbe, mode);
        await publish(after, '/recovery', { n: 2 });
        assert.deepEqual(await inbox.waitForCount(2), [{ n: 1 }, { n: 2 }]);
      });
    });
  }
}
