"""Helpers for update tests and the OTA bench: emulated pole nodes with the real firmware
and an update key on one paced RS-485 line, signed bundles made as a user makes them, and
the gateway's ``ota`` events read back from what reached the broker."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gwproc import GatewayProcess, write_config

from polekit.firmware.deploy.signing import public_key_raw, sign_bundle
from polekit.firmware.install import install
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.line import VirtualLine
from polekit.protocols import cbor, identity

from gwkit import Collector, until

BOARD = "pole-env-esp32"


def polekit(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``polekit ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "polekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def make_key(folder: Path, name: str) -> Path:
    """``polekit keys new NAME`` in ``folder``; the private key's path (NAME.pub beside)."""
    done = polekit("keys", "new", name, cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder / f"{name}.key"


def signed_bundle(folder: Path, key: Path, version: str, min_version: str = "0.1") -> Path:
    """``polekit build --board pole-env-esp32 --sign KEY --version V -o folder``."""
    done = polekit(
        "build",
        "--board",
        BOARD,
        "--sign",
        str(key),
        "--version",
        version,
        "--min-version",
        min_version,
        "-o",
        str(folder),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


BROKEN = {
    "raises": 'raise RuntimeError("a broken build: app cannot start")\n',
    "hangs": "while True:  # a broken build: app never ends its import\n    pass\n",
}


def broken_bundle(folder: Path, key: Path, version: str, how: str = "raises") -> Path:
    """A bundle signed by ``key`` whose new version cannot start: the node's application
    module replaced by one that raises (or hangs, ``how``) when it is imported."""
    signed_bundle(folder, key, version)
    node = folder / "lib" / "node"
    for old in node.glob("app.*"):
        old.unlink()
    (node / "app.py").write_text(BROKEN[how])
    sign_bundle(folder, key, BOARD, version, "0.1")
    return folder


_ROOT = Path(__file__).resolve().parent.parent
_SOURCES = {"lib/node/": _ROOT / "firmware" / "node", "lib/protocols/": _ROOT / "protocols"}


def earlier_release(flash: Path, changed: tuple[str, ...] | str) -> int:
    """Slot A of an installed node (.mpy) made an earlier release's: the modules in
    ``changed`` (board paths, ``lib/node/app.mpy``; "all": every node and protocols module)
    compiled from the same source under another name, so their bytes differ from a bundle
    built now and an update sends them (the node copies the files it has unchanged). The
    bytes that now differ."""
    from polekit.firmware.deploy.bundle import DEFAULT_MPY, compile_module

    paths = (
        [
            p.relative_to(flash).as_posix()
            for lib in _SOURCES
            for p in sorted((flash / lib).rglob("*.mpy"))
        ]
        if changed == "all"
        else list(changed)
    )
    total = 0
    for path in paths:
        prefix = next(p for p in _SOURCES if path.startswith(p))
        source = (_SOURCES[prefix] / path[len(prefix) :]).with_suffix(".py")
        mpy = compile_module(source.read_bytes(), "earlier/" + path, DEFAULT_MPY)
        (flash / path).write_bytes(mpy)
        total += len(mpy)
    return total


def pole_codes(n: int, first_serial: int = 60) -> list[str]:
    """Device codes for ``n`` poles."""
    return [identity.make("371600", "PL", first_serial + i) for i in range(n)]


@contextlib.contextmanager
def pole_line(
    tmp: Path,
    key: Path,
    codes: list[str],
    baudrate: int = 9600,
    trial_s: int = 5,
    changed: tuple[str, ...] | str = (),
) -> Iterator[tuple[VirtualLine, list[EmulatedBoard]]]:
    """Emulated pole nodes (units 1..n, running firmware 0.1 with ``key``'s public half
    as /ota.pub) on one RS-485 line paced at ``baudrate``; the line and the boards. The
    gateway opens ``line.endpoint()``. ``changed``: the modules an update must send
    (earlier_release)."""
    raw_key = public_key_raw(key.with_suffix(".pub"))
    line = VirtualLine(baudrate=baudrate, bits_per_char=11)
    boards: list[EmulatedBoard] = []
    try:
        for unit, code in enumerate(codes, 1):
            flash = install(
                tmp / f"flash-{unit}",
                BOARD,
                {
                    "device_code": code,
                    "unit": unit,
                    "baudrate": baudrate,
                    "ota_trial_s": trial_s,
                },
                compiled=True,  # .mpy, as polekit deploy installs it on a node
            )
            (flash / "ota.pub").write_bytes(raw_key)
            earlier_release(flash, changed)
            boards.append(EmulatedBoard(BOARD, fs_dir=flash, rs485_line=line).start())
        yield line, boards
    finally:
        for unit, board in enumerate(boards, 1):  # each node's console and events, for a
            # failed test
            (tmp / f"serial-{unit}.log").write_bytes(bytes(board.serial_log))
            (tmp / f"events-{unit}.json").write_text(json.dumps(board.events, indent=0))
        for board in boards:
            board.stop()
        line.close()


def ota_config(
    path: Path,
    data_dir: Path,
    broker_url: str,
    devices: Any,
    buses: Any,
    key: Path,
    ble_air: str | None = None,
    **ota: Any,
) -> Path:
    """gwproc's config with an [ota] table trusting ``key`` (and the BLE devices on the
    virtual air at ``ble_air``)."""
    write_config(path, data_dir, broker_url, devices, buses)
    lines = ["[ota]", f'public_key = "{key}"'] + [f"{k} = {json.dumps(v)}" for k, v in ota.items()]
    if ble_air is not None:
        lines += ["[ble]", f"air = {json.dumps(ble_air)}"]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def rtu_bus(port: str, baudrate: int) -> dict[str, Any]:
    """The gateway's [[bus]] for a virtual line's drop (pseudo-terminals: 8N2)."""
    return {
        "name": "line",
        "type": "rtu",
        "port": port,
        "baudrate": baudrate,
        "parity": "N",
        "stopbits": 2,
        "timeout": 1.5,
    }


def events(messages: list[Any], name: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(index in ``messages``, device, value) of each ``name`` event that reached the
    broker (SenML adapter, CBOR), in arrival order."""
    out = []
    for i, m in enumerate(messages):
        if "/event/" not in m.topic:
            continue
        body = cbor.loads(m.payload) if m.payload[:1] != b"{" else json.loads(m.payload)
        if body.get("event") == name:
            out.append((i, m.topic.rsplit("/", 1)[1], body["value"]))
    return out


@dataclass
class Rig:
    """What a rollout test works with: the running gateway (a test that restarts it puts
    the new one here), the collector at the broker, the gateway's config, the boards."""

    gw: GatewayProcess
    sub: Collector
    config: Path
    boards: list[EmulatedBoard]


@contextlib.asynccontextmanager
async def running_gateway(
    config: Path,
    broker: LocalBroker,
    boards: list[EmulatedBoard],
    ready: Callable[[Collector], Any],
    what: str,
) -> AsyncIterator[Rig]:
    """`polekit gateway run -c config` (logging to gateway.log beside it) and a collector
    at ``broker``; yields once ``ready(collector)`` holds (within 60 s), and stops the
    gateway that runs then (``rig.gw``) at the end."""
    async with Collector(broker.host, broker.port) as sub:
        rig = Rig(GatewayProcess(config, config.parent / "gateway.log"), sub, config, boards)
        try:
            await until(lambda: ready(sub), 60, what)
            yield rig
        finally:
            rig.gw.proc.terminate()
            rig.gw.proc.wait(timeout=15)
