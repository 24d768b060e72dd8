"""Test helpers for updates over the air on the node: signed bundles built with the real
tools (bundle.build, signing.sign_bundle) and a Modbus master on pymodbus that drives the
node's transfer window as docs/protocols.md ("OTA over Modbus") describes, polling the
node's input registers between its steps as a gateway would."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ModbusException

from polekit.firmware.deploy import signing
from polekit.firmware.deploy.bundle import DEFAULT_MPY, build, compile_module
from polekit.protocols import modbus, ota

BOARD = "pole-env-esp32"
_FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
POLE_ENV = modbus.register_map("pole-env")
INPUTS = max(p.address + p.count for p in POLE_ENV if p.table == "input")


@dataclass
class Update:
    """A signed update: manifest bytes, signature, files in the manifest's order."""

    manifest: bytes
    sig: bytes
    files: list[tuple[str, bytes]]
    version: str

    @property
    def size(self) -> int:
        return sum(len(b) for _p, b in self.files)


def signed_update(
    folder: Path,
    key: Path,
    version: str,
    min_version: str = "0.1",
    board: str = BOARD,
    patch_app: Callable[[str], str] | None = None,
    change: Callable[[dict[str, bytes]], None] | None = None,
    downgrade: bool = False,
) -> Update:
    """The node bundle of ``version`` (compiled .mpy), signed with ``key``. ``patch_app``
    edits node/app.py's source before it is compiled (a broken version); ``change`` edits
    the files after signing (a tampered bundle)."""
    bundle = build(BOARD, DEFAULT_MPY, version=version)
    if patch_app is not None:
        app = "lib/node/app.py"
        src = (_FIRMWARE / "node" / "app.py").read_text()
        bundle.files["lib/node/app.mpy"] = compile_module(patch_app(src).encode(), app, DEFAULT_MPY)
    bundle.write(folder)
    manifest, sig = signing.sign_bundle(folder, key, board, version, min_version, downgrade)
    raw, sig, files = signing.load_signed(folder)
    pairs = list(files.items())
    if change is not None:
        changed = dict(pairs)
        change(changed)
        pairs = [(p, changed[p]) for p, _b in pairs]
    return Update(raw, sig, pairs, version)


@dataclass
class Transfer:
    """What a transfer took: data writes, bytes sent, time, polls answered on the way."""

    chunks: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    polls: int = 0
    polls_failed: int = 0
    statuses: list[dict[str, Any]] = field(default_factory=list)


class OtaMaster:
    """A Modbus master for one node's OTA window, on pymodbus's serial client."""

    def __init__(self, port: str, unit: int = 1, baudrate: int = 9600) -> None:
        # pseudo-terminals refuse parity: 8N2 keeps the 11-bit character of 8E1
        self.client = ModbusSerialClient(
            port, baudrate=baudrate, parity="N", stopbits=2, timeout=1.0, retries=2
        )
        self.unit = unit
        if not self.client.connect():
            raise ConnectionError(f"cannot open {port}")

    def reconnect(self) -> None:
        """Open the port again: pymodbus closes it after a run of unanswered requests."""
        if not self.client.connected:
            self.client.connect()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> OtaMaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        rr = self.client.read_holding_registers(
            ota.WINDOW_STATUS, count=ota.STATUS_REGS, device_id=self.unit
        )
        if rr.isError():
            raise ConnectionError(f"status read refused: {rr}")
        return ota.decode_status(rr.registers)

    def inputs(self) -> dict[str, Any]:
        """The node's input registers, decoded: what a gateway's poll reads."""
        rr = self.client.read_input_registers(0, count=INPUTS, device_id=self.unit)
        if rr.isError() or len(rr.registers) != INPUTS:
            raise ConnectionError(f"poll refused: {rr}")
        return {
            p.name: p.decode(rr.registers[p.address : p.address + p.count])
            for p in POLE_ENV
            if p.table == "input"
        }

    def command(self, code: int, *args: int) -> Any:
        return self.client.write_registers(ota.WINDOW_COMMAND, [code, *args], device_id=self.unit)

    def data(self, index: int, offset: int, chunk: bytes) -> Any:
        return self.client.write_registers(
            ota.WINDOW_DATA, ota.data_registers(index, offset, chunk), device_id=self.unit
        )

    def poll(self, t: Transfer) -> None:
        try:
            self.inputs()
            t.polls += 1
        except (ConnectionError, ModbusException):
            t.polls_failed += 1
            self.reconnect()

    def wait_state(self, t: Transfer, leave: set[int], timeout_s: float = 60) -> dict[str, Any]:
        """Poll the node and read the status until its state is not in ``leave`` (no
        answer meanwhile is a node that resets: the check boot of a new header)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll(t)
            try:
                s = self.status()
            except (ConnectionError, ModbusException):
                s = {"state_code": -1, "state": "no answer"}
                self.reconnect()
            t.statuses.append(s)
            if s["state_code"] not in leave | {-1} or time.monotonic() > deadline:
                return s
            time.sleep(0.1)

    def begin(self, update: Update, t: Transfer) -> dict[str, Any]:
        """Send the header (signature, then manifest) and BEGIN; the status once checked."""
        header = update.sig + update.manifest
        rr = self.command(ota.CMD_OPEN, len(header) >> 16, len(header) & 0xFFFF)
        assert not rr.isError(), rr
        for at in range(0, len(header), ota.CHUNK_BYTES):
            rr = self.data(ota.HEADER_FILE, at, header[at : at + ota.CHUNK_BYTES])
            assert not rr.isError(), rr
        self.poll(t)
        rr = self.command(ota.CMD_BEGIN)
        assert not rr.isError(), rr
        return self.wait_state(t, {ota.HEADER, ota.CHECKING})

    def send_files(
        self,
        update: Update,
        t: Transfer,
        poll_every: int = 10,
        stop_after_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Write what the node needs, chunk by chunk, polling its inputs every
        ``poll_every`` chunks; stops early after ``stop_after_bytes``. The last status."""
        started = time.monotonic()
        s = self.status()
        while s["state_code"] == ota.RECEIVING and s["need"] is not None:
            index, offset = s["need"]
            data = update.files[index][1]
            while offset < len(data):
                chunk = data[offset : offset + ota.CHUNK_BYTES]
                rr = self.data(index, offset, chunk)
                t.chunks += 1
                t.bytes_sent += len(chunk)
                if rr.isError():
                    break  # the status says why (a refused file) or where to go on
                offset += len(chunk)
                if t.chunks % poll_every == 0:
                    self.poll(t)
                if stop_after_bytes is not None and t.bytes_sent >= stop_after_bytes:
                    t.seconds += time.monotonic() - started
                    return self.status()
            s = self.status()
        t.seconds += time.monotonic() - started
        return s

    def commit(self, t: Transfer) -> dict[str, Any] | None:
        """COMMIT, then poll until the node resets (no answer) or refuses; the last status
        read (None if the first read after COMMIT found it resetting)."""
        rr = self.command(ota.CMD_COMMIT)
        assert not rr.isError(), rr
        last = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                last = self.status()
            except (ConnectionError, ModbusException):
                return last  # resetting into the new slot
            if last["state_code"] not in (ota.VERIFYING, ota.INSTALLING):
                return last
            time.sleep(0.1)
        return last
