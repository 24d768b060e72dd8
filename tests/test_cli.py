"""The polekit command: --help on every level, --version, and the protocols helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from polekit import __version__
from polekit.cli import main


def _groups(cmd, path=()):  # type: ignore[no-untyped-def]
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _groups(sub, (*path, name))


@pytest.mark.parametrize("path", list(_groups(main)), ids=lambda p: " ".join(p) or "polekit")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version_from_the_installed_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "polekit", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout


def test_code_make_and_check() -> None:
    made = CliRunner().invoke(main, ["code", "make", "371600", "pl", "1", "--count", "2"])
    assert made.exit_code == 0
    codes = made.output.split()
    assert codes == ["371600PL000001C", "371600PL000002A"]
    ok = CliRunner().invoke(main, ["code", "check", *codes])
    assert ok.exit_code == 0
    bad = CliRunner().invoke(main, ["code", "check", "371600PL000001D"])
    assert bad.exit_code == 1 and "expected 'C'" in bad.output


def test_bad_code_input_is_a_usage_error_naming_the_fix() -> None:
    result = CliRunner().invoke(main, ["code", "make", "3716", "PL", "1"])
    assert result.exit_code == 2 and "6 digits" in result.output


def test_register_map_table() -> None:
    result = CliRunner().invoke(main, ["protocols", "maps", "pole-env"])
    assert result.exit_code == 0 and "lamp_level" in result.output
    missing = CliRunner().invoke(main, ["protocols", "maps", "nope"])
    assert missing.exit_code == 2 and "pole-env" in missing.output
