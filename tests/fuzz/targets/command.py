"""The gateway's command path (gateway/commands.py) on any payload from the command topic:
``decode_command`` gives a Command or CommandError; a Command's changes, checked against a
real register map (pole-env, plus an f32 point with no range) by ``plan_writes``, give the
writes or a ValueError saying why; the writes hold what the device will hold; and the result
body, ok or error, encodes in both formats and reads back as itself (json, and cbor2 as the
independent CBOR decoder). Nothing else may escape: an exception there would leave a command
without a result. Inputs are JSON and CBOR commands built around the map's points, with odd
ids, values and nesting, plus byte mutations of the documented examples."""

from __future__ import annotations

import json
import math
from typing import Any

import cbor2
from hypothesis import strategies as st

from polekit.gateway.commands import CommandError, CommandRouter, decode_command, plan_writes
from polekit.gateway.pipeline import encode_body
from polekit.protocols import modbus

RAISES = (CommandError,)
MAX_BYTES = 64 * 1024  # the default commands.max_bytes
POINTS = list(modbus.register_map("pole-env").points) + [
    modbus.Point("setpoint", 30, "holding", "f32", writable=True)
]


def _same(a: Any, b: Any) -> bool:
    # JSON and CBOR give back floats that were ints only as floats, and NaN never equals
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return bool(a == b)


def _round_trips(body: dict[str, Any]) -> None:
    as_json = json.loads(encode_body(body, "senml+json"))
    assert _same(as_json, body), (as_json, body)
    as_cbor = cbor2.loads(encode_body(body, "senml+cbor"))
    assert _same(as_cbor, body), (as_cbor, body)


def fuzz(data: bytes) -> None:
    try:
        command = decode_command(data, MAX_BYTES)
    except CommandError as exc:
        _round_trips(CommandRouter._error(exc.command_id, str(exc)))
        raise
    assert command.id is None or isinstance(command.id, str | int)
    assert command.changes and all(isinstance(k, str) for k in command.changes)
    for value in command.changes.values():
        assert isinstance(value, bool | int) or math.isfinite(value), value
    try:
        plan = plan_writes(POINTS, command.changes)
    except ValueError as exc:  # documented: says why; the command was not applied
        _round_trips(CommandRouter._error(command.id, str(exc)))
        return
    for w in plan:
        regs = w.point.encode(w.value)
        assert w.point.encode(w.written) == regs, (w.point.name, w.value, w.written)
        if w.point.low is not None and not isinstance(w.written, bool):
            assert w.point.low <= w.written <= w.point.high, (w.point.name, w.written)
    _round_trips({"id": command.id, "ok": True, "set": {w.point.name: w.written for w in plan}})


def seeds() -> list[bytes]:
    return [
        b'{"id": 1, "set": {"lamp_level": 40}}',
        b'{"id": "a-7", "set": {"lamp_level": 40.7, "report_interval": 60}}',
        b'{"id": null, "set": {"setpoint": 1e39}}',
        b'{"set": {"lamp_level": true}}',
        b'{"id": [[[[1]]]], "set": {"lamp_level": 45}}',
        cbor2.dumps({"id": b"\x00", "set": {"lamp_level": 45}}),
        cbor2.dumps({"id": 2, "set": {"setpoint": 21.5, "tilt_threshold": 4.5}}),
    ]


_names = st.sampled_from([p.name for p in POINTS])
_numbers = (
    st.integers(-2, 4000)
    | st.floats(-10, 4000)
    | st.sampled_from([0, 1, 100, 101, -1, 65535, 65536, 40.7, 1e39, 3.4e38, 1e-45, True])
)
_values = (
    st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4)
    | st.none()
)
_ids = (
    st.none()
    | st.integers(-(2**65), 2**65)
    | st.text(max_size=140)
    | st.binary(max_size=4)
    | st.lists(st.integers(), max_size=2)
    | st.floats()
)


@st.composite
def _commands(draw: st.DrawFn) -> bytes:
    body: dict[Any, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        body["id"] = draw(_ids)  # an odd one, often refused
    elif draw(st.booleans()):
        body["id"] = draw(st.integers(0, 2**40) | st.text(max_size=20))
    if draw(st.integers(0, 9)):  # mostly a real map of points, so plan_writes is reached
        body["set"] = draw(st.dictionaries(_names, _numbers, min_size=1, max_size=4))
    else:
        body["set"] = draw(st.dictionaries(_names | st.text(), _values, max_size=4) | _values)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=3))] = draw(_values)
    if draw(st.booleans()):
        try:
            text = json.dumps(body, allow_nan=True)
        except (TypeError, ValueError):  # bytes ids: JSON cannot carry them
            return bytes(cbor2.dumps(body))
        depth = draw(st.integers(0, 3)) * draw(st.sampled_from([1, 40, 300]))
        return text.replace('"set"', '"x":' + "[" * depth + "]" * depth + ',"set"', 1).encode()
    return bytes(cbor2.dumps(body))


INPUTS = _commands()
