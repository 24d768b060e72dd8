"""``polekit platform preview``: what each configured platform would be sent for one
device, before going live (topics, QoS, payloads shown readably, the login without its
secret). Nothing is connected and nothing is written to the gateway's data folder."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from polekit.gateway.cli import CONFIG_OPTION, _load
from polekit.gateway.delivery import make_adapter, platforms_of
from polekit.gateway.platforms.base import Adapter, Connection, Outgoing, Reading
from polekit.gateway.platforms.settings import shown_where
from polekit.gateway.redact import HIDDEN


@click.group()
def platform() -> None:
    """The northbound platforms a gateway delivers to (docs/platforms.md)."""


def example_readings(config: Any, code: str) -> list[Reading] | None:
    """Example readings for device ``code``: one per point of its register map (numbers
    12 or 12.5 in the point's unit, booleans false); None if there is no such device."""
    for d in config.devices:
        if d.code == code:
            out = []
            for p in d.points:
                if p.dtype == "bool" or p.table in ("coil", "discrete"):
                    out.append(Reading(p.name, False, None))
                else:
                    out.append(Reading(p.name, 12 if p.scale == 1 else 12.5, p.unit))
            return out
    for b in config.ble_devices:
        if b.code == code:
            return [Reading("temperature", 21.5, "Cel"), Reading("humidity", 45.0, "%RH")]
    return None


def shown(topic: str, payload: bytes) -> str:
    """A payload as a person reads it: Sparkplug B as protobuf text, JSON as it is, CBOR
    as JSON, else hex."""
    if topic.startswith("hj212/"):  # an HJ 212 packet is text: shown as sent, less CR LF
        return payload.decode(errors="replace").rstrip("\r\n") + "  (HJ 212 over TCP)"
    if topic.startswith("spBv1.0/"):
        from google.protobuf import text_format

        from polekit.gateway.platforms import sparkplug_b

        message = sparkplug_b.Payload.FromString(payload)
        return text_format.MessageToString(message, as_one_line=True) + "  (Sparkplug B)"
    try:
        return json.dumps(json.loads(payload), ensure_ascii=False)
    except ValueError:
        pass
    try:
        from polekit.protocols import cbor

        return json.dumps(cbor.loads(payload), ensure_ascii=False, default=repr) + "  (CBOR)"
    except Exception:  # noqa: BLE001 - whatever is not CBOR is shown in hex
        return payload.hex()


# a "sign" in a body (Alibaba's topology add and sub-device login) is that sub-device's
# MQTT password for the timestamp printed beside it: a lasting credential, hidden
_SIGN = re.compile(r'"sign": ?"[^"]*"')


def _lines(adapter: Adapter, messages: list[Outgoing], seq: int = 1) -> list[str]:
    out = []
    for m in messages:
        payload = m.payload(seq) if callable(m.payload) else m.payload
        if adapter.stamp is not Adapter.stamp:
            payload = adapter.stamp(m.topic, payload)
        if adapter.TRANSPORT == "hj212":
            # every packet carries the password (PW=): hidden here like any secret
            pw = f";PW={adapter.platform.settings.pw};".encode()
            payload = payload.replace(pw, f";PW={HIDDEN};".encode())
            out.append(
                f"  {m.topic}  (waits for the platform's 9014)\n    {shown(m.topic, payload)}"
            )
            continue
        retain = " retained" if m.retain else ""
        text = _SIGN.sub(f'"sign": "{HIDDEN}"', shown(m.topic, payload))
        out.append(f"  {m.topic}  (QoS {m.qos}{retain})\n    {text}")
    return out


@platform.command()
@CONFIG_OPTION
@click.option(
    "--device",
    "preview_device",
    required=True,
    help="The device code whose example readings to show (a [[device]] code).",
)
def preview(config_path: Path, preview_device: str) -> None:
    """Print the topic, QoS and payload each configured platform would be sent for one
    device's example readings, with the session's login and opening messages."""
    config = _load(config_path)
    readings = example_readings(config, preview_device)
    if readings is None:
        codes = [d.code for d in config.devices] + [b.code for b in config.ble_devices]
        click.echo(
            f"{config_path}: no device {preview_device!r}; its devices: "
            f"{', '.join(codes) or 'none'}",
            err=True,
        )
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="polekit-preview-") as scratch:
        # adapters keep small state (Sparkplug's bdSeq) in data_dir: not the live one
        config = dataclasses.replace(config, data_dir=Path(scratch))
        for entry in platforms_of(config):
            adapter = make_adapter(config, entry)
            conn = adapter.connection(adapter.ctx.clock())
            click.echo(f"== platform {entry.name} ({entry.kind}) at {shown_where(entry)}")
            if adapter.TRANSPORT == "hj212":
                s = entry.settings
                click.echo(f"  MN {s.mn!r}, PW {HIDDEN}, ST {s.st}, TCP (no login packet)")
            else:
                _login(adapter, conn)
            session = adapter.on_connect()
            if session:
                click.echo("  -- after each connect:")
                click.echo("\n".join(_lines(adapter, session)))
            click.echo(f"  -- one poll of {preview_device} (example readings, seq 1):")
            data = adapter.readings(preview_device, readings, adapter.ctx.clock())
            click.echo("\n".join(_lines(adapter, data)))


def _login(adapter: Adapter, conn: Connection) -> None:
    # an MQTT platform's login as preview shows it: the secrets hidden
    user = HIDDEN if conn.username and conn.username_secret else conn.username or "-"
    login = f"  client id {conn.client_id!r}, user {user!r}"
    login += f", password {HIDDEN if conn.password else '-'}"
    login += f", MQTT {conn.mqtt_version}, keepalive {conn.keepalive_s} s"
    if conn.will is not None:
        login += f", will on {conn.will.topic}"
    click.echo(login)
