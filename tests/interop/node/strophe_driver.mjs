// Drives a real JavaScript XMPP client library (strophe.js) for the interop
// tests: JSON commands on stdin, one JSON event per line on stdout, the wire
// on stderr (the test's transcript).
//
// Commands:
//   {"op": "connect", "url": "http://…/http-bind", "jid": "…", "password": "…"}
//   {"op": "send", "xml": "<message …/>"}
//   {"op": "iq", "xml": "<iq type='get' id='x' …/>"}   -> {"event": "iq", …}
//   {"op": "disconnect"}
//   {"op": "state"}                                   -> {"event": "state", sid, rid}
// Events: {"event": "status", "status": "CONNECTED", "condition": …},
//         {"event": "stanza", "xml": "…"} for every message and presence,
//         {"event": "iq", "id", "type", "xml"}, {"event": "error", "message"}.

import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
// stdout carries only our JSON events: the library's own logging goes to
// stderr with the wire.
for (const level of ["log", "debug", "info", "warn", "error"]) {
  console[level] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}
// strophe.js's Node build brings the DOM (xmldom) and WebSocket (ws); BOSH
// also needs XMLHttpRequest, which Node lacks. xhr2 emulates it but has no
// `responseXML`, which browsers fill in for XML answers and strophe.js
// reads, so this adds it the way a browser does.
const XHR2 = require("xhr2");
const { Strophe } = require("strophe.js");
globalThis.XMLHttpRequest = class extends XHR2 {
  get responseXML() {
    if (this.readyState !== 4 || !this.responseText) return null;
    return new DOMParser().parseFromString(this.responseText, "text/xml");
  }
};

const statusNames = Object.fromEntries(
  Object.entries(Strophe.Status).map(([k, v]) => [v, k]),
);

function emit(ev) {
  process.stdout.write(JSON.stringify(ev) + "\n");
}

function parse(xml) {
  const doc = new DOMParser().parseFromString(xml, "text/xml");
  return doc.documentElement;
}

let conn = null;

function connect(cmd) {
  conn = new Strophe.Connection(cmd.url, { keepalive: false });
  conn.rawInput = (data) => process.stderr.write(`RECV ${data}\n`);
  conn.rawOutput = (data) => process.stderr.write(`SEND ${data}\n`);
  const stanza = (el) => {
    emit({ event: "stanza", xml: Strophe.serialize(el) });
    return true;
  };
  conn.addHandler(stanza, null, "message");
  conn.addHandler(stanza, null, "presence");
  conn.connect(cmd.jid, cmd.password, (status, condition) => {
    emit({ event: "status", status: statusNames[status] ?? String(status), condition: condition ?? null });
  });
}

function iq(cmd) {
  const el = parse(cmd.xml);
  const id = el.getAttribute("id");
  const done = (res) =>
    emit({ event: "iq", id, type: res ? res.getAttribute("type") : "timeout", xml: res ? Strophe.serialize(res) : null });
  conn.sendIQ(el, done, done, 15000);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
    switch (cmd.op) {
      case "connect":
        connect(cmd);
        break;
      case "send":
        conn.send(parse(cmd.xml));
        break;
      case "iq":
        iq(cmd);
        break;
      case "disconnect":
        conn.disconnect("bye");
        break;
      case "state":
        emit({ event: "state", sid: conn._proto.sid ?? null, rid: conn._proto.rid ?? null });
        break;
      default:
        emit({ event: "error", message: `unknown op ${cmd.op}` });
    }
  } catch (e) {
    emit({ event: "error", message: String(e && e.stack ? e.stack : e) });
  }
});
rl.on("close", () => process.exit(0));
