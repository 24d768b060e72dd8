"""BTHome: what we encode, Home Assistant's bthome-ble parses to the same values."""

from __future__ import annotations

import pytest
from bluetooth_sensor_state_data import SensorUpdate
from bthome_ble import BTHomeBluetoothDeviceData
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given
from hypothesis import strategies as st

from polekit.protocols import bthome, ccm
from polekit.protocols.errors import BTHomeError, DecryptionError

from conftest import ha_service_info, load_vectors

VECTORS = load_vectors("bthome")
MAC = "54:48:E6:8F:80:A5"

# our names -> what bthome-ble calls them (sensor key or binary-sensor key)
HA_NAMES = {
    "temperature": "temperature",
    "humidity": "humidity",
    "battery": "battery",
    "pressure": "pressure",
    "illuminance": "illuminance",
    "pm2_5": "pm25",
    "pm10": "pm10",
    "co2": "carbon_dioxide",
    "voltage": "voltage",
    "tilt": "rotation",
    "count": "count",
    "door_open": "door",
    "water": "moisture",
    "smoke": "smoke",
    "generic": "generic",
    "opening": "opening",
}


def _ha_parse(service_data: bytes, bindkey: bytes | None = None) -> tuple[dict, dict, list]:
    info = ha_service_info(service_data, "polekit", MAC)
    parser = BTHomeBluetoothDeviceData(bindkey=bindkey)
    update: SensorUpdate = parser.update(info)
    sensors = {k.key: v.native_value for k, v in update.entity_values.items()}
    binary = {k.key: v.native_value for k, v in update.binary_entity_values.items()}
    return sensors, binary, list(update.events.values())


@pytest.mark.parametrize("vec", VECTORS["plain"], ids=lambda v: ",".join(v["values"]))
def test_bthome_ble_reads_what_we_encode(vec: dict) -> None:
    raw = bthome.encode(
        vec["values"], packet_id=vec.get("packet_id"), trigger=vec.get("trigger", False)
    )
    assert raw.hex() == vec["hex"]
    sensors, binary, events = _ha_parse(raw)
    for name, value in vec["values"].items():
        if name == "button":
            assert [e.event_type for e in events] == [value]
        elif isinstance(value, bool):
            assert binary[HA_NAMES[name]] is value
        else:
            assert sensors[HA_NAMES[name]] == pytest.approx(value)
    assert bthome.decode(raw) == {
        **({"packet_id": vec["packet_id"]} if "packet_id" in vec else {}),
        **vec["values"],
    }


def test_spec_encryption_vector() -> None:
    vec = VECTORS["encrypted"][0]
    raw = bthome.encode(vec["values"], key=vec["key"], mac=vec["mac"], counter=vec["counter"])
    assert raw.hex() == vec["hex"]
    assert bthome.decode(raw, key=vec["key"], mac=vec["mac"]) == vec["values"]
    sensors, _, _ = _ha_parse(raw, bytes.fromhex(vec["key"]))
    assert sensors["temperature"] == pytest.approx(25.06)


def test_wrong_key_is_a_decryption_error() -> None:
    vec = VECTORS["encrypted"][0]
    with pytest.raises(DecryptionError):
        bthome.decode(bytes.fromhex(vec["hex"]), key="00" * 16, mac=vec["mac"])
    with pytest.raises(BTHomeError, match="bind key"):
        bthome.decode(bytes.fromhex(vec["hex"]))


@given(
    st.binary(max_size=40),
    st.binary(min_size=13, max_size=13),
    st.binary(min_size=16, max_size=16),
    st.binary(max_size=8),
)
def test_ccm_matches_cryptography(data: bytes, nonce: bytes, key: bytes, aad: bytes) -> None:
    expected = AESCCM(key, tag_length=4).encrypt(nonce, data, aad or None)
    assert ccm.encrypt(key, nonce, data, 4, aad) == expected
    assert ccm.decrypt(key, nonce, expected, 4, aad) == data


@pytest.mark.parametrize("hexdata", VECTORS["malformed"])
def test_malformed_adverts_raise_bthome_error(hexdata: str) -> None:
    with pytest.raises(BTHomeError):
        bthome.decode(bytes.fromhex(hexdata), key="00" * 16, mac=MAC)


@given(st.binary(max_size=30))
def test_random_service_data_never_raises_anything_else(raw: bytes) -> None:
    try:
        bthome.decode(raw, key="00" * 16, mac=MAC)
    except BTHomeError:
        pass


def test_advert_payload_fits_legacy_advertising() -> None:
    adv = bthome.advert(bthome.encode({"temperature": 21.5}), name="PL1")
    assert adv.startswith(b"\x02\x01\x06") and len(adv) <= 31
    assert b"\x16\xd2\xfc" in adv
