"""The pole node firmware on the emulated board: what only the emulator can show (the
`polekit emulate` command, broken configs, boot loops, report filtering against exact
physical values). Registers, alarms, the lamp, failing sensors and the watchdog are in the
HIL suite (hil/suite/test_node.py), which runs on real boards too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from polekit.hil.emulator import EmulatedBoard
from polekit.hil.nodekit import NodeMaster
from polekit.protocols import identity, modbus

from boardkit import polekit_emulate

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
POLE_ENV = modbus.register_map("pole-env")
CODE = identity.make("371600", "PL", 7)


def install(flash: Path, **config: object) -> None:
    from polekit.firmware.install import install as install_firmware

    install_firmware(flash, "pole-env-esp32", {"device_code": CODE, "watchdog_ms": 2000, **config})


def master(board: EmulatedBoard) -> NodeMaster:
    return NodeMaster(board.uarts["rs485"])


def test_polekit_emulate_boots_the_firmware_and_answers_modbus_at_once(tmp_path: Path) -> None:

    with polekit_emulate("--board", "pole-env-esp32", "--fs", str(tmp_path / "flash")) as ports:
        values = NodeMaster(ports["uarts"]["rs485"]).wait_for(
            lambda v: v["valid"] & modbus.VALID_SHT3X, timeout_s=20
        )
        assert values["temperature"] == 21.0 and values["valid"] & modbus.VALID_SHT3X


def boot_log(tmp_path: Path, **config: object) -> str:
    """The console of a pole node booted with ``config``, up to its "up" line."""
    flash = tmp_path / "flash"
    install(flash, **config)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        return board.wait_output("up, unit 1", timeout_s=20)


def test_bad_config_values_are_logged_and_defaults_used(tmp_path: Path) -> None:
    log = boot_log(tmp_path, unit="x", sample_ms=5, colour="blue")
    assert "config: unit = 'x' must be a number 1..247; using 1" in log
    assert "config: sample_ms = 5 must be a number 100..3600000; using 1000" in log
    assert "config: unknown key 'colour' ignored" in log
    assert "up, unit 1" in log


def test_repeated_start_crashes_end_in_safe_mode_with_the_repl_up(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install(flash)
    board_map = json.loads((flash / "board.json").read_text())
    board_map["buses"] = [b for b in board_map["buses"] if b["name"] != "i2c0"]  # a broken map
    (flash / "board.json").write_text(json.dumps(board_map))
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        for _ in range(3):
            before = len(board.events)
            board.reset()
            board.wait_event("booted", timeout_s=20, after=before)
        log = board.wait_output("safe mode: the node crashed", timeout_s=20)
        assert "start failed (1/3 before safe mode)" in log
        assert "safe mode: the node crashed at start 3 times in a row" in log
        result = subprocess.run(
            [MPREMOTE, "connect", board.repl, "exec", "print('repl ok')"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout.strip() == "repl ok"


def test_report_policy_filters_spikes_and_reports_on_change(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    install(flash, sample_ms=200, report={"temperature": {"delta": 1.0, "window": 3}})
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        board.set("sht3x.temperature", 18.0)  # well away from the 21.0 default
        values = master(board).wait_for(lambda v: v["temperature"] == 18.0)
        assert values["temperature"] == 18.0
        board.set("sht3x.temperature", 18.6)  # moved less than the 1.0 delta: not reported
        # humidity is measured with it (median of 5): once its change shows, 18.6 was sampled
        board.set("sht3x.humidity", 60.0)
        values = master(board).wait_for(lambda v: abs(v["humidity"] - 60.0) < 0.2)
        assert abs(values["humidity"] - 60.0) < 0.2 and values["temperature"] == 18.0
        board.set("sht3x.spike", {"temperature": 45.0})  # one wild sample: the median ignores it
        deadline = time.monotonic() + 10
        while board.get("sht3x.spike") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert board.get("sht3x.spike") == {}, "the node never measured the spike"
        board.set("sht3x.humidity", 50.0)  # three samples after the spike, at least
        values = master(board).wait_for(lambda v: abs(v["humidity"] - 50.0) < 0.2)
        assert abs(values["humidity"] - 50.0) < 0.2 and values["temperature"] == 18.0
        seq = master(board).read()["node_seq"]
        board.set("sht3x.temperature", 20.0)  # a real change: reported within the window
        values = master(board).wait_for(lambda v: v["temperature"] == 20.0, timeout_s=5)
        assert values["temperature"] == 20.0 and values["node_seq"] > seq  # type: ignore[operator]


def test_report_policy_config_mistakes_are_logged(tmp_path: Path) -> None:
    log = boot_log(
        tmp_path,
        report={"temprature": {"delta": 1}, "humidity": {"filter": "mode", "delta": -1}},
    )
    assert "config: report.temprature: no such quantity (known: humidity, illuminance" in log
    assert "config: report.humidity.filter = 'mode' must be one of median/average/none" in log
    assert "config: report.humidity.delta = -1 must be a number 0..1000000; using 0.5" in log
    assert "up, unit 1" in log


def test_precompiled_firmware_boots_and_serves_the_same_registers(tmp_path: Path) -> None:
    from polekit.firmware.install import install as install_firmware

    flash = install_firmware(tmp_path / "flash", "pole-env-esp32", compiled=True)
    lib = flash / "lib"
    assert not list(lib.rglob("*.py")) and (lib / "node" / "app.mpy").is_file()
    assert (lib / "protocols" / "modbus.mpy").read_bytes()[:2] == b"M\x06"  # mpy version 6
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        board.set("sht3x.temperature", 18.5)
        values = master(board).wait_for(lambda v: v["temperature"] == 18.5, timeout_s=20)
        assert values["temperature"] == 18.5 and values["free_heap"] >= 112640 // 2


def test_a_node_task_that_dies_restarts_the_node(tmp_path: Path) -> None:
    # one of the node's tasks raises once it runs (here its door and water inputs): the
    # node used to go on without it, the loop watch still feeding the watchdog (a node deaf
    # on its bus for good when that task was the Modbus slave); it restarts instead
    from polekit.firmware.deploy.bundle import DEFAULT_MPY, compile_module
    from polekit.firmware.install import install as install_firmware

    flash = install_firmware(
        tmp_path / "flash", "pole-env-esp32", {"device_code": CODE}, compiled=True
    )
    source = (Path(__file__).parent.parent / "firmware" / "node" / "app.py").read_text()
    broken = source.replace(
        "    async def _inputs(self):\n",
        '    async def _inputs(self):\n        raise RuntimeError("a task that dies")\n',
    )
    assert broken != source, "app.py has no _inputs task: update this test"
    (flash / "lib" / "node" / "app.mpy").write_bytes(
        compile_module(broken.encode(), "lib/node/app.py", DEFAULT_MPY)
    )
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        board.wait_output("a node task failed; restarting", 30)
        board.wait_event("booted", 30, after=len(board.events))  # up again
        log = bytes(board.serial_log).decode(errors="replace")
        resets = [e for e in board.events if e.get("event") == "hard-reset"]
    assert "RuntimeError: a task that dies" in log, log[-2000:]
    assert resets and resets[0]["why"] == "machine.reset", resets
