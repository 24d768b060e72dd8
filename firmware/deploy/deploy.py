"""Deploy the node firmware to a board over its REPL, then prove it works.

Steps: stop the node and put the board in maintenance (a /maintenance flag and a hard reset,
because the node's hardware watchdog cannot be stopped and would reset the board mid-deploy);
read the board (MicroPython and .mpy version, chip id); build the bundle for that bytecode
version; copy only files whose sha256 differs and remove stale ones; write the config with
the device code; run the self-test on the board; clear maintenance and reset; wait for the
node to report itself up.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from polekit.boards import Board, load
from polekit.firmware.deploy.bundle import MANIFEST, MPY_CROSS, Bundle, build, mpy_of
from polekit.firmware.deploy.link import BoardLink, LinkError
from polekit.firmware.node import settings as node_settings
from polekit.protocols import identity

MAINTENANCE = "maintenance"  # the flag file: main.py leaves the node stopped while it exists
OTA_KEY = "ota.pub"  # the raw 32-byte Ed25519 key the node checks updates with (signing.py)
OTA_BOOT_RECORD = "ota/boot.json"  # which application slot runs (docs/firmware.md, Updates)
# an update's header waiting for its check boot, and its verdict (firmware/node/ota/verify.py)
OTA_CHECK_FILES = ("ota/check", "ota/header.bin", "ota/verified.json")
OWNED = ["lib/node", "lib/protocols"]  # folders deploy owns: stale files there are removed
Progress = Callable[[str, int, int], None]  # (what, done, total)


class DeployError(RuntimeError):
    """A deploy step failed; the message names the port, the step and what to do."""


@dataclass
class DeployReport:
    port: str
    board: str
    device_code: str | None = None
    unique_id: str = ""
    micropython: str = ""
    firmware_version: str = ""
    mpy: str = ""
    copied: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_copied: int = 0
    selftest: list[tuple[str, bool, str]] = field(default_factory=list)
    seconds: float = 0.0
    ota_key: str = ""  # hex of the update key installed by this deploy, "" when none given

    @property
    def passed(self) -> bool:
        return bool(self.selftest) and all(ok for _n, ok, _d in self.selftest)

    def failures(self) -> str:
        return "; ".join(f"{n}: {d}" for n, ok, d in self.selftest if not ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "board": self.board,
            "device_code": self.device_code,
            "unique_id": self.unique_id,
            "micropython": self.micropython,
            "firmware_version": self.firmware_version,
            "mpy": self.mpy,
            "copied": len(self.copied),
            "removed": len(self.removed),
            "unchanged": self.unchanged,
            "bytes_copied": self.bytes_copied,
            "selftest": [list(r) for r in self.selftest],
            "seconds": round(self.seconds, 2),
            "ota_key": self.ota_key,
        }


def node_config(
    bundle: Bundle, device_code: str | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """The board's reference settings, the deployment's overrides, the device code."""
    config = {**bundle.config, **(overrides or {})}
    if device_code is not None:
        try:
            identity.parse(device_code)
        except ValueError as exc:
            raise DeployError(f"{exc}; make codes with `polekit code make`") from None
        config["device_code"] = device_code
    return config


def settings_problems(board: Board, settings: dict[str, Any]) -> dict[str, str]:
    """What is wrong with each setting a deployment lays over the board's reference config,
    by key (nothing: all good). Checked against the node's own tables (node/settings.py),
    on the host, so a typo is refused before anything is written to a board; an unknown
    key gets the nearest known one (``unti``: did you mean ``unit``?)."""
    known = node_settings.known_keys(board.uplink)
    out: dict[str, str] = {}
    for key, value in settings.items():
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else "."
            out[key] = (
                f"{board.name} has no setting {key!r}{hint} Its settings: "
                f"{', '.join(sorted(known))} (docs/firmware.md)"
            )
            continue
        problems = node_settings.validate({key: value}, board.uplink)[1]
        if problems:
            # the node's words, without what the node would do about it ("; using 1")
            out[key] = "; ".join(
                re.sub(r"(; using .*|;? ignored)$", "", p.removeprefix("config: "))
                for p in problems
            )
    return out


def _enter_maintenance(link: BoardLink) -> None:
    # the node's watchdog may be armed: only a reset stops it, and main.py then sees the flag
    has_main = link.hashes(["main.py"])["main.py"] is not None
    link.write(MAINTENANCE, b"deploy\n")
    if has_main:
        link.hard_reset()
        out = link.wait_for_output((b"maintenance", b">>>"), timeout_s=20)
        if b"maintenance" not in out and b">>>" not in out:
            raise LinkError(f"{link.port}: the board did not come back after its reset")
        link.enter()


def _selftest(link: BoardLink, timeout_s: float = 15) -> list[tuple[str, bool, str]]:
    link.exec("import asyncio\nfrom node import selftest\nasyncio.run(selftest.run())")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = link.json(
            "import json\nfrom node import selftest\nprint(json.dumps(selftest.RESULT))"
        )
        if rows is not None:
            return [(str(n), bool(ok), str(d)) for n, ok, d in rows]
        time.sleep(0.2)
    return [("selftest", False, f"did not finish in {timeout_s:.0f} s")]


def deploy(
    port: str,
    board: str | Board,
    device_code: str | None = None,
    config: dict[str, Any] | None = None,
    source: bool = False,
    progress: Progress | None = None,
    start: bool = True,
    bundles: dict[tuple[str, str | None], Bundle] | None = None,
    ota_key: bytes | None = None,
) -> DeployReport:
    """Deploy to the board on ``port``; the report (``.passed`` tells the self-test verdict).
    Raises DeployError (or LinkError) when a step cannot be done. ``bundles`` caches built
    bundles across deploys (a batch builds each board and bytecode version once).
    ``ota_key``: the raw 32-byte public key (signing.public_key_raw) installed as /ota.pub,
    the key the node accepts updates from; None leaves the board's key as it is."""
    started = time.monotonic()
    board = board if isinstance(board, Board) else load(board)
    report = DeployReport(port, board.name, device_code)
    node_config(Bundle(board, None, {}), device_code, config)  # refuse a bad code up front
    if ota_key is not None and len(ota_key) != 32:
        raise DeployError(f"the update key is {len(ota_key)} bytes, an Ed25519 key is 32")
    wrong = settings_problems(board, config or {})
    if wrong:
        raise DeployError(
            "\n".join(
                f"setting {key}={json.dumps((config or {})[key])}: {why}"
                for key, why in wrong.items()
            )
        )
    note = progress or (lambda what, done, total: None)
    with BoardLink(port) as link:
        note("connect", 0, 1)
        _enter_maintenance(link)
        info = link.info()
        report.unique_id = info["unique_id"]
        report.micropython = info["micropython"]
        mpy = mpy_of(int(info["mpy"])) if info["mpy"] else ""
        if not source and mpy not in MPY_CROSS:
            raise DeployError(
                f"{port}: MicroPython {info['micropython']} uses .mpy version {mpy or '?'}; "
                f"polekit compiles for {', '.join(MPY_CROSS)} (MicroPython 1.22 or later). "
                "Flash a newer MicroPython (`polekit flash`) or deploy with --source."
            )
        key = (board.name, None if source else mpy)
        cache = bundles if bundles is not None else {}
        if key not in cache:
            cache[key] = build(board, key[1])
        bundle = cache[key]
        report.mpy = bundle.mpy or "source"
        report.firmware_version = bundle.manifest["firmware_version"]
        cfg = node_config(bundle, device_code, config)
        files = dict(bundle.files)
        files["config.json"] = json.dumps(cfg, sort_keys=True).encode()
        files[MANIFEST] = bundle.manifest_bytes()
        if ota_key is not None:
            files[OTA_KEY] = bytes(ota_key)
            report.ota_key = bytes(ota_key).hex()
        on_board = link.hashes(sorted(files))
        todo = [p for p in sorted(files) if on_board.get(p) != hashlib.sha256(files[p]).hexdigest()]
        report.unchanged = len(files) - len(todo)
        total = sum(len(files[p]) for p in todo)
        done = 0
        note("copy", 0, total)
        for path in todo:
            base = done
            link.write(
                path,
                files[path],
                progress=lambda n, _size, base=base: note("copy", base + n, total),
            )
            done += len(files[path])
            report.copied.append(path)
        report.bytes_copied = total
        landed = link.hashes(todo)  # read back: what is on the flash, not what was sent
        bad = [p for p in todo if landed.get(p) != hashlib.sha256(files[p]).hexdigest()]
        if bad:
            raise DeployError(
                f"{port}: {len(bad)} file(s) did not land intact ({', '.join(bad[:3])}): "
                "the flash may be full or failing; run the deploy again"
            )
        for stale in sorted(set(link.files_under(OWNED)) - set(files)):
            link.remove(stale)
            report.removed.append(stale)
        # a cable install is slot A (/lib) and runs confirmed: the boot record of an update
        # (firmware/node/ota/record.py) would keep the node on the other slot or on trial,
        # and a header left waiting would send the new install into a check boot
        for path in (OTA_BOOT_RECORD, OTA_BOOT_RECORD + ".new", *OTA_CHECK_FILES):
            if link.hashes([path])[path] is not None:
                link.remove(path)
        note("selftest", 0, 1)
        report.selftest = _selftest(link)
        link.remove(MAINTENANCE)
        if start:
            note("start", 0, 1)
            link.hard_reset()
            out = link.wait_for_output((b" up, ", b"safe mode", b"start failed"), timeout_s=30)
            text = out.decode(errors="replace")
            up = " up, " in text
            report.selftest.append(
                ("start", up, "node up" if up else "the node did not start: " + text[-300:])
            )
    report.seconds = time.monotonic() - started
    return report
