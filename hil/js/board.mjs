// The emulated board's "hardware": the serial line, resets and the flash that outlives a
// VM. The MicroPython VM runs in a worker thread (vm_worker.mjs), one per boot.
//
//   node board.mjs CONFIG.json
//
// stdin/stdout carry the board's USB serial (REPL) bytes, raw. CONFIG names the
// micropython.mjs, the heap, the board, the host folder mirroring the flash, and the
// folder of ROM modules. stderr carries one JSON object a line of events for the host.
// The socket on fd CONFIG.controlFd carries JSON lines both ways: requests from the host
// ({id, op: set|get|uart-in|reset|power-cycle, ...}) and their replies, the board's
// UART output ({ev: "uart", uart, hex}) and the levels the firmware drives on its output
// pins ({ev: "pin", pin, level}: a modem on the host watches its PWRKEY this way).
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { MessageChannel, Worker } from "node:worker_threads";
import { SocketHost } from "./sockets.mjs";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const workerUrl = new URL("./vm_worker.mjs", import.meta.url);
const event = (obj) => process.stderr.write(JSON.stringify(obj) + "\n");

function readHostTree(root, prefix = "") {
  const out = {};
  if (!root || !fs.existsSync(root)) return out;
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const host = path.join(root, entry.name);
    // a write-through a reset cut short (vm_worker.mjs): the file it was replacing stands
    if (entry.name.endsWith(".polekit-partial")) { fs.rmSync(host, { force: true }); continue; }
    const vm = prefix + "/" + entry.name;
    if (entry.isDirectory()) { out[vm + "/"] = new Uint8Array(0); Object.assign(out, readHostTree(host, vm)); }
    else out[vm] = fs.readFileSync(host);
  }
  return out;
}

let flash = readHostTree(config.fsDir);
const rom = readHostTree(config.romDir, "/rom");

// The VM's worker writes the flash through to the host folder as the firmware closes,
// renames and removes files (vm_worker.mjs, writeThrough): what it sends here (before a
// reset, at idle) is kept only for a board without a folder. Each boot starts from the
// folder, so a watchdog reset or a power cut keeps every file the firmware had closed.
function persist(files) {
  if (!config.fsDir) flash = files;
}

function flashAtBoot() {
  return config.fsDir ? readHostTree(config.fsDir) : flash;
}

const RESET = { PWRON: 1, HARD: 2, WDT: 3, DEEPSLEEP: 4, SOFT: 5 };
// machine.wake_reason(): ESP-IDF's esp_sleep_source_t (0: not a wake from sleep)
const WAKE = { NONE: 0, EXT0: 2, EXT1: 3, TIMER: 4 };
let resetCause = RESET.PWRON;
let wakeReason = WAKE.NONE;
let rtcMemory = "";  // RTC slow memory (hex): kept across deep sleep and resets, not power cuts
// the RTC (ms since 2000-01-01 = Date.now() + rtcOffsetMs): 0 at power-on, running across
// deep sleep and resets, lost with the power (as rtcMemory); machine.RTC().datetime() sets it
let rtcOffsetMs = -Date.now();
let sleeping = null;  // while the chip is in deep sleep: what wakes it (see deepSleep)
let wakeEvents = [];  // [path, value] that happened while it slept, replayed once at boot
let bootQueue = [];  // control requests that came while the VM was booting
let worker = null;
let wdt = null;  // {timeoutMs, fedAt} once the firmware starts the watchdog

const control = config.controlFd >= 0 ? new net.Socket({ fd: config.controlFd, readable: true, writable: true }) : null;
const toHost = (obj) => { if (control) control.write(JSON.stringify(obj) + "\n"); };
const waiting = new Map();  // control request id -> the request, while the worker answers
// the physical world outlives every boot: values the host set are replayed into each VM
const physics = new Map();
let rawMode = false;
let busySince = 0;
let pending = [];
let booted = false;
let probe = [];  // bytes that may be the start of mpremote's raw-paste probe
// the Wi-Fi link (a fault the host sets with wifi.up) and the TCP connections of this boot
const radio = { up: true };
let sockets = null;

