'use strict';

// Scenarios 1 and 3: publish/subscribe between two clients, and unsubscribe.

const { it } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, Scope, TEST_TIMEOUT_MS, connectOver, forEachTarget, publish, subscribe,
} = require('./helpers');

forEachTarget('publish/subscribe', (target) => {
  it('delivers what one client publishes to another client subscribed to the channel', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client: sub, probe: subProbe } = scope.client(target.url, target.mode);
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);

    const inbox = new EventLog('subscriber callback');
    await subscribe(sub, '/greetings', (data, channel) => inbox.push({ channel, data }));
    await subProbe.transport(target.mode);
    await connectOver(pub, pubProbe, target.mode);

    const payloads = [
      { text: 'hello', n: 42, float: 1.5, neg: -7, ok: true, none: null, empty: {}, list: [1, 'two', [3], { four: 4 }] },
      { unicode: 'héllo wörld ✓ 😀 \u2028 "quoted" \\ back', nested: { a: { b: { c: [] } } } },
      'a plain string',
      12345,
      [1, 2, 3],
    ];
    for (const data of payloads) await publish(pub, '/greetings', data);

    const received = await inbox.waitForCount(payloads.length);
    assert.deepEqual(received, payloads.map((data) => ({ channel: '/greetings', data })));

    // On the wire: each message arrives once, as published minus clientId,
    // carrying the publisher's message id.
    const sent = pubProbe.outgoing.items.filter((m) => m.channel === '/greetings');
    assert.equal(sent.length, payloads.length);
    const delivered = subProbe.deliveries.items;
    assert.equal(delivered.length, payloads.length, `deliveries: ${JSON.stringify(delivered)}`);
    delivered.forEach((message, i) => {
      assert.equal(message.channel, '/greetings');
      assert.deepEqual(message.data, payloads[i]);
      assert.equal(message.id, sent[i].id, 'a delivered message carries the publisher\'s id');
      assert.equal(message.clientId, undefined, 'a delivered message has no clientId');
    });
  });

  it('stops delivering a channel after subscription.cancel() is acknowledged', { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client: sub, probe: subProbe } = scope.client(target.url, target.mode);
    const { client: witness } = scope.client(target.url, target.mode);
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);

    const goneInbox = new EventLog('cancelled subscription');
    const keptInbox = new EventLog('kept subscription');
    const witnessInbox = new EventLog('witness');
    const { subscription: gone } = await subscribe(sub, '/unsub/gone', (data) => goneInbox.push(data));
    await subscribe(sub, '/unsub/kept', (data) => keptInbox.push(data));
    await subscribe(witness, '/unsub/gone', (data) => witnessInbox.push(data));
    await subProbe.transport(target.mode);
    await connectOver(pub, pubProbe, target.mode);

    // Before the cancel the subscription works.
    await publish(pub, '/unsub/gone', { n: 1 });
    assert.deepEqual(await goneInbox.waitForCount(1), [{ n: 1 }]);
    await witnessInbox.waitForCount(1);

    // Faye 1.4's cancel() returns nothing: its completion is the
    // /meta/unsubscribe reply, which we wait for through the probe.
    const mark = subProbe.incoming.length;
    gone.cancel();
    const reply = await subProbe.meta('/meta/unsubscribe', () => true, { from: mark });
    assert.equal(reply.successful, true, `unsubscribe reply: ${JSON.stringify(reply)}`);
    assert.deepEqual([].concat(reply.subscription), ['/unsub/gone']);
    const deliveredBefore = subProbe.deliveries.length;

    await publish(pub, '/unsub/gone', { n: 2 });
    await publish(pub, '/unsub/kept', { n: 3 });

    // The witness proves the second publish to /unsub/gone really went out;
    // the kept channel's message, published after it, bounds the wait.
    assert.deepEqual(await witnessInbox.waitForCount(2), [{ n: 1 }, { n: 2 }]);
    assert.deepEqual(await keptInbox.waitForCount(1), [{ n: 3 }]);

    // Checked on the wire, not only through callbacks: the faye client
    // drops messages for channels it no longer listens to by itself.
    const after = subProbe.deliveries.items.slice(deliveredBefore);
    assert.deepEqual(after.map((m) => [m.channel, m.data]), [['/unsub/kept', { n: 3 }]]);
    assert.deepEqual(goneInbox.items, [{ n: 1 }]);
  });
});
