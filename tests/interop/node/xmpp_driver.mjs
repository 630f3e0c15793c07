// Drives one @xmpp/client connection for the interop suite (wxtest/node.py).
//
// Commands arrive as JSON lines on stdin; events leave as JSON lines on
// stdout. Every command may carry an "id", echoed in its answer.
//
//   {"cmd":"start","service":"ws://…","domain":"…","username":"…","password":"…",
//    "resource":"…","resume":{"id":"…","h":N}}      → {"event":"online","jid":…}
//   {"cmd":"send","xml":"<message …/>"}               → {"event":"sent"}
//   {"cmd":"iq","type":"get","xml":"<query …/>","to":…} → {"event":"iq-result","xml":…}
//   {"cmd":"sm"}                                      → {"event":"sm","id":…,"inbound":N,"enabled":bool}
//   {"cmd":"kill"}    drops the connection without a goodbye (the library reconnects and resumes)
//   {"cmd":"stop"}    ends the session with </close> → {"event":"stopped"}
// Unprompted: {"event":"stanza","xml":…}, {"event":"resumed"}, {"event":"status","status":…},
//             {"event":"error","message":…}, {"event":"nonza","xml":…} (stream-level elements).

import WebSocketImpl from "ws";

// Node 20 has no global WebSocket (browsers and Node 22 do); @xmpp/websocket uses it.
globalThis.WebSocket ??= WebSocketImpl;

const { client, xml } = await import("@xmpp/client");
const { default: parse } = await import("@xmpp/xml/lib/parse.js");

let xmpp = null;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function start(cmd) {
  xmpp = client({
    service: cmd.service,
    domain: cmd.domain,
    username: cmd.username,
    password: cmd.password,
    resource: cmd.resource,
  });
  if (cmd.resume) {
    xmpp.streamManagement.id = cmd.resume.id;
    xmpp.streamManagement.inbound = cmd.resume.h;
  }
  xmpp.on("error", (err) => emit({ event: "error", message: String(err && (err.condition || err.message) || err) }));
  xmpp.on("status", (status) => emit({ event: "status", status }));
  xmpp.on("stanza", (stanza) => emit({ event: "stanza", xml: stanza.toString() }));
  xmpp.on("nonza", (el) => emit({ event: "nonza", xml: el.toString() }));
  xmpp.streamManagement.on("resumed", () => emit({ event: "resumed" }));
  xmpp.on("online", (jid) => emit({ event: "online", id: cmd.id, jid: jid.toString() }));
  xmpp.start().catch((err) => emit({ event: "error", id: cmd.id, message: String(err && (err.condition || err.message) || err) }));
}

async function handle(cmd) {
  switch (cmd.cmd) {
    case "start":
      return start(cmd);
    case "send":
      await xmpp.send(parse(cmd.xml));
      return emit({ event: "sent", id: cmd.id });
    case "iq": {
      const payload = parse(cmd.xml);
      const res = await xmpp.iqCaller.request(
        xml("iq", { type: cmd.type || "get", to: cmd.to }, payload),
      );
      return emit({ event: "iq-result", id: cmd.id, xml: res.toString() });
    }
    case "sm": {
      const sm = xmpp.streamManagement;
      return emit({ event: "sm", id: cmd.id, sm_id: sm.id, inbound: sm.inbound, enabled: sm.enabled });
    }
    case "kill": {
      // The underlying socket of the `ws` WebSocket: destroyed, no close frame.
      const ws = xmpp.socket && xmpp.socket.socket;
      (ws && ws._socket ? ws._socket : null)?.destroy();
      return emit({ event: "killed", id: cmd.id });
    }
    case "detach": {
      // Like kill, but the library must not reconnect by itself: another
      // client (another transport) resumes the session.
      xmpp.reconnect.stop();
      const ws = xmpp.socket && xmpp.socket.socket;
      (ws && ws._socket ? ws._socket : null)?.destroy();
      return emit({ event: "detached", id: cmd.id });
    }
    case "stop":
      await xmpp.stop();
      return emit({ event: "stopped", id: cmd.id });
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}

let buffered = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, nl);
    buffered = buffered.slice(nl + 1);
    if (!line.trim()) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit({ event: "error", message: `bad command: ${err}` });
      continue;
    }
    handle(cmd).catch((err) =>
      emit({ event: "error", id: cmd.id, message: String(err && (err.condition || err.message) || err) }),
    );
  }
});
process.stdin.on("end", () => process.exit(0));
