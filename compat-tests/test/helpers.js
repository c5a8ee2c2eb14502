'use strict';

// Shared machinery of the compat tests: start a Bayeux server process (our
// release binary or the node.js Faye reference server), parse the URL it
// prints, stop it, create real npm `faye` clients for one transport, observe
// what those clients send and receive, and wait for all of it under an upper
// bound so that nothing can hang.
//
// Run (from compat-tests/, after `cargo build --release` in the repository root):
//   npm ci && npm test
// Environment:
//   ACTIONCLUSTER_BIN  our binary (default ../target/release/actioncluster,
//                      relative paths are taken from compat-tests/)
//   COMPAT_SERVERS     servers to run against: ours,faye-reference (default both)

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { describe, before, after } = require('node:test');

// The clients must talk to 127.0.0.1 directly, never through a proxy that
// happens to be configured in the environment (faye honours http_proxy).
for (const name of Object.keys(process.env)) {
  if (/^(https?|all|no)_proxy$/i.test(name)) delete process.env[name];
}

const faye = require('faye');

const PACKAGE_ROOT = path.resolve(__dirname, '..');
const DEFAULT_BIN = path.resolve(PACKAGE_ROOT, '../target/release/actioncluster');
const FAYE_SERVER_SCRIPT = path.join(__dirname, 'faye-server.js');

/** The one line a server prints on stdout once it is bound. */
const LISTENING_LINE = /^actioncluster listening on (http:\/\/127\.0\.0\.1:(\d+)(\/[^\s]*))$/;

/** The two transports every scenario runs over. */
const MODES = ['websocket', 'long-polling'];

/** The servers every scenario runs against. */
const SERVER_KINDS = ['ours', 'faye-reference'];

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;
const STDERR_TAIL_BYTES = 16 * 1024;

/** Per-test upper bound passed to node:test's `it` (the runner also has --test-timeout). */
const TEST_TIMEOUT_MS = 60_000;
/** Default upper bound of a single wait inside a test. */
const WAIT_MS = 10_000;

function actionclusterBin() {
  const fromEnv = process.env.ACTIONCLUSTER_BIN;
  return fromEnv ? path.resolve(PACKAGE_ROOT, fromEnv) : DEFAULT_BIN;
}

/**
 * Servers selected for this run: COMPAT_SERVERS=ours,faye-reference (the
 * default is both). Unknown names are an error rather than a silent skip.
 */
function selectedServers() {
  const raw = process.env.COMPAT_SERVERS;
  if (!raw) return SERVER_KINDS.slice();
  const kinds = raw.split(',').map((s) => s.trim()).filter(Boolean);
  for (const kind of kinds) {
    if (!SERVER_KINDS.includes(kind)) {
      throw new Error(`COMPAT_SERVERS: unknown server ${JSON.stringify(kind)} (known: ${SERVER_KINDS.join(', ')})`);
    }
  }
  return kinds;
}

// ---------------------------------------------------------------------------
// Waiting

/** Resolves like `promise`, or rejects with a clear message after `ms`. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

/**
 * An append-only list of events (messages, callbacks) that tests can wait on:
 * `waitUntil(items => condition)` resolves as soon as the condition holds,
 * checking now and after every push, and rejects after an upper bound.
 */
class EventLog {
  constructor(name) {
    this.name = name;
    this.items = [];
    this._waiters = new Set();
  }

  push(item) {
    this.items.push(item);
    for (const waiter of [...this._waiters]) waiter();
  }

  get length() {
    return this.items.length;
  }

