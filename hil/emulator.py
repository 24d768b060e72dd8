"""The emulated board: the real MicroPython VM behind a pseudo-terminal, as a USB board is.

``EmulatedBoard`` starts Node with ``hil/js/board.mjs`` (the board's "hardware"; the VM
runs in a worker thread, one per boot) and bridges its serial bytes to a pseudo-terminal,
so mpremote, pyserial and pytest-embedded open ``board.repl`` exactly like /dev/ttyUSB0.
The flash persists across soft resets for the board's lifetime, and in ``fs_dir`` on the
host if one is given; without one, the board keeps its flash in a temporary folder that
``stop()`` removes. Everything the board printed is kept in ``serial_log``.

Virtual peripherals (hil/vmlib/_vdev.py) are attached from the board definition; ``set``
and ``get`` reach their physical values and actuator states. UARTs without a virtual
sensor are wired to pseudo-terminals in ``uarts`` through a virtual line paced at the
UART's baud rate. The levels the firmware drives on its pins reach the host as it drives
them (``pin_levels``, ``watch_pin``, ``get("pin.18")``), even while the firmware is busy:
a peripheral emulated on the host (a modem's PWRKEY, hil/atmodem.py) sees them as a wire.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polekit.boards import Board, load
from polekit.hil.chip_id import (
    default_unique_id,
    interface_mac,
    mac_text,
    parse_unique_id,
)
from polekit.hil.line import VirtualLine
from polekit.hil.mpvm import MicroPythonNotFoundError, find_micropython
from polekit.hil.vmrom import rom_dir

_BOARD_JS = Path(__file__).with_name("js") / "board.mjs"
# Heap the board's ROM modules (machine, the virtual peripherals) take in the VM; on the
# chip they are in flash. The VM's heap is made this much larger so the firmware gets the
# board's whole budget; the board's gc.mem_alloc()/mem_free() leave them out.
# Measured at boot (the board's "rom-bytes" event): 44,992 bytes with machine, _vdev, the
# water node's peripherals, socket and network; tests/test_emulated_board.py holds the
# ROM under this figure, so a ROM module that grows cannot quietly shrink the firmware's heap
ROM_ALLOWANCE_BYTES = 48 * 1024
# The radio repeats its last advert at the advertising interval, but not more often than
# this on the virtual air (a node's event pace, 100 ms, is kept; faster ones are slowed)
ADVERT_REPEAT_MIN_S = 0.1
# board events after which the firmware no longer drives its pins
_PINS_RELEASED = ("hard-reset", "soft-reset", "deepsleep", "power-off", "crash-loop")


class EmulatorError(RuntimeError):
    """The emulated board could not start or stopped answering; the message says why."""


class ControlError(EmulatorError):
    """The board refused a control request (unknown device or quantity, not running)."""


class EmulatedBoard:
    """One emulated board; use as a context manager or call ``start()`` / ``stop()``.

    ``uarts`` maps each bridged UART's role (``rs485``) to the pseudo-terminal a host
    program opens; bytes cross it at the UART's baud rate (11-bit characters on RS-485).
    Pass ``rs485_line`` to put several boards (and a gateway) on one shared virtual line.
    ``unique_id`` is the chip's base MAC in hex (hil/chip_id.py); by default each board has
    one of its own, kept with its ``fs_dir``.
    """

    def __init__(
        self,
        board: str | Board,
        fs_dir: Path | str | None = None,
        rs485_line: VirtualLine | None = None,
        bootloader: bool = False,
        spi_flash: Path | str | None = None,
        air: Path | str | None = None,
        unique_id: str | None = None,
    ) -> None:
        self.board = board if isinstance(board, Board) else load(board)
        # a folder of our own for what would otherwise be left behind: the flash of a board
        # given no fs_dir, the VM's start-up file; stop() removes it
        self._scratch = Path(tempfile.mkdtemp(prefix="polekit-board-"))
        self.fs_dir = Path(fs_dir) if fs_dir else self._scratch / "flash"
        self.fs_dir.mkdir(parents=True, exist_ok=True)
        # the raw SPI flash the ROM bootloader writes (the MicroPython image); the VM's
        # filesystem stays in fs_dir. Beside a given fs_dir it is kept, as the flash is.
        if spi_flash:
            self.spi_flash_path = Path(spi_flash)
        elif fs_dir:
            self.spi_flash_path = self.fs_dir.with_name(self.fs_dir.name + ".spi-flash.bin")
        else:
            self.spi_flash_path = self._scratch / "spi-flash.bin"
        self.in_bootloader = False
        self._start_in_rom = bootloader
        try:
            chip = (
                parse_unique_id(unique_id)
                if unique_id
                else default_unique_id(self.fs_dir if fs_dir else None)
            )
        except ValueError as exc:
            self._remove_scratch()
            raise EmulatorError(str(exc)) from None
        self.unique_id = chip.hex()  # the eFuse base MAC: machine.unique_id(), esptool read-mac
        self.air = air  # the virtual BLE air's socket (hil/air.py), for boards with a radio
        self._air_link: Any = None
        self._last_adv: tuple[dict[str, Any], float] | None = None
        # a new advert restarts the repeats' schedule; the lock keeps a repeat of the old
        # advert from going out after the new one (a chip never sends them out of order)
        self._new_adv = threading.Event()
        self._adv_lock = threading.Lock()
        self._rom: Any = None
        self.rom_faults: dict[str, int] = {}  # handed to the ROM (hil.rom.RomBootloader.faults)
        self._rom_thread: threading.Thread | None = None
        self._rom_boot = threading.Event()
        self.serial_log = bytearray()
        self.events: list[dict[str, Any]] = []
        self.repl = ""
        self.uarts: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._master = self._slave = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._config_file = ""
        self._ctl: socket.socket | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._reply_ready = threading.Condition()
        self._own_line = rs485_line is None
        self._line = rs485_line
        self._extra_lines: list[VirtualLine] = []
        self._uart_fds: dict[int, int] = {}  # UART id -> our end of its bridge
        self._throttle: Any = None  # hil/throttle.py, while the board runs at a CPU share
        self.pin_levels: dict[int, int] = {}  # GPIO -> level the firmware drives on it
        self._pin_watchers: dict[int, list[Callable[[int], None]]] = {}

    def __enter__(self) -> EmulatedBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- life cycle -------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> EmulatedBoard:
        """Boot the board; returns when its REPL is ready on ``self.repl`` (or, made with
        ``bootloader=True``, when its ROM bootloader waits for esptool there)."""
        self._scratch.mkdir(exist_ok=True)  # started again after a stop(): a fresh board
        self.fs_dir.mkdir(parents=True, exist_ok=True)
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)  # no echo, no line editing: a serial port passes bytes as they are
        self.repl = os.ttyname(self._slave)
        self._stop.clear()
        if self._start_in_rom:
            self._enter_rom()
            return self
        return self._launch(timeout_s)

    def _launch(self, timeout_s: float) -> EmulatedBoard:
        booted_before = len(self.events)
        node = shutil.which("node")
        if node is None:
            raise MicroPythonNotFoundError(
                "Node.js is needed for the emulated board: install `nodejs`"
            )
        self._ctl, child = socket.socketpair()
        config = {
            "mjs": str(find_micropython()),
            "heapBytes": self.board.heap_bytes,
            "board": self.board.name,
            "chip": self.board.chip,
            "fsDir": str(self.fs_dir),
            "romDir": str(rom_dir()),
            "romAllowance": ROM_ALLOWANCE_BYTES,
            "controlFd": child.fileno(),
            "boardDef": self._definition(),
        }
        fd, self._config_file = tempfile.mkstemp(suffix=".json", dir=self._scratch)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        if not self._uart_fds:
            self._bridge_uarts()
        self._proc = subprocess.Popen(
            [node, str(_BOARD_JS), self._config_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            pass_fds=(child.fileno(),),
            # not in the terminal's process group: Ctrl-C reaches us, and we power the board
            # off with SIGTERM, which saves its flash first (SIGINT would kill it unsaved)
            start_new_session=True,
        )
        child.close()
        self._thread = threading.Thread(
            target=self._pump, name=f"board-{self.board.name}", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_control, daemon=True).start()
        # up at its REPL, or (a battery node whose main.py sleeps at once) asleep
        self.wait_event(("booted", "deepsleep"), timeout_s, after=booted_before)
        return self

    def stop(self) -> None:
        """Power off: flash contents are saved to ``fs_dir`` first; a temporary flash (no
        ``fs_dir`` given) is removed."""
        self._stop_vm()
        self._stop.set()
        self._new_adv.set()  # the advert repeater sees the stop at once
        if self._rom_thread is not None and self._rom_thread is not threading.current_thread():
            self._rom_thread.join(timeout=2)
        self._save_spi_flash()
        for fd in (self._master, self._slave, *self._uart_fds.values()):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self._uart_fds.clear()
        if self._air_link is not None:
            self._air_link.close()
            self._air_link = None
        for line in self._extra_lines:
            line.close()
        self._extra_lines.clear()
        if self._own_line and self._line is not None:
            self._line.close()
            self._line = None
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch.exists():
            shutil.rmtree(self._scratch)

    def wait_event(
        self, name: str | tuple[str, ...], timeout_s: float = 10.0, after: int = 0
    ) -> dict[str, Any]:
        """Wait for board event ``name`` (booted, wdt-reset...; or any of a tuple of names)
        after index ``after``."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.events[after:]:
                if e.get("event") in names:
                    return e
                if e.get("event") == "crash-loop":
                    crashes = [x for x in self.events if x.get("event") == "vm-crash"]
                    raise EmulatorError(f"the emulated VM keeps crashing: {crashes[-1:]}")
            if self._proc is not None and self._proc.poll() is not None:
                raise EmulatorError(
                    f"the emulator exited ({self._proc.returncode}); events: {self.events[-5:]}"
                )
            time.sleep(0.01)
        raise EmulatorError(f"no {name!r} from the emulated {self.board.name} within {timeout_s} s")

    def wait_output(self, text: str | bytes, timeout_s: float = 10.0) -> str:
        """Wait until the board has printed ``text``; returns the serial log so far, decoded.

        The console and the board's events travel on different pipes, so a line printed at
        boot may arrive just after ``start()`` returned: wait for it rather than look once.
        """
        want = text.encode() if isinstance(text, str) else text
        deadline = time.monotonic() + timeout_s
        while want not in self.serial_log:
            if time.monotonic() > deadline:
                tail = bytes(self.serial_log[-1500:]).decode(errors="replace")
                raise EmulatorError(
                    f"the emulated {self.board.name} did not print {want!r} within "
                    f"{timeout_s} s; its last output:\n{tail}"
                )
            time.sleep(0.02)
        return bytes(self.serial_log).decode(errors="replace")

    # ---- the board's hardware, from the host ------------------------------------------

    def request(self, op: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
        """Send one control request to the board and wait for its reply."""
        if self._ctl is None:
            raise ControlError("the board is not running")
        req_id = next(self._ids)
        try:  # the VM's JSON has no NaN or Infinity: one would kill the control channel
            line = json.dumps({"id": req_id, "op": op, **args}, allow_nan=False)
        except ValueError:
            raise ControlError(f"{op} {args}: only finite numbers reach the board") from None
        self._ctl.sendall((line + "\n").encode())
        deadline = time.monotonic() + timeout_s
        with self._reply_ready:
            while req_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlError(
                        f"no answer to {op} from the emulated {self.board.name} in {timeout_s} s"
                    )
                self._reply_ready.wait(left)
            reply = self._replies.pop(req_id)
        if "error" in reply:
            raise ControlError(reply["error"])
        return reply

    def set(self, path: str, value: Any) -> None:
        """Set a physical value of a virtual peripheral: ``set("sht3x.temperature", 31.5)``;
        faults too: ``set("bh1750.absent", 1)``, ``set("sht3x.noise", 0.5)``. Raises
        ControlError for a value outside the quantity's type and range (hil/quantities.py)."""
        from polekit.hil.quantities import BadValueError, check

        sensor = self.board.sensors.get(path.partition(".")[0])
        try:
            check(sensor.type if sensor else None, path, value)
        except BadValueError as exc:
            raise ControlError(str(exc)) from None
        self.request("set", path=path, value=value)

    def get(self, path: str) -> Any:
        """Read a peripheral's value or an actuator's state: ``get("lamp.level")``; or the
        level the firmware drives on a pin: ``get("pin.18")`` (None: it never drove it)."""
        name, _, pin = path.partition(".")
        if name == "pin":
            if not pin.isdigit():
                raise ControlError(f"{path}: name a GPIO number, e.g. pin.18")
            return self.pin_levels.get(int(pin))
        return json.loads(self.request("get", path=path)["json"])

    def watch_pin(self, pin: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(level)`` (in the board's reader thread) each time the firmware
        changes the level of GPIO ``pin``, and with 0 when a reset or deep sleep lets it go
        (the pins float back to inputs; a pulled-down driver stage reads 0)."""
        self._pin_watchers.setdefault(pin, []).append(callback)

    def _pin_changed(self, pin: int, level: int) -> None:
        self.pin_levels[pin] = level
        for callback in self._pin_watchers.get(pin, ()):
            callback(level)

    @property
    def rs485_line(self) -> VirtualLine | None:
        """The virtual RS-485 line the board's RS-485 UART is on (faults: drop/corrupt)."""
        return self._line

    def reset(self) -> None:
        """Press the reset button (hard reset; the flash is kept)."""
        self.request("reset")

    def power_cycle(self, off_s: float = 0.1) -> None:
        """Cut the power for ``off_s`` and restore it: RAM is lost, the flash is kept."""
        self.request("power-cycle", offMs=int(off_s * 1000), timeout_s=off_s + 30)

    # ---- the ROM bootloader (download mode) -------------------------------------------

    def read_spi_flash(self, offset: int, length: int) -> bytes:
        """Bytes of the raw SPI flash (what esptool wrote)."""
        if self._rom is not None:
            return bytes(self._rom.flash[offset : offset + length])
        return bytes(self._load_spi_flash()[offset : offset + length])

    def strap_reset(self, download: bool) -> None:
        """The chip comes out of reset (EN released) with IO0 low (``download``: the ROM
        bootloader waits for esptool) or high (the application runs), as a dev board's
        auto-reset circuit makes it when esptool or a terminal toggles DTR and RTS."""
        if download:
            if self.in_bootloader:
                self._rom.stub = False  # a fresh ROM: the stub in RAM is gone
                return
            self._stop_vm()
            self._enter_rom()
        elif self.in_bootloader:
            self._rom_boot.set()  # the ROM thread checks the image and starts the VM
        else:
            self.reset()

    def throttle(self, share: float | None) -> None:
        """Run the board at ``share`` of the host's CPU (hil/throttle.py; hil/chip_speed.py
        finds the share that makes it as fast as an ESP32); None: at full speed again."""
        from polekit.hil.throttle import CpuThrottle

        if self._throttle is not None:
            self._throttle.stop()
            self._throttle = None
        if share is not None:
            self._throttle = CpuThrottle(lambda: self._proc.pid if self._proc else None, share)

    def _stop_vm(self) -> None:
        self.throttle(None)  # a stopped process would not hear SIGTERM
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the board saves its flash to fs_dir first
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)  # the pump ends with the board's output
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._config_file:
            os.unlink(self._config_file)
            self._config_file = ""

    # ---- the radio on the virtual air ---------------------------------------------------

    @property
    def base_mac(self) -> str:
        """The chip's base MAC (its unique id), as esptool read-mac prints it."""
        return mac_text(bytes.fromhex(self.unique_id))

    @property
    def mac(self) -> str:
        """The board's Bluetooth address, on the air: the base MAC + 2 (ESP-IDF's scheme)."""
        return mac_text(interface_mac(bytes.fromhex(self.unique_id), "bt"))

    def _radio_out(self, text: str) -> None:
        if self.air is None:
            return
        if self._air_link is None:
            from polekit.hil.air import AirPeripheral

            self._air_link = AirPeripheral(self.air, self.mac, self._air_event)
            threading.Thread(
                target=self._repeat_adverts, args=(self._air_link,), daemon=True
            ).start()
        msg = json.loads(text)
        with self._adv_lock:
            if msg.get("op") == "adv_stop":  # gap_advertise(None): the radio goes quiet
                self._last_adv = None
                return
            if msg.get("op") == "adv":
                # the radio keeps sending the last advert at its interval, as the chip does
                self._last_adv = (msg, max(ADVERT_REPEAT_MIN_S, msg.pop("every_us", 0) / 1e6))
                self._new_adv.set()
            self._air_link.send(msg)

    def _radio_off(self) -> None:
        # a reset, a power cut, deep sleep: the chip's radio stops, so its connections drop
        # (a central sees the disconnect, as after the link's supervision timeout) and it
        # is silent until the firmware advertises again
        with self._adv_lock:
            link, self._air_link = self._air_link, None
            self._last_adv = None
            self._new_adv.set()
        if link is not None:
            link.close()

    def _repeat_adverts(self, mine: Any) -> None:
        while not self._stop.is_set():
            last = self._last_adv
            if self._new_adv.wait(last[1] if last else 0.5):
                self._new_adv.clear()  # just sent: its repeats start from now
                continue
            with self._adv_lock:
                link, last = self._air_link, self._last_adv
                if link is None or link is not mine:  # the radio went off (a reset)
                    return
                if last is not None and self._proc is not None and not self._new_adv.is_set():
                    link.send(last[0])

    def _air_event(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        # a central on the air reaches the firmware's GATT server
        ev = msg.get("ev")
        if ev == "connect":
            self.set("ble.connect", msg["conn"])
            return {"conn": msg["conn"], "services": self.get("ble.services")}
        if ev == "read":
            return {"data": self.get(f"ble.value.{int(msg['handle'])}")}
        if ev == "write":
            self.set("ble.write", f"{int(msg['conn'])}:{int(msg['handle'])}:{msg['data']}")
            return {}
        if ev == "disconnect":
            self.set("ble.disconnect", msg["conn"])
        return None

    def _load_spi_flash(self) -> bytearray:
        size = self.board.flash_size_mb * 1024 * 1024
        try:
            data = bytearray(self.spi_flash_path.read_bytes())
        except FileNotFoundError:
            return bytearray(b"\xff" * size)
        return data[:size] + bytearray(b"\xff" * (size - len(data)))

    def _save_spi_flash(self) -> None:
        if self._rom is not None:
            self.spi_flash_path.write_bytes(bytes(self._rom.flash))

    def _print(self, text: str) -> None:
        data = text.encode()
        self.serial_log += data
        _write_all(self._master, data)

    def _enter_rom(self) -> None:
        from polekit.hil.rom import RomBootloader

        def erase_filesystem() -> None:  # erase_flash takes MicroPython's filesystem too
            for item in self.fs_dir.iterdir():
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()

        self._rom = RomBootloader(
            self.board.chip,
            self._load_spi_flash(),
            bytes.fromhex(self.unique_id),
            send=lambda data: _write_all(self._master, data),
            on_boot=self._rom_boot.set,
            on_erase=erase_filesystem,
        )
        self._rom.faults = self.rom_faults
        self.in_bootloader = True
        self._rom_boot.clear()
        self._print(
            "rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
            "waiting for download\r\n"
        )
        self.events.append({"event": "bootloader"})
        self._rom_thread = threading.Thread(target=self._serve_rom, daemon=True)
        self._rom_thread.start()

    def _serve_rom(self) -> None:
        from polekit.hil.rom import image_problem

        line_free = time.monotonic()  # when the UART has taken in all it was sent
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
                data = os.read(self._master, 4096) if ready else b""
            except (OSError, ValueError):
                return
            if data:
                # a pseudo-terminal has no baud rate: take bytes in at the UART's (10 bits a
                # character), so flashing takes as long as on a real line
                line_free = max(line_free, time.monotonic()) + len(data) * 10 / self._rom.baud
                time.sleep(max(0.0, line_free - time.monotonic()))
                self._rom.feed(data)
            if not self._rom_boot.is_set():
                continue
            self._rom_boot.clear()
            self._save_spi_flash()
            problem = image_problem(self._rom.flash, self.board.firmware_offset, self.board.chip)
            if problem:  # as the chip's ROM prints it; stay in download mode for a retry
                self._print(f"\r\n{problem}\r\nwaiting for download\r\n")
                self.events.append({"event": "bad-image", "why": problem})
                continue
            self.in_bootloader = False
            self._rom = None
            self._print("\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")
            try:
                self._launch(30.0)
            except EmulatorError as exc:
                self.events.append({"event": "boot-failed", "why": str(exc)})
            return

    # ---- plumbing ---------------------------------------------------------------------

    def _definition(self) -> dict[str, Any]:
        from polekit.firmware.install import board_map

        chip = bytes.fromhex(self.unique_id)
        return {
            **board_map(self.board),
            "unique_id": self.unique_id,
            # what network and bluetooth report: derived here, in one place (hil/chip_id.py)
            "macs": {
                name: interface_mac(chip, name).hex() for name in ("wifi_sta", "wifi_ap", "bt")
            },
        }

    def _bridge_uarts(self) -> None:
        # UARTs no virtual sensor answers on are wired out to the host: the RS-485 line
        sensor_uarts = {s.bus for s in self.board.sensors.values()}
        for bus in self.board.buses.values():
            if bus.type != "uart" or bus.name in sensor_uarts:
                continue
            role = bus.params.get("role", bus.name)
            if role == "rs485":
                if self._line is None:
                    self._line = VirtualLine(
                        baudrate=bus.params.get("baudrate", 9600), bits_per_char=11
                    )
                line = self._line
            else:
                line = VirtualLine(baudrate=bus.params.get("baudrate", 115200), bits_per_char=10)
                self._extra_lines.append(line)
            fd = os.open(line.endpoint(), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            self._uart_fds[bus.params["id"]] = fd
            self.uarts[role] = line.endpoint()

    def _read_events(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            try:
                self.events.append(json.loads(line))
                if self.events[-1].get("event") in _PINS_RELEASED:
                    for pin in [p for p, level in self.pin_levels.items() if level]:
                        self._pin_changed(pin, 0)
                    self._radio_off()
            except ValueError:
                self.events.append(
                    {"event": "stderr", "text": line.decode(errors="replace").rstrip()}
                )

    def _read_control(self) -> None:
        assert self._ctl is not None
        buf = b""
        while True:
            try:
                chunk = self._ctl.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "reply" in msg:
                    with self._reply_ready:
                        self._replies[msg["reply"]] = msg
                        self._reply_ready.notify_all()
                elif msg.get("ev") == "radio":
                    self._radio_out(msg["text"])
                elif msg.get("ev") == "pin":
                    self._pin_changed(int(msg["pin"]), int(msg["level"]))
                elif msg.get("ev") == "uart":
                    fd = self._uart_fds.get(msg["uart"])
                    if fd is not None:
                        _write_all(fd, bytes.fromhex(msg["hex"]))

    def _pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        out = proc.stdout.fileno()
        uart_of_fd = {fd: uart for uart, fd in self._uart_fds.items()}
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, out, *uart_of_fd], [], [], 0.1)
            except (OSError, ValueError):
                return
            for fd in ready:
                if fd in uart_of_fd:  # bytes from the line into the board's UART
                    try:
                        data = os.read(fd, 4096)
                    except OSError:
                        continue
                    if data and self._ctl is not None:
                        msg = {"id": 0, "op": "uart-in", "uart": uart_of_fd[fd], "hex": data.hex()}
                        try:
                            self._ctl.sendall((json.dumps(msg) + "\n").encode())
                        except OSError:  # the board is being powered off
                            return
                elif fd == self._master:  # the host typed on the REPL
                    try:
                        proc.stdin.write(os.read(self._master, 4096))
                    except OSError:
                        return
                elif fd == out:  # the board printed
                    data = os.read(out, 65536)
                    if not data:
                        return
                    self.serial_log += data
                    _write_all(self._master, data)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return  # unplugged: the bytes are lost, as on a wire
        data = data[n:]
