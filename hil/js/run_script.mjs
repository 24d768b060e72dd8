// Run one MicroPython script in the official WebAssembly port, with host folders copied
// into the VM's filesystem. Used by polekit.hil.mpvm; exit code 0 = script finished,
// 1 = it raised (traceback on stderr), 2 = bad usage.
//
//   node run_script.mjs [--heap BYTES] [--mount HOST_DIR:VM_DIR]... SCRIPT.py
//
// POLEKIT_MICROPYTHON_MJS may name micropython.mjs; otherwise the npm package is resolved
// from this file's location (the project's node_modules).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

function usage(msg) {
  process.stderr.write(`run_script.mjs: ${msg}\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
const mounts = [];
let heap = 1024 * 1024;
let script = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") heap = parseInt(args[++i], 10);
  else if (args[i] === "--mount") {
    const spec = args[++i] || "";
    const at = spec.lastIndexOf(":");
    if (at <= 0) usage(`--mount needs HOST_DIR:VM_DIR, got '${spec}'`);
    mounts.push([spec.slice(0, at), spec.slice(at + 1)]);
  } else if (script === null) script = args[i];
  else usage(`unexpected argument '${args[i]}'`);
}
if (script === null) usage("no script given");

const mjs = process.env.POLEKIT_MICROPYTHON_MJS;
const mod = await import(mjs ? pathToFileURL(mjs).href : "@micropython/micropython-webassembly-pyscript");

const mp = await mod.loadMicroPython({
  heapsize: heap,
  linebuffer: false,
  stdout: (b) => process.stdout.write(b),
  stderr: (b) => process.stderr.write(b),
});

function copyTree(hostDir, vmDir) {
  mp.FS.mkdirTree(vmDir);
  for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
    if (entry.name === "__pycache__" || entry.name.startsWith(".")) continue;
    const hostPath = path.join(hostDir, entry.name);
    const vmPath = vmDir.replace(/\/$/, "") + "/" + entry.name;
    if (entry.isDirectory()) copyTree(hostPath, vmPath);
    else mp.FS.writeFile(vmPath, fs.readFileSync(hostPath));
  }
}
for (const [hostDir, vmDir] of mounts) copyTree(hostDir, vmDir);

try {
  await mp.runPythonAsync(fs.readFileSync(script, "utf8"));
} catch (err) {
  process.stderr.write(String(err.message || err) + "\n");
  process.exitCode = 1;
}
