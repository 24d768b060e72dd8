"""The ``[ota]`` table of gateway.toml: where the key that signs updates is, and how a
rollout runs. Validated once, at start, like every other table (gateway/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

OTA_KEYS = (
    "public_key",
    "max_bundle_mb",
    "batch_size",
    "trial_wait",
    "poll_interval",
    "fetch_timeout",
)


@dataclass(frozen=True)
class OtaConfig:
    """``public_key``: the PEM public key (``polekit keys new NAME`` writes NAME.pub) that
    every bundle must be signed for; None: updates are refused. ``max_bundle_bytes``: the
    most a bundle (its files, manifest and signature) may hold, fetched or local.
    ``batch_size``: nodes per stage after the canary. ``trial_wait_s``: how long after a
    node took the bundle it has to come back on the new version and confirm it (its boot
    plus its own trial, ``ota_trial_s`` on the node). ``poll_interval_s``: while a bus
    carries a transfer, each of its devices is polled at most this often (the transfer
    takes the rest of the line). ``fetch_timeout_s``: for each HTTP request of a URL."""

    public_key: Path | None = None
    max_bundle_bytes: int = 2 * 1024 * 1024
    batch_size: int = 5
    trial_wait_s: float = 180.0
    poll_interval_s: float = 10.0
    fetch_timeout_s: float = 30.0


def parse_ota(reader: Any, table: dict[str, Any], base: Path) -> OtaConfig:
    """The validated ``[ota]`` table; problems go to ``reader`` (gateway/config.py's
    ``_Reader``), paths are relative to the config's folder ``base``."""
    r = reader
    r.unknown_keys(table, "ota", OTA_KEYS)
    d = OtaConfig()
    key = r.get(table, "ota", "public_key", str, None, allowed="the signing key's .pub file")
    mb = r.get(
        table,
        "ota",
        "max_bundle_mb",
        (int, float),
        d.max_bundle_bytes / (1024 * 1024),
        check=lambda v: 0.01 <= v <= 1024,
        allowed="megabytes, 0.01..1024",
    )
    return OtaConfig(
        public_key=None
        if key is None
        else (base / key if not Path(key).is_absolute() else Path(key)),
        max_bundle_bytes=int(mb * 1024 * 1024),
        batch_size=r.get(
            table,
            "ota",
            "batch_size",
            int,
            d.batch_size,
            check=lambda v: 1 <= v <= 1000,
            allowed="nodes per stage after the canary, 1..1000",
        ),
        trial_wait_s=float(
            r.get(
                table,
                "ota",
                "trial_wait",
                (int, float),
                d.trial_wait_s,
                check=lambda v: 1 <= v <= 86400,
                allowed="seconds for a node to come back on the new version and confirm it, "
                "1..86400",
            )
        ),
        poll_interval_s=float(
            r.get(
                table,
                "ota",
                "poll_interval",
                (int, float),
                d.poll_interval_s,
                check=lambda v: 0 <= v <= 3600,
                allowed="seconds between polls of a device while its bus carries a transfer, "
                "0..3600 (0: every device keeps its own interval)",
            )
        ),
        fetch_timeout_s=float(
            r.get(
                table,
                "ota",
                "fetch_timeout",
                (int, float),
                d.fetch_timeout_s,
                check=lambda v: 1 <= v <= 600,
                allowed="seconds for each HTTP request of a bundle URL, 1..600",
            )
        ),
    )
