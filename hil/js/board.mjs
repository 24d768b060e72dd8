// The emulated board's "hardware": the serial line, resets and the flash that outlives a
// VM. The MicroPython VM runs in a worker thread (vm_worker.mjs), one per boot.
//
//   node board.mjs CONFIG.json
//
// stdin/stdout carry the board's USB serial (REPL) bytes, raw. CONFIG names the
// micropython.mjs, the heap, the board, the host folder mirroring the flash, and the
// folder of ROM modules. stderr carries one JSON object a line of events for the host.
import fs from "node:fs";
import path from "node:path";
import { Worker } from "node:worker_threads";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const workerUrl = new URL("./vm_worker.mjs", import.meta.url);
const event = (obj) => process.stderr.write(JSON.stringify(obj) + "\n");

function readHostTree(root, prefix = "") {
  const out = {};
  if (!root || !fs.existsSync(root)) return out;
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const host = path.join(root, entry.name);
    const vm = prefix + "/" + entry.name;
    if (entry.isDirectory()) { out[vm + "/"] = new Uint8Array(0); Object.assign(out, readHostTree(host, vm)); }
    else out[vm] = fs.readFileSync(host);
  }
  return out;
}

let flash = readHostTree(config.fsDir);
const rom = readHostTree(config.romDir, "/rom");

function persist(files) {
  flash = files;
  if (!config.fsDir) return;
  // mirror: write what exists, remove what the VM deleted
  const keep = new Set();
  for (const [vmPath, data] of Object.entries(files)) {
    const host = path.join(config.fsDir, vmPath);
    keep.add(path.resolve(host.replace(/\/$/, "")));
    if (vmPath.endsWith("/")) fs.mkdirSync(host, { recursive: true });
    else { fs.mkdirSync(path.dirname(host), { recursive: true }); fs.writeFileSync(host, data); }
  }
  const prune = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      if (entry.isDirectory()) prune(p);
      if (!keep.has(path.resolve(p))) fs.rmSync(p, { recursive: true, force: true });
    }
  };
  if (fs.existsSync(config.fsDir)) prune(config.fsDir);
}

let worker = null;
let rawMode = false;
let busySince = 0;
let pending = [];
let booted = false;
let probe = [];  // bytes that may be the start of mpremote's raw-paste probe

function boot({ raw = false, runMain = true, banner = "" } = {}) {
  booted = false;
  if (banner) process.stdout.write(banner);
  worker = new Worker(workerUrl, {
    workerData: { mjs: config.mjs, heapBytes: config.heapBytes, files: flash, libFiles: rom,
                  rawRepl: raw, runMain: runMain && !raw, board: config.board, chip: config.chip },
  });
  const w = worker;
  w.on("message", (msg) => {
    if (w !== worker) return;
    if (msg.type === "out") process.stdout.write(msg.data);
    else if (msg.type === "idle") { busySince = 0; scheduleSnapshot(); }
    else if (msg.type === "booted") { booted = true; event({ event: "booted", raw }); flush(); }
    else if (msg.type === "files") persist(msg.files);
    else if (msg.type === "reset") softReset();
    else if (msg.type === "log") event({ event: "vm-log", text: msg.text });
  });
  w.on("error", (err) => { event({ event: "vm-crash", error: String(err) }); if (w === worker) hardReset("crash"); });
}

// flash writes reach the host folder shortly after the VM goes idle (a file copy is many
// small commands: one snapshot after the burst, not one per command)
let snapshotTimer = null;
function scheduleSnapshot() {
  if (snapshotTimer || !config.fsDir) return;
  snapshotTimer = setTimeout(() => {
    snapshotTimer = null;
    if (worker && booted) worker.postMessage({ type: "snapshot" });
  }, 300);
}

function softReset() {
  const raw = rawMode;
  worker.terminate();
  event({ event: "soft-reset", raw });
  boot({ raw, banner: raw ? "soft reboot\r\n" : "MPY: soft reboot\r\n" });
}

const crashes = [];
function hardReset(why) {
  if (worker) worker.terminate();
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
  for (const c of bytes) {
    // mpremote probes raw-paste mode with \x05 A \x01; the port's raw-paste hangs the VM,
    // so answer "not supported" (R\x00) and mpremote uses the plain raw REPL
    if (rawMode && (c === 0x05 || probe.length)) {
      probe.push(c);
      const want = [0x05, 0x41, 0x01];
      if (probe.every((b, i) => b === want[i])) {
        if (probe.length === 3) { process.stdout.write("R\x00"); probe = []; }
        continue;
      }
      pending.push(...probe);
      probe = [];
      continue;
    }
    if (c === 0x01) rawMode = true;
    else if (c === 0x02) rawMode = false;
    if (c === 0x03 && busySince && Date.now() - busySince > 300) {
      // the VM is stuck in code that never yields: only a reset stops it
      process.stdout.write("\r\nKeyboardInterrupt: the emulated VM was busy; restarted\r\n");
      hardReset("ctrl-c on a busy VM");
      pending = [];
      continue;
    }
    pending.push(c);
  }
  flush();
}

process.stdin.on("data", fromHost);
process.stdin.on("end", () => process.exit(0));
process.on("SIGTERM", () => {
  if (!worker || !booted) process.exit(0);
  worker.once("message", () => process.exit(0));
  worker.postMessage({ type: "snapshot" });
  setTimeout(() => process.exit(0), 1000);
});
boot();
