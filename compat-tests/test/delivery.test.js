'use strict';

// Scenarios 4 and 5: ordered, lossless delivery of many messages, and fan-out.

const { it } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, Scope, TEST_TIMEOUT_MS, connectOver, forEachTarget, publish, subscribe, withTimeout,
} = require('./helpers');

const COUNT = 500;
const FAN_OUT = 50;

function expectedSequence(run) {
  const expected = [];
  for (let seq = 0; seq < COUNT; seq++) expected.push({ run, seq });
  expected.push({ run, done: true });
  return expected;
}

forEachTarget('delivery', (target) => {
  it(`${COUNT} messages from one publisher arrive in order, none lost or duplicated`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const { client: sub, probe: subProbe } = scope.client(target.url, target.mode);
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);
    const inbox = new EventLog('subscriber');
    await subscribe(sub, '/seq/awaited', (data) => inbox.push(data));
    await subProbe.transport(target.mode);
    await connectOver(pub, pubProbe, target.mode);

    // Each publish is acknowledged before the next is sent, so the server's
    // order of acceptance is the sequence order over any transport.
    for (let seq = 0; seq < COUNT; seq++) await publish(pub, '/seq/awaited', { run: 'awaited', seq });
    // A last message bounds the wait and exposes duplicates of the others.
    await publish(pub, '/seq/awaited', { run: 'awaited', done: true });

    await inbox.waitFor((d) => d.done, { timeoutMs: 30_000, what: 'the final message' });
    assert.deepEqual(inbox.items, expectedSequence('awaited'));
    assert.equal(subProbe.deliveries.length, COUNT + 1);
  });

  if (target.mode === 'websocket') {
    // Over one websocket, messages sent back to back without waiting for
    // their acknowledgements are taken in the order they were sent (Faye
    // does so). Over long-polling the client spreads such a burst across
    // concurrent HTTP requests, which carry no order, so this is websocket only.
    it(`${COUNT} pipelined publishes over one websocket arrive in order`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: sub, probe: subProbe } = scope.client(target.url, target.mode);
      const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);
      const inbox = new EventLog('subscriber');
      await subscribe(sub, '/seq/pipelined', (data) => inbox.push(data));
      await subProbe.transport('websocket');
      await connectOver(pub, pubProbe, 'websocket');

      const acks = [];
      for (let seq = 0; seq < COUNT; seq++) acks.push(pub.publish('/seq/pipelined', { run: 'pipelined', seq }));
      acks.push(pub.publish('/seq/pipelined', { run: 'pipelined', done: true }));
      await withTimeout(Promise.all(acks), 30_000, `${COUNT + 1} publish acknowledgements`);

      // Every publish went over the websocket (none over the long-polling
      // transport faye uses before its websocket is up).
      const sent = pubProbe.outgoing.items.filter((m) => m.channel === '/seq/pipelined');
      assert.equal(sent.length, COUNT + 1);

      await inbox.waitFor((d) => d.done, { timeoutMs: 30_000, what: 'the final message' });
      assert.deepEqual(inbox.items, expectedSequence('pipelined'));
      assert.equal(subProbe.deliveries.length, COUNT + 1);
    });
  }

  it(`one publish reaches ${FAN_OUT} subscribed clients, each exactly once`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const scope = new Scope(t);
    const subscribers = [];
    for (let i = 0; i < FAN_OUT; i++) {
      const { client, probe } = scope.client(target.url, target.mode);
      subscribers.push({ client, probe, inbox: new EventLog(`subscriber #${i}`) });
    }
    const { client: pub, probe: pubProbe } = scope.client(target.url, target.mode);

    await Promise.all(subscribers.map((s) => subscribe(s.client, '/fanout', (data) => s.inbox.push(data), 20_000)));
    await Promise.all(subscribers.map((s) => s.probe.transport(target.mode, { timeoutMs: 20_000 })));
    await connectOver(pub, pubProbe, target.mode);

    await publish(pub, '/fanout', { n: 1, text: 'to everyone' });
    await Promise.all(subscribers.map((s) => s.inbox.waitForCount(1)));
    // A second message bounds the wait for any duplicate of the first.
    await publish(pub, '/fanout', { n: 2 });
    await Promise.all(subscribers.map((s) => s.inbox.waitForCount(2)));

    for (const [i, s] of subscribers.entries()) {
      assert.deepEqual(s.inbox.items, [{ n: 1, text: 'to everyone' }, { n: 2 }], `subscriber #${i}`);
      assert.equal(s.probe.deliveries.length, 2, `subscriber #${i} wire deliveries`);
    }
  });
});
