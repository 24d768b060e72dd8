"""`polekit build` and `polekit deploy` against the emulated board: a deterministic bundle,
files landing with the manifest's hashes, a second deploy copying nothing, stale files
removed, the self-test table, and the node serving Modbus afterwards."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from polekit.firmware.deploy.bundle import build
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.nodekit import NodeMaster
from polekit.protocols import identity

from boardkit import Terminal, polekit

CODE = identity.make("371600", "PL", 21)
# what a first deploy copies: the bundle's files, config.json and manifest.json
FILES = len(build("pole-env-esp32", mpy=None).files) + 2


def test_build_is_deterministic_and_its_manifest_matches_the_files(tmp_path: Path) -> None:
    for out in ("a", "b"):
        result = polekit("build", "--board", "pole-env-esp32", "-o", str(tmp_path / out))
        assert result.returncode == 0, result.stderr
        assert "files" in result.stdout and "mpy 6.3" in result.stdout
    a = {
        p.relative_to(tmp_path / "a"): p.read_bytes()
        for p in (tmp_path / "a").rglob("*")
        if p.is_file()
    }
    b = {
        p.relative_to(tmp_path / "b"): p.read_bytes()
        for p in (tmp_path / "b").rglob("*")
        if p.is_file()
    }
    assert a == b
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["board"] == "pole-env-esp32" and manifest["firmware_version"] == "0.1"
    for path, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "a" / path).read_bytes()).hexdigest() == digest
    assert (tmp_path / "a" / "lib/node/app.mpy").read_bytes()[:2] == b"M\x06"
    assert not list((tmp_path / "a" / "lib").rglob("*.py"))
    assert json.loads((tmp_path / "a" / "config.json").read_text())["unit"] == 1


def test_build_for_micropython_1_22_uses_its_compiler_and_unknown_versions_are_refused() -> None:
    from polekit.firmware.deploy.bundle import _compiler

    version = subprocess.run([_compiler("6.2"), "--version"], capture_output=True, text=True)
    assert "MicroPython v1.22" in version.stdout and "mpy v6.2" in version.stdout
    old = build("pole-env-esp32", "6.2").files["lib/protocols/modbus.mpy"]
    assert old[:2] == b"M\x06"  # bytecode-only .mpy: one header for 6.x
    result = polekit("build", "--board", "pole-env-esp32", "--mpy", "5", "-o", "/nonexistent")
    assert result.returncode == 1
    assert "no mpy-cross for .mpy version 5" in result.stderr and "polekit flash" in result.stderr


@pytest.mark.parametrize("march", ["xtensawin", "rv32imc"])
def test_node_bundle_compiles_for_the_chips_native_architectures(march: str) -> None:
    # every module goes through the chip's native emitter; none has native code yet, so each
    # .mpy stays plain bytecode (header arch 0), which the chip and the emulator both load
    bundle = build(
        "pole-env-esp32" if march == "xtensawin" else "community-sos-esp32c3", march=march
    )
    mpys = {p: b for p, b in bundle.files.items() if p.endswith(".mpy")}
    # all but main.py, board.json, umqtt's and ntptime's LICENSE
    assert len(mpys) == len(build("pole-env-esp32", mpy=None).files) - 4
    assert {b[:3] for b in mpys.values()} == {b"M\x06\x00"}
    assert bundle.manifest["march"] == march


def test_native_code_the_chips_compiler_refuses_fails_the_build() -> None:
    from polekit.firmware.deploy.bundle import BundleError, compile_module

    native = b"import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n"
    with pytest.raises(BundleError, match="invalid arch"):  # bytecode only: no native emitter
        compile_module(native, "lib/node/fast.py", "6.3")
    # the header's third byte is arch << 2 | sub-version (py/persistentcode.h:
    # MP_NATIVE_ARCH_XTENSAWIN = 10, MP_NATIVE_ARCH_RV32IMC = 11)
    assert compile_module(native, "lib/node/fast.py", "6.3", "xtensawin")[:3] == b"M\x06\x2b"
    assert compile_module(native, "lib/node/fast.py", "6.3", "rv32imc")[:3] == b"M\x06\x2f"
    asm = b"import micropython\n@micropython.asm_xtensa\ndef g(a2):\n    movi(a2, 1 << 20)\n"
    with pytest.raises(BundleError, match="mpy-cross failed on lib/node/asm.py"):
        compile_module(asm, "lib/node/asm.py", "6.3", "rv32imc")  # Xtensa code on a C3
    result = polekit("build", "--board", "pole-env-esp32", "--march", "xtensawin", "--source")
    assert result.returncode == 2 and "leave out --source" in result.stderr


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    flash = tmp_path_factory.mktemp("flash")
    (flash / "lib" / "node").mkdir(parents=True)
    (flash / "lib" / "node" / "old_driver.py").write_text("# left by an older firmware\n")
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as b:
        yield b


def deploy(board: EmulatedBoard, *extra: str) -> tuple[int, dict[str, object], str]:
    result = polekit(
        "deploy", "--port", board.repl, "--board", "pole-env-esp32", "-c", CODE, "--json", *extra
    )
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


def test_deploy_copies_verifies_self_tests_and_starts_the_node(board: EmulatedBoard) -> None:
    code, report, err = deploy(board, "--set", "unit=3")
    assert code == 0, err + json.dumps(report)
    assert report["passed"] and report["copied"] == FILES and report["removed"] == 1
    checks = {row[0]: row for row in report["selftest"]}  # type: ignore[attr-defined]
    assert set(checks) >= {"config", "sht3x", "bh1750", "adxl345", "pms5003", "uplink", "start"}
    assert checks["sht3x"][2] == "21.0 Cel, 50 %RH"
    print(f"first deploy: {report['bytes_copied']} bytes in {report['seconds']} s")
    flash = Path(board.fs_dir)
    manifest = json.loads((flash / "manifest.json").read_text())
    for path, digest in manifest["files"].items():
        assert hashlib.sha256((flash / path).read_bytes()).hexdigest() == digest, path
    assert not (flash / "lib" / "node" / "old_driver.py").exists()
    assert not (flash / "maintenance").exists()
    config = json.loads((flash / "config.json").read_text())
    assert config["device_code"] == CODE and config["unit"] == 3
    board.set("sht3x.temperature", 24.5)
    values = NodeMaster(board.uarts["rs485"], unit=3).wait_for(lambda v: v["temperature"] == 24.5)
    assert values["temperature"] == 24.5


def test_a_second_deploy_copies_nothing(board: EmulatedBoard) -> None:
    code, report, err = deploy(board, "--set", "unit=3")
    assert code == 0, err
    assert report["copied"] == 0 and report["unchanged"] == FILES and report["passed"]


def test_deploy_key_installs_the_raw_update_key_on_the_node(
    board: EmulatedBoard, tmp_path: Path
) -> None:
    from polekit.firmware.deploy.signing import new_key, public_key_raw

    key, pub = new_key(tmp_path / "city")
    code, report, err = deploy(board, "--set", "unit=3", "--key", str(pub))
    assert code == 0, err
    raw = public_key_raw(pub)
    assert report["copied"] == 1 and report["ota_key"] == raw.hex()  # only /ota.pub
    assert (Path(board.fs_dir) / "ota.pub").read_bytes() == raw
    wrong, _report, err = deploy(board, "--key", str(key))  # the private half stays home
    assert wrong == 1 and "is a private key" in err and "Traceback" not in err
    again, report, err = deploy(board, "--set", "unit=3")  # no --key: the node keeps its key
    assert again == 0 and report["copied"] == 0, err
    assert (Path(board.fs_dir) / "ota.pub").read_bytes() == raw


def test_a_dead_sensor_fails_the_self_test_with_its_reason(board: EmulatedBoard) -> None:
    board.set("bh1750.absent", 1)
    try:
        code, report, _err = deploy(board)
    finally:
        board.set("bh1750.absent", 0)
    assert code == 1 and not report["passed"]
    failed = [row for row in report["selftest"] if not row[1]]  # type: ignore[attr-defined]
    assert failed == [["bh1750", False, "no answer at I2C address 0x23"]]


def test_a_bad_device_code_is_refused_before_anything_is_written(board: EmulatedBoard) -> None:
    code, _report, err = deploy(board, "-c", "371600PL000001X")
    assert (
        code == 1
        and "device code '371600PL000001X': check character" in err
        and "polekit code make" in err
    )


def test_ctrl_c_stops_a_deploy_at_once_and_says_how_to_resume(tmp_path: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs") as fresh:
        args = ["deploy", "--port", fresh.repl, "--board", "pole-env-esp32", "-c", CODE]
        term = Terminal(*args, "--set", "unit=3")
        try:
            term.wait_for(r": copy .*[1-9]\.\d/", timeout_s=60)  # some bytes are on the board
            pressed = time.monotonic()
            term.type(b"\x03")  # Ctrl-C at the terminal: SIGINT for the deploy
            code = term.wait(timeout_s=30)
            took = time.monotonic() - pressed
        finally:
            term.close()
        text = term.text()
        assert code == 130, text
        print(f"stopped {took:.2f} s after Ctrl-C")
        assert took < 2.5, f"stopped {took:.1f} s after Ctrl-C"
        assert "Traceback" not in text
        assert re.search(r"stopped while copying files, \d+ of \d+ bytes sent", text), text
        resume = text.split("To resume, run: ", 1)[1].splitlines()[0]
        assert shlex.split(resume) == ["polekit", *args, "--set", "unit=3"]
        again = polekit(*shlex.split(resume)[1:])  # the resume finishes the job
        assert again.returncode == 0, again.stdout + again.stderr
        copied = int(re.search(r"(\d+) files copied", again.stdout).group(1))  # type: ignore[union-attr]
        assert 0 < copied < FILES, again.stdout  # only what the first run had not sent


def test_wrong_settings_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "fs") as fresh:
        before = sorted(p.relative_to(fresh.fs_dir) for p in Path(fresh.fs_dir).rglob("*"))
        result = polekit(
            "deploy",
            "--port",
            fresh.repl,
            "--board",
            "pole-env-esp32",
            "-c",
            CODE,
            "--set",
            "unti=3",
            "--set",
            "lamp_default=150",
            "--set",
            'report={"temperature": {"filter": "mean"}}',
        )
        after = sorted(p.relative_to(fresh.fs_dir) for p in Path(fresh.fs_dir).rglob("*"))
        log = fresh.serial_log
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "setting unti=3: pole-env-esp32 has no setting 'unti'; did you mean 'unit'?" in err
    assert "setting lamp_default=150: lamp_default = 150 must be a number 0..100" in err
    assert "report.temperature.filter = 'mean' must be one of median/average/none" in err
    assert "Traceback" not in err
    assert after == before  # nothing written to the flash
    assert b"raw REPL" not in log  # the board was not even spoken to


def test_every_board_reference_config_passes_the_node_schema() -> None:
    from polekit.boards import load, names
    from polekit.firmware.deploy.deploy import settings_problems

    for name in names():
        board = load(name)
        assert settings_problems(board, dict(board.config)) == {}, name
    community = load("community-sos-esp32c3")  # each kind of node has its own settings
    assert "did you mean 'advert_s'?" in settings_problems(community, {"advert": 5})["advert"]
    assert "has no setting 'unit'" in settings_problems(community, {"unit": 3})["unit"]


def test_water_board_takes_the_mqtt_uplinks_broker_settings(tmp_path: Path) -> None:
    # one set of broker settings for every node that talks to a broker itself: the water
    # node's link takes the MQTT uplink's table (node/settings_mqtt.py MQTT_*), so
    # `polekit deploy --set mqtt_host=...` is checked and accepted for water-esp32 before
    # the board is reached (here: no board at that port, the only error left), and the
    # water node's former names for the same things are refused with the right ones listed
    code = identity.make("371600", "WL", 3)
    port = str(tmp_path / "no-such-tty")
    accepted = polekit(
        "deploy",
        "--port",
        port,
        "--board",
        "water-esp32",
        "-c",
        code,
        *("--set", "mqtt_host=10.0.0.5", "--set", "mqtt_port=8883", "--set", "mqtt_tls=1"),
        *("--set", "mqtt_user=water", "--set", "mqtt_password=s3cret"),
        *("--set", "mqtt_prefix=city/water", "--set", "node_id=mh-17"),
        *("--set", "outbox_bytes=4096", "--set", "rain_window_s=60"),
    )
    assert accepted.returncode == 1
    assert "cannot open the serial port" in accepted.stderr, accepted.stderr
    assert "setting" not in accepted.stderr and "Traceback" not in accepted.stderr
    refused = polekit(
        "deploy",
        "--port",
        port,
        "--board",
        "water-esp32",
        *("--set", "broker_host=10.0.0.5", "--set", "rain_window_s=5"),
    )
    err = refused.stderr
    assert refused.returncode == 1 and "cannot open the serial port" not in err
    assert "water-esp32 has no setting 'broker_host'" in err and "mqtt_host" in err
    assert "setting rain_window_s=5: rain_window_s = 5 must be a number 10..600" in err


def test_water_node_id_defaults_to_its_device_code() -> None:
    from polekit.firmware.node import settings

    good, problems = settings.validate({"device_code": "WTR1", "mqtt_host": "b"}, "mqtt")
    assert problems == [] and good["node_id"] == "WTR1" and good["mqtt_prefix"] == "polekit/v1"
    good, problems = settings.validate({"device_code": "WTR1", "node_id": "a/b"}, "mqtt")
    assert good["node_id"] == "WTR1" and "must not contain" in problems[0]
