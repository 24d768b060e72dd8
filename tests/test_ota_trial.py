"""A new version on trial, on the emulated pole node with the real firmware and boot
selector (/main.py): one that raises at start-up, one that hangs before its node starts
(the boot selector's watchdog), one whose start returns without running and one whose
self-test fails are rolled back by the node alone, and it says why in its registers; a
sensor that was already down when the update was installed does not fail the new version.
The slot B of each case is the installed firmware with its version set to 0.2 and, for a
broken version, one module edited, as an update would have staged it."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from otakit import signed_update

from polekit.firmware.deploy import signing
from polekit.firmware.deploy.bundle import DEFAULT_MPY, compile_module
from polekit.firmware.install import install
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.nodekit import NodeMaster
from polekit.protocols import ota

from conftest import ROOT

NODE = ROOT / "firmware" / "node"
CODE = "371600PL000090H"
TRIAL_S = 5


def _flash(tmp: Path, edit: Callable[[dict[str, str]], None] | None, **record: Any) -> Path:
    """An installed pole node (0.1, slot A) with 0.2 staged in slot B and a boot record
    that puts it on trial, as an update's commit leaves them. ``edit`` changes node modules'
    sources ({name: text}, from firmware/node) for slot B: a broken version."""
    flash = install(
        tmp / "flash",
        "pole-env-esp32",
        {"device_code": CODE, "ota_trial_s": TRIAL_S},
        compiled=True,  # .mpy, as a deploy and an update install them (source: no heap for it)
    )
    lib_b = flash / "slot_b" / "lib"
    shutil.copytree(flash / "lib", lib_b)
    sources = {"version.py": "VERSION = (0, 2)\n"}
    if edit is not None:
        edit(sources)
    for name, text in sources.items():
        mpy = compile_module(text.encode(), f"lib/node/{name}", DEFAULT_MPY)
        (lib_b / "node" / name).with_suffix(".mpy").write_bytes(mpy)
    rec = {"slot": "b", "state": "trial", "version": "0.2", "previous": "0.1"}
    rec.update(prev_slot="a", boots=0, rollback=0, **record)
    (flash / "ota").mkdir(exist_ok=True)
    (flash / "ota" / "boot.json").write_text(json.dumps(rec))
    return flash


def _record(flash: Path) -> dict[str, Any]:
    return json.loads((flash / "ota" / "boot.json").read_text())


def _replace(sources: dict[str, str], name: str, old: str, new: str) -> None:
    text = sources.get(name) or (NODE / name).read_text()
    assert old in text, f"{name} no longer has {old!r}: update the case"
    sources[name] = text.replace(old, new, 1)


def _raises(sources: dict[str, str]) -> None:
    _replace(
        sources,
        "app.py",
        "class PoleNode:",
        'raise RuntimeError("broken build")\n\n\nclass PoleNode:',
    )


def _hangs(sources: dict[str, str]) -> None:  # before a task runs: the boot selector's watchdog
    _replace(sources, "app.py", "class PoleNode:", "while True:\n    pass\n\n\nclass PoleNode:")


def _returns(sources: dict[str, str]) -> None:  # its start returns: the REPL, no node
    _replace(sources, "start.py", "def main(boot=None):\n", "def main(boot=None):\n    return\n")


def _safe_mode(sources: dict[str, str]) -> None:  # its start counts 3 crashes: safe mode
    # (a crash file of its own, so that the version it replaces still starts)
    _replace(sources, "start.py", '"/crashes.json"', '"/crashes-0.2.json"')


@pytest.mark.parametrize(
    ("edit", "code", "seen"),
    [
        (_raises, ota.RB_EXCEPTION, "RuntimeError: broken build"),
        (_hangs, ota.RB_WATCHDOG, "wdt-reset"),
        (_returns, ota.RB_WATCHDOG, "wdt-reset"),
        (_safe_mode, ota.RB_EXCEPTION, "RuntimeError: polekit: safe mode: the node crashed"),
    ],
    ids=["raises", "hangs", "returns", "safe-mode"],
)
def test_a_version_that_cannot_start_is_rolled_back_and_says_why(
    tmp_path: Path, edit: Callable[[Path], None], code: int, seen: str
) -> None:
    flash = _flash(tmp_path, edit)
    (flash / "crashes-0.2.json").write_text('{"count": 3}')
    # a version that hangs keeps the first boot from ending: the board is up after the
    # watchdog's reset (30 s) and the rollback
    board = EmulatedBoard("pole-env-esp32", fs_dir=flash).start(timeout_s=120)
    try:
        log = board.wait_output("failed its trial (reason %d); back to 0.1" % code, 90)
        board.wait_output("polekit node %s up" % CODE, 30)
        values = NodeMaster(board.uarts["rs485"]).wait_for(lambda v: v["ota_state"] == 8, 20)
        events = [e.get("event") for e in board.events]
    finally:
        board.stop()
    assert seen in log or seen in events, log[-2000:]
    assert values["fw_version"] == 0x0001 and values["fw_previous"] == 0x0002, values
    assert (values["ota_state"], values["ota_rollback"]) == (ota.ROLLED_BACK, code), values
    rec = _record(flash)
    assert (rec["slot"], rec["state"], rec["rollback"], rec["version"]) == (
        "a",
        "rolled_back",
        code,
        "0.1",
    )


@pytest.mark.parametrize(
    ("known_down", "confirmed"),
    [(["bh1750"], True), ([], False)],
    ids=["down-before-the-update", "broken-by-the-update"],
)
def test_the_trial_self_test_holds_only_new_failures_against_the_version(
    tmp_path: Path, known_down: list[str], confirmed: bool
) -> None:
    # the light sensor is dead: the version that installed the update saw it down (its
    # valid bit clear) and said so in the record, or it did not (the new version broke it)
    flash = _flash(tmp_path, None, known_down=known_down)
    later = flash / "ota" / "boot.later"
    (flash / "ota" / "boot.json").rename(later)  # slot A first: the sensor dies, then the trial
    board = EmulatedBoard("pole-env-esp32", fs_dir=flash).start(timeout_s=60)
    try:
        board.wait_output("polekit node %s up" % CODE, 30)
        board.set("bh1750.absent", 1)
        later.rename(flash / "ota" / "boot.json")
        board.reset()
        master = NodeMaster(board.uarts["rs485"])
        # polled as a gateway would: the uplink's good exchanges are what a trial counts
        values = master.wait_for(lambda v: v["ota_state"] in (0, ota.ROLLED_BACK), 60)
        log = board.serial_log.decode(errors="replace")
    finally:
        board.stop()
    assert "trial self-test: bh1750: no answer at I2C address 0x23" in log, log[-2000:]
    rec = _record(flash)
    if confirmed:
        assert "(down before the update: not held against it)" in log
        assert "version 0.2 confirmed after its trial" in log, log[-2000:]
        assert (rec["slot"], rec["state"]) == ("b", "confirmed")
        assert values["fw_version"] == 0x0002 and values["ota_state"] == 0, values
    else:
        assert "failed its trial (reason %d)" % ota.RB_SELFTEST in log, log[-2000:]
        assert (rec["slot"], rec["state"], rec["rollback"]) == ("a", "rolled_back", 4)
        assert values["fw_version"] == 0x0001 and values["ota_rollback"] == 4, values


def test_the_check_boot_writes_its_verdict_then_resets_into_the_node(tmp_path: Path) -> None:
    # what a Modbus BEGIN leaves on the flash (the header, the mark), checked by the boot
    # that follows it through node.start as the board boots: the verdict and the files'
    # table are written, the mark is gone, and the node starts after one more reset
    key, pub = signing.new_key(tmp_path / "city")
    update = signed_update(tmp_path / "bundle", key, "0.2")
    flash = install(tmp_path / "flash", "pole-env-esp32", {"device_code": CODE}, compiled=True)
    (flash / "ota.pub").write_bytes(signing.public_key_raw(pub))
    (flash / "ota").mkdir()
    header = update.sig + update.manifest
    (flash / "ota" / "header.bin").write_bytes(header)
    (flash / "ota" / "check").write_text("%d\n" % len(header))
    board = EmulatedBoard("pole-env-esp32", fs_dir=flash).start(timeout_s=60)
    try:
        log = board.wait_output("polekit node %s up" % CODE, 60)
        # events and the console travel apart: the node's boot event may come after its line
        first = next(i for i, e in enumerate(board.events) if e.get("event") == "booted")
        board.wait_event("booted", 10, after=first + 1)
        boots = [e for e in board.events if e.get("event") == "booted"]
    finally:
        board.stop()
    assert "update: signature and manifest good" in log, log[-2000:]
    assert len(boots) == 2, boots  # the check's boot, then the node's
    verdict = json.loads((flash / "ota" / "verified.json").read_text())
    assert verdict["code"] == 0 and verdict["version"] == "0.2", verdict
    assert verdict["id"] == hashlib.sha256(update.manifest).hexdigest()
    table = (flash / "ota" / "files.txt").read_text().splitlines()
    assert [line.split()[2] for line in table] == [p for p, _ in update.files]
    assert not (flash / "ota" / "check").exists()
