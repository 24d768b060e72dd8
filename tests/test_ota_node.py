"""The node side of updates over the air: the Modbus transfer window's wire format, the
slave's framing of an update's long writes, and the update session (staging, resume after
a reset, refusals, the boot record it leaves) run inside the real MicroPython VM on bundles
built and signed with the real tools (bundle.build, signing.sign_bundle)."""

from __future__ import annotations

import importlib
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from otakit import Update, signed_update

from polekit.firmware.deploy import signing
from polekit.hil.mpvm import run_script
from polekit.protocols import manifest, modbus, ota

from conftest import ROOT

NODE = ROOT / "firmware" / "node"
PROTOCOLS = ROOT / "protocols"


def _node_module(name: str) -> ModuleType:
    # the node imports ``protocols`` as a top-level package (/lib/protocols on the board);
    # on the host that is polekit.protocols (as tests/fuzz/targets/modbus_slave.py does)
    for mod in ("protocols", "protocols.errors", "protocols.modbus", "protocols.ota"):
        sys.modules.setdefault(mod, importlib.import_module("polekit." + mod))
    return importlib.import_module("polekit.firmware.node." + name)


def test_the_node_and_the_shared_tables_agree_on_addresses_and_codes() -> None:
    slave = _node_module("uplinks.modbus_slave")
    verify = _node_module("ota.verify")
    assert slave.OTA_WINDOW == ota.WINDOW_STATUS
    for name in ("BAD_SIGNATURE", "TOO_LARGE", "MALFORMED", "NO_KEY", "FILE_HASH"):
        assert getattr(verify, name) == getattr(manifest, name), name
    # the register map's status points sit where docs/protocols.md says
    pole = modbus.register_map("pole-env")
    assert [pole.point(n).address for n in ("fw_previous", "ota_state", "ota_error")] == [
        24,
        25,
        26,
    ]
    assert pole.point("ota_rollback").address == 27


def test_data_chunks_carry_odd_sizes_and_the_status_block_round_trips() -> None:
    for chunk in (b"\x01", b"\x01\x02\x03", bytes(range(240))):
        index, offset, data = ota.parse_data(ota.data_registers(7, 70000, chunk))
        assert (index, offset, bytes(data[: len(chunk)])) == (7, 70000, chunk)
        assert len(data) == len(chunk) + (len(chunk) & 1)  # one pad byte at most
    regs = ota.encode_status(
        {
            "state_code": ota.RECEIVING,
            "need": (3, 70000),
            "files": 49,
            "running_code": ota.version_code("0.1"),
            "previous_code": 0,
            "staged": 12345,
            "total": 107000,
            "heap_low": 23456,
        }
    )
    s = ota.decode_status(regs)
    assert s["state"] == "receiving" and s["need"] == (3, 70000) and s["chunk"] == 240
    assert (s["running"], s["previous"], s["staged"], s["heap_low"]) == ("0.1", None, 12345, 23456)
    assert len(ota.data_registers(0, 0, bytes(ota.CHUNK_BYTES))) == modbus.MAX_WRITE


class _Uart:
    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.sent: list[bytes] = []

    def read(self) -> bytes | None:
        return self.pending.pop(0) if self.pending else None

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def test_a_long_write_whose_data_looks_like_a_frame_is_answered() -> None:
    # An update's 255-byte write reaches the node a FIFO-full at a time (64 bytes every
    # 73 ms at 9600 baud). Its data held FF FF 00 00 00, whose CRC is right for a 5-byte
    # exception answer of unit 255: the slave took that for a frame, dropped the write's
    # head, and never answered; the master retried the same bytes forever.
    slave_module = _node_module("uplinks.modbus_slave")
    registers = _node_module("registers")
    window = _node_module("ota.modbus_window")
    uart = _Uart()
    regs = registers.RegisterFile(modbus.register_map("pole-env"))
    slave = slave_module.ModbusSlave(
        uart, 1, regs, 9600, lambda: window.ModbusWindow("pole-env-esp32", "0.1", None)
    )
    values = ota.data_registers(0, 0, b"\xff\xff" + bytes(238))
    pdu = struct.pack(">BHHB", 16, ota.WINDOW_DATA, len(values), 2 * len(values))
    request = modbus.frame(1, pdu + struct.pack(">%dH" % len(values), *values))
    assert modbus.crc16(b"\xff\xff\x00") == 0  # the look-alike: unit 255, answer, good CRC
    now = 0
    for at in range(0, len(request), 64):
        uart.pending.append(request[at : at + 64])
        slave.poll(now)
        now += 73
    slave.poll(now + 1000)
    # answered (no update begun: "busy", exception 6), and only once
    assert uart.sent == [modbus.exception_response(1, 16, 6)]


