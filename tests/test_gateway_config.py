"""Config errors name the file, the key path, the value and what is allowed; all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from polekit.cli import main
from polekit.gateway.config import ConfigError, load_config

GOOD = """
[gateway]
id = "gw-371600-0001"
data_dir = "{data}"

[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_prefix = "polekit/v1"
format = "senml+cbor"

[[bus]]
name = "cabinet-485"
type = "rtu"
port = "/dev/ttyUSB0"
baudrate = 9600
parity = "N"

[[bus]]
name = "meters"
type = "tcp"
host = "192.0.2.10"
port = 502

[[device]]
code = "371600PL000001C"
bus = "cabinet-485"
unit = 1
map = "pole-env"
poll_interval = 5.0

[[device]]
code = "371600EM000001J"
bus = "meters"
unit = 1
[[device.point]]
name = "voltage"
address = 0
table = "input"
type = "f32"
unit = "V"
[[device.point]]
name = "relay"
address = 10
table = "coil"
writable = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_good_config_loads_into_typed_objects(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD.format(data=tmp_path)))
    assert config.gateway_id == "gw-371600-0001"
    assert config.buses["cabinet-485"].stopbits == 2  # no parity: Modbus asks for 2 stop bits
    assert config.buses["cabinet-485"].inter_frame_s == pytest.approx(3.5 * 11 / 9600)
    assert config.buses["meters"].tcp_port == 502
    meter = config.devices[1]
    assert meter.map_name == "inline" and [p.name for p in meter.points] == ["voltage", "relay"]
    assert (
        config.topic("data", "371600PL000001C") == "polekit/v1/gw-371600-0001/data/371600PL000001C"
    )


BAD = [
    ("gateway.id", 'id = "gw-371600-0001"', 'id = "gw 1"', "gateway.id = 'gw 1'"),
    ("unknown key", "poll_interval = 5.0", "pol_interval = 5.0", "did you mean 'poll_interval'"),
    ("url", 'url = "mqtt://127.0.0.1:1883"', 'url = "http://broker"', "mqtt://host:1883"),
    ("format", 'format = "senml+cbor"', 'format = "xml"', "senml+cbor or senml+json"),
    ("prefix", 'topic_prefix = "polekit/v1"', 'topic_prefix = "a/#"', "'+', '#'"),
    ("bus type", 'type = "rtu"', 'type = "rs485"', "rtu (serial RS-485) or tcp"),
    ("baud", "baudrate = 9600", "baudrate = 9601", "9600, 19200"),
    ("parity", 'parity = "N"', 'parity = "X"', "N, E or O"),
    (
        "device bus",
        'bus = "cabinet-485"\nunit = 1\nmap',
        'bus = "cabinet"\nunit = 1\nmap',
        "buses: cabinet-485, meters",
    ),
    ("unit id", "unit = 1\nmap", "unit = 300\nmap", "1..247"),
    ("map", 'map = "pole-env"', 'map = "pole-envv"', "known maps: pole-env, sdm120"),
    ("code", 'code = "371600PL000001C"', 'code = "371600PL000001D"', "expected 'C'"),
    ("poll", "poll_interval = 5.0", "poll_interval = -1", "seconds, 0.01..86400"),
    ("type of value", "poll_interval = 5.0", 'poll_interval = "5"', "must be a number"),
    ("point type", 'type = "f32"', 'type = "float"', "bad type 'float'"),
    (
        "point overlap",
        'address = 10\ntable = "coil"',
        'address = 1\ntable = "input"',
        "overlaps voltage",
    ),
]


@pytest.mark.parametrize("name,old,new,expected", BAD, ids=[b[0] for b in BAD])
def test_each_mistake_is_named(
    tmp_path: Path, name: str, old: str, new: str, expected: str
) -> None:
    text = GOOD.format(data=tmp_path)
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and expected in message, message


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = (
        GOOD.format(data=tmp_path)
        .replace('parity = "N"', 'parity = "X"')
        .replace("unit = 1\nmap", "unit = 0\nmap")
    )
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert len(err.value.problems) == 2


