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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", default="pole-env-esp32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        lib, case, size = prepare(args.board, Path(tmp_name))
        with EmulatedBoard(args.board, fs_dir=Path(tmp_name) / "fs") as target:
            vm = pystones(Board(target), args.rounds)
        ratio = vm / ESP32_PYSTONES
        print(f"manifest       {size} bytes ({(size + 64 + 17) // 128 + 1} SHA-512 blocks)")
        print(f"Pystone        VM {vm:.0f}/s, ESP32 {ESP32_PYSTONES}/s: the VM is {ratio:.1f}x")
        ok, ms = in_vm(lib, case, "print(ed25519_heap.sync())")
        print(f"sync verify    {ok}: {ms} ms in the VM, ~{ms * ratio:.0f} ms at ESP32 speed")
        work = ms  # the sync run's compute; the async one adds the event loop's yields
        ok, ms, steps, total, step_bytes = in_vm(
            lib, case, "await ed25519_heap.main()\nprint(ed25519_heap.RESULT)"
        )
        print(
            f"async verify   {ok}: {ms} ms in the VM ({steps} steps; each yield waits for a "
            f"Node timer, ~{(ms - work) / steps:.1f} ms, microseconds on the chip): "
            f"~{work * ratio:.0f} ms of work at ESP32 speed, ~{work * ratio / steps:.0f} ms a step"
        )
        print(
            f"heap           {total} bytes allocated in all, at most {step_bytes} by one step "
            "(what must fit between two collections)"
        )


if __name__ == "__main__":
    main()
