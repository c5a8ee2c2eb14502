'use strict';

// The node.js Faye server the benchmarks compare against: a Faye 1.4 NodeAdapter mounted at
// /faye, with Faye's memory engine, or faye-redis 0.2.0 when given a redis URL. Both packages
// come from compat-tests/node_modules (required by path; `npm ci` there installs them).
// Run with NODE_ENV=production (scripts/bench-compare.sh does).
//
//   node benches/node/faye-server.js [--host 127.0.0.1] [--port 0] [--timeout 45]
//                                    [--redis redis://127.0.0.1:PORT/0] [--namespace faye]
//
// Prints `faye listening on http://HOST:PORT/faye` once bound; exits on SIGTERM/SIGINT.

const http = require('node:http');
const path = require('node:path');

const modules = path.resolve(__dirname, '../../compat-tests/node_modules');
const faye = require(path.join(modules, 'faye'));

const options = { host: '127.0.0.1', port: 0, timeout: 45, redis: null, namespace: 'faye' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const [flag, value] = [argv[i], argv[i + 1]];
  if (value === undefined) throw new Error(`missing value after ${flag}`);
  switch (flag) {
    case '--host': options.host = value; break;
    case '--port': options.port = Number(value); break;
    case '--timeout': options.timeout = Number(value); break;
    case '--redis': options.redis = value; break;
    case '--namespace': options.namespace = value; break;
    default: throw new Error(`unknown flag ${flag}`);
  }
}

const adapterOptions = { mount: '/faye', timeout: options.timeout };
if (options.redis) {
  const url = new URL(options.redis);
  adapterOptions.engine = {
    type: require(path.join(modules, 'faye-redis')),
    host: url.hostname,
    port: Number(url.port || 6379),
    database: Number((url.pathname || '/0').slice(1) || 0),
    namespace: options.namespace,
  };
}

const server = http.createServer((request, response) => {
  response.writeHead(404, { 'Content-Type': 'text/plain' });
  response.end('Not found');
});
new faye.NodeAdapter(adapterOptions).attach(server);
server.on('error', (error) => {
  console.error(`faye-server: ${error.message}`);
  process.exit(1);
});
server.listen(options.port, options.host, () => {
  const { port } = server.address();
  process.stdout.write(`faye listening on http://${options.host}:${port}/faye\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
