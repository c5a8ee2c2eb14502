'use strict';

// Invalid publishes and subscriptions are rejected with the Bayeux error, and
// the client carries on working afterwards.

const { it } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, Scope, TEST_TIMEOUT_MS, WAIT_MS, bayeuxError, connectOver, forEachTarget, publish,
  subscribe, withTimeout,
} = require('./helpers');

/** Asserts that a faye Publication/Subscription rejects with exactly `expected`. */
async function assertRejectsWith(thenable, expected, what) {
  await assert.rejects(withTimeout(thenable, WAIT_MS, what), (reason) => {
    assert.equal(bayeuxError(reason), expected, what);
    assert.equal(reason.code, Number(expected.split(':')[0]), `${what}: error code`);
    return true;
  }, what);
}

forEachTarget('errors', (target) => {
  it('rejects publishes to forbidden and invalid channels, which reach nobody', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client: watcher, probe: watcherProbe } = scope.client(target.url, target.mode);
    const { client, probe } = scope.client(target.url, target.mode);
    const inbox = new EventLog('/** subscriber');
    await subscribe(watcher, '/**', (data, channel) => inbox.push(channel));
    await watcherProbe.transport(target.mode);
    await connectOver(client, probe, target.mode);

    await assertRejectsWith(client.publish('/meta/foo', {}), '403:/meta/foo:Forbidden channel', 'publish to /meta/foo');
    await assertRejectsWith(client.publish('/a/*', {}), '405:/a/*:Invalid channel', 'publish to /a/*');
    await assertRejectsWith(client.publish('/a/**', {}), '405:/a/**:Invalid channel', 'publish to /a/**');
    await assertRejectsWith(client.publish('/foo bar', {}), '405:/foo bar:Invalid channel', 'publish to /foo bar');

    // The same client still publishes fine, and only that message is delivered.
    await publish(client, '/valid/after-errors', { ok: true });
    await inbox.waitFor((c) => c === '/valid/after-errors');
    assert.deepEqual(inbox.items, ['/valid/after-errors']);
    assert.deepEqual(watcherProbe.deliveries.items.map((m) => m.channel), ['/valid/after-errors']);
  });

  it('rejects subscriptions to meta, service and invalid channels', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client, probe } = scope.client(target.url, target.mode);
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);
    await connectOver(client, probe, target.mode);
    await connectOver(pub, pubProbe, target.mode);

    await assertRejectsWith(client.subscribe('/meta/foo'), '403:/meta/foo:Forbidden channel', 'subscribe to /meta/foo');
    await assertRejectsWith(client.subscribe('/service/foo'), '403:/service/foo:Forbidden channel', 'subscribe to /service/foo');
    await assertRejectsWith(client.subscribe('/a/**/b'), '405:/a/**/b:Invalid channel', 'subscribe to /a/**/b');

    // The client still subscribes and receives afterwards.
    const inbox = new EventLog('subscriber');
    await subscribe(client, '/valid/sub', (data) => inbox.push(data));
    await publish(pub, '/valid/sub', { n: 1 });
    assert.deepEqual(await inbox.waitForCount(1), [{ n: 1 }]);
  });
});
