'use strict';

// Scenario 2: wildcard subscriptions.

const { it } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, Scope, TEST_TIMEOUT_MS, connectOver, forEachTarget, publish, subscribe,
} = require('./helpers');

forEachTarget('wildcards', (target) => {
  it('/chat/* gets /chat/a but not /chat/a/b; /chat/** gets both; each client gets a message once', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client: one, probe: oneProbe } = scope.client(target.url, target.mode);
    const { client: many, probe: manyProbe } = scope.client(target.url, target.mode);
    const { client: multi, probe: multiProbe } = scope.client(target.url, target.mode);
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);

    const oneInbox = new EventLog('/chat/* subscriber');
    const manyInbox = new EventLog('/chat/** subscriber');
    await subscribe(one, '/chat/*', (data, channel) => oneInbox.push(channel));
    await subscribe(many, '/chat/**', (data, channel) => manyInbox.push(channel));
    // Three overlapping subscriptions on one client.
    await subscribe(multi, '/chat/*');
    await subscribe(multi, '/chat/**');
    await subscribe(multi, '/chat/a');
    await Promise.all([oneProbe, manyProbe, multiProbe].map((p) => p.transport(target.mode)));
    await connectOver(pub, pubProbe, target.mode);

    const published = ['/chat/a', '/chat/a/b', '/chat', '/other/a', '/chat/a/b/c', '/chat/last'];
    for (const [i, channel] of published.entries()) await publish(pub, channel, { i, channel });

    // /chat/last is published last and matches every subscriber.
    await oneInbox.waitFor((c) => c === '/chat/last');
    await manyInbox.waitFor((c) => c === '/chat/last');
    await multiProbe.deliveries.waitFor((m) => m.channel === '/chat/last');

    assert.deepEqual(oneInbox.items, ['/chat/a', '/chat/last']);
    assert.deepEqual(manyInbox.items, ['/chat/a', '/chat/a/b', '/chat/a/b/c', '/chat/last']);

    const wire = (probe) => probe.deliveries.items.map((m) => {
      assert.deepEqual(m.data, { i: published.indexOf(m.channel), channel: m.channel });
      return m.channel;
    });
    // Checked on the wire as well: the client filters by its own matching.
    assert.deepEqual(wire(oneProbe), ['/chat/a', '/chat/last']);
    assert.deepEqual(wire(manyProbe), ['/chat/a', '/chat/a/b', '/chat/a/b/c', '/chat/last']);
    assert.deepEqual(wire(multiProbe), ['/chat/a', '/chat/a/b', '/chat/a/b/c', '/chat/last'],
      'a client whose several subscriptions match gets the message once');
  });

  it('/** gets every channel at any depth', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client: all, probe: allProbe } = scope.client(target.url, target.mode);
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);
    const inbox = new EventLog('/** subscriber');
    await subscribe(all, '/**', (data, channel) => inbox.push([channel, data]));
    await allProbe.transport(target.mode);
    await connectOver(pub, pubProbe, target.mode);

    const channels = ['/x', '/x/y', '/x/y/z', '/deep/a/b/c/d/e'];
    for (const channel of channels) await publish(pub, channel, { channel });
    const received = await inbox.waitForCount(channels.length);
    assert.deepEqual(received, channels.map((channel) => [channel, { channel }]));
  });
});