// The UARTs' receive FIFOs live in memory shared with the VM's worker, filled here as bytes
// arrive: firmware blocked in a UART read (its `timeout`, as on the chip) sees them at once,
// which a message to a busy worker would not. Per UART: a write and a read counter, a ring.
const UARTS = 3, UART_RING = 16384;
const uartShared = new SharedArrayBuffer(4 * 2 * UARTS + UARTS * UART_RING);
const uartCounters = new Int32Array(uartShared, 0, 2 * UARTS);
const uartRing = new Uint8Array(uartShared, 4 * 2 * UARTS);
function uartIn(id, hex) {
  if (!worker || !(id >= 0 && id < UARTS)) return;  // asleep or no such UART: bytes lost
  const bytes = Buffer.from(hex, "hex");
  let w = Atomics.load(uartCounters, 2 * id);
  const r = Atomics.load(uartCounters, 2 * id + 1);
  for (const b of bytes) {
    if (w - r >= UART_RING) break;  // the FIFO is full: the rest is lost, as on the chip
    uartRing[id * UART_RING + (w % UART_RING)] = b;
    w++;
  }
  Atomics.store(uartCounters, 2 * id, w);
  Atomics.notify(uartCounters, 2 * id);
}
function uartReset() {  // a new boot starts with empty FIFOs
  for (let id = 0; id < UARTS; id++) Atomics.store(uartCounters, 2 * id + 1, Atomics.load(uartCounters, 2 * id));
}

function boot({ raw = false, runMain = true, banner = "" } = {}) {
  booted = false;
  busySince = 0;  // whatever the last VM was doing died with it
  if (banner) process.stdout.write(banner);
  wdt = null;  // a reset stops the watchdog, as on the chip
  uartReset();
  const net = new MessageChannel();
  const netSignal = new Int32Array(new SharedArrayBuffer(4));
  worker = new Worker(workerUrl, {
    workerData: { mjs: config.mjs, heapBytes: config.heapBytes, romAllowance: config.romAllowance,
                  files: flashAtBoot(), fsDir: config.fsDir || null, libFiles: rom, rawRepl: raw, runMain: runMain && !raw,
                  board: config.board, chip: config.chip,
                  boardDef: { ...config.boardDef, reset_cause: resetCause, wake_reason: wakeReason,
                              rtc_memory: rtcMemory, rtc_offset_ms: rtcOffsetMs },
                  physics: Object.fromEntries(physics), events: wakeEvents, uartShared,
                  uartRingBytes: UART_RING, netPort: net.port2, netSignal },
    transferList: [net.port2],
  });
  wakeEvents = [];
  const w = worker;
  const host = sockets = new SocketHost(net.port1, netSignal, radio);
  w.on("exit", () => host.closeAll());  // reset, deep sleep, power cut: its connections end
  w.on("message", (msg) => {
    if (w !== worker) return;
    if (msg.type === "out") process.stdout.write(msg.data);
    else if (msg.type === "idle") {
      busySince = 0;
      if (interruptTimer) { clearTimeout(interruptTimer); interruptTimer = null; typedAfterInterrupt = null; }
      scheduleSnapshot();
    }
    else if (msg.type === "booted") {
      booted = true; event({ event: "booted", raw, wakeReason }); flush();
      const queued = bootQueue; bootQueue = [];
      queued.forEach(toWorker);
    }
    else if (msg.type === "rtc-memory") rtcMemory = msg.hex;
    else if (msg.type === "rtc-set") rtcOffsetMs = msg.ms;
    else if (msg.type === "files") { persist(msg.files); if (afterSnapshot) afterSnapshot(); }
    else if (msg.type === "reset") softReset();
    else if (msg.type === "log") event({ event: "vm-log", text: msg.text });
    else if (msg.type === "uart") toHost({ ev: "uart", uart: msg.id, hex: msg.hex });
    else if (msg.type === "pin") toHost({ ev: "pin", pin: msg.pin, level: msg.level });
    else if (msg.type === "radio") toHost({ ev: "radio", text: msg.text });
    else if (msg.type === "uart-config") toHost({ ev: "uart-config", uart: msg.id, baud: msg.baud });
    else if (msg.type === "control-reply") { waiting.delete(msg.id); toHost({ reply: msg.id, ...msg, type: undefined }); }
    else if (msg.type === "rom-bytes") event({ event: "rom-bytes", bytes: msg.bytes });
    else if (msg.type === "wdt-start") { wdt = { timeoutMs: msg.ms, fedAt: Date.now() }; event({ event: "wdt-start", ms: msg.ms }); }
    else if (msg.type === "wdt-feed") { if (wdt) wdt.fedAt = Date.now(); }
    else if (msg.type === "reset-request") {
      if (msg.kind === "soft") softReset();
      else { busySince = 0; hardReset("machine.reset", RESET.HARD); }  // the worker saved its files just before
    }
    else if (msg.type === "deepsleep") deepSleep(msg.spec);
  });
  w.on("error", (err) => { event({ event: "vm-crash", error: String(err) }); if (w === worker) hardReset("crash"); });
}