# ---- the session in the MicroPython VM ---------------------------------------------------

_VM_SESSION = """
import asyncio, gc, json, os, sys
sys.path.insert(0, "/x/lib")
open("/ota.pub", "wb").write(open("/u/ota.pub", "rb").read())
from node.ota import record, session, verify

man = open("/u/manifest.cbor", "rb").read()
sig = open("/u/manifest.sig", "rb").read()
files = json.load(open("/u/files.json"))

def out(*a):
    print("OUT", json.dumps(a))

async def begin():
    s = session.OtaSession(
        "pole-env-esp32", "0.1", reset=lambda: out("reset"), down=lambda: ["pms5003"]
    )
    try:
        await s.begin(man, sig)
    except verify.OtaRefusedError as exc:
        out("refused", exc.code)
        return None
    return s

def send(s, upto, change=None):
    sent = 0
    while s.need() is not None and sent < upto:
        i, at = s.need()
        data = open("/u/" + files[i], "rb").read()
        if change == i:
            data = b"X" + data[1:]
        chunk = data[at : at + 240]
        try:
            s.write(i, at, chunk)
        except verify.OtaRefusedError as exc:
            out("file refused", exc.code, files[i], s.need())
            return sent
        sent += len(chunk)
    return sent

async def main():
    s = await begin()
    out("need at begin", s.need(), s.status()["state"])
    total = s.status()["total"]
    out("sent", send(s, total // 2))
    out("need before the reset", s.need())
    s = await begin()  # a reset: a new session, the same manifest
    out("need after the reset", s.need(), s.status()["staged"])
    send(s, total, change=len(files) - 1)
    out("after the bad file", s.status()["state"], s.status()["error"], s.need())
    s = await begin()
    send(s, total)
    out("all staged", s.need())
    await s.commit()
    out("boot record", record.load())
    out("slot b", sorted(os.listdir("/slot_b/lib")))

await main()
"""


def _update_folder(tmp_path: Path, update: Update, pub: Path) -> Path:
    folder = tmp_path / "u"
    for path, data in update.files:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    (folder / "manifest.cbor").write_bytes(update.manifest)
    (folder / "manifest.sig").write_bytes(update.sig)
    (folder / "files.json").write_text(json.dumps([p for p, _b in update.files]))
    (folder / "ota.pub").write_bytes(signing.public_key_raw(pub))
    return folder


def _vm_lib(tmp_path: Path) -> Path:
    lib = tmp_path / "x" / "lib"
    for src, dst in ((NODE, lib / "node"), (PROTOCOLS, lib / "protocols")):
        for f in src.rglob("*.py"):
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(f.read_bytes())
    return lib.parent


