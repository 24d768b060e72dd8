// The emulated board's TCP/IP stack, host side: the real TCP connections (node:net) behind
// the VM's `socket` ROM module (hil/vmlib/socket.py).
//
// The VM runs in a worker and its socket calls are blocking, as on the chip: the worker
// posts one request on its MessagePort and waits (Atomics.wait on `signal`) until this side
// answers on the same port and stores the request's seq in signal[0]. This side answers at
// once (send, close, data already here) or later: when data, the peer's FIN or an error
// arrives, or the socket's timeout passes. The main thread keeps running meanwhile, so the
// watchdog, resets and the control channel work while the VM waits on the network.
//
// One SocketHost per boot: the connections belong to that VM and are closed when its worker
// is thrown away (reset, deep sleep, power cut), as the chip's are when it restarts.
// `radio` ({up}) outlives boots: the Wi-Fi link the host's fault injection takes down.
//
// Requests: {seq, op, ...}: resolve {host}, connect {host, port, timeout_ms, wait},
// recv {id, n, timeout_ms, peek}, send {id, hex}, close {id}; UDP: udp-open {},
// sendto {id, host, port, hex}, recvfrom {id, n, timeout_ms} (one datagram and its sender).
// `radio.udpForward` ({port: host port}) is the test network's NAT: a datagram the board
// sends to port P on the host goes to udpForward[P] (an NTP server on 123 needs root). Replies: {seq, ...} with the result,
// or {errno: "ECONNREFUSED"} (a name: the VM maps it to its errno module's number),
// {code: -202} (a resolver failure, as lwIP reports it), {interrupt: true} (Ctrl-C).
import dgram from "node:dgram";
import dns from "node:dns";
import net from "node:net";

// node's error codes -> the error the ESP32's lwIP reports for the same event
const ERRNO = {
  ECONNREFUSED: "ECONNREFUSED", ECONNRESET: "ECONNRESET", EPIPE: "ECONNRESET",
  ETIMEDOUT: "ETIMEDOUT", EHOSTUNREACH: "EHOSTUNREACH", ENETUNREACH: "EHOSTUNREACH",
  ECONNABORTED: "ECONNABORTED", EADDRNOTAVAIL: "EHOSTUNREACH",
};
const EAI_FAIL = -202;  // lwIP's getaddrinfo failure, as the port raises it: OSError(-202)

export class SocketHost {
  constructor(port, signal, radio) {
    this.port = port;
    this.signal = signal;
    this.radio = radio;
    this.socks = new Map();  // id -> {s, rx: [Buffer], rxLen, eof, err, connected}
    this.nextId = 1;
    this.pending = null;  // the one call the worker is blocked in: {seq, op, id, n, timer}
    port.on("message", (req) => this.request(req));
  }

  reply(seq, body) {
    if (this.pending && this.pending.seq === seq) {
      clearTimeout(this.pending.timer);
      this.pending = null;
    }
    this.port.postMessage({ seq, ...body });
    Atomics.store(this.signal, 0, seq);
    Atomics.notify(this.signal, 0);
  }

  request(req) {
    const { seq, op } = req;
    if (op === "resolve") this.resolve(req);
    else if (op === "connect") this.connect(req);
    else if (op === "recv") this.recv(req);
    else if (op === "send") this.send(req);
    else if (op === "close") { this.destroy(req.id); this.reply(seq, {}); }
    else if (op === "udp-open") this.udpOpen(req);
    else if (op === "sendto") this.sendto(req);
    else if (op === "recvfrom") this.recvfrom(req);
    else this.reply(seq, { errno: "EINVAL" });
  }

  resolve({ seq, host }) {
    if (net.isIPv4(host)) { this.reply(seq, { addr: host }); return; }
    if (!this.radio.up) { this.reply(seq, { code: EAI_FAIL }); return; }  // no DNS server
    dns.lookup(host, { family: 4 }, (err, addr) => {
      this.reply(seq, err ? { code: EAI_FAIL } : { addr });
    });
  }

  connect({ seq, host, port, timeout_ms: timeoutMs, wait }) {
    if (!this.radio.up) { this.reply(seq, { errno: "EHOSTUNREACH" }); return; }
    const id = this.nextId++;
    const entry = { s: net.connect({ host, port }), rx: [], rxLen: 0, eof: false, err: null, connected: false };
    this.socks.set(id, entry);
    entry.s.on("connect", () => {
      entry.connected = true;
      if (this.pending && this.pending.op === "connect" && this.pending.id === id) this.reply(this.pending.seq, { id });
    });
    entry.s.on("data", (chunk) => { entry.rx.push(chunk); entry.rxLen += chunk.length; this.wake(id); });
    entry.s.on("end", () => { entry.eof = true; this.wake(id); });
    entry.s.on("error", (e) => { entry.err = ERRNO[e.code] || "ECONNABORTED"; this.wake(id); });
    if (!wait) { this.reply(seq, { id, errno: "EINPROGRESS" }); return; }  // a non-blocking connect
    this.pending = { seq, op: "connect", id, timer: null };
    if (timeoutMs != null) {
      this.pending.timer = setTimeout(() => { this.destroy(id); this.reply(seq, { errno: "ETIMEDOUT" }); }, timeoutMs);
    }
  }

