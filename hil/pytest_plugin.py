"""The polekit HIL pytest plugin: the same tests on a real board or on an emulated one.

    pytest hil/suite --hil-board pole-env-esp32                    # emulated board
    pytest hil/suite --hil-board pole-env-esp32 --hil-port /dev/ttyUSB0 [--hil-line /dev/ttyUSB1]

Fixtures:
  ``board``   the board under test: ``.repl`` (its serial port), ``.exec(code)``,
              ``.put(local, remote)``, ``.soft_reset()``, ``.serial_log()``;
  ``physics`` set/get the physical world (``physics.set("sht3x.temperature", 30)``); on a
              real board without a test jig, tests using it are skipped with the reason;
  ``line``    the host end of the board's RS-485 line, for a Modbus master;
  ``node``    a Modbus master (``polekit.hil.nodekit.NodeMaster``) on the node firmware,
              restarted first if an earlier test stopped it (``board.exec`` does).
The emulated board boots with the node firmware and the board's reference config installed
(``--hil-bare``: an empty flash); a real board must have it deployed already.
With ``--embedded-services serial`` and no ``--port``, pytest-embedded's ``dut`` is given
the emulated board's port, so ``dut.expect(...)`` works the same on both. Each board's
serial log is saved next to the JUnit report (``--junitxml``), or in ``.polekit-hil/``.
Wrong --hil-* options stop the run with one line. pytest-embedded's logs and cache go into
the run's own pytest base temp (see pytest_fixture_setup).
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

_KEY = pytest.StashKey[Any]()
_FLASH_KEY = pytest.StashKey[str]()
_SPEED_KEY = pytest.StashKey[str]()
_SLOWDOWN_KEY = pytest.StashKey[float]()  # chip's speed / board's, when the board is slower


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("polekit-hil", "polekit hardware-in-the-loop")
    group.addoption(
        "--hil-board",
        default="pole-env-esp32",
        help="board definition of the board under test (polekit boards list)",
    )
    group.addoption(
        "--hil-port",
        default=None,
        help="serial port of a real board; without it an emulated board is started",
    )
    group.addoption(
        "--hil-line",
        default=None,
        help="real board only: the host's RS-485 adapter on the board's line",
    )
    group.addoption(
        "--hil-chip-speed",
        action="store_true",
        help="emulated board only: run it at an ESP32's speed (its CPU share measured with "
        "Pystone at the start; the summary reports the ratio achieved)",
    )
    group.addoption(
        "--hil-bare",
        action="store_true",
        help="emulated board only: boot with an empty flash instead of the node firmware",
    )


class RealBoard:
    """A board on a serial port: everything through mpremote, as a field engineer would."""

    emulated = False

    def __init__(self, port: str, line: str | None, board_name: str) -> None:
        from polekit.boards import load

        self.repl = port
        self.line = line
        self.board = load(board_name)

    def serial_log(self) -> str:
        return ""

    def stop(self) -> None:
        pass


class Board:
    """What a HIL test gets as ``board``: the same methods on real and emulated boards."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.repl: str = target.repl
        self.definition = target.board
        self.emulated = not isinstance(target, RealBoard)

    def _mpremote(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        mpremote = str(Path(sys.executable).with_name("mpremote"))
        return subprocess.run(
            [mpremote, "connect", self.repl, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def exec(self, code: str, timeout_s: float = 60) -> str:
        """Run ``code`` on the board (without resetting it); its output, stripped. Raises
        AssertionError with the board's traceback if it fails."""
        result = self._mpremote("resume", "exec", code, timeout_s=timeout_s)
        assert result.returncode == 0, f"on the board:\n{result.stdout}{result.stderr}"
        return result.stdout.strip()

    def put(self, local: Path | str, remote: str) -> None:
        """Copy a host file to the board's flash (``remote`` like ``lib/x.py``)."""
        result = self._mpremote("resume", "fs", "cp", str(local), ":" + remote)
        assert result.returncode == 0, result.stderr

    def soft_reset(self) -> None:
        """Ctrl-D: restart MicroPython (boot.py runs again; the flash is kept)."""
        result = self._mpremote("soft-reset")
        assert result.returncode == 0, result.stderr

    def serial_log(self) -> str:
        """What the board printed so far (emulated boards; empty on real ones)."""
        return (
            self.target.serial_log()
            if isinstance(self.target, RealBoard)
            else bytes(self.target.serial_log).decode(errors="replace")
        )


class Physics:
    """The physical world around the board (virtual peripherals of the emulated board)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def set(self, path: str, value: Any) -> None:
        self.target.set(path, value)

    def get(self, path: str) -> Any:
        return self.target.get(path)


def _start(config: pytest.Config) -> Any:
    target = config.stash.get(_KEY, None)
    if target is not None:
        return target
    port = config.getoption("hil_port")
    if port:
        target = RealBoard(port, config.getoption("hil_line"), config.getoption("hil_board"))
    else:
        import tempfile

        from polekit.hil.emulator import EmulatedBoard

        name = config.getoption("hil_board")
        flash = None
        if not config.getoption("hil_bare"):
            from polekit.firmware.install import install

            folder = tempfile.mkdtemp(prefix="polekit-hil-flash-")
            config.stash[_FLASH_KEY] = folder  # removed when the run ends
            flash = install(folder, name)
        target = EmulatedBoard(name, fs_dir=flash).start()
        if config.getoption("hil_chip_speed"):
            config.stash[_SPEED_KEY], config.stash[_SLOWDOWN_KEY] = _chip_speed(target)
    config.stash[_KEY] = target
    return target


def _chip_speed(target: Any) -> tuple[str, float]:
    # the VM's Pystone rate at full speed, then the CPU share that makes it an ESP32's,
    # corrected from the rate measured at that share (stopping and continuing a process costs
    # time of its own), and the rate achieved in the end: what the summary reports
    from polekit.hil.chip_speed import ESP32_PYSTONES, chip_share, pystones

    board = Board(target)
    board.soft_reset()  # the firmware stops and its heap is free for the measurement
    vm = pystones(board, rounds=15)
    share = chip_share(vm)
    tried: list[tuple[float, float]] = []  # (share, rate achieved)
    for _ in range(4):
        target.throttle(share)
        achieved = pystones(board, rounds=5)
        tried.append((share, achieved))
        if abs(achieved / ESP32_PYSTONES - 1) < 0.15:
            break
        # at most a factor of two a step: one slow round (the host busy) must not undo it
        step = max(0.5, min(2.0, ESP32_PYSTONES / achieved))
        share = max(0.01, min(1.0, share * step))
    share, achieved = min(tried, key=lambda t: abs(t[1] / ESP32_PYSTONES - 1))
    target.throttle(share)
    board.soft_reset()  # the measurement's objects go; the node fixture restarts the firmware
    return (
        f"chip speed: the VM runs Pystone at {vm:.0f}/s, an ESP32 at {ESP32_PYSTONES}/s; "
        f"at a CPU share of {share:.3f} the board ran {achieved:.0f}/s "
        f"({achieved / ESP32_PYSTONES:.2f} of the chip's speed)"
    ), max(1.0, ESP32_PYSTONES / achieved)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    line = config.stash.get(_SPEED_KEY, None)
    if line is not None:
        terminalreporter.write_line(line)


# pytest-embedded's session fixtures that read a folder option, and the option each reads
_EMBEDDED_FOLDER_OPTIONS = {"session_root_logdir": "root_logdir", "cache_dir": "cache_dir"}


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> None:
    """pytest-embedded, loaded for every test, keeps its logs and cache in
    ``<system temp>/pytest-embedded`` unless told otherwise: one folder for all users, owned
    by whoever ran first (everyone else then gets PermissionError on every test), with one
    folder left behind per run. Unless ``--root-logdir``/``--cache-dir`` are given, they go
    into this run's pytest base temp instead: per user, per run, and removed with the old runs
    by pytest (it keeps the last three). Set just before the fixture that reads the option
    runs: a fixture of our own could not be ordered before pytest-embedded's reliably."""
    option = _EMBEDDED_FOLDER_OPTIONS.get(fixturedef.argname)
    if (
        option is None
        or not fixturedef.func.__module__.startswith("pytest_embedded")
        or request.config.getoption(option, None)
    ):
        return
    factory = request.getfixturevalue("tmp_path_factory")
    if factory is not None:  # None under --setup-plan, where no fixture runs
        setattr(request.config.option, option, str(factory.getbasetemp()))


def _check_options(config: pytest.Config) -> None:
    """Stop a run with wrong --hil-* options before any test or board starts, with one line
    saying what is wrong and what to give instead (pytest prints a UsageError as
    ``ERROR: ...``, without a traceback)."""
    from polekit.boards import BoardError, load, names

    board = config.getoption("hil_board")
    try:
        load(board)
    except BoardError as exc:
        if board.endswith(".toml"):
            raise pytest.UsageError(f"--hil-board {exc}") from None
        near = difflib.get_close_matches(board, names(), n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise pytest.UsageError(
            f"--hil-board {board}: no such board; {hint}(known boards: {', '.join(names())})"
        ) from None
    port, line = config.getoption("hil_port"), config.getoption("hil_line")
    if not port:
        if line:
            raise pytest.UsageError(
                f"--hil-line {line}: only for a real board (give its --hil-port too); the "
                "emulated board brings its own RS-485 line"
            )
        return
    if config.getoption("hil_bare"):
        raise pytest.UsageError(
            "--hil-bare: only for the emulated board; a real board runs what is deployed on it"
        )
    if config.getoption("hil_chip_speed"):
        raise pytest.UsageError("--hil-chip-speed: only for the emulated board; a real one is")
    for option, path in (("--hil-port", port), ("--hil-line", line)):
        if path and "://" not in path and not os.path.exists(path):
            from serial.tools import list_ports

            present = ", ".join(p.device for p in list_ports.comports()) or "none"
            raise pytest.UsageError(
                f"{option} {path}: no such port (ports here: {present}; `polekit doctor` "
                "checks them)"
            )


def pytest_configure(config: pytest.Config) -> None:
    _check_options(config)
    # pytest-embedded's app_path fixture, set up for every test, records an XML attribute,
    # which pytest's default JUnit format (xunit2) cannot hold: a warning per test that
    # buries the run's real findings; the attribute is just left out of the report
    config.addinivalue_line(
        "filterwarnings", "ignore:record_xml_attribute is incompatible:pytest.PytestWarning"
    )
    services = config.getoption("embedded_services", default=None) or ""
    if "serial" in str(services) and not config.getoption("port", default=None):
        from polekit.hil.mpvm import MicroPythonNotFoundError

        # pytest-embedded will open --port: give it the board's
        try:
            config.option.port = _start(config).repl
        except MicroPythonNotFoundError as exc:
            raise pytest.UsageError(f"cannot start the emulated board: {exc}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    target = config.stash.get(_KEY, None)
    if target is not None:
        junit = config.getoption("xmlpath", default=None)
        folder = Path(junit).resolve().parent if junit else Path(".polekit-hil")
        folder.mkdir(parents=True, exist_ok=True)
        if not isinstance(target, RealBoard):
            (folder / f"{target.board.name}-serial.log").write_bytes(bytes(target.serial_log))
        target.stop()
    flash = config.stash.get(_FLASH_KEY, None)
    if flash is not None:
        shutil.rmtree(flash)


@pytest.fixture(scope="session")
def board(request: pytest.FixtureRequest) -> Board:
    """The board under test (real with --hil-port, else emulated)."""
    return Board(_start(request.config))


@pytest.fixture(scope="session")
def physics(request: pytest.FixtureRequest) -> Physics:
    """The physical world around the board; skips on a real board."""
    target = _start(request.config)
    if isinstance(target, RealBoard):
        pytest.skip(
            "needs the emulated board's virtual physics (a real board has no test jig here)"
        )
    return Physics(target)


@pytest.fixture(scope="session")
def line(request: pytest.FixtureRequest) -> str:
    """The host end of the board's RS-485 line (a serial port path)."""
    target = _start(request.config)
    if isinstance(target, RealBoard):
        if not target.line:
            pytest.skip("give --hil-line with the host's RS-485 adapter for this real board")
        return str(target.line)
    if "rs485" not in target.uarts:
        pytest.skip(f"{target.board.name} has no RS-485 line")
    return str(target.uarts["rs485"])


def restart_firmware(port: str, timeout_s: float = 30) -> str:
    """Soft-reset the board from its friendly REPL (Ctrl-C, Ctrl-B, Ctrl-D) so main.py starts
    the node again; returns what it printed up to the node's "up" line."""
    import serial

    seen = b""
    with serial.Serial(port, 115200, timeout=0.2) as repl:
        repl.write(b"\r\x03\x03\x02\x04")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen += repl.read(256)
            up = seen.find(b" up, ")
            if (up >= 0 and b"\n" in seen[up:]) or b"safe mode" in seen:
                break
    text = seen.decode(errors="replace")
    if " up, " not in text:
        raise AssertionError(
            f"the node firmware did not start on {port} (deploy it first: polekit deploy); "
            f"the board printed:\n{text[-2000:]}"
        )
    return text


@pytest.fixture
def node(board: Board, line: str, request: pytest.FixtureRequest) -> Any:
    """A Modbus master on the node firmware (unit id from the board's reference config),
    with the firmware running."""
    from polekit.hil.nodekit import NodeMaster

    if board.definition.uplink != "modbus":
        pytest.skip(f"{board.definition.name} has no Modbus uplink")
    master = NodeMaster(
        line,
        unit=int(board.definition.config.get("unit", 1)),
        regmap=board.definition.register_map or "pole-env",
        baudrate=int(board.definition.config.get("baudrate", 9600)),
        # timeouts are the chip's: a board held a little under its speed gets longer ones
        time_scale=request.config.stash.get(_SLOWDOWN_KEY, 1.0),
    )
    if not master.answers():
        restart_firmware(board.repl, timeout_s=30 * master.time_scale)
        values = master.wait_for(lambda v: v["valid"], timeout_s=20)
        assert values, "the node firmware started but does not answer Modbus on its line"
    return master
