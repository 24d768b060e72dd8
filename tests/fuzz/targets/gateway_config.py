"""The gateway's config loader (gateway/config.py, load_config) on any file content: a
Config or ConfigError, never a traceback. Inputs are TOML documents built by hypothesis
around the documented keys (right and wrong types, odd URLs, long file names, bad codes),
plus byte mutations of docs/gateway.example.toml."""

from __future__ import annotations

import atexit
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from polekit.gateway import config

import fuzzkit

RAISES = (config.ConfigError,)
_folder: list[Path] = []


def _config_file() -> Path:
    # one private folder per process (relative file names in the config resolve there)
    if not _folder:
        folder = Path(tempfile.mkdtemp(prefix="polekit-fuzz-config-"))
        atexit.register(shutil.rmtree, folder, True)
        (folder / "ca.pem").write_text("not really a certificate\n")
        _folder.append(folder)
    return _folder[0] / "gateway.toml"


def fuzz(data: bytes) -> None:
    path = _config_file()
    path.write_bytes(data)
    config.load_config(path)


def seeds() -> list[bytes]:
    example = (fuzzkit.ROOT / "docs" / "gateway.example.toml").read_bytes()
    return [example, example + _platforms().encode()]


def _platforms() -> str:
    # every northbound kind's own example as [[platform]] entries, so the mutations reach
    # the platform settings' parsers too (gateway/platforms/settings.py and each adapter's)
    from polekit.gateway.platforms import KINDS, adapter_class

    out = []
    for i, kind in enumerate(KINDS):
        table = {**adapter_class(kind).EXAMPLE, "name": f"p{i}"}
        out.append("\n[[platform]]\n")
        out += [f"{_key(k)} = {toml_value(v)}\n" for k, v in table.items()]
    return "".join(out)


# ---- TOML documents ------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else _string(key)


def toml_value(value: Any) -> str:
    """``value`` as TOML (tables inline, so any nesting is one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict[str, Any]) -> bytes:
    return "".join(f"{_key(k)} = {toml_value(v)}\n" for k, v in doc.items()).encode()


_anything = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
_long_name = st.integers(200, 5000).map(lambda n: "c" * n)
_text = st.text(max_size=30) | _long_name
_codes = st.sampled_from(
    ["371600PL000001C", "371600EM000001J", "371600SO000001R", "371600PL000001D", "", "x"]
) | st.text(alphabet="0123456789PLEMSOC²٣", min_size=14, max_size=16)
_urls = st.sampled_from(
    [
        "mqtt://127.0.0.1:1883",
        "mqtts://gw:secret@broker:8883",
        "mqtt://[zz]",
        "mqtt://[::1]:1883",
        "mqtt://host:99999",
        "mqtt://host:-1",
        "mqtt://host:abc",
        "mqtt://:1883",
        "http://host",
        "mqtt://h\x00st",
    ]
) | st.builds("{}://{}:{}".format, st.sampled_from(["mqtt", "mqtts"]), _text, _text)


def _typed(right: st.SearchStrategy) -> st.SearchStrategy:
    # mostly a value of the right type, sometimes anything at all
    return st.one_of(right, right, right, _anything)


def _table(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {}, optional={k: _typed(v) for k, v in fields.items()} | {"unknown_key": _anything}
    )


_numbers = st.integers(-(2**63), 2**63 - 1) | st.floats() | st.sampled_from([0, 1, 5, 9600])
_point = _table(
    {
        "name": _text,
        "address": _numbers,
        "table": st.sampled_from(["holding", "input", "coil", "discrete", "x"]),
        "type": st.sampled_from(["u16", "i16", "u32", "i32", "f32", "bool", "u64"]),
        "word_order": st.sampled_from(["big", "little", "middle"]),
        "scale": _numbers,
        "unit": _text,
        "writable": st.booleans(),
        "min": _numbers,
        "max": _numbers,
    }
)
_device = _table(
    {
        "code": _codes,
        "bus": st.sampled_from(["cabinet-485", "meters", "nope"]),
        "unit": _numbers,
        "map": st.sampled_from(["pole-env", "sdm120", "nope", "lamp", "meter", "pole-envv"]),
        "point": st.lists(_point, max_size=3),
        "poll_interval": _numbers,
        "transport": st.sampled_from(["modbus", "ble", "zigbee"]),
        "address": st.sampled_from(["A4:C1:38:12:34:56", "zz:zz", ""]) | _text,
        "bindkey": st.sampled_from(["231d39c1d7cc1ab1aee224cd096db932", "231d39c1"]) | _text,
        "interval": _numbers,
    }
)
_bus = _table(
    {
        "name": st.sampled_from(["cabinet-485", "meters"]) | _text,
        "type": st.sampled_from(["rtu", "tcp", "can"]),
        "port": _text | _numbers,
        "baudrate": st.sampled_from([9600, 115200, 7]) | _numbers,
        "parity": st.sampled_from(["N", "E", "O", "X"]),
        "stopbits": st.sampled_from([1, 2, 3]),
        "bytesize": st.sampled_from([7, 8]),
        "host": _text,
        "timeout": _numbers,
        "max_in_flight": st.sampled_from([0, 1, 2, 4, 32, 33]) | _numbers,
    }
)
# [[map]]: user register maps, named like the built-in ones at times (a clash), or twice
_map = _table(
    {
        "name": st.sampled_from(["lamp", "meter", "sdm120", "pole-env"]) | _text,
        "point": st.lists(_point, max_size=3) | _anything,
    }
)
documents = st.fixed_dictionaries(
    {
        "gateway": _table(
            {"id": st.just("gw-1") | _text, "data_dir": _text, "queue_max_mb": _numbers}
        ),
        "mqtt": _table(
            {
                "url": _urls,
                "topic_prefix": _text,
                "format": st.sampled_from(["senml+cbor", "senml+json", "xml"]),
                "username": _text,
                "password": _text,
                "ca_file": st.just("ca.pem") | _text,
                "cert_file": _text,
                "key_file": _text,
                "keepalive": _numbers,
                "secondary_units": st.booleans(),
            }
        ),
    },
    optional={
        "bus": st.lists(_bus, max_size=3),
        "map": st.lists(_map, max_size=3) | _anything,
        "device": st.lists(_device, max_size=4),
        "status": _table({"listen": _text, "port": _numbers, "enabled": st.booleans()}),
        "ble": _table({"adapter": _text, "air": _text}),
        "extra": _anything,
    },
)
INPUTS = st.one_of(
    documents.map(toml_document),
    # integers TOML allows in syntax but Python refuses to convert (over 4300 digits)
    st.integers(4300, 6000).map(lambda n: b'[gateway]\nid = "gw"\nqueue_max_mb = 1' + b"0" * n),
)
