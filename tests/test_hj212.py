"""HJ 212-2017 framing (protocols/hj212.py) against frames published by others, and the
hj212 adapter's packets for readings at set times (the clock passed in).

References:
- The standard's own worked example of a packet with its CRC (HJ 212-2017, section 6.3
  and appendix A, "##0101QN=20160801085857223;ST=32;CN=1062;...;CP=&&RtdInterval=30&&1C80"),
  as quoted with the standard's C CRC routine at
  https://www.codetd.com/en/article/14967907 (from https://www.cnblogs.com/LiuSiyuan/p/8110192.html)
  and https://blog.csdn.net/jessezappy/article/details/125092472 ("pages 19 and 20 of the
  standard").
- An independent implementation's unit test: a C# library's test of its CRC16_HJT212
  option (StringExtension.Encrypt, xUnit) on a real air-quality 2011 data segment
  (ST=22, a34004/a34002/a34001/a01001/a01002/a01006/a01007/a01008/LA), expecting "5440".
No HJ 212 package exists on PyPI (pip index versions hj212 / hj212-2017 / pyhj212 find
none), so these published frames are the independent reference.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from polekit.gateway.platforms.base import (
    AdapterContext,
    BrokerSettings,
    PlatformConfig,
    Reading,
    Section,
)
from polekit.gateway.platforms.hj212 import Hj212Adapter
from polekit.protocols import hj212, modbus
from polekit.protocols.errors import HJ212Error, ProtocolError

STANDARD_EXAMPLE = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
)
CSHARP_SEGMENT = (
    b"QN=20180427125809000;ST=22;CN=2011;PW=123456;MN=LXHB0CS0306310;Flag=5;CP=&&"
    b"DataTime=20180427125809;a34004-Rtd=75600.000,a34004-Flag=N;a34002-Rtd=140600.000,"
    b"a34002-Flag=N;a34001-Rtd=178000.000,a34001-Flag=N;a01001-Rtd=24.8,a01001-Flag=N;"
    b"a01002-Rtd=46.8,a01002-Flag=N;a01006-Rtd=101.380,a01006-Flag=N;a01007-Rtd=0.0,"
    b"a01007-Flag=N;a01008-Rtd=25,a01008-Flag=N;LA-Rtd=57.9,LA-Flag=N&&"
)


def test_the_standards_example_packet_is_built_byte_for_byte() -> None:
    fields = [
        ("QN", "20160801085857223"),
        ("ST", 32),
        ("CN", 1062),
        ("PW", "100000"),
        ("MN", "010000A8900016F000169DC0"),
        ("Flag", 5),
    ]
    assert hj212.encode(fields, "RtdInterval=30") == STANDARD_EXAMPLE
    p = hj212.parse(STANDARD_EXAMPLE)
    assert p["CN"] == "1062" and p["MN"] == "010000A8900016F000169DC0"
    assert p["CP"] == {"RtdInterval": "30"} and hj212.wants_answer(p)


def test_crc_agrees_with_an_independent_implementation_and_is_not_modbus() -> None:
    assert hj212.crc16(CSHARP_SEGMENT) == 0x5440
    # the Modbus CRC (XOR the byte in, no shift first) gives another value: the example
    # tells them apart
    assert modbus.crc16(STANDARD_EXAMPLE[6:-6]) != 0x1C80
    packet = hj212.frame(CSHARP_SEGMENT)
    assert packet.startswith(b"##0379QN=") and packet.endswith(b"&&5440\r\n")
    cp = hj212.parse(packet)["CP"]
    assert cp["a34004-Rtd"] == "75600.000" and cp["LA-Rtd"] == "57.9"


@pytest.mark.parametrize(
    "bad",
    [
        STANDARD_EXAMPLE.replace(b"1C80", b"1C81"),  # CRC
        STANDARD_EXAMPLE.replace(b"##0101", b"##0102") + b"x",  # length
        STANDARD_EXAMPLE.replace(b"##", b"#$", 1),  # header
        STANDARD_EXAMPLE[:-2] + b"\n\n",  # end
        hj212.frame(b"QN=1;ST=22;PW=1;MN=2;Flag=5;CP=&&&&"),  # no CN
        hj212.frame(b"QN=1;CN=2011;CP=&&a34004-Rtd&&"),  # CP item without '='
        hj212.frame(b"QN=1;CN=2011;Flag=5"),  # no CP
        b"##1025" + b"x" * 1031,  # past 1024
    ],
)
def test_malformed_packets_raise_hj212error(bad: bytes) -> None:
    with pytest.raises(HJ212Error):
        hj212.parse(bad)
    assert issubclass(HJ212Error, ProtocolError)


def test_stream_framing_says_how_many_bytes_a_packet_takes() -> None:
    assert hj212.frame_length(STANDARD_EXAMPLE[:5]) == 0
    assert hj212.frame_length(STANDARD_EXAMPLE[:50]) == 0
    assert hj212.frame_length(STANDARD_EXAMPLE + b"##01") == len(STANDARD_EXAMPLE)
    with pytest.raises(HJ212Error):
        hj212.frame_length(b"xx0101")


def adapter(tmp_path: Path, clock: list[float], **keys: object) -> Hj212Adapter:
    table = {"host": "127.0.0.1", "port": 1, "mn": "MN1", "pw": "123456", **keys}
    problems: list[str] = []
    settings = Hj212Adapter.parse(Section(table, "platform", problems.append))
    assert not problems, problems
    broker = BrokerSettings("127.0.0.1", 1883, None, 30, "mqtt://x", "mqtt://x")
    names = keys.get("names", {})
    assert isinstance(names, dict)
    platform = PlatformConfig(
        "hj212", "hj212", broker, "3.1.1", 20, names, settings, "queue-hj212.sqlite3"
    )
    ctx = AdapterContext(platform, "gw", (), tmp_path, clock=lambda: clock[0])
    return Hj212Adapter(ctx)


T0 = 1_722_470_400.0  # 2024-08-01T00:00:00Z = 08:00:00 Beijing time


def cp_of(out: object) -> dict[str, str]:
    return hj212.parse(out.payload)["CP"]  # type: ignore[attr-defined]


def test_realtime_packet_maps_our_names_and_units_to_the_annex(tmp_path: Path) -> None:
    clock = [T0 + 0.5]
    a = adapter(tmp_path, clock)
    readings = [
        Reading("pm2_5", 35, "ug/m3"),
        Reading("pm10", 2.5e-8, "kg/m3"),
        Reading("temperature", 21.5, "Cel"),
        Reading("humidity", 45.04, "%RH"),
        Reading("pressure", 101325, "Pa"),
        Reading("wind_speed", 3.2, "m/s"),
        Reading("wind_direction", 270, "deg"),
        Reading("noise", 55.5, "dB"),
        Reading("lamp_level", 50, "/100"),  # not the platform's business
    ]
    (out,) = a.readings("DEV1", readings, T0)
    p = hj212.parse(out.payload)
    assert p["QN"] == "20240801080000500" and p["ST"] == "22" and p["Flag"] == "5"
    assert p["CP"] == {
        "DataTime": "20240801080000",
        "a34004-Rtd": "35.0",
        "a34004-Flag": "N",
        "a34002-Rtd": "25.0",
        "a34002-Flag": "N",
        "a01001-Rtd": "21.5",
        "a01001-Flag": "N",
        "a01002-Rtd": "45.0",
        "a01002-Flag": "N",
        "a01006-Rtd": "101.33",  # kPa
        "a01006-Flag": "N",
        "a01007-Rtd": "3.2",
        "a01007-Flag": "N",
        "a01008-Rtd": "270",
        "a01008-Flag": "N",
        "LA-Rtd": "55.5",
        "LA-Flag": "N",
    }
    # two packets built in one millisecond still have their own QN
    (again,) = a.readings("DEV2", readings, T0)
    assert hj212.parse(again.payload)["QN"] == "20240801080000501"


def test_minute_and_hour_data_are_min_avg_max_of_what_was_delivered(tmp_path: Path) -> None:
    clock = [T0]
    a = adapter(tmp_path, clock, minute_s=600, realtime=False, names={"noise": "Leq"})
    polls = [(0, 10, 60.0, 350), (300, 30, 70.0, 10), (599, 20, 60.0, 0)]
    for dt, pm, noise, wd in polls:
        r = [
            Reading("pm2_5", pm, "ug/m3"),
            Reading("noise", noise, "dB"),
            Reading("wind_direction", wd, "deg"),
        ]
        assert a.readings("D", r, T0 + dt) == []
    # the first poll of the next 10 minutes closes the interval
    (minute,) = a.readings("D", [Reading("pm2_5", 5, "ug/m3")], T0 + 600)
    p = hj212.parse(minute.payload)
    assert p["CN"] == "2051"
    cp = p["CP"]
    assert cp["DataTime"] == "20240801080000"
    assert (cp["a34004-Min"], cp["a34004-Avg"], cp["a34004-Max"]) == ("10.0", "20.0", "30.0")
    leq = 10 * math.log10((2 * 10**6 + 10**7) / 3)  # sound energy: 66.0, not 63.3
    assert cp["Leq-Avg"] == f"{leq:.1f}" == "66.0"
    assert cp["a01008-Avg"] == "0"  # 350, 10 and 0 degrees average to north, not 120
    # the hour closes at 09:00 Beijing time
    (hour,) = a.readings("D", [Reading("pm2_5", 5, "ug/m3")], T0 + 3600)[1:]
    p = hj212.parse(hour.payload)
    assert p["CN"] == "2061" and p["CP"]["DataTime"] == "20240801080000"
    assert (p["CP"]["a34004-Min"], p["CP"]["a34004-Max"]) == ("5.0", "30.0")


def test_an_offline_device_is_reported_with_its_last_values_flagged_d(tmp_path: Path) -> None:
    a = adapter(tmp_path, [T0], hour=False, minute_s=0)
    a.readings("D", [Reading("pm2_5", 12, "ug/m3")], T0)
    (out,) = a.device_status("D", False, T0 + 5)
    assert cp_of(out) == {"DataTime": "20240801080005", "a34004-Rtd": "12.0", "a34004-Flag": "D"}
    assert a.device_status("D", True, T0 + 9) == []


def test_answer_off_sends_flag_4(tmp_path: Path) -> None:
    a = adapter(tmp_path, [T0], answer=False, st=23)
    (out,) = a.readings("D", [Reading("noise", 50, "dB")], T0)
    p = hj212.parse(out.payload)
    assert p["Flag"] == "4" and p["ST"] == "23" and not hj212.wants_answer(p)


def test_platform_requests_are_answered_or_refused(tmp_path: Path) -> None:
    a = adapter(tmp_path, [T0])
    fields = [("QN", "20240801080000001"), ("ST", 22), ("PW", "123456"), ("MN", "MN1")]
    down = a.downlink("hj212", hj212.encode([*fields, ("CN", 1011), ("Flag", 5)]))
    got = [hj212.parse(m.payload) for m in down.publish]
    assert [p["CN"] for p in got] == ["9011", "1011", "9012"]
    assert got[0]["CP"] == {"QnRtn": "1"} and got[0]["ST"] == "91"
    assert got[1]["CP"] == {"SystemTime": "20240801080000"}
    assert all(p["QN"] == "20240801080000001" for p in got)
    wrong_pw = [(k, "000000" if k == "PW" else v) for k, v in fields]
    down = a.downlink("hj212", hj212.encode([*wrong_pw, ("CN", 1011), ("Flag", 5)]))
    assert hj212.parse(down.publish[0].payload)["CP"] == {"QnRtn": "3"}
    down = a.downlink("hj212", hj212.encode([*fields, ("CN", 3020), ("Flag", 5)]))
    assert [hj212.parse(m.payload)["CP"] for m in down.publish] == [{"QnRtn": "2"}]
    assert a.downlink("hj212", b"garbage").ignored


@pytest.mark.parametrize(
    "keys, where",
    [
        ({"port": 1, "pw": "1"}, "platform.host: required"),
        ({"host": "h", "pw": "1"}, "platform.port: required"),
        ({"host": "h", "port": 1, "pw": "1", "mn": "a;b"}, "platform.mn: 'a;b'"),
        ({"host": "h", "port": 1, "mn": "m", "pw": "1234567890"}, "platform.pw: ***"),
        ({"host": "h", "port": 1, "mn": "m", "pw": "1", "minute_s": 700}, "platform.minute_s"),
        ({"host": "h", "port": 1, "mn": "m", "pw": "1", "retries": -1}, "platform.retries"),
    ],
)
def test_bad_settings_are_reported_with_their_key(keys: dict[str, object], where: str) -> None:
    problems: list[str] = []
    Hj212Adapter.parse(Section({"mn": "m", **keys}, "platform", problems.append))
    assert any(p.startswith(where) for p in problems), problems


def test_an_error_about_a_packet_never_shows_its_password() -> None:
    # the platform's answers carry our PW; an error quoting the data segment (logged by
    # the uplink) masks it
    for text in (b"QN=1;ST=22;CN=9014;PW=s3cret-pw;MN=MN1;Flag=4", b"QN=1;PW=s3cret-pw;CP=&&x"):
        packet = b"##%04d" % len(text) + text + b"%04X\r\n" % hj212.crc16(text)
        with pytest.raises(HJ212Error) as caught:
            hj212.parse(packet)
        assert "s3cret" not in str(caught.value) and "PW=***" in str(caught.value), caught.value
