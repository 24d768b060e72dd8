"""protocols/ runs unchanged on MicroPython: the shared vectors replay inside the real VM
(the official WebAssembly port), and importing every module a node may import fits an
ESP32's heap.

A few modules of protocols/ are pure wire formats only the gateway uses (GATEWAY_SIDE: the
DL/T 645 meter protocol, the field device library, HJ 212 environmental reporting). They
stay MicroPython-compatible (they are imported and run in the VM below) but are not
counted in the node's budget; so that this cannot hide a node growing past it, no
firmware module may import them.

Others are imported by the node only while it checks an update (UPDATE_ONLY: Ed25519, its
SHA-512 and the signed manifest): they are not in the resident budget either, and no node
module imports them at its top level (an update imports them inside a function, then lets
them go); their own heap is measured in tests/test_ed25519.py."""

from __future__ import annotations

from pathlib import Path

from polekit.hil.mpvm import VMLIB, run_script

from conftest import ROOT, VECTORS

PROTOCOLS = ROOT / "protocols"
HEAP_LIMIT_BYTES = 48 * 1024  # an ESP32 without PSRAM leaves ~110 KiB to MicroPython in all
# gateway-side modules: the node never imports them (checked below)
GATEWAY_SIDE = ("devices", "dlt645", "hj212")
# imported by the node only during an update (see the docstring)
UPDATE_ONLY = ("cbor_canonical", "ed25519", "manifest", "ota", "ota_gatt", "sha512")
# node modules loaded only when an update runs (inside a function, at its first frame or
# command), like those under node/ota/: they may import update-only protocols at the top
NODE_UPDATE_ONLY = ("ota_gatt.py", "ota_http.py", "ota_reason.py", "ota_wake.py")
MODULES = sorted(
    p.stem
    for p in PROTOCOLS.glob("*.py")
    if p.stem != "__init__" and p.stem not in GATEWAY_SIDE + UPDATE_ONLY
)


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


def test_no_node_module_imports_a_gateway_side_protocol() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "firmware" / "node").rglob("*.py"))
        for line in path.read_text().splitlines()
        if "import" in line and any(name in line.split("#")[0] for name in GATEWAY_SIDE)
    ]
    assert not offenders, (
        "the node imports a gateway-side protocol, which the heap budget does not count: "
        + "; ".join(offenders)
    )


def test_no_node_module_imports_an_update_only_protocol_at_top_level() -> None:
    # an indented import (inside a function) loads the module when an update runs only
    offenders = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sorted((ROOT / "firmware" / "node").rglob("*.py"))
        if "ota" not in path.relative_to(ROOT / "firmware" / "node").parts
        and path.name not in NODE_UPDATE_ONLY
        for line in path.read_text().splitlines()
        if line.startswith(("import", "from"))
        and any(name in line.split("#")[0] for name in UPDATE_ONLY)
    ]
    assert not offenders, (
        "a resident node module imports an update-only protocol at its top level, which the "
        "heap budget does not count: " + "; ".join(offenders)
    )


def test_gateway_side_protocols_run_on_micropython() -> None:
    script = (
        "import gc\n"
        "gc.collect()\n"
        "before = gc.mem_alloc()\n"
        "from protocols import dlt645\n"
        "print('frame', dlt645.read_request('000012345678', 0x02010100).hex())\n"
        "f = dlt645.parse(dlt645.read_response('000012345678', 0x02010100, b'\\x04\\x23'))\n"
        "print('value', dlt645.decode_value(dlt645.item_by_di(f['di']), f['data']))\n"
        "from protocols import hj212\n"
        "p = hj212.encode([('QN', '20160801085857223'), ('ST', 32), ('CN', 1062), "
        "('PW', '100000'), ('MN', '010000A8900016F000169DC0'), ('Flag', 5)], 'RtdInterval=30')\n"
        "print('hj212', p)\n"
        "print('cp', hj212.parse(p)['CP']['RtdInterval'], hj212.frame_length(p))\n"
        "for name in " + repr(list(GATEWAY_SIDE)) + ":\n"
        "    __import__('protocols.' + name)\n"
        "gc.collect()\n"
        "print('heap_bytes', gc.mem_alloc() - before)\n"
    )
    result = run_script(script, {PROTOCOLS: "/lib/protocols"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "frame fefefefe6878563412000068110433343435c916" in result.stdout
    assert "value 230.4" in result.stdout
    # the HJ 212-2017 standard's example packet, CRC 1C80 (tests/test_hj212.py cites it)
    assert "hj212 b'##0101QN=20160801085857223;ST=32;CN=1062;" in result.stdout
    assert "RtdInterval=30&&1C80\\r\\n'" in result.stdout
    assert "cp 30 113" in result.stdout
    print(result.stdout)
