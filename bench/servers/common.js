// Shared by the Node.js baseline servers: argument parsing and a clean exit on SIGTERM/SIGINT.
"use strict";

function args(defaults) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    out[key] = argv[i + 1];
  }
  out.port = Number(out.port);
  return out;
}

function onStop(fn) {
  for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => { try { fn(); } finally { process.exit(0); } });
}

module.exports = { args, onStop, WELCOME: '{"type":"welcome"}' };
