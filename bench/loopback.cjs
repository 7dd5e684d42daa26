// Preloaded into the Portkey gateway by bench/run.py (node --require bench/loopback.cjs ...):
// every TCP listen of the process goes to 127.0.0.1.
//
// Why: the gateway's Node entry point (src/start-server.ts in Portkey-AI/gateway, 1.15.2)
// calls @hono/node-server's serve({fetch, port}) with no hostname and has no option for one,
// so Node listens on every interface. The benchmark binds loopback only; it also checks the
// listening sockets from /proc before it sends a request (bench/sockets.py) and refuses to go
// on otherwise, so this file is the means and that check is the guarantee.
'use strict';

const net = require('node:net');

const LOOPBACK = '127.0.0.1';
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listenOnLoopback(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !(first instanceof net.Server)) {
    // listen(options[, callback]); a Unix socket path or an inherited handle is left alone.
    if (first.path === undefined && first.fd === undefined && first._handle === undefined) {
      args[0] = { ...first, host: LOOPBACK };
    }
  } else if (isPort(first) || first === undefined) {
    // listen([port][, host][, backlog][, callback]): whatever host was given is replaced.
    const rest = args.slice(1);
    if (rest.length > 0 && (typeof rest[0] === 'string' || rest[0] === undefined || rest[0] === null)) {
      rest.shift();
    }
    args = [first === undefined ? 0 : first, LOOPBACK, ...rest];
  }
  return originalListen.apply(this, args);
};
