'use strict';

// Access control with the real npm faye client: a client extension adds a JWT (signed
// here with node's own crypto: HS256, ES256 and RS256) to the handshake's ext.auth.token; the
// node's channel rules come from a --config TOML file. Allowed and forbidden subscribes and
// publishes, no ext.auth in delivered messages, an expired token ending the session and the
// client coming back with a fresh one, and the server publish API.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const {
  EventLog, MODES, Scope, TEST_TIMEOUT_MS, WAIT_MS, abandon, bayeuxError, connectOver, publish, startServer, subscribe,
  withTimeout,
} = require('./helpers');

const SECRET = 'compat-token-secret';
const API_KEY = 'compat-api-key';

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

function hs256(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(sig)}`;
}

/** An ES256 (P-256, raw r|s signature) or RS256 (PKCS#1 v1.5) JWT. */
function signWith(alg, claims, privateKey) {
  const head = b64url(JSON.stringify({ alg, typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const options = alg === 'ES256' ? { key: privateKey, dsaEncoding: 'ieee-p1363' } : privateKey;
  const sig = crypto.sign('sha256', Buffer.from(`${head}.${body}`), options);
  return `${head}.${body}.${b64url(sig)}`;
}

/** The extension an app adds to its faye client: a token on every handshake, from `getToken`. */
function tokenExtension(getToken) {
  return {
    outgoing(message, callback) {
      if (message.channel === '/meta/handshake') {
        message.ext = message.ext || {};
        message.ext.auth = { token: getToken() };
      }
      callback(message);
    },
  };
}

const RULES = `
[[rules]]
channel = "/users/{sub}/**"
subscribe = "claim:sub"
publish = "server"

