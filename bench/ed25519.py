"""Ed25519 verification of a real update manifest in the MicroPython VM, and at an ESP32's
speed.

    .venv/bin/python bench/ed25519.py [--board pole-env-esp32] [--rounds 3]

Builds and signs the board's bundle (its manifest.cbor, a few KB, is what the node
verifies) and runs protocols/ed25519.py (compiled to .mpy, as deployed) in the MicroPython
VM: synchronously, in one call, and as the node does, async, yielding between steps, with
the heap sampled at every step (the most one step allocates is what must fit between two
garbage collections). The chip's time is projected from the VM's by the Pystone ratio,
measured on the emulated board (hil/chip_speed.py: an ESP32 at 240 MHz runs 1661
pystones/s).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from polekit.firmware.deploy.bundle import build
from polekit.firmware.deploy.signing import load_signed, new_key, public_key_raw, sign_bundle
from polekit.hil.chip_speed import ESP32_PYSTONES, pystones
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.mpvm import run_script
from polekit.hil.pytest_plugin import Board

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests" / "mpy" / "ed25519_heap.py"


def prepare(board: str, tmp: Path) -> tuple[Path, Path, int]:
    """The VM's /lib (protocols/ as .mpy and the job) and /ed25519_case (key, manifest,
    signature of the board's real bundle, signed now); and the manifest's size."""
    _key, pub = new_key(tmp / "bench")
    bundle = build(board)
    bundle.write(tmp / "bundle")
    sign_bundle(tmp / "bundle", tmp / "bench.key", board, "0.2", "0.1")
    raw, sig, _files = load_signed(tmp / "bundle")
    lib, case = tmp / "lib", tmp / "case"
    for path, data in bundle.files.items():
        if path.startswith("lib/protocols/"):
            (tmp / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp / path).write_bytes(data)
    (lib / "ed25519_heap.py").write_bytes(JOB.read_bytes())
    case.mkdir()
    for name, data in (("pk", public_key_raw(pub)), ("msg", raw), ("sig", sig)):
        (case / name).write_bytes(data)
    return lib, case, len(raw)


def in_vm(lib: Path, case: Path, code: str) -> tuple:
    result = run_script("import ed25519_heap\n" + code, {lib: "/lib", case: "/ed25519_case"})
    if result.returncode:
        raise RuntimeError(result.stderr)
    return eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - numbers it printed


def measure(board: str = "pole-env-esp32", rounds: int = 3) -> dict[str, Any]:
    """The signature check of ``board``'s real update manifest in the MicroPython VM, and
    projected to the chip by the Pystone ratio of an emulated ``board``."""
    with tempfile.TemporaryDirectory() as tmp_name:
        lib, case, size = prepare(board, Path(tmp_name))
        with EmulatedBoard(board, fs_dir=Path(tmp_name) / "fs") as target:
            vm = pystones(Board(target), rounds)
        ok, ms = in_vm(lib, case, "print(ed25519_heap.sync())")
        a_ok, a_ms, steps, total, step_bytes = in_vm(
            lib, case, "await ed25519_heap.main()\nprint(ed25519_heap.RESULT)"
        )
    return {
        "size": size,
        "vm_pystones": vm,
        "ratio": vm / ESP32_PYSTONES,
        "ok": ok and a_ok,
        "sync_ms": ms,
        "async_ms": a_ms,
        "steps": steps,
        "total_bytes": total,
        "step_bytes": step_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", default="pole-env-esp32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    m = measure(args.board, args.rounds)
    size, vm, ratio, ms = m["size"], m["vm_pystones"], m["ratio"], m["sync_ms"]
    print(f"manifest       {size} bytes ({(size + 64 + 17) // 128 + 1} SHA-512 blocks)")
    print(f"Pystone        VM {vm:.0f}/s, ESP32 {ESP32_PYSTONES}/s: the VM is {ratio:.1f}x")
    print(f"sync verify    {m['ok']}: {ms} ms in the VM, ~{ms * ratio:.0f} ms at ESP32 speed")
    work, steps = ms, m["steps"]  # the sync run's compute; the async one adds the yields
    print(
        f"async verify   {m['ok']}: {m['async_ms']} ms in the VM ({steps} steps; each yield "
        f"waits for a Node timer, ~{(m['async_ms'] - work) / steps:.1f} ms, microseconds on "
        f"the chip): ~{work * ratio:.0f} ms of work at ESP32 speed, ~{work * ratio / steps:.0f} "
        "ms a step"
    )
    print(
        f"heap           {m['total_bytes']} bytes allocated in all, at most {m['step_bytes']} "
        "by one step (what must fit between two collections)"
    )


if __name__ == "__main__":
    main()
