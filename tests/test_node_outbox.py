"""The node's outbox (firmware/node/outbox.py), issue 17: a bounded ring on flash that a
reset or a power cut at any point of a put or a pop leaves with everything put before it
(a torn tail record dropped, the ones before it kept), that drops the oldest packs first
when full and counts them, and that streams the ring (never loads it whole).

The cases live in tests/mpy/outbox_cases.py and run twice: here on CPython, one test each,
and inside the MicroPython VM (the interpreter the board runs), all in one boot. The
power-cut cases journal every write the outbox makes through its own `open` and `os` and
rebuild each cut point (every step, every byte of every write, cut short or with erased
flash after the cut) on a copy of the folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from nodekit_host import node_module

from polekit.hil.mpvm import run_script

from conftest import ROOT

CASES_FILE = Path(__file__).parent / "mpy" / "outbox_cases.py"
NODE = ROOT / "firmware" / "node"


def _cases() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outbox_cases", CASES_FILE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = _cases()


@pytest.mark.parametrize("name", CASES.CASES)
def test_outbox_case_on_cpython(name: str, tmp_path: Path) -> None:
    outbox = node_module("outbox")
    cuts = getattr(CASES, name)(outbox, str(tmp_path))
    if cuts:  # the power-cut cases say how many cut points they rebuilt
        print(name, "cut points, steps:", cuts)
        assert cuts[0] > 2 * cuts[1], cuts


def test_outbox_cases_in_the_micropython_vm() -> None:
    script = CASES_FILE.read_text() + (
        "\nimport node.outbox\nos.mkdir('/cases')\nrun_all(node.outbox, '/cases')\n"
    )
    result = run_script(script, {NODE: "/lib/node"}, timeout_s=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    print(result.stdout)
    passed = [line.split()[1] for line in lines if line.startswith("PASS")]
    failed = [line for line in lines if line.startswith("FAIL")]
    assert not failed, failed
    assert passed == CASES.CASES, lines
