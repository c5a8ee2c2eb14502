'use strict';

// Fault scenarios with real npm faye clients, measured: what was acknowledged to a
// publisher, what every subscriber received, what was lost or duplicated, and how long
// delivery took to resume. Used by redis-restart.test.js (short, asserted, in CI) and by
// scripts/reliability.sh (long, printed into RELIABILITY.md; never in CI). Every wait is
// bounded, so a server that never recovers gives figures, not a hang.

const { spawn } = require('node:child_process');
const { freePort, startServer, withTimeout, abandon, WAIT_MS } = require('./helpers');
const faye = require('faye');

const NAMESPACE = 'faye';

/** Resolves once `child` (a redis-server) printed that it accepts connections. */
function redisReady(child) {
  return withTimeout(new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.includes('Ready to accept connections')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`redis-server exited (${code}) before it was ready:\n${out}`)));
    child.on('error', reject);
  }), WAIT_MS, 'redis-server to be ready');
}

/** Our own redis-server on a free loopback port, no persistence; restartable on that port. */
async function startRedis() {
  const port = await freePort();
  const spawnOne = () => spawn('redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'ignore'] });
  let child = spawnOne();
  await redisReady(child);
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  };
  return {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    /** SIGKILL, then a fresh empty redis on the same port; resolves when it accepts connections. */
    async restart() {
      await kill();
      for (let attempt = 0; ; attempt++) {
        child = spawnOne();
        try {
          await redisReady(child);
          return;
        } catch (err) {
          if (attempt >= 20) throw err;
          await new Promise((r) => setTimeout(r, 100)); // the port may still be held a moment
        }
      }
    },
    stop: kill,
  };
}

function redisArgs(redis) {
  return ['--redis', redis.url, '--namespace', NAMESPACE, '--gc-interval', '3600'];
}

/** A faye client on `url` forced onto `mode`, collecting the `seq` of every delivery. */
function subscriber(url, mode, channel, clock) {
  const client = new faye.Client(url, { retry: 0.5 });
  if (mode === 'long-polling') client.disable('websocket');
  const got = [];
  const firstAt = new Map();
  const subscription = client.subscribe(channel, (data) => {
    got.push(data.seq);
    if (!firstAt.has(data.seq)) firstAt.set(data.seq, clock());
  });
  return { client, mode, got, firstAt, subscription };
}

/**
 * Redis loses its data mid-traffic. Two servers of `kind` share one redis without
 * persistence; `ws` websocket and `lp` long-polling subscribers sit on node A; a publisher on
 * node B publishes every `periodMs`; at `restartAtMs` redis is killed and started empty on
 * the same port; publishing runs `durationMs` in all, then subscribers get `drainMs` to
 * catch up. Returns the figures (times in ms, relative to the start of publishing).
 */