// a board without a folder keeps its flash here: a snapshot shortly after the VM goes idle
// (a file copy is many small commands: one snapshot after the burst, not one per command);
// a board with one has it written through by the worker (persist, above)
let snapshotTimer = null;
function scheduleSnapshot() {
  if (snapshotTimer || config.fsDir) return;
  snapshotTimer = setTimeout(() => {
    snapshotTimer = null;
    if (worker && booted) worker.postMessage({ type: "snapshot" });
  }, 300);
}

// the watchdog lives in the hardware: a VM stuck in a loop cannot stop it from biting
setInterval(() => {
  if (wdt && Date.now() - wdt.fedAt > wdt.timeoutMs) {
    event({ event: "wdt-reset", timeoutMs: wdt.timeoutMs });
    hardReset("watchdog", RESET.WDT);
  }
}, 20);

// before a reset the host asked for, a board without a folder saves the flash the VM has
// (a hung VM's last writes are lost; with a folder every closed file is already there)
let afterSnapshot = null;
function withSnapshot(then) {
  if (!worker || !booted || busySince || config.fsDir) { then(); return; }
  const timer = setTimeout(() => { afterSnapshot = null; then(); }, 1000);
  afterSnapshot = () => { clearTimeout(timer); afterSnapshot = null; then(); };
  worker.postMessage({ type: "snapshot" });
}

// Deep sleep: the CPU and its RAM are off (the VM is thrown away; the flash was saved just
// before, RTC memory lives here), and the board watches what wakes the chip: the timer
// (spec.ms; null: none), EXT0 (one RTC pin at a level) and EXT1 (pins: all low, or any high).
// The devices on wake pins said how the world moves them (spec.rules, from _vdev.py):
//   {kind: "level", path, pin, invert}: the pin is the value (0/1) set on `path`, inverted
//     or not (a contact, the manhole cover);
//   {kind: "bucket", device, pin, level, tip_mm, fill_mm, rate}: a tipping bucket filling at
//     device.rate_mm_h; each tip (or a device.tips set) holds the pin at `level`.
// A wake pin already at its wake level wakes the chip at once, as ext0/ext1 do.
function deepSleep(spec) {
  worker.terminate();
  worker = null;
  booted = false;
  // asked while it booted, or sent to a VM that went to sleep before reading it: the world
  // changes all the same
  const queued = [...bootQueue, ...waiting.values()];
  bootQueue = [];
  waiting.clear();
  event({ event: "deepsleep", ms: spec.ms });
  const levels = new Map(Object.entries(spec.levels).map(([p, v]) => [Number(p), v]));
  sleeping = { spec, levels, timers: [], buckets: [] };
  // a time given arms the timer, 0 included (it wakes at once); null: the pins only
  if (typeof spec.ms === "number") sleeping.timers.push(setTimeout(() => wakeUp(WAKE.TIMER), Math.max(0, spec.ms)));
  for (const rule of spec.rules) {
    if (rule.kind === "bucket") {
      const b = { ...rule, since: Date.now(), timer: null };
      const rate = physics.get(`${rule.device}.rate_mm_h`);
      if (rate !== undefined) b.rate = rate;
      sleeping.buckets.push(b);
      scheduleTip(b);
    }
  }
  // tips the gauge had queued when the chip went down come now, while it sleeps
  for (const b of [...sleeping.buckets]) if (b.pending > 0 && sleeping) tipWhileAsleep(b, b.pending);
  checkWake();
  for (const req of queued) toWorker(req);
}

