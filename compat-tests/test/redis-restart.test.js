'use strict';

// Redis restarts empty mid-traffic (issue 12): two of our nodes share one redis without
// persistence; real faye subscribers (websocket and long-polling, default 45 s timeout) sit
// on one node, a publisher on the other. Every subscriber must be told to handshake again
// at once, so every message acknowledged more than 2 s after redis answers again reaches
// every subscriber. (Before the fix, websocket subscribers stayed silent until their held
// connect timed out.) The long version with node.js Faye + faye-redis alongside is
// scripts/reliability.sh.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { redisRestart } = require('./reliability');

describe('redis restart without persistence [ours]', () => {
  it('every message acknowledged 2 s after redis is back reaches every subscriber', { timeout: 60_000 }, async () => {
    const r = await redisRestart({ kind: 'ours', timeout: 45, ws: 3, lp: 3, durationMs: 6000, drainMs: 2000 });
    const summary = JSON.stringify({ ...r, perSubscriber: undefined });
    assert.ok(r.ackedAfterPlus2s > 0, `the publisher was acknowledged after the restart: ${summary}`);
    for (const s of r.perSubscriber) {
      assert.equal(s.lostAfter, 0, `a ${s.mode} subscriber lost messages acknowledged after redis was back: ${summary}`);
    }
  });
});
