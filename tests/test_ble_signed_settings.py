"""Issue 13 item 4 on the host: the gateway's signature on a keyed node's settings is the
AES-CCM tag the `cryptography` package computes (an implementation we did not write), and
the node's check (firmware/node/signed.py, the very code the board runs) takes it and
refuses a replay, a wrong key, an unsigned map and a tampered byte, each with its reason."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from nodekit_host import node_module

from polekit.firmware.install import install
from polekit.gateway.app import Gateway
from polekit.gateway.ble_commands import sign_settings
from polekit.gateway.config import parse_config
from polekit.hil.air import VirtualAir
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import bthome, cbor, identity

from gwkit import gateway_running, run, until

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
CHALLENGE = bytes.fromhex("0001000599aabbcc")
SALT = bytes.fromhex("01020304")
SOS = identity.make("371600", "SO", 5)


def test_the_signature_is_the_aes_ccm_tag_cryptography_computes() -> None:
    msg = cbor.dumps({"set": {"lamp_level": 40}, "after": 0x00030007})
    body = sign_settings(KEY, CHALLENGE, msg, SALT)
    # RFC 3610 with an 8-byte tag, no plaintext, msg as associated data, nonce challenge+salt
    reference = AESCCM(KEY, tag_length=8).encrypt(CHALLENGE + SALT, b"", msg)
    assert body == msg + SALT + reference
    assert len(CHALLENGE + SALT) == 12  # never an advert's nonce (13 bytes: MAC, UUID, ...)


def test_the_node_opens_a_signed_write_for_its_challenge_only() -> None:
    signed = node_module("signed")
    msg = cbor.dumps({"set": {"lamp_level": 40}, "after": 7})
    body = sign_settings(KEY, CHALLENGE, msg, os.urandom(4))
    assert signed.open_signed(body, KEY, CHALLENGE) == ({"lamp_level": 40}, 7)

    def refused(data: bytes, key: bytes = KEY, challenge: bytes = CHALLENGE) -> str:
        with pytest.raises(ValueError) as exc:
            signed.open_signed(data, key, challenge)
        return str(exc.value)

    # the same bytes after the node moved to its next challenge: a replay
    assert "current challenge" in refused(body, challenge=bytes(8))
    assert "bind key" in refused(body, key=bytes(16))
    assert "not signed" in refused(cbor.dumps({"lamp_level": 77}))  # what a phone writes
    tampered = bytearray(body)
    tampered[3] ^= 1
    assert "current challenge" in refused(bytes(tampered))
    assert "at most 512" in refused(body + bytes(600))
    # signed, but nothing to do, or not a settings map: still refused, with the reason
    nothing = sign_settings(KEY, CHALLENGE, cbor.dumps({}), SALT)
    assert "nothing to set" in refused(nothing)
    listed = sign_settings(KEY, CHALLENGE, cbor.dumps([1, 2]), SALT)
    assert "must be a map" in refused(listed)
    backwards = sign_settings(KEY, CHALLENGE, cbor.dumps({"after": -1}), SALT)
    assert '"after" must be a counter' in refused(backwards)


def test_a_keyed_node_takes_the_gateways_signed_command_and_refuses_a_phone_and_a_replay(
    tmp_path: Path,
) -> None:
    # the defect: a phone with no key set advert_s = 3600 and lamp_level = 77 on an
    # encrypted node. Now the gateway's signed command works, the phone's plain write and
    # a played-back signed write are refused with the reason, and the node counts them.
    from bleak import BleakClient

    from polekit.hil.bleak_air import AirClient

    flash = tmp_path / "fs"
    install(
        flash, "community-sos-esp32c3", {"device_code": SOS, "advert_s": 1, "bindkey": KEY.hex()}
    )
    with (
        LocalBroker() as broker,
        VirtualAir(tmp_path / "air.sock") as air,
        EmulatedBoard("community-sos-esp32c3", fs_dir=flash, air=air.path) as board,
    ):
        raw: dict[str, Any] = {
            "gateway": {"id": "gw-signed", "data_dir": str(tmp_path / "data")},
            "mqtt": {"url": broker.url, "format": "senml+json"},
            "ble": {"air": air.path},
            "device": [
                {
                    "code": SOS,
                    "transport": "ble",
                    "address": board.mac,
                    "bindkey": KEY.hex(),
                    "interval": 1,
                }
            ],
            "status": {"port": 0},
        }
        config = parse_config(raw)

        async def central(write: Callable[[Any], Awaitable[bytes]]) -> dict[str, Any]:
            # a central on the air (a phone, an attacker's laptop) through bleak
            client = BleakClient(board.mac, backend=AirClient, air=air.path, timeout=10)
            await client.connect()
            try:
                results: asyncio.Queue[bytes] = asyncio.Queue()
                await client.start_notify(
                    bthome.GATT % 2, lambda _c, data: results.put_nowait(bytes(data))
                )
                await client.write_gatt_char(bthome.GATT % 1, await write(client), response=True)
                return dict(cbor.loads(await asyncio.wait_for(results.get(), 5)))
            finally:
                await client.disconnect()

        async def scenario() -> tuple[dict[str, Any], ...]:
            gw = Gateway(config)
            async with gateway_running(gw, broker.host, broker.port) as sub:
                await until(lambda: sub.packs(SOS, "senml+json"), 20, "the node's adverts")
                cmd = gw.config.topic("cmd", SOS)
                await sub.publish(cmd, b'{"id": 1, "set": {"lamp_level": 40}}')
                await until(lambda: sub.on(f"/cmd-result/{SOS}"), 20, "the command's result")
                gw.stop()
            result = json.loads(sub.on(f"/cmd-result/{SOS}")[0].payload)
            # a gateway given the wrong key: the node's refusal is the command's result
            wrong = parse_config(
                {
                    **raw,
                    "gateway": {"id": "gw-wrong", "data_dir": str(tmp_path / "data2")},
                    "device": [{**raw["device"][0], "bindkey": "00" * 16}],
                }
            )
            gw = Gateway(wrong)
            async with gateway_running(gw, broker.host, broker.port) as sub:
                await until(lambda: gw.ble is not None and gw.ble.scanning, 20, "scanning")
                await sub.publish(wrong.topic("cmd", SOS), b'{"id": 2, "set": {"lamp_level": 5}}')
                await until(lambda: sub.on(f"/cmd-result/{SOS}"), 20, "the refused result")
            refused = json.loads(sub.on(f"/cmd-result/{SOS}")[0].payload)

            async def plain(_client: Any) -> bytes:
                return cbor.dumps({"lamp_level": 77, "advert_s": 3600})

            phone = await central(plain)
            captured: list[bytes] = []

            async def signed(client: Any) -> bytes:
                if not captured:  # the gateway's way, seen by a sniffer
                    status = cbor.loads(bytes(await client.read_gatt_char(bthome.GATT % 3)))
                    msg = cbor.dumps({"set": {"lamp_level": 60}})
                    captured.append(sign_settings(KEY, status["challenge"], msg, SALT))
                return captured[0]

            first = await central(signed)
            replay = await central(signed)
            return result, refused, phone, first, replay

        result, refused, phone, first, replay = run(scenario(), timeout_s=90)
        lamp = board.get("lamp.level")
        status = cbor.loads(bytes.fromhex(board.get(f"ble.value.{_status_handle(board)}")))
    assert result == {"id": 1, "ok": True, "set": {"lamp_level": 40}}, result
    assert refused["id"] == 2 and refused["ok"] is False, refused
    assert "refused the settings: not signed with this node's bind key" in refused["error"]
    assert phone["ok"] is False and "not signed" in phone["error"], phone
    assert first["ok"] is True and first["set"] == {"lamp_level": 60}, first
    assert replay["ok"] is False and "current challenge" in replay["error"], replay
    assert lamp == 60.0  # the phone's 77 never applied, the replay changed nothing
    assert status["rejected"] == 3 and status["advert_s"] == 1, status


def _status_handle(board: EmulatedBoard) -> int:
    (service,) = [s for s in board.get("ble.services") if s["uuid"] == bthome.GATT % 0]
    return next(c["handle"] for c in service["chars"] if c["uuid"] == bthome.GATT % 3)
