// Socket.IO 4 with @socket.io/redis-adapter: a room per peer id, `io.to(id).emit(...)`.
// Connect with query peer=ID (websocket transport); emit("signal", {to, ...}) reaches ID's
// sockets on whichever node holds them, with `from` set. The adapter publishes every
// emit on a channel that every node pattern-subscribes to (`socket.io#/#*`), so each
// node receives every message: the "fan-out to every node" design.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { args, onStop } = require("./common");

const opt = args({ host: "127.0.0.1", port: 8080, backlog: 4096, redisUrl: "" });

async function main() {
  const server = http.createServer();
  const io = new Server(server, { transports: ["websocket"], serveClient: false, perMessageDeflate: false });
  let clients = [];
  if (opt.redisUrl) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: opt.redisUrl });
    const sub = pub.duplicate();
    pub.on("error", (e) => console.error("redis:", e.message));
    sub.on("error", (e) => console.error("redis:", e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
    clients = [pub, sub];
  }
  io.on("connection", (socket) => {
    const peer = socket.handshake.query.peer;
    if (typeof peer !== "string" || !peer) { socket.disconnect(true); return; }
    socket.join(peer);
    socket.on("signal", (msg) => {
      if (msg === null || typeof msg !== "object" || typeof msg.to !== "string") return;
      msg.from = peer;
      io.to(msg.to).emit("signal", msg);
    });
    socket.emit("welcome", { peer });
  });
  server.listen({ host: opt.host, port: opt.port, backlog: Number(opt.backlog) }, () =>
    console.log(`socket.io listening on ${opt.host}:${opt.port}${opt.redisUrl ? " (redis adapter)" : ""}`));
  onStop(() => { io.close(); for (const c of clients) c.disconnect().catch(() => {}); });
}
main().catch((e) => { console.error(e); process.exit(1); });