def test_missing_file_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[gateway\nid="))


def test_missing_tables_and_required_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[[device]]\nunit = 1\n"))
    message = str(err.value)
    for expected in ("[gateway]", "gateway.id", "device[0].code", "device[0].bus", "device[0].map"):
        assert expected in message, message


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = GOOD.format(data=tmp_path).replace(
        'url = "mqtt://127.0.0.1:1883"', 'url = "mqtts://broker:8883"\nca_file = "ca.pem"'
    )
    with pytest.raises(ConfigError, match=r"mqtt.ca_file = 'ca.pem': no such file"):
        load_config(write(tmp_path, text))
    (tmp_path / "ca.pem").write_text("x")
    config = load_config(write(tmp_path, text))
    assert config.mqtt.tls and config.mqtt.port == 8883


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD.format(data=tmp_path))
    result = CliRunner().invoke(main, ["gateway", "check", "-c", str(good)])
    assert result.exit_code == 0 and "2 bus(es), 2 device(s)" in result.output
    bad = write(tmp_path, GOOD.format(data=tmp_path).replace("unit = 1\nmap", "unit = 0\nmap"))
    result = CliRunner().invoke(main, ["gateway", "check", "-c", str(bad)])
    assert result.exit_code == 2 and "device[0].unit = 0" in result.output


def test_the_documented_example_config_is_valid() -> None:
    from conftest import ROOT

    config = load_config(ROOT / "docs" / "gateway.example.toml")
    assert [d.map_name for d in config.devices] == ["pole-env", "sdm120", "inline"]


def test_entries_that_are_not_tables_are_problems_not_crashes(tmp_path: Path) -> None:
    text = GOOD.format(data=tmp_path) + "\n[mqtt2]\n"
    with pytest.raises(ConfigError, match="mqtt2: unknown key"):
        load_config(write(tmp_path, text))
    text = "bus = [1, 2]\ndevice = 3\n" + GOOD.format(data=tmp_path).split("[[bus]]")[0]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert "bus[0] = 1: must be a table ([[bus]])" in str(err.value)
    assert "device = 3: must be an array of tables ([[device]])" in str(err.value)


def test_a_config_without_mqtt_checks_out_with_the_local_broker(tmp_path: Path) -> None:
    # every [mqtt] key has a default: leaving the table out is not a mistake
    text = GOOD.format(data=tmp_path)
    without = text.split("[mqtt]")[0] + "[[bus]]" + text.split("[[bus]]", 1)[1]
    assert "[mqtt]" not in without
    result = CliRunner().invoke(main, ["gateway", "check", "-c", str(write(tmp_path, without))])
    assert result.exit_code == 0, result.output
    assert "broker mqtt://127.0.0.1:1883" in result.output
    config = load_config(tmp_path / "gateway.toml")
    assert config.mqtt.topic_prefix == "polekit/v1" and config.mqtt.format == "senml+cbor"


KINDS = [
    ("whole number", "unit = 1\nmap", 'unit = "1"\nmap', "must be a whole number"),
    ("true or false", "writable = true", "writable = 1", "must be true or false"),
    ("text", 'map = "pole-env"', "map = 5", 'must be text in quotes ("...")'),
]


@pytest.mark.parametrize("name,old,new,expected", KINDS, ids=[k[0] for k in KINDS])
def test_a_value_of_the_wrong_kind_is_named_in_toml_words(
    tmp_path: Path, name: str, old: str, new: str, expected: str
) -> None:
    path = write(tmp_path, GOOD.format(data=tmp_path).replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert expected in message, message
    for python_name in ("str", "int", "float", "bool"):
        assert f"be {python_name}" not in message and f"or {python_name}" not in message
