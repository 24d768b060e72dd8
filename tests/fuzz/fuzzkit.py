"""The fuzz engine behind tests/fuzz: one module per target in targets/, hypothesis as the
generator, and every failing input ever found kept in corpus/<target>/<sha1>.

A target module (see targets/__init__.py for the pattern) names the errors its parser is
documented to raise (``RAISES``), feeds one input of bytes to it (``fuzz``), lists valid
encodings to start from (``seeds``, mostly tests/vectors/) and may add structure-aware
inputs (``INPUTS``, a hypothesis strategy of bytes). Any other exception is a failure.

Two ways to run it:
- pytest (tests/fuzz/test_fuzz.py, part of ``make test``): every seed and corpus file, then a
  short derandomized run per target;
- ``make fuzz`` (this file as a script): each target for a time budget, printing the inputs
  tried, the distinct failures (exception type + the line that raised it) and the seed that
  reproduces the run; each failure is shrunk and saved in corpus/, which pytest replays.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pkgutil
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VECTORS = ROOT / "tests" / "vectors"
TARGETS = HERE / "targets"
CORPUS = HERE / "corpus"

SHORT_EXAMPLES = 150  # per target in pytest: the whole short run stays within seconds
ROUND = 1000  # inputs hypothesis makes per round in a long run
HAVOC = 8  # quick random mutations tried after each of them (cheap: no hypothesis draws)
_QUIET = {
    "database": None,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": False,
}


@dataclass
class Target:
    """One parser under fuzz, loaded from targets/<name>.py."""

    name: str
    raises: tuple[type[BaseException], ...]
    fuzz: Callable[[bytes], None]
    seeds: list[bytes]
    inputs: st.SearchStrategy[bytes] | None


@dataclass
class Failure:
    """A distinct failure: an exception type raised at one place; the smallest input kept."""

    kind: str
    where: str
    message: str
    data: bytes
    count: int = 1


@dataclass
class Report:
    """What one campaign did: inputs tried, time spent, distinct failures, its seed."""

    target: str
    seed: int
    tried: int = 0
    seconds: float = 0.0
    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)


# ---- targets and their inputs ------------------------------------------------------------


def target_names() -> list[str]:
    """Every target module in targets/, in name order."""
    return sorted(m.name for m in pkgutil.iter_modules([str(TARGETS)]) if m.name[0] != "_")


def load(name: str) -> Target:
    """The target called ``name`` (a module in targets/)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    module: ModuleType = importlib.import_module(f"targets.{name}")
    seeds = [bytes(s) for s in module.seeds()]
    if not seeds:
        raise ValueError(f"fuzz target {name} has no seeds")
    return Target(name, tuple(module.RAISES), module.fuzz, seeds, getattr(module, "INPUTS", None))


def vectors(name: str) -> Any:
    """tests/vectors/<name>.json, parsed: the seeds of most targets come from there."""
    return json.loads((VECTORS / f"{name}.json").read_text())


