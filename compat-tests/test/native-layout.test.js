'use strict';

// Two of our nodes on the native redis layout (--redis-layout native) share one
// redis-server: real npm faye clients on one node receive what clients on the
// other publish, over websocket and long-polling, with wildcards, once each and
// in order, and stop receiving once they unsubscribe.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, MODES, Scope, TEST_TIMEOUT_MS, connectOver, publish, startRedis, startServer, subscribe,
} = require('./helpers');

function nativeArgs(redisServer) {
  return ['--redis', redisServer.url, '--redis-layout', 'native', '--namespace', 'native-compat'];
}

describe('native layout: two of our nodes on one redis', () => {
  let redisServer;
  let a;
  let b;

  before(async () => {
    redisServer = await startRedis();
    a = await startServer('ours', { timeout: 10, extraArgs: nativeArgs(redisServer) });
    b = await startServer('ours', { timeout: 10, extraArgs: nativeArgs(redisServer) });
  });

  after(async () => {
    if (a) await a.stop();
    if (b) await b.stop();
    if (redisServer) await redisServer.stop();
  });

  for (const mode of MODES) {
    it(`subscribers on one node receive what the other publishes, wildcards included, once each [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: exact, probe: exactProbe } = scope.client(a.url, mode);
      const { client: wild, probe: wildProbe } = scope.client(a.url, mode);
      const exactInbox = new EventLog('subscriber to /n/room on node A');
      const wildInbox = new EventLog('subscriber to /n/* and /n/** on node A');
      await subscribe(exact, `/n/${mode}/room`, (data) => exactInbox.push(data));
      // Two patterns matching the same messages: the server still sends each once (the faye
      // client then calls both callbacks itself).
      await subscribe(wild, `/n/${mode}/*`, () => {});
      await subscribe(wild, `/n/${mode}/**`, (data, channel) => wildInbox.push({ channel, ...data }));
      await exactProbe.transport(mode);
      await wildProbe.transport(mode);

      const { client: publisher, probe: pubProbe } = scope.client(b.url, mode);
      await connectOver(publisher, pubProbe, mode);
      const N = 50;
      for (let i = 0; i < N; i++) {
        await publish(publisher, `/n/${mode}/room`, { i });
      }
      await publish(publisher, `/n/${mode}/room/deep`, { i: N });
      const got = await exactInbox.waitForCount(N);
      assert.deepEqual(got.map((m) => m.i), [...Array(N).keys()], 'every message once, in order');
      const wildGot = await wildInbox.waitForCount(N + 1);
      assert.deepEqual(wildGot.map((m) => m.i), [...Array(N + 1).keys()], 'every message, in order');
      const raw = wildProbe.deliveries.items.filter((m) => m.channel.startsWith(`/n/${mode}/`));
      assert.deepEqual(raw.map((m) => m.data.i), [...Array(N + 1).keys()], 'the server sent each message once');
    });

    it(`a subscriber that unsubscribes on node A no longer receives what node B publishes [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: sub, probe: subProbe } = scope.client(a.url, mode);
      const leaving = new EventLog('subscription that is cancelled');
      const staying = new EventLog('subscription that stays');
      const { subscription } = await subscribe(sub, `/u/${mode}/gone`, (data) => leaving.push(data));
      await subscribe(sub, `/u/${mode}/kept`, (data) => staying.push(data));
      await subProbe.transport(mode);
      const { client: publisher, probe: pubProbe } = scope.client(b.url, mode);
      await connectOver(publisher, pubProbe, mode);
      await publish(publisher, `/u/${mode}/gone`, { n: 1 });
      await leaving.waitForCount(1);
      subscription.cancel();
      await subProbe.meta('/meta/unsubscribe', (m) => m.successful === true);
      await publish(publisher, `/u/${mode}/gone`, { n: 2 });
      await publish(publisher, `/u/${mode}/kept`, { n: 3 });
      // The later message on the kept channel arrives, so the cancelled one had its chance.
      await staying.waitForCount(1);
      const raw = subProbe.deliveries.items.filter((m) => m.channel === `/u/${mode}/gone`);
      assert.deepEqual(raw.map((m) => m.data.n), [1], 'nothing delivered after the unsubscribe');
    });
  }
});
