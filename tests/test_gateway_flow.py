"""The gateway end to end, with real parts: pymodbus field devices on a virtual RS-485 line
(pseudo-terminals) and on loopback TCP, a real mosquitto (or amqtt) broker, and a real
MQTT subscriber counting what arrives."""

from __future__ import annotations

import asyncio
import json

import pytest
from gwkit import METER, POLE_1, POLE_2, Collector, gateway_config, run, until, values_of

from polekit.gateway.app import Gateway
from polekit.hil.broker import LocalBroker, free_port
from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols import modbus

POLE_ENV = modbus.register_map("pole-env")


@pytest.fixture
def broker():  # type: ignore[no-untyped-def]
    with LocalBroker() as b:
        yield b


def rtu_bus(port: str, **extra: object) -> dict[str, object]:
    # pseudo-terminals refuse parity settings: virtual lines run 8N2, which Modbus allows
    return {
        "name": "cabinet-485",
        "type": "rtu",
        "port": port,
        "baudrate": 19200,
        "parity": "N",
        "timeout": 0.3,
        **extra,
    }


def pole(code: str, unit: int, poll: float = 0.2) -> dict[str, object]:
    return {
        "code": code,
        "bus": "cabinet-485",
        "unit": unit,
        "map": "pole-env",
        "poll_interval": poll,
    }


def test_values_and_units_arrive_as_senml(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        with VirtualLine() as line:
            gw_port, dev_port = line.endpoint(), line.endpoint()
            sim = await SimulatedBus(
                {1: POLE_ENV}, serial_port=dev_port, baudrate=19200, parity="N", stopbits=2
            ).start()
            for name, value in (
                ("temperature", -3.25),
                ("humidity", 61.5),
                ("pm2_5", 12),
                ("tilt", 1.5),
                ("door_open", True),
                ("lamp_level", 80),
                ("illuminance", 12345.6),
            ):
                await sim.set(1, name, value)
            config = gateway_config(tmp_path, broker.url, [rtu_bus(gw_port)], [pole(POLE_1, 1)])
            gw = Gateway(config)
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                await until(lambda: len(sub.packs(POLE_1)) >= 3, what="three packs")
                gw.stop()
                await task
                await sim.stop()
        pack = sub.packs(POLE_1)[0]
        values = values_of(pack)
        assert values["temperature"] == (-3.25, "Cel")
        assert values["humidity"] == (61.5, "%RH")
        assert values["pm2_5"] == (pytest.approx(1.2e-08), "kg/m3")  # SenML v10: primary units only
        assert values["tilt"] == (1.5, "deg")
        assert values["door_open"] == (True, None)
        assert values["lamp_level"] == (0.8, "/")
        assert values["illuminance"] == (pytest.approx(12345.6), "lx")
        assert all(r["n"].startswith(f"urn:dev:pk:{POLE_1}:") for r in pack)
        assert sub.seqs(POLE_1)[:3] == [1, 2, 3]
        state = [json.loads(m.payload) for m in sub.on("/gw-test/state")]
        assert state[0]["state"] == "online" and state[-1]["state"] == "offline"

    run(scenario())


def test_modbus_tcp_meter_with_secondary_units(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        port = free_port()
        sim = await SimulatedBus(
            {3: modbus.register_map("sdm120")}, tcp=("127.0.0.1", port)
        ).start()
        await sim.set(3, "voltage", 229.5)
        await sim.set(3, "energy", 1234.5)
        config = gateway_config(
            tmp_path,
            broker.url,
            [{"name": "meters", "type": "tcp", "host": "127.0.0.1", "port": port}],
            [{"code": METER, "bus": "meters", "unit": 3, "map": "sdm120", "poll_interval": 0.2}],
            format="senml+json",
            secondary_units=True,
        )
        gw = Gateway(config)
        async with Collector(broker.host, broker.port) as sub:
            task = asyncio.create_task(gw.run())
            await until(lambda: len(sub.packs(METER, "senml+json")) >= 1, what="a meter pack")
            gw.stop()
            await task
        await sim.stop()
        raw = json.loads(sub.on(f"/data/{METER}")[0].payload)
        assert raw[0]["bver"] == 26
        values = values_of(sub.packs(METER, "senml+json")[0])
        assert values["voltage"] == (229.5, "V")
        assert values["energy"] == (1234.5, "kWh")

    run(scenario())


def test_dead_device_does_not_stall_the_bus(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        with VirtualLine() as line:
            gw_port, dev_port = line.endpoint(), line.endpoint()
            sim = await SimulatedBus(
                {1: POLE_ENV, 2: POLE_ENV},
                serial_port=dev_port,
                baudrate=19200,
                parity="N",
                stopbits=2,
            ).start()
            sim.remove(2)  # unit 2 is dead: silence on the line
            config = gateway_config(
                tmp_path,
                broker.url,
                [rtu_bus(gw_port)],
                [pole(POLE_1, 1, 0.2), pole(POLE_2, 2, 0.2)],
            )
            gw = Gateway(config)
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                await until(lambda: len(sub.packs(POLE_1)) >= 1, what="first pack")
                start = len(sub.packs(POLE_1))
                await asyncio.sleep(3.0)
                got = len(sub.packs(POLE_1)) - start
                bus = gw.buses["cabinet-485"]
                dead = bus.devices[POLE_2]
                assert dead.online is False
                # backoff: the dead unit was tried a few times, not every 0.2 s
                assert dead.polls <= 8, dead.polls
                # the live device kept its rate: 15 polls in 3 s at best, one 0.3 s timeout
                # per backoff period at worst
                assert got >= 10, f"only {got} packs from the live device in 3 s"
                health = gw.health()
                assert health["buses"][0]["counters"]["no_response"] >= 3
                sim.restore(2)
                await until(
                    lambda: bus.devices[POLE_2].online is True, timeout_s=70, what="unit 2 back"
                )
                gw.stop()
                await task
                await sim.stop()

    run(scenario(), timeout_s=120)