function wakeLevelReached() {
  const { ext0, ext1 } = sleeping.spec;
  const level = (pin) => sleeping.levels.get(pin) ?? 0;
  if (ext0 && level(ext0[0]) === ext0[1]) return WAKE.EXT0;
  if (ext1 && ext1[0].length) {
    const hit = ext1[1] ? ext1[0].some((p) => level(p) === 1) : ext1[0].every((p) => level(p) === 0);
    if (hit) return WAKE.EXT1;
  }
  return WAKE.NONE;
}

function checkWake() {
  const why = sleeping && wakeLevelReached();
  if (why) wakeUp(why);
}

// the bucket's fill since it was last looked at; the world's state outlives the VM in physics
function fillBucket(b) {
  const now = Date.now();
  b.fill_mm += (b.rate || 0) * (now - b.since) / 3600000;
  b.since = now;
}

function scheduleTip(b) {
  if (b.timer) clearTimeout(b.timer);
  b.timer = null;
  if (!(b.rate > 0)) return;
  const ms = Math.max(0, (b.tip_mm - b.fill_mm) / b.rate * 3600000);
  b.timer = setTimeout(() => { fillBucket(b); b.fill_mm = Math.max(0, b.fill_mm - b.tip_mm); tipWhileAsleep(b, 1); }, ms);
}

function tipWhileAsleep(b, n) {
  // the contact closes now: the VM that wakes finds it closed and the rest to come
  wakeEvents.push([`${b.device}.tips`, n]);
  sleeping.levels.set(b.pin, b.level);
  checkWake();
  if (sleeping) {  // the pin is not a wake source: the tip goes by unseen, as on the chip
    wakeEvents = wakeEvents.filter(([p]) => p !== `${b.device}.tips`);
    sleeping.levels.set(b.pin, b.level ? 0 : 1);
    scheduleTip(b);
  }
}

function wakeUp(why) {
  if (!sleeping) return;
  for (const t of sleeping.timers) clearTimeout(t);
  for (const b of sleeping.buckets) {
    if (b.timer) clearTimeout(b.timer);
    fillBucket(b);
    physics.set(`${b.device}.fill_mm`, Math.min(b.fill_mm, b.tip_mm));
  }
  sleeping = null;
  resetCause = RESET.DEEPSLEEP;
  wakeReason = why;
  rawMode = false;
  event({ event: "wake", reason: why });
  boot();
}