def _outputs(stdout: str) -> list[list[object]]:
    return [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("OUT ")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return signing.new_key(folder / "city")


def test_session_stages_resumes_after_a_reset_refuses_a_changed_file_and_marks_a_trial(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    update = signed_update(tmp_path / "bundle", key, "0.2")
    folder = _update_folder(tmp_path, update, pub)
    result = run_script(_VM_SESSION, {folder: "/u", _vm_lib(tmp_path): "/x"}, timeout_s=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = {row[0]: row[1:] for row in _outputs(result.stdout)}
    assert out["need at begin"] == [[0, 0], "receiving"]
    resumed_at = out["need after the reset"][0]
    assert resumed_at == out["need before the reset"][0] and resumed_at != [0, 0]
    assert out["need after the reset"][1] >= update.size // 2
    last = len(update.files) - 1
    # the changed file is refused the moment its last byte lands, and dropped
    assert out["file refused"][:2] == [manifest.FILE_HASH, update.files[last][0]]
    assert out["after the bad file"] == ["refused", manifest.FILE_HASH, [last, 0]]
    assert out["all staged"] == [None]
    rec = out["boot record"][0]
    assert rec == {
        "slot": "b",
        "state": "trial",
        "version": "0.2",
        "previous": "0.1",
        "prev_slot": "a",
        "boots": 0,
        "rollback": 0,
        "known_down": ["pms5003"],  # the sensor down when it installed: not held against it
    }
    assert out["reset"] == []
    assert out["slot b"] == [["node", "ntptime.LICENSE", "ntptime.mpy", "protocols", "umqtt"]]


_VM_REFUSALS = """
import asyncio, json, sys
sys.path.insert(0, "/x/lib")
from node.ota import verify

key = open("/u/ota.pub", "rb").read()
for name in CASES:
    man = open("/u/%s.cbor" % name, "rb").read()
    sig = open("/u/%s.sig" % name, "rb").read()
    try:
        await verify.check(man, sig, key, "pole-env-esp32", "0.2")
        print("OUT", json.dumps([name, 0]))
    except verify.OtaRefusedError as exc:
        print("OUT", json.dumps([name, exc.code]))
"""


def test_updates_are_refused_with_the_reason_before_a_file_byte_is_taken(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    # the node runs 0.2 here: 0.3 is an upgrade, 0.1 a downgrade
    key, pub = keys
    other_key, _other_pub = signing.new_key(tmp_path / "other")
    cases = {
        "good": signed_update(tmp_path / "good", key, "0.3"),
        "another_key": signed_update(tmp_path / "ak", other_key, "0.3"),
        "another_board": signed_update(tmp_path / "ab", key, "0.3", board="pole-env-esp32c3"),
        "downgrade": signed_update(tmp_path / "dg", key, "0.1"),
        "too_new_a_base": signed_update(tmp_path / "mv", key, "0.4", min_version="0.3"),
        "marked_downgrade": signed_update(tmp_path / "md", key, "0.1", downgrade=True),
    }
    changed = cases["good"].manifest.replace(b"0.3", b"0.9", 1)  # changed after signing
    folder = _update_folder(tmp_path, cases["good"], pub)
    for name, update in cases.items():
        (folder / f"{name}.cbor").write_bytes(update.manifest)
        (folder / f"{name}.sig").write_bytes(update.sig)
    (folder / "changed.cbor").write_bytes(changed)
    (folder / "changed.sig").write_bytes(cases["good"].sig)
    names = [*cases, "changed"]
    script = _VM_REFUSALS.replace("CASES", repr(names))
    result = run_script(script, {folder: "/u", _vm_lib(tmp_path): "/x"}, timeout_s=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    codes = dict(_outputs(result.stdout))  # type: ignore[arg-type]
    assert codes == {
        "good": 0,
        "another_key": manifest.BAD_SIGNATURE,
        "another_board": manifest.OTHER_BOARD,
        "downgrade": manifest.DOWNGRADE,
        "too_new_a_base": manifest.TOO_OLD,
        "marked_downgrade": 0,
        "changed": manifest.BAD_SIGNATURE,
    }


_VM_CHECK_FAILS = """
import asyncio, os, sys
sys.path.insert(0, "/x/lib")
from node.ota import verify
try:
    os.mkdir("/ota")
except OSError:
    pass
open(verify.PENDING, "w").close()  # a header marked for its check boot, then lost

async def main():
    for n in range(2):  # the boot after: the check fails in a way of its own; the next boot
        try:
            os.stat(verify.PENDING)
        except OSError:
            print("OUT boot %d starts the node" % n)
            continue
        await verify.boot_check("pole-env-esp32", "0.1")
        print("OUT boot %d checked" % n)
    try:
        os.stat(verify.VERIFIED)
        print("OUT verdict")
    except OSError:
        print("OUT no verdict")

await main()
"""


def test_a_check_boot_that_fails_on_its_own_runs_once_and_the_node_starts(tmp_path: Path) -> None:
    # a check that raises something other than a refusal (a MemoryError on the heap, a
    # flash error, here its header gone) used to leave the mark behind: every boot checked
    # again, raised again, and the node stayed off the bus until a visit by cable
    result = run_script(_VM_CHECK_FAILS, {_vm_lib(tmp_path): "/x"}, timeout_s=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line[4:] for line in result.stdout.splitlines() if line.startswith("OUT ")]
    assert lines == ["boot 0 checked", "boot 1 starts the node", "no verdict"], result.stdout
    assert "the check failed; the node restarts without a verdict" in result.stdout