  waitUntil(condition, { timeoutMs = WAIT_MS, what = 'a condition' } = {}) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const check = () => {
        let result;
        try {
          result = condition(this.items);
        } catch (err) {
          finish();
          reject(err);
          return;
        }
        if (result) {
          finish();
          resolve(result);
        }
      };
      const finish = () => {
        this._waiters.delete(check);
        if (timer) clearTimeout(timer);
      };
      timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} on ${this.name}; ` +
          `it holds ${this.items.length} item(s), the last: ${describeTail(this.items)}`));
      }, timeoutMs);
      this._waiters.add(check);
      check();
    });
  }

  /** Waits for the first item at index >= `from` matching `predicate` and returns it. */
  waitFor(predicate, { from = 0, timeoutMs = WAIT_MS, what = 'a matching item' } = {}) {
    return this.waitUntil((items) => {
      for (let i = from; i < items.length; i++) if (predicate(items[i])) return { item: items[i] };
      return null;
    }, { timeoutMs, what }).then((found) => found.item);
  }

  /** Waits until at least `n` items are there and returns the list. */
  waitForCount(n, opts = {}) {
    return this.waitUntil((items) => items.length >= n && items, { what: `${n} item(s)`, ...opts });
  }
}

function describeTail(items) {
  const tail = items.slice(-3);
  const text = JSON.stringify(tail);
  return text.length > 600 ? `${text.slice(0, 600)}...` : text;
}

// ---------------------------------------------------------------------------
// Server processes

const liveProcesses = new Set();
process.on('exit', () => {
  // Last resort if a test process dies without running its after hooks.
  for (const child of liveProcesses) {
    try { child.kill('SIGKILL'); } catch (_) { /* already gone */ }
  }
});

/** A free TCP port on 127.0.0.1, found by binding port 0 and closing again. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function commandFor(kind, bin) {
  if (kind === 'ours') {
    return { command: bin || actionclusterBin(), prefix: [], env: {} };
  }
  if (kind === 'faye-reference') {
    return { command: process.execPath, prefix: [FAYE_SERVER_SCRIPT], env: { NODE_ENV: 'production' } };
  }
  throw new Error(`unknown server kind ${JSON.stringify(kind)}`);
}

/**
 * Starts a server and resolves once it printed its listening line.
 * Options: port (default 0), timeout (seconds, default 10), mount, bin (ours only),
 * extraArgs. Rejects clearly when the binary is missing, when the process exits
 * before listening, or when it does not listen within START_TIMEOUT_MS.
 */
async function startServer(kind, { port = 0, timeout = 10, mount, bin, extraArgs = [] } = {}) {
  const { command, prefix, env } = commandFor(kind, bin);
  if (kind === 'ours') {
    try {
      fs.accessSync(command, fs.constants.X_OK);
    } catch (_) {
      throw new Error(`actioncluster binary not found or not executable at ${command}: ` +
        'run `cargo build --release` in the repository root or set ACTIONCLUSTER_BIN');
    }
  }
  const args = [...prefix, '--host', '127.0.0.1', '--port', String(port), '--timeout', String(timeout)];
  if (mount) args.push('--mount', mount);
  args.push(...extraArgs);

  const child = spawn(command, args, {
    cwd: PACKAGE_ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveProcesses.add(child);

  const handle = new ServerProcess(kind, child, [command, ...args]);
  try {
    await withTimeout(handle._listening, START_TIMEOUT_MS, `${kind} to print its listening line`);
  } catch (err) {
    await handle.stop().catch(() => {});
    throw new Error(`${err.message}\n--- ${kind} stderr ---\n${handle.stderr()}`);
  }
  return handle;
}

class ServerProcess {
  constructor(kind, child, argv) {
    this.kind = kind;
    this.child = child;
    this.argv = argv;
    this.url = null;
    this.port = null;
    this.mount = null;
    /** stdout lines after the listening line (there should be none). */
    this.extraStdout = [];
    this._stderr = '';
    this._exit = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        liveProcesses.delete(child);
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });

    this._listening = new Promise((resolve, reject) => {
      let buffered = '';
      let seenFirst = false;
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk) => {
        buffered += chunk;
        let newline;
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline).replace(/\r$/, '');
          buffered = buffered.slice(newline + 1);
          if (seenFirst) {
            this.extraStdout.push(line);
            continue;
          }
          seenFirst = true;
          const m = LISTENING_LINE.exec(line);
          if (!m) {
            reject(new Error(`${kind} printed ${JSON.stringify(line)} as its first stdout line, ` +
              `expected "actioncluster listening on http://127.0.0.1:PORT/MOUNT"`));
            continue;
          }
          this.url = m[1];
          this.port = Number(m[2]);
          this.mount = m[3];
          resolve(this.url);
        }
      });
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        this._stderr = (this._stderr + chunk).slice(-STDERR_TAIL_BYTES);
      });
      child.on('error', (err) => reject(new Error(`cannot start ${kind} (${argv.join(' ')}): ${err.message}`)));
      this._exit.then(({ code, signal }) => reject(new Error(
        `${kind} exited (code ${code}, signal ${signal}) before printing its listening line; ` +
        `command: ${argv.join(' ')}`)));
    });
    // Rejections of _listening after start-up are irrelevant.
    this._listening.catch(() => {});
  }

  /** The last STDERR_TAIL_BYTES of the server's stderr (its log). */
  stderr() {
    return this._stderr;
  }

  get running() {
    return this.exitStatus === undefined;
  }

  /**
   * SIGTERM, then waits for the exit. If the process does not exit within
   * STOP_TIMEOUT_MS it is killed and the stop rejects (a server that ignores
   * SIGTERM is a bug).
   */
  async stop() {
    if (!this.running) return this.exitStatus;
    this.child.kill('SIGTERM');
    try {
      return await withTimeout(this._exit, STOP_TIMEOUT_MS, `${this.kind} to exit after SIGTERM`);
    } catch (err) {
      this.child.kill('SIGKILL');
      await this._exit;
      throw err;
    }
  }
}

// ---------------------------------------------------------------------------
// Clients

/**
 * Records every message a faye client sends and receives, through the
 * client's public extension API, so tests can wait for protocol events
 * (a /meta/subscribe reply, a 401 connect) and see deliveries the client's
 * own channel matching would hide from subscription callbacks.
 */
class Probe {
  constructor(client, label) {
    this.incoming = new EventLog(`${label} incoming`);
    this.outgoing = new EventLog(`${label} outgoing`);
    this.deliveries = new EventLog(`${label} deliveries`);
    const probe = this;
    client.addExtension({
      incoming(message, callback) {
        const copy = clone(message);
        probe.incoming.push(copy);
        if (isDelivery(copy)) probe.deliveries.push(copy);
        callback(message);
      },
      outgoing(message, callback) {
        probe.outgoing.push(clone(message));
        callback(message);
      },
    });
  }

  /** Waits until the client sends a /meta/connect over `connectionType`. */
  transport(connectionType, opts = {}) {
    return this.outgoing.waitFor(
      (m) => m.channel === '/meta/connect' && m.connectionType === connectionType,
      { what: `a /meta/connect over ${connectionType}`, ...opts });
  }

  /** Waits for a reply on a meta channel matching `predicate`, seen at index >= from. */
  meta(channel, predicate = () => true, opts = {}) {
    return this.incoming.waitFor((m) => m.channel === channel && predicate(m),
      { what: `a ${channel} reply`, ...opts });
  }
}

/** A message pushed to a subscriber (not a reply: no `successful`). */
function isDelivery(message) {
  return typeof message.channel === 'string' &&
    !message.channel.startsWith('/meta/') &&
    message.successful === undefined &&
    Object.prototype.hasOwnProperty.call(message, 'data');
}

function clone(value) {
  return value === undefined ? value : JSON.parse(JSON.stringify(value));
}

/**
 * Everything one test creates, torn down in the right order at its end:
 * clients are disconnected first (each `client.disconnect()` awaited), then
 * any cleanup registered with `defer` (e.g. stopping a server the test owns).
 */
class Scope {
  constructor(t) {
    this._clients = [];
    this._deferred = [];
    this._count = 0;
    t.after(() => this.close());
  }

  /**
   * A real faye client for `url`, forced onto `mode` ('websocket' or
   * 'long-polling'), with a Probe attached.
   */
  client(url, mode, options = {}) {
    if (!MODES.includes(mode)) throw new Error(`unknown mode ${mode}`);
    // retry: seconds between resends of a failed message (faye's default is 5;
    // a short one keeps the recovery scenario quick).
    const client = new faye.Client(url, { retry: 0.5, ...options });
    if (mode === 'long-polling') client.disable('websocket');
    this._count += 1;
    const probe = new Probe(client, `client#${this._count} (${mode})`);
    this._clients.push(client);
    return { client, probe };
  }

  defer(fn) {
    this._deferred.push(fn);
  }

  async close() {
    const clients = this._clients.splice(0);
    const results = await Promise.allSettled(clients.map((c) => disconnect(c)));
    for (const fn of this._deferred.splice(0).reverse()) await fn();
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

/**
 * Disconnects a faye client and waits for the server's reply. A client that
 * never finished its handshake cannot send /meta/disconnect; it is stopped
 * from retrying instead so that no timer outlives the test.
 */
async function disconnect(client) {
  const pending = client.disconnect();
  try {
    if (pending) await withTimeout(pending, WAIT_MS, 'the /meta/disconnect reply');
  } finally {
    abandon(client);
  }
}

/**
 * `client.subscribe` awaited under a timeout; resolves to `{ subscription }`
 * (wrapped: a faye Subscription is itself a thenable, so returning it from a
 * promise would resolve to its value instead). `onMessage(data, channel)`
 * gets each message's data and concrete channel.
 */
async function subscribe(client, channel, onMessage, timeoutMs = WAIT_MS) {
  const subscription = client.subscribe(channel);
  if (onMessage) subscription.withChannel((ch, data) => onMessage(data, ch));
  await withTimeout(subscription, timeoutMs, `subscription to ${channel} to be acknowledged`);
  return { subscription };
}

/**
 * Stops a client without talking to the server (for clients whose server is
 * already gone, and after every disconnect): no more handshake or connect
 * attempts, transport closed. Uses faye's internal fields; teardown only.
 */
function abandon(client) {
  client._advice.reconnect = 'none';
  client._dispatcher.close();
}

/** `client.publish` awaited under a timeout. */
function publish(client, channel, data, timeoutMs = WAIT_MS) {
  return withTimeout(client.publish(channel, data), timeoutMs, `publish to ${channel} to be acknowledged`);
}

/** `client.connect()` (handshake + first connect) and wait until it uses `mode`. */
async function connectOver(client, probe, mode, timeoutMs = WAIT_MS) {
  client.connect();
  await probe.transport(mode, { timeoutMs });
}

/** Faye rejects with its own Error type (code, params, message); show it whole. */
function bayeuxError(reason) {
  if (reason && typeof reason.toString === 'function' && reason.code !== undefined) return reason.toString();
  return String(reason);
}

/** Our own redis-server on a free loopback port; never a redis we did not start. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const ready = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.includes('Ready to accept connections')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`redis-server exited (${code}) before it was ready:\n${out}`)));
    child.on('error', reject);
  });
  await withTimeout(ready, WAIT_MS, 'redis-server to be ready');
  return {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    async stop() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * Registers one describe block per selected server and per mode, each with its
 * own server process started in `before` and stopped in `after`. `register`
 * receives a target whose `url` is valid inside tests.
 */
function forEachTarget(title, register, serverOptions = {}) {
  for (const kind of selectedServers()) {
    for (const mode of MODES) {
      describe(`${title} [${kind}, ${mode}]`, () => {
        const target = {
          kind,
          mode,
          server: null,
          get url() {
            if (!this.server) throw new Error(`${kind} server did not start`);
            return this.server.url;
          },
        };
        before(async () => {
          target.server = await startServer(kind, serverOptions);
        });
        after(async () => {
          if (target.server) await target.server.stop();
        });
        register(target);
      });
    }
  }
}

module.exports = {
  startRedis,
  EventLog,
  abandon,
  LISTENING_LINE,
  MODES,
  Probe,
  SERVER_KINDS,
  Scope,
  TEST_TIMEOUT_MS,
  WAIT_MS,
  actionclusterBin,
  bayeuxError,
  connectOver,
  disconnect,
  faye,
  forEachTarget,
  freePort,
  isDelivery,
  publish,
  selectedServers,
  startServer,
  subscribe,
  withTimeout,
};
