// One boot of the emulated board: a MicroPython VM in a worker thread. The main thread
// (board.mjs) is "the hardware": it owns the serial line, and it throws this worker away
// on reset, deep sleep or a hung VM. Messages in: {type: "chars", data: Uint8Array},
// {type: "snapshot"}. Messages out: {type: "out", data}, {type: "idle"},
// {type: "reset", soft: bool}, {type: "files", files: {path: Uint8Array}}, {type: "log", text}.
import { parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import { pathToFileURL } from "node:url";
import fs from "node:fs";
import nodePath from "node:path";

const { mjs, heapBytes, files, fsDir, rawRepl, runMain, libFiles, boardDef, romAllowance, physics,
        events, uartShared, uartRingBytes, netPort, netSignal } = workerData;
// the UARTs' receive FIFOs, filled by the hardware (board.mjs) while this VM runs
const uartCounters = new Int32Array(uartShared, 0, 6);
const uartRing = new Uint8Array(uartShared, 4 * 6);
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

// A blocking socket call (hil/vmlib/socket.py): the request goes to the board's network
// (sockets.mjs, in the main thread) and the VM waits, as the chip's task does, until the
// answer's seq is in netSignal. The wait is sliced so that the worker stays killable.
let netSeq = 0;
function netCall(text) {
  const seq = ++netSeq;
  netPort.postMessage({ seq, ...JSON.parse(text) });
  for (let seen = Atomics.load(netSignal, 0); seen !== seq; seen = Atomics.load(netSignal, 0)) {
    Atomics.wait(netSignal, 0, seen, 100);
  }
  for (;;) {
    const got = receiveMessageOnPort(netPort);
    if (got && got.message.seq === seq) return JSON.stringify(got.message);
    if (!got) Atomics.wait(netSignal, 0, seq, 1);  // posted, not yet delivered
  }
}

function pyLiteral(value) {
  if (value === true) return "1";
  if (value === false) return "0";
  return JSON.stringify(value);
}

const napCell = new Int32Array(new SharedArrayBuffer(4));  // nobody notifies it: a plain wait
// what the VM's `machine` and `_board` call to reach the board's hardware (board.mjs)
globalThis.polekitHw = {
  uartWrite: (id, hex) => parentPort.postMessage({ type: "uart", id, hex }),
  uartConfig: (id, baud, bits, parity, stop) => parentPort.postMessage({ type: "uart-config", id, baud, bits, parity, stop }),
  wdtStart: (ms) => parentPort.postMessage({ type: "wdt-start", ms }),
  wdtFeed: () => parentPort.postMessage({ type: "wdt-feed" }),
  // machine.reset()/soft_reset(): what the firmware wrote and closed is on the flash first,
  // as on the chip (with a folder it is there already, written through; without one the
  // worker, busy running that very call, saves it now)
  reset: (kind) => {
    if (kind === "soft") flushOpen();
    halted = true;
    if (!fsDir) parentPort.postMessage({ type: "files", files: readTree("/", {}) });
    parentPort.postMessage({ type: "reset-request", kind });
  },
  // machine.deepsleep(): the flash is saved first, as for a reset (the chip's flash writes
  // are done when they return); `spec` (JSON) names the timer and the wake pins to watch
  deepsleep: (spec) => {
    halted = true;
    if (!fsDir) parentPort.postMessage({ type: "files", files: readTree("/", {}) });
    parentPort.postMessage({ type: "deepsleep", spec: JSON.parse(spec) });
  },
  rtcMemory: (hex) => parentPort.postMessage({ type: "rtc-memory", hex }),  // RTC slow memory
  rtcSet: (ms) => parentPort.postMessage({ type: "rtc-set", ms }),  // the RTC set: its offset
  radio: (text) => parentPort.postMessage({ type: "radio", text }),  // adverts, notifications
  pinOut: (pin, level) => parentPort.postMessage({ type: "pin", pin, level }),
  // what arrived on UART `id` since the last call, as hex ("" for nothing)
  uartTake: (id) => {
    const w = Atomics.load(uartCounters, 2 * id);
    let r = Atomics.load(uartCounters, 2 * id + 1);
    let hex = "";
    for (; r < w; r++) hex += HEX[uartRing[id * uartRingBytes + (r % uartRingBytes)]];
    Atomics.store(uartCounters, 2 * id + 1, r);
    return hex;
  },
  // block this VM until a byte arrives on UART `id` or `ms` pass, as a read with a timeout
  // blocks its task on the chip; true if bytes are there
  // (in slices, so that the worker stays killable)
  uartWait: (id, ms) => {
    const w = Atomics.load(uartCounters, 2 * id);
    if (w !== Atomics.load(uartCounters, 2 * id + 1)) return true;
    for (let left = Math.max(0, ms); left > 0; left -= 100) {
      if (Atomics.wait(uartCounters, 2 * id, w, Math.min(100, left)) !== "timed-out") return true;
    }
    return false;
  },
  net: netCall,  // TCP sockets: JSON request in, JSON reply out (blocks)
  // machine.lightsleep(ms): the VM blocks for ms (in slices, so the worker stays killable)
  sleepMs: (ms) => {
    const until = Date.now() + ms;
    for (let left = ms; left > 0; left = until - Date.now()) Atomics.wait(napCell, 0, 0, Math.min(100, left));
  },
};

// The heap budget. The port's GC heap starts at `heapsize` and grows on demand into new
// areas taken from malloc. After boot, the WebAssembly memory is frozen at its size and the
// free malloc space is taken up, leaving only HEADROOM for the port's own small mallocs:
// a new heap area (as large as the heap itself) no longer fits, so allocating past the
// budget raises MemoryError, as on the chip.
const HEADROOM = 8 * 1024;
let memoryFrozen = false;
const grow = WebAssembly.Memory.prototype.grow;
WebAssembly.Memory.prototype.grow = function (pages) {
  if (memoryFrozen) throw new RangeError("emulated board: heap budget reached");
  return grow.call(this, pages);
};
const consoleError = console.error;
console.error = (...args) => {  // the runtime reports each refused growth; that is the point
  if (!memoryFrozen || !/grow|heap/i.test(String(args[0]))) consoleError(...args);
};
function enforceHeapBudget(module) {
  memoryFrozen = true;
  const held = [];
  for (let size = 1 << 20; size >= 1024; size >>= 1) {
    for (;;) { const p = module._malloc(size); if (!p) break; held.push([p, size]); }
  }
  // give back HEADROOM for the port's own small allocations
  let freed = 0;
  while (held.length && freed < HEADROOM) { const [p, size] = held.pop(); module._free(p); freed += size; }
}
const mod = await import(pathToFileURL(mjs).href);
let muted = false;
const send = (b) => { if (!muted) parentPort.postMessage({ type: "out", data: b }); };
// the board's ROM modules (machine, its virtual peripherals) live on the heap here but in
// flash on the chip: the heap is made larger by what they take, and gc reports without them
const mp = await mod.loadMicroPython({ heapsize: heapBytes + romAllowance, linebuffer: false, stdout: send, stderr: send });

const SKIP = new Set(["dev", "proc", "tmp", "home", "rom"]);
function writeTree(tree) {
  for (const [path, data] of Object.entries(tree)) {
    const dir = path.slice(0, path.lastIndexOf("/"));
    if (dir) mp.FS.mkdirTree(dir);
    mp.FS.writeFile(path, data);
  }
}
function readTree(dir, out) {
  for (const name of mp.FS.readdir(dir)) {
    if (name === "." || name === ".." || (dir === "/" && SKIP.has(name))) continue;
    const path = (dir === "/" ? "" : dir) + "/" + name;
    const st = mp.FS.stat(path);
    if (mp.FS.isDir(st.mode)) { out[path + "/"] = new Uint8Array(0); readTree(path, out); }
    else out[path] = mp.FS.readFile(path);
  }
  return out;
}
// The flash as the chip has it: a file the firmware closed (littlefs commits a file at its
// close), a rename, a removal or a new folder is in the host folder when the call returns,
// written from here, synchronously. A watchdog reset or a power cut throws this worker away
// without a word, and a snapshot taken when the VM goes idle (never, for a VM that hangs)
// would lose what it wrote since; an update's "signature checked" flag was lost that way.
// Installed after the boot wrote the flash into the VM, so only the firmware's writes count.
// A soft reset runs the finalisers of the files still open (MicroPython's gc_sweep_all), so
// they reach the flash as if closed: flushOpen() does that before the VM is thrown away.
let flushOpen = () => {};
let halted = false;  // machine.reset() or deepsleep() called: nothing more reaches the flash
const PARTIAL = ".polekit-partial";  // a file being written through (board.mjs skips these)
function writeThrough() {
  if (!fsDir) return;
  const FS = mp.FS;
  // the host path of a VM path, resolved as the VM resolves it (from its cwd, ".." stopping
  // at "/"), so nothing the firmware names can reach outside the board's folder
  const host = (p) => {
    const parts = nodePath.posix.resolve(FS.cwd(), String(p)).split("/").filter((x) => x);
    return parts.length && !SKIP.has(parts[0]) ? nodePath.join(fsDir, ...parts) : null;
  };
  // a host that refuses a write (full disk, a folder where a file was) is reported, never
  // thrown into the VM: Emscripten's syscalls let only their own errors through
  const safely = (what, fn) => {
    try { fn(); }
    catch (e) { parentPort.postMessage({ type: "log", text: `flash write-through: ${what}: ${e.message || e}` }); }
  };
  // whole, as littlefs commits a file: a reset during the copy leaves the old one, never half
  const saveFile = (p) => {
    const h = host(p);
    if (!h || !FS.analyzePath(p).exists) return;  // removed or renamed while it was open
    safely(p, () => {
      fs.mkdirSync(nodePath.dirname(h), { recursive: true });
      fs.writeFileSync(h + PARTIAL, FS.readFile(p));
      fs.renameSync(h + PARTIAL, h);
    });
  };
  const saveTree = (p) => {  // a folder renamed: what it holds, as the VM has it
    const h = host(p);
    if (!h || !FS.analyzePath(p).exists) return;
    if (FS.isDir(FS.stat(p).mode)) {
      safely(p, () => fs.mkdirSync(h, { recursive: true }));
      for (const name of FS.readdir(p)) if (name !== "." && name !== "..") saveTree(p + "/" + name);
    } else saveFile(p);
  };
  const drop = (p) => {
    const h = host(p);
    if (h) safely(p, () => fs.rmSync(h, { recursive: true, force: true }));
  };
  flushOpen = () => {
    for (const stream of FS.streams) {
      if (stream && stream.path && (stream.flags & 3) !== 0) saveFile(stream.path);
    }
  };
  const { close, rename, unlink, rmdir, mkdir } = FS;
  // after machine.reset() or deepsleep() the chip runs nothing more: the VM does until its
  // worker is thrown away, and those writes must not reach the flash
  FS.close = (stream) => {
    const path = stream.path, written = (stream.flags & 3) !== 0;  // O_WRONLY or O_RDWR
    const out = close.call(FS, stream);
    if (written && path && !halted) saveFile(path);
    return out;
  };
  FS.rename = (from, to) => {
    const out = rename.call(FS, from, to);
    if (!halted) { drop(from); saveTree(to); }
    return out;
  };
  FS.unlink = (p) => {
    const out = unlink.call(FS, p);
    if (!halted) drop(p);
    return out;
  };
  FS.rmdir = (p) => {
    const out = rmdir.call(FS, p);
    if (!halted) drop(p);
    return out;
  };
  FS.mkdir = (p, mode) => {
    const out = mkdir.call(FS, p, mode);
    const h = host(p);
    if (h && !halted) safely(p, () => fs.mkdirSync(h, { recursive: true }));
    return out;
  };
}
// board flash first, then the ROM-like modules the ESP32 port has and the VM lacks
for (const [path, data] of Object.entries(files)) {
  if (path.endsWith("/")) mp.FS.mkdirTree(path.slice(0, -1)); else writeTree({ [path]: data });
}
writeTree(libFiles);
writeThrough();
for (const d of ["/tmp", "/home/web_user", "/home"]) { try { mp.FS.rmdir(d); } catch { /* not there */ } }
// The port raises Emscripten's errno values (ENOENT is 44); the chip and mpremote expect
// POSIX ones (ENOENT is 2). File functions are wrapped to translate them.
mp.runPython(`
import sys, os, builtins
sys.path[:] = ['', '.frozen', '/lib', '/rom']
def _posix_errors():
    table = {44: 2, 20: 17, 54: 20, 31: 21, 55: 39, 2: 13, 28: 22, 10: 16, 8: 9}
    def wrap(f):
        def call(*args, **kw):
            try:
                return f(*args, **kw)
            except OSError as e:
                n = e.args[0] if e.args else None
                if n in table:
                    raise OSError(table[n]) from None
                raise
        return call
    for name in ('stat', 'listdir', 'ilistdir', 'mkdir', 'remove', 'rmdir', 'rename', 'chdir', 'statvfs', 'unlink'):
        if hasattr(os, name):
            setattr(os, name, wrap(getattr(os, name)))
    builtins.open = wrap(builtins.open)
_posix_errors()
del _posix_errors

# The port has no asyncio.run: its loop is Node's. run() starts the coroutine as a task and
# returns, so main.py finishes, the REPL comes up and the firmware keeps running; Ctrl-C
# cancels it (see _board.interrupt).
import asyncio
def _run(coro):
    import _board
    task = asyncio.create_task(coro)
    _board.main_tasks.append(task)
    return task
asyncio.run = _run
del _run
`);

function runFile(name) {
  try { mp.FS.stat("/" + name); } catch { return Promise.resolve(); }
  return Promise.resolve(mp.runPythonAsync(`
try:
    exec(open('/${name}').read(), {'__name__': '__main__'})
except KeyboardInterrupt:
    print('KeyboardInterrupt')
except SystemExit:
    pass
except BaseException as e:
    import sys
    sys.print_exception(e)
`)).catch((e) => parentPort.postMessage({ type: "log", text: String(e) }));
}


// gc.mem_free() of the port counts memory the heap could still grow into (~134 MB); the
// board reports what is left of its budget, as the chip does
mp.FS.writeFile("/rom/_board_def.json", JSON.stringify(boardDef));
// `time` is the ESP32's (hil/vmlib/_rtc_time.py: epoch 2000, the board's RTC), for every
// import after this one
mp.runPython("import sys, _board, _rtc_time\nsys.modules['time'] = _rtc_time\nimport _vdev, machine, _wifi, socket, _asyncio_gc\n_vdev.attach()\n_asyncio_gc.install()\nimport gc\ngc.collect()");
for (const [path, value] of Object.entries(physics)) {
  try { mp.runPython(`_board.set(${JSON.stringify(path)}, ${pyLiteral(value)})`); }
  catch (e) { parentPort.postMessage({ type: "log", text: `replaying ${path}: ${e}` }); }
}
// what happened in the world while the chip slept (a rain tip that woke it): once, after
// the physical values and before the firmware runs
for (const [path, value] of events || []) {
  try { mp.runPython(`_board.set(${JSON.stringify(path)}, ${pyLiteral(value)})`); }
  catch (e) { parentPort.postMessage({ type: "log", text: `replaying ${path}: ${e}` }); }
}
mp.runPython("_rom_bytes = gc.mem_alloc()");
const romBytes = mp.globals.get("_rom_bytes");
mp.runPython("del _rom_bytes");
mp.FS.writeFile("/rom/_board_gc.py", `
import gc as _gc
BUDGET = ${heapBytes}
ROM = ${romBytes}
from _asyncio_gc import collect  # due now, run at the next yield (hil/vmlib/_asyncio_gc.py)
enable = _gc.enable
disable = _gc.disable
isenabled = _gc.isenabled
threshold = _gc.threshold
def mem_alloc():
    return max(0, _gc.mem_alloc() - ROM)
def mem_free():
    return max(0, BUDGET - mem_alloc())
`);
mp.runPython("import sys, _board_gc\nsys.modules['gc'] = _board_gc\ndel _board_gc");
parentPort.postMessage({ type: "rom-bytes", bytes: romBytes });
enforceHeapBudget(mp._module);

// the firmware starts under the board's budget, with its hardware attached
await runFile("boot.py");
if (runMain) await runFile("main.py");
muted = true;
mp.replInit();
if (rawRepl) mp.replProcessChar(1);
muted = false;
if (rawRepl) send(new TextEncoder().encode("raw REPL; CTRL-B to exit\r\n>"));
else send(new TextEncoder().encode(
  `MicroPython v1.27.0 on polekit emulated ${workerData.board}; ${workerData.chip} with the WebAssembly VM\r\nType "help()" for more information.\r\n>>> `));

// the hardware's clock: timers, button releases, sensors that stream (PMS5003)
const bootedAt = Date.now();
let executing = false;
setInterval(() => {
  if (executing) return;
  try { mp.runPython(`_board.tick(${Date.now() - bootedAt})`); }
  catch (e) { parentPort.postMessage({ type: "log", text: "tick: " + String(e.message || e) }); }
}, 10);

const FORCED_EXIT = 0x100;
parentPort.on("message", (msg) => {
  if (msg.type === "snapshot") {
    parentPort.postMessage({ type: "files", files: readTree("/", {}) });
    return;
  }
  if (msg.type === "control") {
    let reply;
    try {
      if (msg.op === "set") { mp.runPython(`_board.set(${JSON.stringify(msg.path)}, ${pyLiteral(msg.value)})`); reply = { ok: true }; }
      else if (msg.op === "get") {
        // as JSON text: lists and maps would otherwise cross as proxies
        mp.runPython(`import json\n_ctl_value = json.dumps(_board.get(${JSON.stringify(msg.path)}))`);
        reply = { ok: true, json: mp.globals.get("_ctl_value") };
      }
      else reply = { error: `unknown op ${msg.op}` };
    } catch (e) {
      reply = { error: String(e.message || e).trim().split("\n").pop() };
    }
    parentPort.postMessage({ type: "control-reply", id: msg.id, ...reply });
    return;
  }
  if (msg.type !== "chars") return;
  executing = true;
  for (const c of msg.data) {
    if (c === 3 && mp.runPython("_ctl_value = _board.interrupt()") !== undefined && mp.globals.get("_ctl_value")) {
      mp.replProcessChar(13);  // a fresh prompt after the interrupted firmware
      continue;
    }
    const ret = mp.replProcessChar(c);
    if (ret & FORCED_EXIT) {
      flushOpen();
      halted = true;
      if (!fsDir) parentPort.postMessage({ type: "files", files: readTree("/", {}) });
      parentPort.postMessage({ type: "reset", soft: true });
      executing = false;
      return;
    }
  }
  executing = false;
  parentPort.postMessage({ type: "idle" });
});
parentPort.postMessage({ type: "booted" });
