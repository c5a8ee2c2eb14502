'use strict';

// The reference for the spec tests: node.js Faye 1.4 (memory engine) mounted at /faye on
// 127.0.0.1, so the same Rust tests can be run against it to check that they describe
// Faye's behaviour (ACTIONCLUSTER_SPEC_REFERENCE=1 cargo test --test 'spec_*').
//
// Settings come from the environment: FAYE_TIMEOUT (seconds), FAYE_PING (seconds, optional),
// FAYE_MODULE (path of the faye package; default: the one compat-tests/ installs).
// It prints `LISTENING <port>` once bound, then one `EVENT <json array>` line per server event.
// `POST /__publish` with `{"channel": ..., "data": ...}` publishes in-process.
// An incoming extension rejects any message whose `ext.reject` is set, with that error text.

const http = require('node:http');
const path = require('node:path');

for (const name of Object.keys(process.env)) {
  if (/^(https?|all|no)_proxy$/i.test(name)) delete process.env[name];
}

const faye = require(process.env.FAYE_MODULE || path.resolve(__dirname, '../../compat-tests/node_modules/faye'));

const options = { mount: '/faye', timeout: Number(process.env.FAYE_TIMEOUT || 2) };
if (process.env.FAYE_PING) options.ping = Number(process.env.FAYE_PING);

const bayeux = new faye.NodeAdapter(options);

bayeux.addExtension({
  incoming(message, callback) {
    if (message.ext && typeof message.ext.reject === 'string') message.error = message.ext.reject;
    callback(message);
  },
});

for (const event of ['handshake', 'subscribe', 'unsubscribe', 'publish', 'disconnect']) {
  bayeux.on(event, (...args) => {
    process.stdout.write('EVENT ' + JSON.stringify([event, ...args.map((a) => (a === undefined ? null : a))]) + '\n');
  });
}

const server = http.createServer((request, response) => {
  if (request.method === 'POST' && request.url === '/__publish') {
    const chunks = [];
    request.on('data', (c) => chunks.push(c));
    request.on('end', () => {
      const { channel, data } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      bayeux.getClient().publish(channel, data).then(
        () => { response.writeHead(200); response.end('ok'); },
        (error) => { response.writeHead(500); response.end(String(error && error.message)); },
      );
    });
    return;
  }
  response.writeHead(404, { 'Content-Type': 'text/plain' });
  response.end('Not found');
});

bayeux.attach(server);

server.listen(0, '127.0.0.1', () => {
  process.stdout.write('LISTENING ' + server.address().port + '\n');
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