// a control request while the chip sleeps: the world changes, the chip hears nothing unless
// a wake pin moves to its wake level
function whileAsleep(req) {
  if (req.op !== "set") {
    toHost({ reply: req.id, error: "the board is asleep (deep sleep): nothing answers until it wakes" });
    return;
  }
  toHost({ reply: req.id, ok: true });
  const [device, quantity] = req.path.split(".");
  const bucket = sleeping.buckets.find((b) => b.device === device);
  if (bucket && quantity === "tips") { tipWhileAsleep(bucket, Number(req.value)); return; }
  if (/\.(press|tips)$/.test(req.path)) return;  // over before the chip wakes: unseen, as on the chip
  if (/\.spike$/.test(req.path)) { wakeEvents.push([req.path, req.value]); return; }
  physics.set(req.path, req.value);
  if (bucket && quantity === "rate_mm_h") { fillBucket(bucket); bucket.rate = Number(req.value); scheduleTip(bucket); }
  for (const rule of sleeping.spec.rules) {
    if (rule.kind === "level" && rule.path === req.path) sleeping.levels.set(rule.pin, (req.value ? 1 : 0) ^ (rule.invert ? 1 : 0));
  }
  checkWake();
}

function softReset() {
  resetCause = RESET.SOFT;
  wakeReason = WAKE.NONE;
  const raw = rawMode;
  worker.terminate();
  event({ event: "soft-reset", raw });
  boot({ raw, banner: raw ? "soft reboot\r\n" : "MPY: soft reboot\r\n" });
}

function cancelSleep() {
  if (!sleeping) return;
  for (const t of sleeping.timers) clearTimeout(t);
  for (const b of sleeping.buckets) if (b.timer) clearTimeout(b.timer);
  sleeping = null;
}

const crashes = [];
function hardReset(why, cause = RESET.HARD) {
  if (worker) worker.terminate();
  cancelSleep();
  wakeReason = WAKE.NONE;
  if (why === "host") { rtcMemory = ""; rtcOffsetMs = -Date.now(); }  // EN: the RTC domain too
  resetCause = cause;
  if (why === "crash") {
    crashes.push(Date.now());
    while (crashes.length && Date.now() - crashes[0] > 10000) crashes.shift();
    if (crashes.length >= 3) {  // a boot loop: stop, as a board stuck in a crash would
      event({ event: "crash-loop" });
      worker = null;
      return;
    }
  }
  rawMode = false;
  event({ event: "hard-reset", why });
  boot({ banner: "\r\n" });
}

function flush() {
  if (!booted || pending.length === 0) return;
  const data = Uint8Array.from(pending);
  pending = [];
  if (!busySince) busySince = Date.now();
  worker.postMessage({ type: "chars", data });
}

function fromHost(bytes) {
  if (!worker) return;  // asleep or stopped: the chip does not hear its UART
  for (const c of bytes) {
    if (c === 0x03 && sockets && sockets.interrupt()) continue;  // KeyboardInterrupt in a socket call
    // mpremote probes raw-paste mode with \x05 A \x01; the port's raw-paste hangs the VM,
    // so answer "not supported" (R\x00) and mpremote uses the plain raw REPL
    if (rawMode && (c === 0x05 || probe.length)) {
      probe.push(c);
      const want = [0x05, 0x41, 0x01];
      if (probe.every((b, i) => b === want[i])) {
        if (probe.length === 3) { process.stdout.write("R\x00"); probe = []; }
        continue;
      }
      probe.forEach(typeIn);
      probe = [];
      continue;
    }
    if (c === 0x01) rawMode = true;
    else if (c === 0x02) rawMode = false;
    if (c === 0x03 && busySince && Date.now() - busySince > BUSY_MS) {
      interruptBusyVm();
      continue;
    }
    if (c === 0x03 && busySince && !interruptTimer) {
      // busy only a moment: the VM may take the Ctrl-C itself; if it is still in the same
      // work a moment later, it never will (code that never yields). What the host types
      // after the Ctrl-C (mpremote's Ctrl-A) goes to the restarted VM.
      const session = busySince;
      typedAfterInterrupt = [];
      interruptTimer = setTimeout(() => {
        const typed = typedAfterInterrupt;
        interruptTimer = null;
        typedAfterInterrupt = null;
        if (busySince !== session) return;
        interruptBusyVm();
        pending = typed;
        for (const t of typed) rawMode = t === 0x01 ? true : t === 0x02 ? false : rawMode;
      }, BUSY_MS);
      pending.push(c);
      continue;
    }
    typeIn(c);
  }
  flush();
}

