'use strict';

// A node.js Faye server on the faye-redis 0.2.0 engine and our node share one
// redis-server and one namespace: real faye clients connected to either side
// receive what is published on the other, over websocket and long-polling, and
// either side's garbage collection removes the other side's expired clients.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const redis = require('redis');
const {
  EventLog, MODES, Scope, TEST_TIMEOUT_MS, WAIT_MS, connectOver, publish, startRedis, startServer, subscribe, withTimeout,
} = require('./helpers');

const NAMESPACE = 'faye';

/** A redis client (npm redis 3, callback API) for assertions. */
function redisClient(port) {
  const client = redis.createClient(port, '127.0.0.1');
  client.on('error', () => {});
  return client;
}

function call(client, method, ...args) {
  return new Promise((resolve, reject) => client[method](...args, (err, value) => (err ? reject(err) : resolve(value))));
}

/** Resolves with the id once `faye/notifications/close` announces `clientId`. */
function closeAnnounced(port, clientId) {
  const sub = redisClient(port);
  const announced = new Promise((resolve) => {
    sub.on('message', (channel, id) => {
      if (id === clientId) resolve(id);
    });
  });
  const subscribed = new Promise((resolve) => sub.once('subscribe', resolve));
  sub.subscribe(`${NAMESPACE}/notifications/close`);
  return { subscribed, announced, close: () => sub.quit() };
}

/** A raw long-polling handshake: a client that then never connects (and so expires). */
function handshake(url) {
  const body = JSON.stringify({ channel: '/meta/handshake', version: '1.0', supportedConnectionTypes: ['long-polling'] });
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': 'application/json' } }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => {
        try {
          resolve(JSON.parse(data)[0].clientId);
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

function redisArgs(redisServer, gcInterval) {
  return ['--redis', redisServer.url, '--namespace', NAMESPACE, '--gc-interval', String(gcInterval)];
}

describe('faye-redis interop: messages cross between node.js Faye and our node', () => {
  let redisServer;
  let ours;
  let theirs;

  before(async () => {
    redisServer = await startRedis();
    ours = await startServer('ours', { timeout: 10, extraArgs: redisArgs(redisServer, 3600) });
    theirs = await startServer('faye-reference', { timeout: 10, extraArgs: redisArgs(redisServer, 3600) });
  });

  after(async () => {
    if (ours) await ours.stop();
    if (theirs) await theirs.stop();
    if (redisServer) await redisServer.stop();
  });

  for (const mode of MODES) {
    it(`subscribers on each side receive what is published on the other [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: onFaye, probe: onFayeProbe } = scope.client(theirs.url, mode);
      const { client: onOurs, probe: onOursProbe } = scope.client(ours.url, mode);
      const fayeInbox = new EventLog('subscriber on node.js Faye');
      const oursInbox = new EventLog('subscriber on our node');
      await subscribe(onFaye, `/interop/${mode}/**`, (data) => fayeInbox.push(data));
      await subscribe(onOurs, `/interop/${mode}/*`, (data) => oursInbox.push(data));
      await onFayeProbe.transport(mode);
      await onOursProbe.transport(mode);

      const { client: pubOurs, probe: pubOursProbe } = scope.client(ours.url, mode);
      const { client: pubFaye, probe: pubFayeProbe } = scope.client(theirs.url, mode);
      await connectOver(pubOurs, pubOursProbe, mode);
      await connectOver(pubFaye, pubFayeProbe, mode);

      // Both directions, one message at a time: each reaches both subscribers.
      const N = 10;
      for (let i = 0; i < N; i++) {
        await publish(pubOurs, `/interop/${mode}/ours`, { from: 'ours', i });
        await fayeInbox.waitForCount(2 * i + 1);
        await oursInbox.waitForCount(2 * i + 1);
        await publish(pubFaye, `/interop/${mode}/faye`, { from: 'faye', i });
        await fayeInbox.waitForCount(2 * i + 2);
        await oursInbox.waitForCount(2 * i + 2);
      }
      // A burst from both sides to the subscriber on our node: nothing lost, nothing twice. (A long-polling subscriber on the faye-redis node can lose
      // messages in such a burst: faye-redis deletes a queue before it knows the connection
      // is still there to take it — the weakness we fix.)
      const B = 100;
      const burst = [];
      for (let i = 0; i < B; i++) {
        burst.push(publish(pubOurs, `/interop/${mode}/ours`, { from: 'ours', i: N + i }));
        burst.push(publish(pubFaye, `/interop/${mode}/faye`, { from: 'faye', i: N + i }));
      }
      await Promise.all(burst);
      const oursGot = await oursInbox.waitForCount(2 * (N + B));
      const fayeGot = fayeInbox.items.slice(0, 2 * N);
      for (const [got, total] of [[oursGot, N + B], [fayeGot, N]]) {
        for (const from of ['ours', 'faye']) {
          const seq = got.filter((m) => m.from === from).map((m) => m.i);
          // A long-polling publisher sends a burst over several concurrent HTTP requests, so
          // only a websocket publisher's burst has an order to keep.
          if (mode === 'long-polling') seq.sort((a, b) => a - b);
          assert.deepEqual(seq, [...Array(total).keys()], `every message from ${from} once${mode === 'websocket' ? ', in order' : ''}`);
        }
      }
    });
  }
});

describe('faye-redis interop: garbage collection by either side', () => {
  let redisServer;
  const servers = [];

  before(async () => {
    redisServer = await startRedis();
  });

  after(async () => {
    for (const s of servers) await s.stop();
    if (redisServer) await redisServer.stop();
  });

  const cases = [
    { collector: 'faye-reference', creator: 'ours' },
    { collector: 'ours', creator: 'faye-reference' },
  ];
  for (const { collector, creator } of cases) {
    it(`${collector} collects an expired client created on ${creator}`, { timeout: TEST_TIMEOUT_MS }, async () => {
      // The creator never collects; the collector runs GC often with a 1 s timeout.
      const creatorNode = await startServer(creator, { timeout: 1, extraArgs: redisArgs(redisServer, 3600) });
      servers.push(creatorNode);
      const collectorNode = await startServer(collector, { timeout: 1, extraArgs: redisArgs(redisServer, 0.3) });
      servers.push(collectorNode);

      const clientId = await handshake(creatorNode.url);
      const watch = closeAnnounced(redisServer.port, clientId);
      try {
        await withTimeout(watch.subscribed, WAIT_MS, 'the close-channel subscription');
        const probe = redisClient(redisServer.port);
        try {
          const score = await call(probe, 'zscore', `${NAMESPACE}/clients`, clientId);
          assert.notEqual(score, null, 'the client exists in redis before it expires');
          await withTimeout(watch.announced, WAIT_MS, `${collector} to destroy ${clientId}`);
          assert.equal(await call(probe, 'zscore', `${NAMESPACE}/clients`, clientId), null);
        } finally {
          probe.quit();
        }
      } finally {
        watch.close();
      }
    });
  }
});
