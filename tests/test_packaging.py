"""The distribution as pip builds it: no setuptools warning boxes, and every file the
installed toolkit reads at run time (MicroPython sources, the VM's JavaScript, the board
suite, board definitions) inside the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder in the source tree -> where the installed package has it
SHIPPED = {
    "firmware/node": "polekit/firmware/node",
    "hil/js": "polekit/hil/js",
    "hil/vmlib": "polekit/hil/vmlib",
    "hil/suite": "polekit/hil/suite",
    "boards": "polekit/boards",
}
NOT_SOURCES = (".venv", "node_modules", ".git", "build", "*.egg-info", "__pycache__", ".*cache")


def test_the_wheel_builds_without_setuptools_warnings_and_ships_the_data_folders(
    tmp_path: Path,
) -> None:
    # a copy, so the build leaves nothing in the checkout and no stale build/ leaks in
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",  # the dev venv's setuptools: offline
            "--no-index",
            "--no-cache-dir",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower() and "!!" not in output, output
    (wheel,) = (tmp_path / "dist").glob("polekit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, installed in SHIPPED.items():
        files = [
            p.relative_to(ROOT / folder).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
        assert files, folder
        missing = [f for f in files if f"{installed}/{f}" not in names]
        assert not missing, f"{folder}: not in the wheel: {missing}"
