"""protocols/ runs unchanged on MicroPython: the shared vectors replay inside the real VM
(the official WebAssembly port), and importing all of protocols/ fits an ESP32's heap."""

from __future__ import annotations

from pathlib import Path

from polekit.hil.mpvm import VMLIB, run_script

from conftest import ROOT, VECTORS

PROTOCOLS = ROOT / "protocols"
HEAP_LIMIT_BYTES = 48 * 1024  # an ESP32 without PSRAM leaves ~110 KiB to MicroPython in all
MODULES = sorted(p.stem for p in PROTOCOLS.glob("*.py") if p.stem != "__init__")


def test_every_protocols_module_imports_and_fits_the_heap_budget() -> None:
    script = (
        "import gc\n"
        "gc.collect()\n"
        "before = gc.mem_alloc()\n"
        f"for name in {MODULES!r}:\n"
        "    __import__('protocols.' + name)\n"
        "gc.collect()\n"
        "print('heap_bytes', gc.mem_alloc() - before)\n"
    )
    result = run_script(script, {PROTOCOLS: "/lib/protocols"})
    assert result.returncode == 0, result.stderr
    held = int(result.stdout.split("heap_bytes")[1].split()[0])
    print(f"MicroPython heap held by protocols/ ({len(MODULES)} modules): {held} bytes")
    assert held <= HEAP_LIMIT_BYTES, (
        f"protocols/ holds {held} bytes of heap, budget {HEAP_LIMIT_BYTES}"
    )


def test_shared_vectors_pass_inside_the_micropython_vm() -> None:
    script = (Path(__file__).parent / "mpy" / "replay_vectors.py").read_text()
    result = run_script(script, {PROTOCOLS: "/lib/protocols", VMLIB: "/lib", VECTORS: "/vectors"})
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(summary.split()[1])
    assert summary.endswith("0 failed") and passed > 150, summary