[[rules]]
channel = "/announcements"
subscribe = "token"
publish = "server"
`;

function writeConfig(text) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'actioncluster-access-'));
  const file = path.join(dir, 'node.toml');
  fs.writeFileSync(file, text);
  return file;
}

async function expectRefused(promise, error) {
  await assert.rejects(withTimeout(promise, WAIT_MS, 'the refusal'), (err) => {
    assert.equal(bayeuxError(err), error);
    return true;
  });
}

describe('access control: tokens and channel rules from a config file', () => {
  let server;

  before(async () => {
    const config = writeConfig(`token-secret = "${SECRET}"\napi-key = "${API_KEY}"\n${RULES}`);
    server = await startServer('ours', { timeout: 2, extraArgs: ['--config', config] });
  });

  after(async () => {
    if (server) await server.stop();
  });

  for (const mode of MODES) {
    it(`allowed and forbidden subscribes and publishes [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: alice, probe } = scope.client(server.url, mode);
      alice.addExtension(tokenExtension(() => hs256({ sub: 'alice', exp: now() + 600 })));
      const inbox = new EventLog('alice inbox');
      await subscribe(alice, '/users/alice/inbox', (data) => inbox.push(data));
      await subscribe(alice, '/announcements', () => {});
      await probe.transport(mode);
      await expectRefused(alice.subscribe('/users/bob/inbox'), '403:/users/bob/inbox:Forbidden channel');
      await expectRefused(alice.subscribe('/**'), '403:/**:Forbidden channel');
      await expectRefused(alice.publish('/announcements', { x: 1 }), '403:/announcements:Forbidden channel');
      await expectRefused(alice.publish('/users/alice/inbox', { x: 1 }), '403:/users/alice/inbox:Forbidden channel');
      await publish(alice, `/chat/${mode}`, { open: true });

      // The app's backend publishes to alice's private channel through the server API.
      const res = await fetch(`${server.url.replace(/\/[^/]*$/, '')}/server/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ channel: '/users/alice/inbox', data: { from: 'backend' } }),
      });
      assert.equal(res.status, 200);
      assert.equal((await res.json()).successful, true);
      const got = await inbox.waitForCount(1);
      assert.deepEqual(got, [{ from: 'backend' }]);
      const refused = await fetch(`${server.url.replace(/\/[^/]*$/, '')}/server/publish`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ channel: '/users/alice/inbox', data: { from: 'anyone' } }),
      });
      assert.equal(refused.status, 401);
    });

    it(`a handshake without a token is refused and the client stops [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client, probe } = scope.client(server.url, mode);
      client.connect();
      const reply = await probe.meta('/meta/handshake');
      assert.equal(reply.successful, false);
      assert.equal(reply.error, '401::Unauthorized');
      assert.equal(reply.advice.reconnect, 'none');
      abandon(client);
    });

    it(`a delivered message carries no ext.auth [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: sub, probe: subProbe } = scope.client(server.url, mode);
      sub.addExtension(tokenExtension(() => hs256({ sub: 'sub', exp: now() + 600 })));
      await subscribe(sub, `/leak/${mode}`, () => {});
      await subProbe.transport(mode);
      const { client: pub, probe: pubProbe } = scope.client(server.url, mode);
      const token = hs256({ sub: 'pub', exp: now() + 600 });
      pub.addExtension({
        // A careless app that sends its token with every message.
        outgoing(message, callback) {
          message.ext = { ...(message.ext || {}), auth: { token }, trace: 'keep-me' };
          callback(message);
        },
      });
      await connectOver(pub, pubProbe, mode);
      await publish(pub, `/leak/${mode}`, { n: 1 });
      const [delivered] = await subProbe.deliveries.waitForCount(1);
      assert.deepEqual(delivered.ext, { trace: 'keep-me' });
      assert.ok(!JSON.stringify(delivered).includes(token));
    });

    it(`an expired token ends the session; the client comes back with a fresh one [${mode}]`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client, probe } = scope.client(server.url, mode);
      let issued = 0;
      client.addExtension(tokenExtension(() => {
        issued += 1;
        // The first token lives 2 seconds; the ones after it ten minutes.
        return hs256({ sub: 'erin', exp: now() + (issued === 1 ? 2 : 600) });
      }));
      const inbox = new EventLog('erin inbox');
      await subscribe(client, '/users/erin/inbox', (data) => inbox.push(data));
      await probe.transport(mode);
      const firstId = client._dispatcher.clientId;
      const expired = await probe.incoming.waitFor(
        (m) => m.channel === '/meta/connect' && m.error === '401::Token expired',
        { what: 'the connect refused once the token expired', timeoutMs: 15_000 });
      assert.equal(expired.advice.reconnect, 'handshake');
      await probe.incoming.waitFor(
        (m) => m.channel === '/meta/subscribe' && m.successful && m.clientId !== firstId,
        { what: 'the resubscription after the fresh handshake', timeoutMs: 15_000 });
      assert.equal(issued, 2, 'one fresh token for the new handshake');
      const res = await fetch(`${server.url.replace(/\/[^/]*$/, '')}/server/publish`, {
        method: 'POST',
        headers: { authorization: `Bearer ${API_KEY}` },
        body: JSON.stringify({ channel: '/users/erin/inbox', data: { after: 'refresh' } }),
      });
      assert.equal((await res.json()).successful, true);
      assert.deepEqual(await inbox.waitForCount(1), [{ after: 'refresh' }]);
    });
  }
});

for (const kind of ['ES256', 'RS256']) {
  describe(`access control: ${kind} tokens checked with a public key file`, () => {
    let server;
    let privateKey;

    before(async () => {
      const pair = kind === 'ES256'
        ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
        : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      privateKey = pair.privateKey;
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'actioncluster-pubkey-'));
      const pem = path.join(dir, 'public.pem');
      fs.writeFileSync(pem, pair.publicKey.export({ type: 'spki', format: 'pem' }));
      server = await startServer('ours', { timeout: 2, extraArgs: ['--token-public-key', pem] });
    });

    after(async () => {
      if (server) await server.stop();
    });

    it('a token signed with the private key is accepted, an HS256 one is not', { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const { client: good, probe: goodProbe } = scope.client(server.url, 'websocket');
      good.addExtension(tokenExtension(() => signWith(kind, { sub: 'ed', exp: now() + 600 }, privateKey)));
      await subscribe(good, '/keys/room', () => {});
      await goodProbe.transport('websocket');
      const { client: bad, probe: badProbe } = scope.client(server.url, 'websocket');
      bad.addExtension(tokenExtension(() => hs256({ sub: 'ed', exp: now() + 600 })));
      bad.connect();
      const reply = await badProbe.meta('/meta/handshake');
      assert.equal(reply.error, '401::Unauthorized');
      abandon(bad);
    });
  });
}