async function redisRestart({ kind = 'ours', timeout = 45, ws = 5, lp = 5, periodMs = 5, restartAtMs = 2000,
  durationMs = 8000, drainMs = 3000 } = {}) {
  const redis = await startRedis();
  const servers = [];
  const clients = [];
  try {
    const a = await startServer(kind, { timeout, extraArgs: redisArgs(redis) });
    servers.push(a);
    const b = await startServer(kind, { timeout, extraArgs: redisArgs(redis) });
    servers.push(b);
    const t0 = Date.now();
    const clock = () => Date.now() - t0;
    const channel = '/reliability/restart';
    const subs = [];
    for (let i = 0; i < ws + lp; i++) {
      const s = subscriber(a.url, i < ws ? 'websocket' : 'long-polling', channel, clock);
      subs.push(s);
      clients.push(s.client);
    }
    await withTimeout(Promise.all(subs.map((s) => s.subscription)), WAIT_MS, 'subscriptions');

    const publisher = new faye.Client(b.url, { retry: 0.5 });
    clients.push(publisher);
    await withTimeout(publisher.publish('/reliability/warmup', {}), WAIT_MS, 'the publisher to connect');

    const start = Date.now();
    const now = () => Date.now() - start;
    const acked = new Map(); // seq -> ack time
    let refused = 0;
    let seq = 0;
    let redisBackAt = null;
    const restarted = (async () => {
      await new Promise((r) => setTimeout(r, restartAtMs));
      const killedAt = now();
      await redis.restart();
      redisBackAt = now();
      return killedAt;
    })();
    await new Promise((resolve) => {
      const timer = setInterval(() => {
        if (now() >= durationMs) {
          clearInterval(timer);
          resolve();
          return;
        }
        const n = seq++;
        publisher.publish(channel, { seq: n }).then(() => acked.set(n, now()), () => { refused += 1; });
      }, periodMs);
    });
    const killedAt = await restarted;
    // Let in-flight publishes settle and subscribers catch up.
    await new Promise((r) => setTimeout(r, drainMs));

    const ackedAfter = [...acked.entries()].filter(([, t]) => t > redisBackAt + 2000).map(([n]) => n);
    const ackedSeqs = [...acked.keys()];
    const perSub = subs.map((s) => {
      const got = new Set(s.got);
      const lost = ackedSeqs.filter((n) => !got.has(n)).length;
      const lostAfter = ackedAfter.filter((n) => !got.has(n)).length;
      const duplicated = s.got.length - got.size;
      // Delivery resumed: the first receipt of a message acknowledged after redis was back.
      const resumedAt = Math.min(...[...s.firstAt.entries()]
        .filter(([n]) => acked.has(n) && acked.get(n) > redisBackAt)
        .map(([, t]) => t - (start - t0)));
      return { mode: s.mode, received: s.got.length, lost, lostAfter, duplicated,
        recoveryMs: Number.isFinite(resumedAt) ? resumedAt - redisBackAt : null };
    });
    const sum = (k, mode) => perSub.filter((p) => !mode || p.mode === mode).reduce((acc, p) => acc + p[k], 0);
    const worst = (mode) => {
      const times = perSub.filter((p) => p.mode === mode).map((p) => p.recoveryMs);
      return times.some((t) => t === null) ? null : Math.max(...times);
    };
    return {
      kind, timeout, published: seq, acked: acked.size, refused, killedAt, redisBackAt,
      ackedAfterPlus2s: ackedAfter.length, subscribers: perSub.length,
      websocket: { lost: sum('lost', 'websocket'), lostAfterPlus2s: sum('lostAfter', 'websocket'),
        duplicated: sum('duplicated', 'websocket'), worstRecoveryMs: worst('websocket') },
      longPolling: { lost: sum('lost', 'long-polling'), lostAfterPlus2s: sum('lostAfter', 'long-polling'),
        duplicated: sum('duplicated', 'long-polling'), worstRecoveryMs: worst('long-polling') },
      perSubscriber: perSub,
    };
  } finally {
    for (const c of clients) abandon(c);
    for (const s of servers) await s.stop().catch(() => {});
    await redis.stop();
  }
}

module.exports = { redisRestart, startRedis };

/** Milliseconds as a table cell. */
function ms(v) {
  return v === null || v === undefined ? 'never (within the run)' : `${v} ms`;
}

/**
 * The RELIABILITY.md table from result lines: JSON objects from `redis-restart` runs and
 * `RELIABILITY {json}` lines printed by the Rust scenario tests.
 */
