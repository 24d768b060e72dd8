"""``[platform]`` / ``[[platform]]`` entries -> validated ``PlatformConfig``s.

Absent: one SenML platform on ``[mqtt]`` (what every install before platforms had,
same queue file). ``[platform]`` is one entry; ``[[platform]]`` a list of them. Common
keys (``COMMON_KEYS``) are read here; the adapter's ``parse`` reads its own (``KEYS``).
Every problem is collected with its key path (``platform[2].access_token``) and what to
do, and reported with the file by ``ConfigError``, all at once.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from polekit.gateway.config import MqttConfig
from polekit.gateway.platforms import (
    COMMON_KEYS,
    DEFAULT_KIND,
    KINDS,
    MQTT_VERSIONS,
    UnknownKindError,
    adapter_class,
    available,
)
from polekit.gateway.platforms.base import BrokerSettings, PlatformConfig, Section, Tls
from polekit.gateway.platforms.limiter import DEFAULT_PER_MIN
from polekit.gateway.redact import redact_url

DEFAULT_QUEUE_FILE = "queue.sqlite3"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def queue_file(name: str) -> str:
    """The queue file of the platform entry called ``name``: the default SenML
    platform keeps ``queue.sqlite3`` (an upgraded install keeps its backlog)."""
    return DEFAULT_QUEUE_FILE if name == DEFAULT_KIND else f"queue-{name}.sqlite3"


def shown_where(platform: PlatformConfig) -> str:
    """Where a platform entry delivers, as a person reads it (no password): its broker's
    url, or ``tcp://host:port`` for a platform reached over plain TCP (HJ 212)."""
    if adapter_class(platform.kind).TRANSPORT == "hj212":
        s = platform.settings
        return f"tcp://{s.host}:{s.port}"
    return platform.broker.shown_url


def default_broker(mqtt: MqttConfig) -> BrokerSettings:
    tls = Tls(mqtt.ca_file, mqtt.cert_file, mqtt.key_file) if mqtt.tls else None
    return BrokerSettings(
        host=mqtt.host,
        port=mqtt.port,
        tls=tls,
        keepalive_s=mqtt.keepalive_s,
        url=mqtt.url,
        shown_url=mqtt.shown_url,
        username=mqtt.username,
        password=mqtt.password,
    )


def parse_platforms(
    raw: Any, mqtt: MqttConfig, base: Path, problem: Any
) -> tuple[PlatformConfig, ...]:
    """The platform entries of ``raw`` (the ``platform`` value of the TOML, or None).
    ``problem(text)`` collects a problem; ``base`` is the config file's folder."""
    if raw is None:
        raw = {"kind": DEFAULT_KIND}
    if isinstance(raw, dict):
        items = [("platform", raw)]
    elif isinstance(raw, list):
        items = []
        for i, item in enumerate(raw):
            where = f"platform[{i}]"
            if not isinstance(item, dict):
                problem(f"{where} = {item!r}: must be a table ([[platform]] with kind = ...)")
                continue
            items.append((where, item))
        if not raw:
            problem("platform = []: give at least one [[platform]] entry, or leave it out")
    else:
        problem(
            f"platform = {raw!r}: must be a [platform] table or [[platform]] entries "
            '(each with kind = "senml", "thingsboard", ...)'
        )
        return ()
    out: list[PlatformConfig] = []
    names: set[str] = set()
    for where, table in items:
        entry = _entry(Section(table, where, problem, mqtt), mqtt, base)
        if entry is None:
            continue
        if entry.name in names:
            problem(
                f"{where}.name = {entry.name!r}: another entry has this name; give each "
                "[[platform]] its own name (it names its queue file and its /health entry)"
            )
            continue
        names.add(entry.name)
        out.append(entry)
    return tuple(out)


def _entry(s: Section, mqtt: MqttConfig, base: Path) -> PlatformConfig | None:
    kind = s.text("kind", required=True)
    if kind is None:
        return None
    try:
        cls = adapter_class(kind)
    except UnknownKindError:
        have = available()
        near = difflib.get_close_matches(kind, list(KINDS), n=1)
        if kind in KINDS:
            hint = f"this build has no {kind} adapter yet; available: {', '.join(have)}"
        elif near:
            hint = f"did you mean '{near[0]}'?"
        else:
            hint = f"known kinds: {', '.join(have)}"
        s.problem("kind", f"{kind!r} is not a platform kind; {hint}")
        return None
    known = COMMON_KEYS + cls.KEYS
    for key in s.table:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = (
                f"did you mean '{near[0]}'?"
                if near
                else f"a {kind} platform takes: {', '.join(known)}"
            )
            s.problem(key, f"unknown key; {hint}")
    name = s.text(
        "name",
        default=kind,
        check=lambda v: bool(_NAME.match(v)),
        allowed="1-32 lower-case letters, digits, '-' or '_' (it names the queue file)",
    )
    broker = _broker(s, mqtt, base)
    version = s.choice("mqtt_version", MQTT_VERSIONS, "3.1.1")
    per_min = s.integer("max_connects_per_min", DEFAULT_PER_MIN, 1, 600, "connect attempts")
    overrides: dict[str, str] = {}
    table = s.table.get("names", {})
    if not isinstance(table, dict):
        s.problem("names", f'{table!r}: must be a table: names = {{ temperature = "temp" }}')
    else:
        for ours, theirs in table.items():
            if not isinstance(theirs, str) or not theirs:
                s.problem(f"names.{ours}", f"{theirs!r}: must be the platform's name, in quotes")
            else:
                overrides[ours] = theirs
    settings = cls.parse(s)
    return PlatformConfig(
        kind=kind,
        name=name,
        broker=broker,
        mqtt_version=version,
        max_connects_per_min=per_min,
        names=overrides,
        settings=settings,
        queue_file=queue_file(name),
    )


def _broker(s: Section, mqtt: MqttConfig, base: Path) -> BrokerSettings:
    default = default_broker(mqtt)
    keepalive = s.integer("keepalive", mqtt.keepalive_s, 5, 3600, "seconds")
    url = s.text("url")
    if url is None:
        for key in ("ca_file", "cert_file", "key_file"):
            if key in s.table:
                s.problem(
                    key,
                    "TLS files belong with this entry's own url; without url the entry "
                    'uses [mqtt]\'s broker and TLS: set url = "mqtts://host:8883" here, '
                    "or move the file to [mqtt]",
                )
        return BrokerSettings(**{**vars(default), "keepalive_s": keepalive})
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        s.problem("url", f"{shown!r}: must look like mqtt://host:1883 or mqtts://host:8883")
        return default
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        s.problem("url", f"{shown!r}: must look like mqtt://host:1883 or mqtts://host:8883")
        return default
    tls_on = parts.scheme == "mqtts"

    def file_key(key: str) -> Path | None:
        value = s.text(key)
        if value is None:
            return None
        p = Path(value) if Path(value).is_absolute() else base / value
        if not p.is_file():
            s.problem(key, f"{value!r}: no such file ({p})")
        elif not tls_on:
            s.problem(key, f"TLS is set up but url {shown!r} is clear text: use mqtts://")
        return p

    files = file_key("ca_file"), file_key("cert_file"), file_key("key_file")
    if (files[1] is None) != (files[2] is None):
        s.problem("cert_file", "give cert_file and key_file together, or neither")
    return BrokerSettings(
        host=parts.hostname or "127.0.0.1",
        port=port or (8883 if tls_on else 1883),
        tls=Tls(*files) if tls_on else None,
        keepalive_s=keepalive,
        url=url,
        shown_url=shown,
        username=parts.username,
        password=parts.password,
    )
