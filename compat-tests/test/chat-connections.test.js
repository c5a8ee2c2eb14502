'use strict';

// actionHero v5's browser chat, driven by the real npm faye client the way its
// client library (actionHeroWebSocket.js) did: publish to /_welcome to force the
// handshake, subscribe to /client/websocket/connection/{clientId}, then send
// {event: verb, ...} there and match answers by messageCount. Ours only: the
// node.js Faye server has no actionHero layer.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  EventLog, MODES, Scope, TEST_TIMEOUT_MS, WAIT_MS, bayeuxError, publish, selectedServers, startServer, subscribe, withTimeout,
} = require('./helpers');

const PREFIX = '/client/websocket/connection/';

/** One v5-style chat connection over a real faye client. */
class ChatConnection {
  constructor(scope, url, mode, name) {
    ({ client: this.client } = scope.client(url, mode));
    this.inbox = new EventLog(name);
    this.sent = 0;
  }

  async open() {
    await publish(this.client, '/_welcome', 'hello');
    this.id = this.client._dispatcher.clientId;
    assert.ok(this.id, 'the client handshook');
    this.channel = PREFIX + this.id;
    await subscribe(this.client, this.channel, (data) => this.inbox.push(data));
    return this.inbox.waitFor((m) => m.context === 'api', { what: 'the welcome' });
  }

  /** Sends a verb and waits for the answer carrying its messageCount. */
  async send(verb) {
    this.sent += 1;
    const count = this.sent;
    const from = this.inbox.length;
    await publish(this.client, this.channel, verb);
    return this.inbox.waitFor((m) => m.context === 'response' && m.messageCount === count, {
      from, what: `the answer to ${JSON.stringify(verb)}`,
    });
  }

  said(predicate, what) {
    return this.inbox.waitFor((m) => m.context === 'user' && predicate(m), { what });
  }
}

const ours = selectedServers().includes('ours');

for (const mode of MODES) {
  describe(`chat connections [ours, ${mode}]`, { skip: !ours && 'COMPAT_SERVERS excludes ours' }, () => {
    let server = null;
    before(async () => {
      server = await startServer('ours');
    });
    after(async () => {
      if (server) await server.stop();
    });

    it('v5 verbs over the connection channel: welcome, roomChange, say, roomView, errors', { timeout: TEST_TIMEOUT_MS }, async (t) => {
      const scope = new Scope(t);
      const alice = new ChatConnection(scope, server.url, mode, 'alice');
      const bob = new ChatConnection(scope, server.url, mode, 'bob');
      const welcome = await alice.open();
      assert.deepEqual(welcome, {
        welcome: 'Hello! Welcome to the actionHero api', room: 'defaultRoom', context: 'api', messageCount: 0,
      });
      await bob.open();

      assert.deepEqual(await alice.send({ event: 'setIP', ip: '127.0.0.1' }),
        { context: 'response', status: 'OK', messageCount: 1 });
      const changed = await alice.send({ event: 'roomChange', room: 'lobby' });
      assert.equal(changed.status, 'OK');
      assert.equal(changed.room, 'lobby');
      await bob.send({ event: 'roomChange', room: 'lobby' });
      const entered = await alice.said((m) => m.room === 'lobby' && m.from === bob.id, 'bob entering the lobby');
      assert.equal(entered.message, 'I have entered the room');

      await bob.send({ event: 'say', message: 'hello alice' });
      const said = await alice.said((m) => m.message === 'hello alice', "bob's message");
      assert.deepEqual(Object.keys(said).sort(), ['context', 'from', 'message', 'room', 'sentAt']);
      assert.equal(said.from, bob.id);
      assert.equal(said.room, 'lobby');

      const view = await alice.send({ event: 'roomView' });
      assert.deepEqual(view.roomStatus, { room: 'lobby', members: [alice.id, bob.id], membersCount: 2 });
      const details = await alice.send({ event: 'detailsView' });
      assert.equal(details.details.id, alice.id);
      assert.equal(details.details.remoteIP, '127.0.0.1');

      const unknown = await alice.send({ event: 'fly' });
      assert.equal(unknown.error, 'fly is not a known event');
      // The verbs were consumed: nothing but answers and chat reached the channel.
      assert.ok(alice.inbox.items.every((m) => m.context !== undefined && m.event === undefined), 'no verb echoed');

      // Another client cannot speak on alice's channel.
      const impersonation = bob.client.publish(alice.channel, { event: 'say', message: 'as alice' });
      await assert.rejects(withTimeout(impersonation, WAIT_MS, 'the refusal'), (reason) => {
        assert.equal(bayeuxError(reason), `403:${alice.channel}:Only its own client may publish on a connection channel`);
        return true;
      });
    });
  });
}
