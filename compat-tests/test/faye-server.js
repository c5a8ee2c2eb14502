'use strict';

// The reference server: node.js Faye (the npm package pinned in package.json)
// with its in-memory engine, started with the same command-line flags as our
// binary and printing the same listening line, so the helpers drive both alike.
//
//   node test/faye-server.js [--host 127.0.0.1] [--port 0] [--timeout 45] [--mount /faye]
//                            [--redis redis://127.0.0.1:PORT/0 --namespace faye --gc-interval 60]
//
// With --redis it uses the faye-redis 0.2.0 engine (the npm package pinned beside faye).

process.env.NODE_ENV = process.env.NODE_ENV || 'production';

const http = require('node:http');
const faye = require('faye');

function parseArgs(argv) {
  const options = { host: '127.0.0.1', port: 0, timeout: 45, mount: '/faye', redis: null, namespace: '', gcInterval: 60 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`missing value after ${flag}`);
    i += 1;
    switch (flag) {
      case '--host': options.host = value; break;
      case '--port': options.port = Number(value); break;
      case '--timeout': options.timeout = Number(value); break;
      case '--mount': options.mount = value; break;
      case '--redis': options.redis = value; break;
      case '--namespace': options.namespace = value; break;
      case '--gc-interval': options.gcInterval = Number(value); break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error(`bad --port ${options.port}`);
  }
  if (!(options.timeout > 0)) throw new Error(`bad --timeout ${options.timeout}`);
  return options;
}

const options = parseArgs(process.argv.slice(2));

const server = http.createServer((request, response) => {
  response.writeHead(404, { 'Content-Type': 'text/plain' });
  response.end('Not found');
});

const adapterOptions = { mount: options.mount, timeout: options.timeout };
if (options.redis) {
  const url = new URL(options.redis);
  adapterOptions.engine = {
    type: require('faye-redis'),
    host: url.hostname,
    port: Number(url.port || 6379),
    database: Number((url.pathname || '/0').slice(1) || 0),
    namespace: options.namespace,
    gc: options.gcInterval,
  };
}
const bayeux = new faye.NodeAdapter(adapterOptions);
bayeux.attach(server);

server.on('error', (err) => {
  console.error(`faye-reference: ${err.message}`);
  process.exit(1);
});

server.listen(options.port, options.host, () => {
  const { port } = server.address();
  process.stdout.write(`actioncluster listening on http://${options.host}:${port}${options.mount}\n`);
});

// Exit promptly on SIGTERM/SIGINT like our binary (held long-poll requests and
// websockets would otherwise keep a graceful close waiting).
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