function typeIn(c) {  // a byte for the VM's REPL, sent on at the next flush()
  pending.push(c);
  if (typedAfterInterrupt) typedAfterInterrupt.push(c);
}

// A WebAssembly VM cannot take an interrupt while it runs Python code, as a chip would:
// a Ctrl-C to a VM busy for longer than this restarts the board instead.
const BUSY_MS = 300;
let interruptTimer = null;
let typedAfterInterrupt = null;
function interruptBusyVm() {
  if (interruptTimer) { clearTimeout(interruptTimer); interruptTimer = null; }
  typedAfterInterrupt = null;
  process.stdout.write("\r\nKeyboardInterrupt: the emulated VM was busy; restarted\r\n");
  hardReset("ctrl-c on a busy VM");
  pending = [];
}

function fromControl(req) {
  if (req.op === "reset") {
    withSnapshot(() => { hardReset("host", RESET.HARD); toHost({ reply: req.id, ok: true }); });
    return;
  }
  if (req.op === "set" && req.path === "wifi.up" && [0, 1, true, false].includes(req.value)) {
    // the link is the hardware's: connections drop at once, even under a VM blocked in a read
    radio.up = Boolean(req.value);
    if (!radio.up && sockets) sockets.dropAll();
  }
  const forward = req.op === "set" && /^net\.udp_forward\.\d+$/.exec(req.path || "");
  if (forward) {  // the test network's NAT for datagrams (sockets.mjs)
    radio.udpForward = { ...(radio.udpForward || {}), [req.path.split(".")[2]]: Number(req.value) };
    toHost({ reply: req.id, ok: true });
    return;
  }
  if (req.op === "power-cycle") withSnapshot(() => powerCycle(req));
  else if (req.op === "uart-in") uartIn(req.uart, req.hex);  // no reply: a wire has none
  else toWorker(req);
}

function powerCycle(req) {  // power cut: everything not on flash is gone
  if (worker) worker.terminate();
  cancelSleep();
  rtcMemory = "";
  wakeReason = WAKE.NONE;
  worker = null;
  booted = false;
  event({ event: "power-off" });
  setTimeout(() => {
    resetCause = RESET.PWRON;
    rtcOffsetMs = -Date.now();  // the clock starts again at 2000-01-01
    rawMode = false;
    boot({ banner: "\r\n" });
    toHost({ reply: req.id, ok: true });
  }, req.offMs || 100);
}



function toWorker(req) {
  if (sleeping) { whileAsleep(req); return; }
  if (worker && !booted && req.op !== "uart-in") { bootQueue.push(req); return; }  // answered once up
  if (!worker || !booted) { toHost({ reply: req.id, error: "the board is not running (booting or asleep)" }); return; }
  // a press or a spike happens once: it is not a physical value to restore after a reboot
  if (req.op === "set" && !/\.(press|spike|tips)$/.test(req.path)) physics.set(req.path, req.value);
  waiting.set(req.id, req);
  worker.postMessage({ type: "control", ...req });
}

if (control) {
  let buf = "";
  control.on("data", (chunk) => {
    buf += chunk.toString("utf8");
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
      if (line.trim()) fromControl(JSON.parse(line));
    }
  });
}

process.stdin.on("data", fromHost);
process.stdin.on("end", () => process.exit(0));
process.on("SIGTERM", () => {
  if (!worker || !booted || config.fsDir) process.exit(0);  // with a folder: written through
  worker.once("message", () => process.exit(0));
  worker.postMessage({ type: "snapshot" });
  setTimeout(() => process.exit(0), 1000);
});
boot();
