"""CPU time and resident memory of a process and all its descendants, from /proc.

A gateway may run threads (counted in its own utime/stime) and child processes (pip, a
helper): both are its cost, so the figures cover the whole tree, plus the CPU of children
it has already reaped (cutime/cstime).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None  # gone meanwhile
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and every process descended from it, alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass(frozen=True)
class Sample:
    """CPU seconds used so far and resident bytes now, of a process tree."""

    cpu_s: float
    rss_bytes: int


def sample(root: int) -> Sample:
    """CPU seconds (user + system, threads and children included) and RSS of the tree."""
    cpu = 0.0
    rss = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # fields from 3 on: utime 14, stime 15, cutime 16, cstime 17 (1-based in proc(5))
        cpu += sum(int(fields[i]) for i in (11, 12, 13, 14)) * _TICK_S
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * _PAGE_BYTES
        except OSError:
            continue
    return Sample(cpu, rss)


def slope_per_min(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``times_s``, per minute (0 with < 2 points)."""
    n = len(times_s)
    if n < 2:
        return 0.0
    mt, mv = sum(times_s) / n, sum(values) / n
    var = sum((t - mt) ** 2 for t in times_s)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (v - mv) for t, v in zip(times_s, values, strict=True))
    return cov / var * 60