def corpus(name: str) -> list[tuple[Path, bytes]]:
    """The kept failing inputs of target ``name``: (file, bytes), in file name order."""
    folder = CORPUS / name
    if not folder.is_dir():
        return []
    return [(p, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]


def keep(name: str, data: bytes) -> Path:
    """Save ``data`` as a regression input of target ``name`` (named by its SHA-1)."""
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha1(data).hexdigest()
    path.write_bytes(data)
    return path


# Byte values that mean something to our parsers: CBOR heads (24..27 = 1..8-byte lengths,
# 31 = indefinite, 0x5f/0x9f/0xbf indefinite strings/arrays/maps, 0xf9..0xfb floats), sign
# and range edges, Modbus function codes 3/4/6/16.
INTERESTING: tuple[int, ...] = (0, 1, 3, 4, 6, 16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x40)
INTERESTING += (0x41, 0x5F, 0x7F, 0x80, 0x9F, 0xBF, 0xC2, 0xC3, 0xF9, 0xFA, 0xFB, 0xFE, 0xFF)
# What a length field set large looks like, in 1, 2, 4 and 8 bytes, either byte order.
WIDE: tuple[bytes, ...] = (b"\xff", b"\x7f", b"\xff\xff", b"\x7f\xff", b"\xff\x7f", b"\xff" * 4)
WIDE += (b"\x7f\xff\xff\xff", b"\xff\xff\xff\x7f", b"\xff" * 8, b"\x00" * 8)


def mutate(data: bytes, pool: list[bytes], pick: Callable[[int, int], int]) -> bytes:
    """``data`` after 1..8 mutations: bit flips, interesting bytes, truncation, insertion,
    deletion, length fields set large, duplication, splicing with another ``pool`` input,
    small arithmetic. ``pick(lo, hi)`` chooses every number (hypothesis or random)."""
    out = bytearray(data)
    for _ in range(pick(1, 8)):
        n = len(out)
        at = pick(0, max(n - 1, 0))
        op = pick(0, 8)
        if op == 0 and n:
            out[at] ^= 1 << pick(0, 7)
        elif op == 1 and n:
            out[at] = INTERESTING[pick(0, len(INTERESTING) - 1)]
        elif op == 2:
            del out[pick(0, n) :]
        elif op == 3:
            out[at:at] = bytes(pick(0, 255) for _ in range(pick(1, 8)))
        elif op == 4 and n:
            del out[at : at + pick(1, 16)]
        elif op == 5 and n:
            wide = WIDE[pick(0, len(WIDE) - 1)]
            out[at : at + len(wide)] = wide
        elif op == 6 and n:
            out[at:at] = out[at : at + pick(1, 32)]
        elif op == 7:
            other = pool[pick(0, len(pool) - 1)]
            out[at:] = other[pick(0, len(other)) :]
        elif op == 8 and n:
            out[at] = (out[at] + pick(-16, 16)) & 0xFF
    return bytes(out)


@st.composite
def mutants(draw: st.DrawFn, starts: list[bytes]) -> bytes:
    """One of ``starts`` mutated (see ``mutate``), every choice drawn by hypothesis."""

    def pick(lo: int, hi: int) -> int:
        return draw(st.integers(lo, hi))

    return mutate(starts[pick(0, len(starts) - 1)], starts, pick)


class Pool(list[bytes]):
    """The inputs mutants start from; shown by their number only (hypothesis prints it)."""

    def __repr__(self) -> str:
        return f"<{len(self)} inputs>"


def strategy(target: Target) -> st.SearchStrategy[bytes]:
    """All inputs for ``target``: its seeds and kept failures mutated, plus its own INPUTS."""
    inputs = mutants(pool(target))
    return inputs if target.inputs is None else st.one_of(inputs, target.inputs)


def pool(target: Target) -> Pool:
    """What mutations start from: the target's seeds and its kept failures."""
    return Pool(target.seeds + [data for _, data in corpus(target.name)])


# ---- running inputs ----------------------------------------------------------------------


def attempt(target: Target, data: bytes) -> Exception | None:
    """Feed ``data`` to ``target``: None if it passed or raised a documented error, else the
    exception (RecursionError and MemoryError included)."""
    try:
        target.fuzz(data)
    except target.raises:
        return None
    except Exception as exc:
        return exc
    return None


def classify(exc: BaseException) -> tuple[str, str]:
    """(exception type, file:line) of a failure: the innermost frame in this repository, so
    one defect counts once however many inputs reach it."""
    where = "?"
    for frame, line in traceback.walk_tb(exc.__traceback__):
        name = frame.f_code.co_filename
        if name.startswith(str(ROOT)) and "/.venv/" not in name:
            where = f"{Path(name).relative_to(ROOT)}:{line}"
    return type(exc).__name__, where


def shrink(target: Target, data: bytes, key: tuple[str, str], budget_s: float = 10.0) -> bytes:
    """The smallest input found by deleting chunks of ``data`` (halving their size) that
    still fails the same way."""
    deadline = time.monotonic() + budget_s
    chunk = max(len(data) // 2, 1)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        while i < len(data) and time.monotonic() < deadline:
            candidate = data[:i] + data[i + chunk :]
            exc = attempt(target, candidate)
            if exc is not None and classify(exc) == key:
                data = candidate
            else:
                i += chunk
        chunk //= 2
    return data


def short_run(target: Target, examples: int = SHORT_EXAMPLES) -> None:
    """The deterministic run pytest does: ``examples`` inputs from a fixed seed; the first
    failure propagates and hypothesis shrinks and prints it."""

    @settings(max_examples=examples, derandomize=True, **_QUIET)  # type: ignore[arg-type]
    @given(strategy(target))
    def run(data: bytes) -> None:
        exc = attempt(target, data)
        if exc is not None:
            raise exc

    run()


class _TimeUp(BaseException):
    """Ends a hypothesis round at the deadline (not an Exception: hypothesis lets it through
    instead of taking it for a failure)."""


def campaign(
    target: Target,
    seconds: float,
    seed: int,
    on_failure: Callable[[Failure], None] | None = None,
) -> Report:
    """Fuzz ``target`` for ``seconds``: hypothesis rounds seeded from ``seed`` one after the
    other. Failures do not stop the run; each distinct one keeps its smallest input."""
    report = Report(target.name, seed)
    rng = random.Random(seed)
    havoc = random.Random(seed + 1)
    inputs = strategy(target)
    start_pool = pool(target)
    start = time.monotonic()
    deadline = start + seconds

    def body(data: bytes) -> None:
        # the input hypothesis made, then HAVOC quick random mutations of it
        for k in range(HAVOC + 1):
            if time.monotonic() >= deadline:
                raise _TimeUp
            one = data if k == 0 else mutate(data or b"\0", start_pool, havoc.randint)
            report.tried += 1
            exc = attempt(target, one)
            if exc is not None:
                record(one, exc)

    def record(data: bytes, exc: Exception) -> None:
        key = classify(exc)
        known = report.failures.get(key)
        if known is None:
            failure = Failure(key[0], key[1], str(exc)[:200], data)
            report.failures[key] = failure
            if on_failure:
                on_failure(failure)
        else:
            known.count += 1
            if len(data) < len(known.data):
                known.data = data

    # fixed-size rounds: the same seed (and corpus) replays the same inputs in the same order
    while time.monotonic() < deadline:
        run = settings(max_examples=ROUND, phases=[Phase.generate], **_QUIET)(  # type: ignore[arg-type]
            given(inputs)(body)
        )
        try:
            hypothesis_seed(rng.getrandbits(64))(run)()
        except _TimeUp:
            break
    report.seconds = time.monotonic() - start
    for key, failure in report.failures.items():
        failure.data = shrink(target, failure.data, key)
    return report


def kept_failures(target: Target) -> dict[tuple[str, str], Path]:
    """The failures the corpus already holds an input for (while they are not fixed), so a
    run does not keep a second input for the same failure."""
    out: dict[tuple[str, str], Path] = {}
    for path, data in corpus(target.name):
        exc = attempt(target, data)
        if exc is not None:
            out.setdefault(classify(exc), path)
    return out


def _budget(text: str | None) -> float:
    try:
        return float(text) if text else 60.0
    except ValueError:
        raise SystemExit(f"FUZZ_SECONDS={text!r}: give a number of seconds, e.g. 300") from None


def main(argv: Iterable[str] | None = None) -> int:
    """``make fuzz``: run each target (all, or those named) for a time budget."""
    names = target_names()
    parser = argparse.ArgumentParser(
        description="Fuzz polekit's parsers; failing inputs go to tests/fuzz/corpus/.",
        epilog="targets: " + ", ".join(names),
    )
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=_budget(os.environ.get("FUZZ_SECONDS")),
        help="time budget per target (default: $FUZZ_SECONDS or 60)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None,
        help="seed of the run, to reproduce one (default: $FUZZ_SEED or random)",
    )
    parser.add_argument(
        "--no-keep", action="store_true", help="do not save failing inputs in the corpus"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    unknown = [t for t in args.targets if t not in names]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(names)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"fuzzing {len(args.targets or names)} target(s), {args.seconds:g} s each, seed {seed}")
    failed = 0
    for name in args.targets or names:
        target = load(name)
        kept = kept_failures(target)
        report = campaign(
            target,
            args.seconds,
            seed,
            on_failure=lambda f: print(f"  new: {f.kind} at {f.where}: {f.message}", flush=True),
        )
        rate = report.tried / max(report.seconds, 1e-3)
        print(
            f"{name:18} {report.tried:>10,} inputs in {report.seconds:5.1f} s "
            f"({rate:,.0f}/s)  {len(report.failures)} distinct failure(s)  seed {seed}",
            flush=True,
        )
        for key, failure in report.failures.items():
            if key in kept:
                where = f"; already kept as {kept[key].relative_to(ROOT)}"
            elif args.no_keep:
                where = ""
            else:
                where = f"; kept as {keep(name, failure.data).relative_to(ROOT)}"
            line = f"  {failure.kind} at {failure.where} (x{failure.count}): {failure.message}"
            print(line + where)
        failed += len(report.failures)
    if failed:
        print(f"{failed} distinct failure(s); replay: .venv/bin/python -m pytest -q tests/fuzz")
    return 1 if failed else 0


if __name__ == "__main__":
    # import ourselves by name, so targets that import fuzzkit share this module
    sys.path.insert(0, str(HERE))
    sys.exit(importlib.import_module("fuzzkit").main())
