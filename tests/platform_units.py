"""Build one platform adapter from a ``[platform]`` table, the way the gateway does
(``parse_config`` -> ``PlatformConfig`` -> ``AdapterContext``), for tests of what the
adapter sends and how it reads downlinks, with a set clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polekit.gateway.config import ConfigError, parse_config
from polekit.gateway.platforms import adapter_class
from polekit.gateway.platforms.base import Adapter, AdapterContext, DeviceInfo, Outgoing


def adapter(tmp_path: Path, table: dict[str, Any], codes: tuple[str, ...], now_s: float) -> Adapter:
    config = parse_config(
        {
            "gateway": {"id": "gw-test", "data_dir": str(tmp_path)},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "platform": table,
        },
        tmp_path / "gateway.toml",
    )
    platform = config.platforms[0]
    ctx = AdapterContext(
        platform=platform,
        gateway_id="gw-test",
        devices=tuple(DeviceInfo(c, "modbus", "pole-env") for c in codes),
        state_dir=tmp_path,
        clock=lambda: now_s,
    )
    return adapter_class(platform.kind)(ctx)


def problems(tmp_path: Path, table: dict[str, Any]) -> str:
    """The config error for ``table`` (fails the test if there is none)."""
    try:
        adapter(tmp_path, table, (), 1_750_000_000.0)
    except ConfigError as exc:
        return str(exc)
    raise AssertionError("the config was accepted")


def body(out: Outgoing, seq: int = 0) -> Any:
    """An Outgoing's JSON (a queued one built with sequence number ``seq``)."""
    payload = out.payload if isinstance(out.payload, bytes) else out.payload(seq)
    return json.loads(payload)
