"""The Sparkplug B payload (Eclipse Tahu ``sparkplug_b.proto``, package
``org.eclipse.tahu.protobuf``) for the protobuf runtime, without generated code.

The descriptor below is the .proto's ``Payload`` message with the parts an edge node
sends and receives (``Metric`` with its value ``oneof``, ``PropertySet`` and
``PropertyValue`` for engineering units); field numbers and types are the .proto's, so
every Sparkplug B decoder reads it (the tests decode our messages with ``pysparkplug``,
which ships its own compiled copy). Built at import, so no ``protoc`` is needed and any
protobuf runtime >= 4 works. Data types are Sparkplug 3.0 section 6.4.16.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "org.eclipse.tahu.protobuf"

# Sparkplug B 3.0, 6.4.16: the data types used here
INT64 = 4
UINT64 = 8
DOUBLE = 10
BOOLEAN = 11
STRING = 12

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _field(
    msg: Any,
    name: str,
    number: int,
    ftype: int,
    label: int = _OPT,
    type_name: str = "",
    oneof: int | None = None,
) -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="polekit_sparkplug_b.proto", package=PACKAGE, syntax="proto2"
    )
    payload = fd.message_type.add(name="Payload")
    p = f".{PACKAGE}.Payload"

    ps = payload.nested_type.add(name="PropertySet")
    _field(ps, "keys", 1, _F.TYPE_STRING, _REP)
    _field(ps, "values", 2, _F.TYPE_MESSAGE, _REP, f"{p}.PropertyValue")

    pv = payload.nested_type.add(name="PropertyValue")
    pv.oneof_decl.add(name="value")
    _field(pv, "type", 1, _F.TYPE_UINT32)
    _field(pv, "is_null", 2, _F.TYPE_BOOL)
    _field(pv, "int_value", 3, _F.TYPE_UINT32, oneof=0)
    _field(pv, "long_value", 4, _F.TYPE_UINT64, oneof=0)
    _field(pv, "float_value", 5, _F.TYPE_FLOAT, oneof=0)
    _field(pv, "double_value", 6, _F.TYPE_DOUBLE, oneof=0)
    _field(pv, "boolean_value", 7, _F.TYPE_BOOL, oneof=0)
    _field(pv, "string_value", 8, _F.TYPE_STRING, oneof=0)

    m = payload.nested_type.add(name="Metric")
    m.oneof_decl.add(name="value")
    _field(m, "name", 1, _F.TYPE_STRING)
    _field(m, "alias", 2, _F.TYPE_UINT64)
    _field(m, "timestamp", 3, _F.TYPE_UINT64)
    _field(m, "datatype", 4, _F.TYPE_UINT32)
    _field(m, "is_historical", 5, _F.TYPE_BOOL)
    _field(m, "is_transient", 6, _F.TYPE_BOOL)
    _field(m, "is_null", 7, _F.TYPE_BOOL)
    _field(m, "properties", 9, _F.TYPE_MESSAGE, type_name=f"{p}.PropertySet")
    _field(m, "int_value", 10, _F.TYPE_UINT32, oneof=0)
    _field(m, "long_value", 11, _F.TYPE_UINT64, oneof=0)
    _field(m, "float_value", 12, _F.TYPE_FLOAT, oneof=0)
    _field(m, "double_value", 13, _F.TYPE_DOUBLE, oneof=0)
    _field(m, "boolean_value", 14, _F.TYPE_BOOL, oneof=0)
    _field(m, "string_value", 15, _F.TYPE_STRING, oneof=0)
    _field(m, "bytes_value", 16, _F.TYPE_BYTES, oneof=0)

    _field(payload, "timestamp", 1, _F.TYPE_UINT64)
    _field(payload, "metrics", 2, _F.TYPE_MESSAGE, _REP, f"{p}.Metric")
    _field(payload, "seq", 3, _F.TYPE_UINT64)
    _field(payload, "uuid", 4, _F.TYPE_STRING)
    _field(payload, "body", 5, _F.TYPE_BYTES)
    payload.extension_range.add(start=6, end=536870912)
    return fd


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
Payload: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


def seq_field(seq: int) -> bytes:
    """Field 3 (``seq``, uint64 varint) alone: appended to an encoded payload it sets the
    sequence number (protobuf keeps the last value of a scalar field), so a message
    queued without one gets its session's number at send time without re-encoding."""
    out = bytearray(b"\x18")
    while True:
        byte = seq & 0x7F
        seq >>= 7
        if seq:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def set_value(metric: Any, datatype: int, value: Any) -> None:
    """Put ``value`` into ``metric`` for ``datatype`` (None: is_null)."""
    metric.datatype = datatype
    if value is None:
        metric.is_null = True
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype in (INT64, UINT64):
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == STRING:
        metric.string_value = str(value)
    else:
        raise ValueError(f"unsupported Sparkplug datatype {datatype}")


def value_of(metric: Any) -> Any:
    """A received metric's value as Python (None when null or absent)."""
    which = metric.WhichOneof("value")
    if which is None or metric.is_null:
        return None
    value = getattr(metric, which)
    if which == "long_value" and metric.datatype in (1, 2, 3, INT64) and value >= 1 << 63:
        return value - (1 << 64)
    return value
