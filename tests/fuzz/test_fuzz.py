"""The short fuzz run of ``make test``: for every target (tests/fuzz/targets/), every seed and
every failing input ever found (tests/fuzz/corpus/<target>/) raises only the parser's
documented error, and so do a fixed, derandomized set of generated inputs. The long run is
``make fuzz`` (tests/fuzz/fuzzkit.py)."""

from __future__ import annotations

import pytest

import fuzzkit

NAMES = fuzzkit.target_names()
# Failures the fuzz found in code another engineer owns, kept in the corpus like any other,
# can be listed here (target -> reason) while the fix is on its way. Strict: once fixed, the
# test fails until the entry goes.
OPEN: dict[str, str] = {}
TARGETS = [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=OPEN[n])) if n in OPEN else n
    for n in NAMES
]


def _failures(target: fuzzkit.Target, inputs: list[tuple[str, bytes]]) -> list[str]:
    out = []
    for label, data in inputs:
        exc = fuzzkit.attempt(target, data)
        if exc is not None:
            kind, where = fuzzkit.classify(exc)
            out.append(f"{label}: {kind} at {where}: {str(exc)[:120]}")
    return out


def test_every_parser_has_a_target() -> None:
    assert set(NAMES) >= {
        "cbor",
        "senml_json",
        "senml_cbor",
        "senml_resolve",
        "bthome_plain",
        "bthome_encrypted",
        "identity",
        "modbus_rtu",
        "modbus_slave",
        "gateway_config",
        "command",
        "dlt645",
        "hj212",
    }


@pytest.mark.parametrize("name", TARGETS)
def test_kept_failures_and_seeds_raise_only_documented_errors(name: str) -> None:
    target = fuzzkit.load(name)
    inputs = [(str(path.relative_to(fuzzkit.ROOT)), data) for path, data in fuzzkit.corpus(name)]
    inputs += [(f"seed {i}", data) for i, data in enumerate(target.seeds)]
    failures = _failures(target, inputs)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", TARGETS)
def test_short_fuzz_run_raises_only_documented_errors(name: str) -> None:
    fuzzkit.short_run(fuzzkit.load(name))
