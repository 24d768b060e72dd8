"""The one table the benchmarks print, and the simulator's ceiling above it."""

from __future__ import annotations

from collections.abc import Iterable

from peerkit.runner import Result

HEADER = (
    f"{'case':<11} {'gateway':<18} {'values/s':>9} {'nominal':>8} {'ratio':>6} {'CPU %':>6} "
    f"{'us/value':>8} {'RSS MB':>7} {'MB/min':>7} {'lost':>11} {'dups':>5} {'reconn s':>8}"
)


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def row(r: Result) -> str:
    """One line of the table; notes follow on their own lines."""
    lost = f"{r.polls_lost}/{r.polls_served}"
    line = (
        f"{r.case:<11} {r.gateway:<18} {r.values_per_s:>9.0f} {r.nominal:>8.0f} "
        f"{r.ratio:>6.2f} {r.cpu_pct:>6.1f} {_opt(r.cpu_us_per_value, '.1f'):>8} "
        f"{r.rss_mb:>7.1f} {r.rss_slope_mb_min:>+7.2f} {lost:>11} {r.duplicates:>5} "
        f"{_opt(r.reconnect_s, '.2f'):>8}"
    )
    return "\n".join([line, *(f"{'':<12}  note: {n}" for n in r.notes)])


def table(results: Iterable[Result]) -> str:
    """The header and a row per result."""
    return "\n".join([HEADER, "-" * len(HEADER), *(row(r) for r in results)])


LEGEND = """\
values/s: distinct values delivered to the broker's subscriber per second in the window;
ratio: against nominal (every answering unit read on time, 10 values a read); CPU % and
us/value: user+system CPU of the gateway's process tree (threads, children) in the window;
RSS MB: peak in the window, MB/min: its least-squares slope; lost: polls the devices
answered minus polls delivered (exact: the devices count reads); dups: polls delivered
more than once; reconn s: from the broker listening again after the outage to the first
value read after it had gone."""
