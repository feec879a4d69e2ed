// A raw one-hop relay by peer id on Node.js `ws`: the practical per-core ceiling.
// Connect to /?peer=ID; a text frame {"to": ID, ...} is forwarded unchanged to that peer.
// Sends {"type":"welcome"} on connect so the load generator can time "connected until welcome".
"use strict";
const { WebSocketServer } = require("ws");
const { args, onStop, WELCOME } = require("./common");

const opt = args({ host: "127.0.0.1", port: 8080, backlog: 4096 });
const peers = new Map(); // peer id -> its socket
const wss = new WebSocketServer({ host: opt.host, port: opt.port, backlog: Number(opt.backlog), clientTracking: false });

wss.on("connection", (ws, req) => {
  const peer = new URL(req.url, "http://x").searchParams.get("peer");
  if (!peer) { ws.close(1008, "peer required"); return; }
  peers.set(peer, ws);
  ws.on("error", () => {});
  ws.on("close", () => { if (peers.get(peer) === ws) peers.delete(peer); });
  ws.on("message", (data) => {
    let to;
    try { to = JSON.parse(data).to; } catch { return; }
    const target = peers.get(to);
    if (target !== undefined) target.send(data, { binary: false });
  });
  ws.send(WELCOME);
});
wss.on("listening", () => console.log(`ws-relay listening on ${opt.host}:${opt.port}`));
onStop(() => wss.close());
