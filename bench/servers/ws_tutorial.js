// The classic Node.js `ws` signaling tutorial server: every message is broadcast to every
// other open socket, and each client picks out the messages addressed to it.
// (The `ws` README's "Server broadcast" example, as most WebRTC tutorials use it.)
"use strict";
const { WebSocketServer, WebSocket } = require("ws");
const { args, onStop } = require("./common");

const opt = args({ host: "127.0.0.1", port: 8080, backlog: 4096 });
const wss = new WebSocketServer({ host: opt.host, port: opt.port, backlog: Number(opt.backlog), clientTracking: true });

wss.on("connection", (ws) => {
  ws.on("error", () => {});
  ws.on("message", (data, isBinary) => {
    wss.clients.forEach((client) => {
      if (client !== ws && client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    });
  });
});
wss.on("listening", () => console.log(`ws-tutorial listening on ${opt.host}:${opt.port}`));
onStop(() => wss.close());
