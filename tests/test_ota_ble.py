"""OTA over BLE (issue 16 item 3): a signed bundle reaches an emulated community node (the
node firmware in the board's MicroPython VM) through the gateway's push_ble on bleak's API
over the virtual air; an interrupted transfer resumes; a refused bundle comes back with the
node's reason."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from otalinkkit import bundle, install_stand_in

from polekit.firmware.install import install
from polekit.gateway.ble_ota import CHUNK_BYTES, OtaRefusedError, push_ble
from polekit.gateway.config import BleConfig
from polekit.hil.air import VirtualAir
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity
from polekit.protocols.bthome import OTA_QUEUE
from polekit.protocols.ota_gatt import WINDOW

from gwkit import run

SOS = identity.make("371600", "SO", 16)
BOARD = "community-sos-esp32c3"


def _files(total: int) -> dict[str, bytes]:
    # node-sized files (the bundle's largest modules are a few KiB), incompressible
    rng = os.urandom
    sizes = [7000, 5000, 3000, 1, 0]
    sizes[0] += total - sum(sizes)
    return {f"lib/node/part{i}.py": rng(n) for i, n in enumerate(sizes)}


def _node(tmp_path: Path, sig: bytes) -> Path:
    flash = tmp_path / "fs"
    install(flash, BOARD, {"device_code": SOS, "advert_s": 1})
    install_stand_in(flash, sig)
    return flash


def test_a_signed_update_reaches_a_community_node_over_ble(tmp_path: Path) -> None:
    files = _files(24000)
    manifest, sig = bundle(files)
    flash = _node(tmp_path, sig)
    seen: list[tuple[int, int]] = []
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)
        started = time.monotonic()
        report: dict[str, Any] = run(
            push_ble(
                board.mac,
                manifest,
                sig,
                files,
                lambda done, total: seen.append((done, total)),
                config=BleConfig(air=air.path),
            ),
            timeout_s=240,
        )
        elapsed = time.monotonic() - started
    total = sum(len(d) for d in files.values())
    assert report["status"]["running"] == "0.2", report
    assert report["bytes"] == total and report["sent"] == total, report
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    for i, (path, data) in enumerate(files.items()):
        staged = flash / "ota" / f"f{i}"
        assert staged.read_bytes() == data if data else True, path
    print(
        f"BLE OTA: {total} bytes in {report['duration_s']} s ({elapsed:.1f} s with the reset): "
        f"{total / report['duration_s']:.0f} B/s; heap low-water {report['heap_low']} bytes free"
    )
    assert report["heap_low"] > 16 * 1024  # of the board's 128 KiB, during the transfer


def _interrupted(tmp_path: Path, fault: str) -> tuple[dict[str, Any], int, Path]:
    # a transfer cut at about 40 %: by the board's power (RAM lost, flash kept) or by the
    # radio link dropping; push_ble goes on by itself
    files = _files(30000)
    manifest, sig = bundle(files)
    flash = _node(tmp_path, sig)
    total = sum(len(d) for d in files.values())
    cut: list[threading.Thread] = []
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)

        def progress(done: int, _total: int) -> None:
            if done >= total * 0.4 and not cut:
                if fault == "power":
                    act = threading.Thread(target=board.power_cycle, args=(0.5,))
                else:
                    act = threading.Thread(target=air.drop_links, args=(board.mac,))
                cut.append(act)
                act.start()

        report: dict[str, Any] = run(
            push_ble(board.mac, manifest, sig, files, progress, config=BleConfig(air=air.path)),
            timeout_s=240,
        )
        cut[0].join(30)
        boots = len([e for e in board.events if e.get("event") == "booted"])
    assert report["status"]["running"] == "0.2", report
    for i, data in enumerate(files.values()):
        assert (flash / "ota" / f"f{i}").read_bytes() == data
    return report, boots, flash


def test_a_transfer_cut_by_a_power_cycle_resumes_where_it_stopped(tmp_path: Path) -> None:
    report, boots, _ = _interrupted(tmp_path, "power")
    total = report["bytes"]
    assert report["reconnects"] >= 1, report
    assert boots == 3, boots  # start, the power cut, the reset into the new version
    # resumed from the staging on flash: at most the frames in flight when the power went
    resent = report["sent"] - total
    assert 0 <= resent <= (WINDOW + OTA_QUEUE) * CHUNK_BYTES, report
    print(f"power cut at 40 %: {resent} bytes sent again, {report['reconnects']} reconnects")


def test_a_transfer_cut_by_a_dropped_link_resumes(tmp_path: Path) -> None:
    report, boots, _ = _interrupted(tmp_path, "link")
    total = report["bytes"]
    assert report["reconnects"] >= 1, report
    assert boots == 2, boots  # no reset but the one into the new version
    resent = report["sent"] - total
    assert 0 <= resent <= (WINDOW + OTA_QUEUE) * CHUNK_BYTES, report
    print(f"link dropped at 40 %: {resent} bytes sent again, {report['reconnects']} reconnects")


def test_a_wrongly_signed_bundle_is_refused_with_its_reason(tmp_path: Path) -> None:
    files = _files(16000)
    manifest, sig = bundle(files)
    flash = _node(tmp_path, sig)
    forged = bytes(64)
    with (
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard(BOARD, fs_dir=flash, air=air.path) as board,
    ):
        board.wait_output("community node", 30)
        with pytest.raises(OtaRefusedError) as refused:
            run(push_ble(board.mac, manifest, forged, files, config=BleConfig(air=air.path)))
    assert refused.value.code == 1, refused.value
    assert "signature" in refused.value.text
    assert not list((flash / "ota").glob("f*"))  # not a byte taken