  udpOpen({ seq }) {
    const id = this.nextId++;
    const entry = { u: dgram.createSocket("udp4"), grams: [] };
    entry.u.on("message", (msg, from) => {
      entry.grams.push({ hex: msg.toString("hex"), host: from.address, port: from.port });
      this.wake(id);
    });
    entry.u.on("error", () => {});  // a datagram that could not go is lost, as UDP's are
    this.socks.set(id, entry);
    this.reply(seq, { id });
  }

  sendto({ seq, id, host, port, hex }) {
    const entry = this.socks.get(id);
    if (!entry || !entry.u) { this.reply(seq, { errno: "EBADF" }); return; }
    if (!this.radio.up) { this.reply(seq, { errno: "EHOSTUNREACH" }); return; }
    const data = Buffer.from(hex, "hex");
    const to = (this.radio.udpForward || {})[port] || port;
    entry.u.send(data, to, host);
    this.reply(seq, { n: data.length });
  }

  recvfrom({ seq, id, n, timeout_ms: timeoutMs }) {
    const entry = this.socks.get(id);
    if (!entry || !entry.u) { this.reply(seq, { errno: "EBADF" }); return; }
    if (entry.grams.length) { this.reply(seq, this.gram(entry, n)); return; }
    if (timeoutMs === 0) { this.reply(seq, { errno: "EAGAIN" }); return; }
    this.pending = { seq, op: "recvfrom", id, n, timer: null };
    if (timeoutMs != null) this.pending.timer = setTimeout(() => this.reply(seq, { errno: "ETIMEDOUT" }), timeoutMs);
  }

  gram(entry, n) {  // the oldest datagram, cut to n bytes (the rest is dropped, as lwIP does)
    const g = entry.grams.shift();
    return { hex: g.hex.slice(0, 2 * n), host: g.host, port: g.port };
  }

  // a connection event: answer the call the worker waits in, if it is about this socket
  wake(id) {
    const p = this.pending;
    if (!p || p.id !== id) return;
    const entry = this.socks.get(id);
    if (p.op === "recvfrom") { if (entry.grams.length) this.reply(p.seq, this.gram(entry, p.n)); return; }
    if (p.op === "connect" && entry.err) {
      this.destroy(id);
      this.reply(p.seq, { errno: entry.err });
    } else if (p.op === "recv") {
      const out = this.take(entry, p.n, p.peek);
      if (out) this.reply(p.seq, out);
    }
  }

  // what a recv gets now: bytes, EOF (""), the connection's error; null: nothing yet
  take(entry, n, peek = false) {
    if (entry.rxLen > 0) {
      const all = Buffer.concat(entry.rx);
      const got = all.subarray(0, n);
      const rest = peek ? all : all.subarray(got.length);
      entry.rx = rest.length ? [rest] : [];
      entry.rxLen = rest.length;
      return { hex: got.toString("hex") };
    }
    if (entry.err) return { errno: entry.err };
    if (entry.eof) return { hex: "" };
    return null;
  }

  recv({ seq, id, n, timeout_ms: timeoutMs, peek }) {
    const entry = this.socks.get(id);
    if (!entry) { this.reply(seq, { errno: "EBADF" }); return; }
    const out = this.take(entry, n, peek);
    if (out) { this.reply(seq, out); return; }
    if (timeoutMs === 0) { this.reply(seq, { errno: "EAGAIN" }); return; }
    this.pending = { seq, op: "recv", id, n, peek, timer: null };
    if (timeoutMs != null) this.pending.timer = setTimeout(() => this.reply(seq, { errno: "ETIMEDOUT" }), timeoutMs);
  }

  send({ seq, id, hex }) {
    const entry = this.socks.get(id);
    if (!entry) { this.reply(seq, { errno: "EBADF" }); return; }
    if (entry.err) { this.reply(seq, { errno: entry.err }); return; }
    if (entry.s.destroyed || !entry.s.writable) { this.reply(seq, { errno: "ECONNRESET" }); return; }
    const data = Buffer.from(hex, "hex");
    entry.s.write(data);  // into the send buffer, as lwIP's write returns
    this.reply(seq, { n: data.length });
  }

  destroy(id) {
    const entry = this.socks.get(id);
    if (!entry) return;
    if (entry.u) entry.u.close(); else entry.s.destroy();
    this.socks.delete(id);
  }

  // the Wi-Fi link went down: every connection is gone (reads and writes raise ECONNRESET)
  dropAll() {
    for (const [id, entry] of this.socks) {
      if (entry.u) continue;  // UDP has no connection to lose; sendto refuses while down
      entry.s.destroy();
      entry.err = "ECONNRESET";
      this.wake(id);
    }
  }

  // Ctrl-C on the serial line: a blocked socket call raises KeyboardInterrupt, as the
  // chip's does (it checks for pending exceptions between its 100 ms polls)
  interrupt() {
    if (!this.pending) return false;
    this.reply(this.pending.seq, { interrupt: true });
    return true;
  }

  // the worker is gone: so are its connections
  closeAll() {
    if (this.pending) clearTimeout(this.pending.timer);
    this.pending = null;
    for (const entry of this.socks.values()) { if (entry.u) entry.u.close(); else entry.s.destroy(); }
    this.socks.clear();
    this.port.close();
  }
}
