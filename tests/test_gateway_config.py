"""Config errors name the file, the key path, the value and what is allowed; all at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from polekit.cli import main
from polekit.gateway.config import ConfigError, load_config
from polekit.protocols import identity

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
    (
        "bus type",
        'type = "rtu"',
        'type = "rs485"',
        "rtu (serial RS-485), tcp (Modbus TCP), rtu-over-tcp",
    ),
    ("baud", "baudrate = 9600", "baudrate = 9601", "9600, 19200"),
    ("parity", 'parity = "N"', 'parity = "X"', "N, E or O"),
    (
        "device bus",
        'bus = "cabinet-485"\nunit = 1\nmap',
        'bus = "cabinet"\nunit = 1\nmap',
        "buses: cabinet-485, meters",
    ),
    ("unit id", "unit = 1\nmap", "unit = 300\nmap", "1..247"),
    (
        "map",
        'map = "pole-env"',
        'map = "pole-envv"',
        "did you mean 'pole-env'? known maps: acrel-adl400, chint-dtsu666",
    ),
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
    assert [d.map_name for d in config.devices] == ["pole-env", "sdm120", "lamp-driver", "inline"]


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


MAPS = """{devices}
[gateway]
id = "gw-maps"
data_dir = "{data}"

[[bus]]
name = "meters"
type = "tcp"
host = "192.0.2.20"
{bus_extra}

[[map]]
name = "branch-meter"
[[map.point]]
name = "voltage"
address = 0
table = "input"
type = "f32"
unit = "V"
[[map.point]]
name = "relay"
address = 0
table = "coil"
writable = true
{maps_extra}
"""


def one_line_devices(count: int, map_name: str = "branch-meter") -> str:
    rows = [
        f'  {{code = "{identity.make("371600", "EM", n)}", bus = "meters", unit = {n}, '
        f'map = "{map_name}"}},'
        for n in range(1, count + 1)
    ]
    return "device = [\n" + "\n".join(rows) + "\n]\n"


def maps_config(tmp_path: Path, devices: str, bus_extra: str = "", maps_extra: str = "") -> Path:
    # the one-line devices first: a key below a [table] header belongs to that table
    text = MAPS.format(data=tmp_path, devices=devices, bus_extra=bus_extra, maps_extra=maps_extra)
    return write(tmp_path, text)


def test_a_map_declared_once_serves_fifty_devices(tmp_path: Path) -> None:
    path = maps_config(tmp_path, one_line_devices(50))
    assert len(path.read_text().splitlines()) < 80  # the 50 meters took 2,820 lines
    config = load_config(path)
    assert len(config.devices) == 50
    assert {d.map_name for d in config.devices} == {"branch-meter"}
    assert [p.name for p in config.devices[49].points] == ["voltage", "relay"]
    assert config.devices[49].points.point("relay").writable  # commands work on it too


def test_map_names_are_one_namespace_with_the_built_in_maps(tmp_path: Path) -> None:
    clash = '[[map]]\nname = "sdm120"\n[[map.point]]\nname = "v"\naddress = 0\n'
    twice = '[[map]]\nname = "branch-meter"\n[[map.point]]\nname = "v"\naddress = 0\n'
    path = maps_config(tmp_path, one_line_devices(1, "branch-metre"), maps_extra=clash + twice)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert err.value.problems == [
        "map[1].name = 'sdm120': a built-in map or library device has this name (`polekit "
        "devices list`): give this [[map]] another name, or drop it and use the built-in "
        "'sdm120'",
        "map[2].name = 'branch-meter': another [[map]] already has this name; give each its own",
        "device[0].map = 'branch-metre': no map has this name; did you mean 'branch-meter'? "
        "known maps: acrel-adl400, branch-meter, chint-dtsu666, deltaohm-pmsense, "
        "dfrobot-sen0482, dfrobot-sen0483, pole-env, scion-thp, sdm120, sdm630, sonbest-sm7901b "
        "(the node's maps and the device library, `polekit devices list`, and each [[map]] "
        "name of this file)",
    ]


def test_a_map_with_bad_points_is_reported_once_not_at_every_device(tmp_path: Path) -> None:
    broken = (
        '[[map]]\nname = "empty"\n'
        '[[map]]\nname = "bad"\n[[map.point]]\nname = "x"\naddress = 0\ntype = "u64"\n'
    )
    path = maps_config(tmp_path, one_line_devices(3, "bad"), maps_extra=broken)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert (
        problems[0] == "map[1].point = (missing): must be a non-empty array of [[map.point]] tables"
    )
    assert problems[1].startswith("map[2].point[0]: ") and "bad type 'u64'" in problems[1]
    assert len(problems) == 2, problems


def test_max_in_flight_is_for_tcp_buses(tmp_path: Path) -> None:
    config = load_config(maps_config(tmp_path, one_line_devices(2), bus_extra="max_in_flight = 4"))
    assert config.buses["meters"].max_in_flight == 4
    text = GOOD.format(data=tmp_path)
    assert load_config(write(tmp_path, text)).buses["meters"].max_in_flight == 1  # the default
    path = write(tmp_path, text.replace('parity = "N"', 'parity = "N"\nmax_in_flight = 2'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert err.value.problems == [
        "bus[0].max_in_flight = 2: an rtu bus carries one transaction at a time (RS-485 is "
        "half duplex, behind a DTU too): remove max_in_flight from this [[bus]] (it is for "
        'type = "tcp" endpoints)'
    ]
    path = maps_config(tmp_path, one_line_devices(2), bus_extra="max_in_flight = 33")
    with pytest.raises(ConfigError, match=r"bus\[0\].max_in_flight = 33: transactions at once"):
        load_config(path)


def test_a_poll_interval_down_to_10_ms_is_taken(tmp_path: Path) -> None:
    text = GOOD.format(data=tmp_path)
    config = load_config(
        write(tmp_path, text.replace("poll_interval = 5.0", "poll_interval = 0.01"))
    )
    assert config.devices[0].poll_interval_s == 0.01
    path = write(tmp_path, text.replace("poll_interval = 5.0", "poll_interval = 0.009"))
    with pytest.raises(ConfigError, match=r"poll_interval = 0.009: seconds, 0.01..86400"):
        load_config(path)


def test_the_documented_fifty_meters_example_is_valid(tmp_path: Path) -> None:
    from conftest import ROOT

    guide = (ROOT / "docs" / "gateway.md").read_text()
    section = guide.split("### Register maps declared once", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(
        write(tmp_path, block.replace("[gateway]", f'[gateway]\ndata_dir = "{tmp_path}"'))
    )
    assert config.buses["meters"].max_in_flight == 4
    assert [d.unit for d in config.devices] == [1, 2, 50]
    assert {d.map_name for d in config.devices} == {"branch-meter"}


def test_a_device_array_below_a_table_says_where_to_move_it(tmp_path: Path) -> None:
    path = maps_config(tmp_path, "")
    path.write_text(path.read_text() + one_line_devices(2))  # after [[map.point]]: its key
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == [
        "map[0].point[1].device: unknown key; in TOML a key belongs to the [table] above it: "
        "move `device = ...` above the first [table] header, or write [[device]] tables"
    ]