function table(lines) {
  const rows = [['Scenario', 'Server', 'Injected', 'Acknowledged', 'Lost', 'Duplicated', 'Recovery']];
  for (const line of lines) {
    const text = line.startsWith('RELIABILITY ') ? line.slice('RELIABILITY '.length) : line;
    let r;
    try { r = JSON.parse(text); } catch (_) { continue; }
    if (r.kind) {
      const server = r.kind === 'ours' ? 'actioncluster' : 'node.js Faye + faye-redis';
      for (const [mode, f] of [['websocket', r.websocket], ['long-polling', r.longPolling]]) {
        const per = r.perSubscriber.filter((p) => p.mode === mode).length;
        rows.push([`redis restart, no persistence (${per} ${mode} subscribers, timeout ${r.timeout} s)`, server,
          `redis SIGKILLed at ${r.killedAt} ms, empty again at ${r.redisBackAt} ms; publish every 5 ms for ${r.published} publishes`,
          `${r.acked} (${r.ackedAfterPlus2s} more than 2 s after redis was back; ${r.refused} refused)`,
          `${f.lost} in all; ${f.lostAfterPlus2s} of those acknowledged > 2 s after redis was back`,
          String(f.duplicated), `worst subscriber: ${ms(f.worstRecoveryMs)} after redis was back`]);
      }
    } else if (r.scenario === 'node-kill-9' || r.scenario === 'node-sigterm') {
      const how = r.scenario === 'node-kill-9' ? 'SIGKILL' : 'SIGTERM';
      for (const mode of ['websocket', 'long-polling']) {
        const f = r[mode];
        rows.push([`node death behind a balancer (${r.subscribers / 2} ${mode} subscribers, faye layout)`, 'actioncluster',
          `${how} to the node holding them; publisher on the other node every 5 ms`, `${r.acked} (${r.refused} refused)`,
          String(f.lost), String(f.duplicated), `worst subscriber: ${ms(f.worst_recovery_ms)} after the signal`]);
      }
    } else if (r.scenario === 'flood-stuck-subscriber') {
      const mib = (b) => `${(b / 1048576).toFixed(1)} MiB`;
      rows.push(['flood a subscriber that never reads (memory engine)', 'actioncluster',
        `${r.published} publishes of 4 KiB, --max-queue-bytes ${mib(r.max_queue_bytes)}`,
        String(r.published), `${r.healthy_lost} (healthy subscriber)`, '0',
        `RSS ${mib(r.rss_baseline)} -> peak ${mib(r.rss_peak)} (+${mib(r.rss_growth)}); healthy latency p50 ${r.healthy_latency_ms_p50} ms, p99 ${r.healthy_latency_ms_p99} ms`]);
    } else if (r.scenario === 'malformed-input') {
      rows.push(['malformed HTTP bodies and websocket frames mixed with valid traffic', 'actioncluster',
        `${r.malformed} malformed inputs`, `${r.acked} valid publishes`, String(r.lost), String(r.duplicated),
        `${r.crashes} crashes; both subscribers kept receiving`]);
    } else if (r.scenario === 'reconnect-storm-after-redis-restart') {
      rows.push([`reconnect storm: ${r.clients} held websocket clients after a redis restart`, 'actioncluster',
        'redis restarted empty', '-', String(r.lost), '-',
        `all told (401) after ${r.all_told_ms} ms, all handshaken and subscribed again after ${r.all_resubscribed_ms} ms`]);
    } else if (r.scenario === 'fuzz') {
      rows.push([`fuzz target \`${r.target}\``, '-', `${r.seconds} s, ${r.runs} executions`, '-', '-', '-', `${r.findings} findings`]);
    }
  }
  return rows.map((row, i) => `| ${row.join(' | ')} |${i === 0 ? `\n|${' --- |'.repeat(row.length)}` : ''}`).join('\n');
}

module.exports = { redisRestart, startRedis, table };

// `node test/reliability.js redis-restart [ours|faye-reference] [timeout] [durationMs]`
// prints the figures as one JSON line; `node test/reliability.js table < results` prints the
// markdown table (scripts/reliability.sh).
if (require.main === module) {
  const [scenario, kind = 'ours', timeout = '45', durationMs = '14000'] = process.argv.slice(2);
  if (scenario === 'table') {
    const input = require('node:fs').readFileSync(0, 'utf8');
    console.log(table(input.split('\n').filter(Boolean)));
    process.exit(0);
  }
  if (scenario !== 'redis-restart') {
    console.error('usage: node test/reliability.js redis-restart [ours|faye-reference] [timeout] [durationMs] | table');
    process.exit(2);
  }
  redisRestart({ kind, timeout: Number(timeout), durationMs: Number(durationMs) })
    .then((r) => { console.log(JSON.stringify(r)); process.exit(0); })
    .catch((e) => { console.error(e); process.exit(1); });
}
