"""The HIL suite (hil/suite) passes on the emulated board through the polekit pytest plugin,
with pytest-embedded's dut on the same port, and the board's serial log saved beside the
JUnit report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_hil_suite_passes_on_the_emulated_board(tmp_path: Path) -> None:
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
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "13 passed" in result.stdout
    log = (tmp_path / "pole-env-esp32-serial.log").read_text()
    assert "ready 42" in log


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
