"""A DL/T 645 meter and a Modbus device on one RS-485 line, read by the gateway's bus.

The line is hil's virtual RS-485 bus paced at 2400 baud (11 bits a character, as 8E1
takes; pseudo-terminals refuse parity, so the ports are opened 8N2, which is 11 bits too).
The meter is SimulatedMeter (hil/fieldbus.py, our DL/T 645 table, byte-exact with the
``dlt645`` package per tests/test_dlt645.py); the Modbus device is a pymodbus server
listening as a slave on a shared line. One ModbusBus owns the port and polls both; the
meter's address is not configured: the broadcast address query finds it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from polekit.gateway.config import ConfigError, parse_config
from polekit.gateway.sources.modbus_bus import ModbusBus
from polekit.hil.fieldbus import SimulatedBus, SimulatedMeter
from polekit.hil.line import VirtualLine
from polekit.protocols import identity, modbus

METER_CODE = identity.make("371600", "EM", 1)
SENSOR_CODE = identity.make("371600", "EN", 2)
ADDRESS = "000012345678"
VALUES = {
    "energy": 1206.42,
    "voltage_l1": 230.4,
    "current_l1": -5.123,
    "power": 1.2345,
    "power_factor": 0.987,
    "frequency": 49.98,
}


def _config(port: str, meter: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "gateway": {"id": "gw-dlt645"},
            "mqtt": {},
            "bus": [
                {
                    "name": "cabinet",
                    "type": "rtu",
                    "port": port,
                    "baudrate": 2400,
                    "parity": "N",
                    "timeout": 1.0,
                }
            ],
            "device": [
                {
                    "code": METER_CODE,
                    "bus": "cabinet",
                    "protocol": "dlt645",
                    "map": "dlt645-1p",
                    "poll_interval": 0.5,
                    **(meter or {}),
                },
                {
                    "code": SENSOR_CODE,
                    "bus": "cabinet",
                    "unit": 2,
                    "map": "sdm120",
                    "poll_interval": 0.5,
                },
            ],
        }
    )


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _on_line(
    test: Callable[[ModbusBus, SimulatedMeter, dict[str, dict[str, Any]]], Awaitable[None]],
    meter_keys: dict[str, Any] | None = None,
) -> None:
    with VirtualLine(baudrate=2400) as line:
        gw_port, meter_port, sensor_port = line.endpoint(), line.endpoint(), line.endpoint()
        sensor = SimulatedBus(
            {2: modbus.register_map("sdm120")},
            serial_port=sensor_port,
            baudrate=2400,
            parity="N",
            stopbits=2,
            shared=True,
        )
        await sensor.start()
        await sensor.set(2, "voltage", 231.5)
        meter = await SimulatedMeter(meter_port, ADDRESS, VALUES).start()
        polled: dict[str, dict[str, Any]] = {}

        async def sink(device: Any, values: list[tuple[Any, Any]], _t: float) -> None:
            polled[device.code] = {p.name: (v, p.unit) for p, v in values}

        config = _config(gw_port, meter_keys)
        bus = ModbusBus(config.buses["cabinet"], config.devices, sink)
        task = asyncio.create_task(bus.run())
        try:
            await test(bus, meter, polled)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            bus.close()
            await meter.stop()
            await sensor.stop()


def test_meter_and_modbus_device_share_a_paced_2400_baud_line() -> None:
    async def check(bus: ModbusBus, meter: SimulatedMeter, polled: dict[str, Any]) -> None:
        await _until(lambda: METER_CODE in polled and SENSOR_CODE in polled, 20, "both")
        got = polled[METER_CODE]
        assert {n: v for n, (v, _u) in got.items()} == pytest.approx(VALUES)
        assert {n: u for n, (_v, u) in got.items()} == {
            "energy": "kWh",
            "voltage_l1": "V",
            "current_l1": "A",
            "power": "kW",
            "power_factor": "/",
            "frequency": "Hz",
        }
        assert polled[SENSOR_CODE]["voltage"][0] == pytest.approx(231.5)
        states = {s.config.code: s for s in bus.devices.values()}
        assert states[METER_CODE].meter_address == ADDRESS  # found by the broadcast query
        assert states[METER_CODE].online and states[SENSOR_CODE].online
        # both keep being polled, turn about, on the one port
        before = (states[METER_CODE].polls, states[SENSOR_CODE].polls)
        await _until(
            lambda: (
                states[METER_CODE].polls > before[0] + 1
                and states[SENSOR_CODE].polls > before[1] + 1
            ),
            20,
            "more polls of both",
        )
        assert bus.counters.bad_response == 0 and bus.counters.no_response == 0

    asyncio.run(_on_line(check))


def test_silent_meter_goes_offline_and_the_modbus_device_carries_on() -> None:
    async def check(bus: ModbusBus, meter: SimulatedMeter, polled: dict[str, Any]) -> None:
        states = {s.config.code: s for s in bus.devices.values()}
        await _until(lambda: bool(states[METER_CODE].online), 20, "the meter online")
        meter.silent = True
        await _until(lambda: states[METER_CODE].online is False, 30, "the meter offline")
        assert "no answer within 1.0 s" in (states[METER_CODE].last_error or "")
        sensor_polls = states[SENSOR_CODE].polls
        await _until(lambda: states[SENSOR_CODE].polls > sensor_polls + 2, 20, "sensor polls")
        assert states[SENSOR_CODE].online
        meter.silent = False
        await _until(lambda: bool(states[METER_CODE].online), 90, "the meter back online")

    asyncio.run(_on_line(check, {"address": ADDRESS}))


def test_meter_refusal_is_reported_with_its_error_bits() -> None:
    async def check(bus: ModbusBus, meter: SimulatedMeter, polled: dict[str, Any]) -> None:
        del meter.values["frequency"]  # the meter has no such data: it answers 0xD1, ERR 02
        states = {s.config.code: s for s in bus.devices.values()}
        await _until(lambda: states[METER_CODE].failures > 0, 20, "a refused poll")
        assert "DI 02800002 (frequency): meter refused (no requested data)" in (
            states[METER_CODE].last_error or ""
        )
        assert bus.counters.exceptions > 0

    asyncio.run(_on_line(check, {"address": ADDRESS}))


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"address": "12345"}, "the meter's 12-digit address"),
        ({"unit": 3}, "a DL/T 645 meter has an address, not unit"),
        ({"map": "sdm120"}, "a DL/T 645 data set: dlt645-1p, dlt645-3p"),
        ({"protocol": "iec62056"}, "modbus (the default) or dlt645"),
    ],
)
def test_bad_meter_settings_are_config_errors(keys: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config("/dev/ttyUSB0", keys)
    assert problem in str(err.value)


def test_a_meter_only_line_defaults_to_2400_baud() -> None:
    config = parse_config(
        {
            "gateway": {"id": "gw"},
            "bus": [{"name": "m", "type": "rtu", "port": "/dev/ttyUSB0"}],
            "device": [{"code": METER_CODE, "bus": "m", "protocol": "dlt645"}],
        }
    )
    bus = config.buses["m"]
    assert (bus.baudrate, bus.parity, bus.stopbits) == (2400, "E", 1)
