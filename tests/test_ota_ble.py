"""OTA over BLE (issue 16 item 3): a signed bundle reaches an emulated community node (the
node firmware in the board's MicroPython VM, its real OtaSession: the signature checked in a
boot of its own, staging into slot b, commit, trial) through the gateway's push_ble on
bleak's API over the virtual air; an interrupted transfer resumes; a refused bundle comes
back with the node's reason."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from otalinkkit import (
    HANGS,
    RAISES,
    Signed,
    community_update,
    flashed_node,
    over_the_link,
    staged,
)

from polekit.gateway.ble_ota import CHUNK_BYTES, OtaRefusedError, push_ble
from polekit.gateway.config import BleConfig
from polekit.hil.air import VirtualAir
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity, ota
from polekit.protocols.bthome import OTA_QUEUE
from polekit.protocols.ota_gatt import WINDOW

from gwkit import run

SOS = identity.make("371600", "SO", 16)
BOARD = "community-sos-esp32c3"


def _node(tmp_path: Path, update: Signed, **config: Any) -> Path:
    config = {"device_code": SOS, "advert_s": 1, **config}
    return flashed_node(tmp_path / "fs", BOARD, update.pub, config)


def _check_staged(update: Signed, flash: Path) -> None:
    for path, data in update.files.items():
        assert staged(flash, path).read_bytes() == data, path


def _push(board: EmulatedBoard, air: VirtualAir, update: Signed, **kw: Any) -> dict[str, Any]:
    # push_ble to the board; a failure says what the node printed last
    sig = kw.pop("sig", update.sig)
    coro = push_ble(
        board.mac, update.manifest, sig, update.files, config=BleConfig(air=air.path), **kw
    )
    try:
        report: dict[str, Any] = run(coro, timeout_s=300)
    except (AssertionError, OtaRefusedError):
        raise
    except Exception as exc:
        tail = bytes(board.serial_log[-3000:]).decode(errors="replace")
        raise AssertionError(f"{exc!r}; the node printed:\n{tail}") from exc
    return report


def _booted(board: EmulatedBoard) -> int:
    return len([e for e in board.events if e.get("event") == "booted"])


def test_a_signed_update_reaches_a_community_node_over_ble(tmp_path: Path) -> None:
    update = community_update(tmp_path, 24000)
    # a trial longer than the 30 s watchdog /main.py arms for a version on trial: the
    # node's loop must feed one of its own, or the good version is rolled back (reason 2)
    flash = _node(tmp_path, update, ota_trial_s=35)
    needed = over_the_link(update, flash)
    seen: list[tuple[int, int]] = []
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)
        started = time.monotonic()
        report = _push(board, air, update, progress=lambda d, t, _sent: seen.append((d, t)))
        elapsed = time.monotonic() - started
        boots = _booted(board)
        assert report["result"] == "trial", report  # the new version runs, on its trial
        confirmed = _push(board, air, update, trial_wait_s=120)
        log = bytes(board.serial_log).decode(errors="replace")
    total = update.size
    assert report["status"]["running"] == "0.2", report
    # the same bundle again: the node runs it, and has confirmed it after its trial
    assert confirmed["result"] == "updated" and confirmed["sent"] == 0, confirmed
    assert confirmed["status"]["state"] == "idle" and confirmed["status"]["rollback"] == 0
    assert "version 0.2 confirmed after its trial" in log
    assert _booted(board) == boots  # no reset during the trial (its watchdog was fed)
    assert report["check_boots"] == 1, report
    # start, the check boot (it ends in a reset), the start after it, the new version
    assert boots == 4, boots
    assert "update: signature and manifest good" in log
    # only what slot a lacks went over the air (the rest was copied on the node's flash)
    assert report["bytes"] == total and report["sent"] == needed  # no frame for a copied file
    assert needed < total / 2, (needed, total)
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    _check_staged(update, flash)
    print(
        f"BLE OTA: {report['sent']} of the bundle's {total} bytes over the air; "
        f"{report['duration_s']} s with the check boot ({elapsed:.1f} s with the reset "
        f"into 0.2): heap low-water {report['heap_low']} bytes free"
    )
    assert report["heap_low"] > 8 * 1024, report  # of the board's heap, while staging


def _interrupted(tmp_path: Path, fault: str) -> tuple[dict[str, Any], int, int]:
    # a transfer cut at about 40 % of what the air carries: by the board's power (RAM lost,
    # flash kept) or by the radio link dropping; push_ble goes on by itself
    update = community_update(tmp_path, 30000)
    flash = _node(tmp_path, update)
    needed = over_the_link(update, flash)
    acks: list[int] = []
    cut: list[threading.Thread] = []
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)

        def progress(done: int, _total: int, _sent: int) -> None:
            acks.append(done)
            if len(acks) * CHUNK_BYTES >= needed * 0.4 and not cut:
                if fault == "power":
                    act = threading.Thread(target=board.power_cycle, args=(0.5,))
                else:
                    act = threading.Thread(target=air.drop_links, args=(board.mac,))
                cut.append(act)
                act.start()

        report = _push(board, air, update, progress=progress)
        cut[0].join(30)
        boots = _booted(board)
    assert report["status"]["running"] == "0.2", report
    _check_staged(update, flash)
    return report, boots, needed


def test_a_transfer_cut_by_a_power_cycle_resumes_where_it_stopped(tmp_path: Path) -> None:
    report, boots, needed = _interrupted(tmp_path, "power")
    assert report["reconnects"] >= 1, report
    assert boots == 5, boots  # start, check boot, clean start, the power cut, new version
    assert report["check_boots"] == 1, report  # the verdict outlived the power cut
    # resumed from the staging on flash: at most the frames in flight when the power went
    resent = report["sent"] - needed
    assert 0 <= resent <= (WINDOW + OTA_QUEUE) * CHUNK_BYTES, report
    print(f"power cut at 40 %: {resent} bytes sent again, {report['reconnects']} reconnects")


def test_a_transfer_cut_by_a_dropped_link_resumes(tmp_path: Path) -> None:
    report, boots, needed = _interrupted(tmp_path, "link")
    assert report["reconnects"] >= 1, report
    assert boots == 4, boots  # start, the check boot, the clean start, the new version
    resent = report["sent"] - needed
    assert 0 <= resent <= (WINDOW + OTA_QUEUE) * CHUNK_BYTES, report
    print(f"link dropped at 40 %: {resent} bytes sent again, {report['reconnects']} reconnects")


def test_a_wrongly_signed_bundle_is_refused_with_its_reason(tmp_path: Path) -> None:
    update = community_update(tmp_path, 1000)
    flash = _node(tmp_path, update)
    forged = bytes(64)
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)
        with pytest.raises(OtaRefusedError) as refused:
            _push(board, air, update, sig=forged)
        log = bytes(board.serial_log).decode(errors="replace")
    assert refused.value.code == 1, refused.value
    assert "signature" in refused.value.text
    assert "update refused" in log  # by the check boot, before the node started
    assert not (flash / "slot_b").exists()  # not a byte taken
    assert not (flash / "ota" / "boot.json").exists()  # slot a runs on, untouched


@pytest.mark.parametrize(("broken", "code"), [(RAISES, 1), (HANGS, 2)], ids=["raises", "hangs"])
def test_a_failing_version_rolls_back_and_the_report_says_so(
    tmp_path: Path, broken: tuple[str, str], code: int
) -> None:
    update = community_update(tmp_path, 1000, broken=broken)
    flash = _node(tmp_path, update, ota_trial_s=20)
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)
        report = _push(board, air, update, trial_wait_s=90)
        log = bytes(board.serial_log).decode(errors="replace")
    assert report["result"] == "rolled_back" and report["rollback"] == code, report
    assert report["status"]["running"] == "0.1" and report["status"]["previous"] == "0.2"
    assert report["why"] == ota.rollback_text(code)
    assert "failed its trial (reason %d)" % code in log
