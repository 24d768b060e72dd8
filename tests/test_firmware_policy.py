"""The node's report policy (filter, delta, heartbeat) and its loop watch: the policy is
pure code, checked on CPython and, with the same scenario, inside the MicroPython VM; the
loop watch runs on the emulated board and must catch a task that blocks the loop."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polekit.firmware.node.policy import Policy, check_policy
from polekit.hil.emulator import EmulatedBoard
from polekit.hil.mpvm import run_script

from boardkit import board_exec, library_board
from conftest import ROOT

# (sample, time in ms) in; what was reported out, as one line per sample
SCENARIO = """
from node.policy import Policy
cases = [
    ("median", 3, 1.0, 60, [20, 20, 45, 20, 20.5, 22, 22, 22]),
    ("average", 4, 0.5, 60, [10, 10, 12, 12, 12, 12]),
    ("none", 1, 0, 60, [5, 5, 5]),
    ("median", 5, 100, 2, [1, 1, 1, 1]),
]
for f, window, delta, max_s, samples in cases:
    p = Policy(f, window, delta, max_s)
    out = [p.offer(v, i * 1000) for i, v in enumerate(samples)]
    print(f, [None if v is None else round(v, 3) for v in out])
"""


def run_scenario_on_cpython() -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(SCENARIO.replace("from node.", "from polekit.firmware.node."), {})
    return out.getvalue().strip().splitlines()


def test_policy_reports_first_sample_real_changes_and_heartbeats() -> None:
    lines = run_scenario_on_cpython()
    # median of 3: the 45 spike never shows; 20.5 is within delta; 22 once the median moves
    assert lines[0] == "median [20, None, None, None, None, None, 22, None]"
    # average of 4: 10.667 goes out; 11.0 is only 0.333 away; then 11.5 and 12
    assert lines[1] == "average [10.0, None, 10.667, None, 11.5, 12.0]"
    # no filter, delta 0: every sample goes out
    assert lines[2] == "none [5, 5, 5]"
    # nothing changes, but a 2 s heartbeat re-reports the value
    assert lines[3] == "median [1, None, 1, None]"


def test_policy_behaves_the_same_inside_the_micropython_vm() -> None:
    result = run_script(SCENARIO, {ROOT / "firmware" / "node": "/lib/node"})
    assert result.returncode == 0, result.stdout + result.stderr
    vm = [line.replace("10.66700", "10.667") for line in result.stdout.strip().splitlines()]
    assert vm == run_scenario_on_cpython()


@given(
    st.lists(st.floats(-50, 100, allow_nan=False), min_size=1, max_size=60),
    st.sampled_from(["median", "average", "none"]),
    st.integers(1, 8),
    st.floats(0.01, 10),
)
def test_reported_value_never_drifts_beyond_delta_without_a_report(
    samples: list[float], filter: str, window: int, delta: float
) -> None:
    p = Policy(filter, window, delta, max_s=3600)
    reported = None
    for i, v in enumerate(samples):
        out = p.offer(v, i * 1000)
        if out is not None:
            reported = out
        # whatever was not reported stayed within delta of what the receiver has
        assert reported is not None and abs(p.filtered() - reported) < delta or out is not None


def test_policy_settings_are_checked_with_defaults_kept() -> None:
    defaults = {"filter": "median", "window": 5, "delta": 0.1, "max_s": 300}
    good, problems = check_policy(
        "temperature", {"filter": "mean", "window": 99, "delta": 0.5, "colour": 1}, defaults
    )
    assert good == {**defaults, "delta": 0.5}
    assert problems == [
        "config: report.temperature.filter = 'mean' must be one of median/average/none; "
        "using 'median'",
        "config: report.temperature.window = 99 must be a number 1..32; using 5",
        "config: report.temperature.colour unknown (known: filter, delta, max_s, window) ignored",
    ]


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from library_board(tmp_path_factory)


def test_loop_watch_warns_about_a_task_that_blocks_the_loop(board: EmulatedBoard) -> None:
    board_exec(
        board,
        "import asyncio, time\n"
        "from node.loopwatch import LoopWatch\n"
        "w = LoopWatch()\n"
        "async def blocker():\n"
        "    await asyncio.sleep_ms(200)\n"
        "    t = time.ticks_ms()\n"
        "    while time.ticks_diff(time.ticks_ms(), t) < 120:\n"
        "        pass\n"
        "asyncio.create_task(w.run())\n"
        "asyncio.create_task(blocker())\n",
    )
    log = board.wait_output("time(s) over", timeout_s=5)  # the whole number is printed
    warned = re.search(r"polekit: warning: the loop was blocked for (\d+) ms", log)
    assert warned and 110 <= int(warned[1]) <= 400, log[-500:]  # 120 ms, on a busy machine
    stalls, worst = board_exec(board, "print(w.stalls, w.worst_ms)").split()
    assert int(stalls) >= 1 and 110 <= int(worst) <= 400
