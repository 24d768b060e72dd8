"""The HIL suite (hil/suite) passes on the emulated board through the polekit pytest plugin,
with pytest-embedded's dut on the same port, and the board's serial log saved beside the
JUnit report; pytest-embedded's files stay in the run's own tmp; wrong options are one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def run_pytest(
    folder: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """pytest (with the polekit plugin, as installed) run in ``folder``."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=folder,
        env=env,
    )


def test_hil_suite_passes_on_the_emulated_board(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "hil" / "suite"),
            "--hil-board",
            "pole-env-esp32",
            "--embedded-services",
            "serial",
            f"--junitxml={tmp_path / 'report.xml'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(shared)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "13 passed" in result.stdout
    log = (tmp_path / "pole-env-esp32-serial.log").read_text()
    assert "ready 42" in log
    assert not list(shared.glob("polekit-hil-flash-*"))  # the board's flash went with it


def test_physics_is_skipped_with_a_reason_on_a_real_board(tmp_path: Path) -> None:
    (tmp_path / "test_jig.py").write_text(
        "def test_needs_physics(physics):\n    physics.set('sht3x.temperature', 1)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_jig.py"),
            "--hil-port",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "1 skipped" in result.stdout and "virtual physics" in result.stdout, result.stdout


def test_pytest_embedded_keeps_its_files_in_the_runs_own_tmp(tmp_path: Path) -> None:
    """Another user's ``pytest-embedded`` in the shared temporary folder (here a file, which
    stops root as surely as a folder it may not write stops anyone else) does not touch a
    run: pytest-embedded's logs and cache go into the run's pytest base temp, which is per
    user and which pytest clears of old runs; an explicit --root-logdir is kept."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    (shared / "pytest-embedded").write_text("another user's")
    (tmp_path / "test_where.py").write_text(
        "import os\n"
        "def test_where(session_tempdir, cache_dir, tmp_path_factory, request):\n"
        "    base = os.path.realpath(tmp_path_factory.getbasetemp())\n"
        "    root = request.config.getoption('root_logdir')\n"
        "    assert cache_dir.startswith(base + os.sep)\n"
        "    assert session_tempdir.startswith(os.path.realpath(root) + os.sep)\n"
        "    print('root_logdir', root)\n"
    )
    env = {**os.environ, "TMPDIR": str(shared)}
    result = run_pytest(tmp_path, "-s", "test_where.py", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"root_logdir {shared}/pytest-of-" in result.stdout
    assert sorted(p.name for p in shared.iterdir() if not p.name.startswith("pytest-of-")) == [
        "pytest-embedded"
    ]
    assert (shared / "pytest-embedded").read_text() == "another user's"
    given = tmp_path / "logs"
    result = run_pytest(tmp_path, "-s", "test_where.py", f"--root-logdir={given}", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"root_logdir {given}\n" in result.stdout and (given / "pytest-embedded").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--hil-board", "pole-env-esp33"],
            "ERROR: --hil-board pole-env-esp33: no such board; did you mean pole-env-esp32? "
            "(known boards: community-sos-esp32c3, pole-env-esp32, water-esp32)",
        ),
        (  # the emulated board would start while pytest configures: before any test
            ["--hil-board", "pole-env-esp33", "--embedded-services", "serial"],
            "ERROR: --hil-board pole-env-esp33: no such board; did you mean pole-env-esp32?",
        ),
        (
            ["--hil-port", "/dev/ttyUSB97"],
            "ERROR: --hil-port /dev/ttyUSB97: no such port (ports here: ",
        ),
        (
            ["--hil-port", "/dev/null", "--hil-line", "/dev/ttyUSB98"],
            "ERROR: --hil-line /dev/ttyUSB98: no such port (ports here: ",
        ),
        (
            ["--hil-line", "/dev/null"],
            "ERROR: --hil-line /dev/null: only for a real board (give its --hil-port too)",
        ),
        (
            ["--hil-port", "/dev/null", "--hil-bare"],
            "ERROR: --hil-bare: only for the emulated board",
        ),
    ],
)
def test_wrong_plugin_options_are_one_line_saying_what_to_give(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "test_any.py").write_text("def test_any(board):\n    pass\n")
    result = run_pytest(tmp_path, "test_any.py", *args)
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    assert [line for line in out.splitlines() if line.strip()] == [out.strip()], out
    assert out.startswith(message), out


def test_an_emulated_board_without_node_is_one_line_saying_what_to_install(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_any.py").write_text("def test_any(dut):\n    pass\n")
    shared = tmp_path / "tmp"
    shared.mkdir()
    no_node = {**os.environ, "PATH": str(Path(sys.executable).parent), "TMPDIR": str(shared)}
    result = run_pytest(tmp_path, "test_any.py", "--embedded-services", "serial", env=no_node)
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    assert out.strip() == (
        "ERROR: cannot start the emulated board: Node.js is needed for the emulated board: "
        "install `nodejs`"
    ), out
    assert not list(shared.glob("polekit-hil-flash-*"))  # the flash it was given is removed


def test_node_suite_passes_at_the_esp32s_speed(tmp_path: Path) -> None:
    # --hil-chip-speed measures the VM with Pystone (hil/chip_speed.py: an ESP32 at 240 MHz
    # runs it at 1661/s) and holds the board to that share of the CPU, counted in CPU time the
    # board really got (hil/throttle.py), so the rest of this test run loading the host does
    # not slow it further. All eight node tests run at that speed, the free-heap reading too:
    # the emulated VM collects garbage only back in JavaScript, and its asyncio loop resumes
    # the task that asked for the collection before any other (hil/vmlib/_asyncio_gc.py), as
    # the chip's gc.collect() returns to its caller
    result = run_pytest(
        tmp_path,
        str(ROOT / "hil" / "suite" / "test_node.py"),
        "--hil-board",
        "pole-env-esp32",
        "--hil-chip-speed",
        timeout_s=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "8 passed" in result.stdout, result.stdout[-2000:]
    speed = re.search(r"\(([\d.]+) of the chip's speed\)", result.stdout)
    assert speed is not None, result.stdout[-2000:]
    assert 0.5 <= float(speed.group(1)) <= 2.0, speed.group(0)
