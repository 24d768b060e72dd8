"""The gateway end to end, with real parts: pymodbus field devices on a virtual RS-485 line
(pseudo-terminals) and on loopback TCP, a real mosquitto (or amqtt) broker, and a real
MQTT subscriber counting what arrives."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

from polekit.demo.relay import Relay
from polekit.gateway.app import Gateway
from polekit.hil.broker import LocalBroker, free_port
from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols import modbus

from gwkit import (
    METER,
    POLE_1,
    POLE_2,
    Collector,
    gateway_config,
    meter_gateway,
    run,
    start_meter,
    start_poles,
    until,
    values_of,
)

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
            gw_port, sim = await start_poles(line, [1])
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
                await until(  # the broker took it before the gateway stopped: it is on its way
                    lambda: any(b'"offline"' in m.payload for m in sub.on("/gw-test/state")),
                    what="the gateway's offline state",
                )
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
        sim = await start_meter(port)
        await sim.set(3, "voltage", 229.5)
        await sim.set(3, "energy", 1234.5)
        gw = meter_gateway(tmp_path, broker.url, port, format="senml+json", secondary_units=True)
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
            gw_port, sim = await start_poles(line, [1, 2])
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
                bus = gw.buses["cabinet-485"]
                live, dead = bus.devices[POLE_1], bus.devices[POLE_2]
                counters = bus.counters
                await until(
                    lambda: dead.online is False and counters.no_response >= 3,
                    timeout_s=15,
                    what="unit 2 marked offline after 3 timeouts",
                )
                # over a few seconds, by the gateway's own counts (not wall-clock rates, which
                # a loaded machine slows): the dead unit is tried on a backoff, not every 0.2 s,
                # and the live one has the bus for all the time the dead one's timeouts leave
                t0, live0, dead0, silent0 = (
                    time.monotonic(),
                    live.polls,
                    dead.polls,
                    counters.no_response,
                )
                packs0 = len(sub.packs(POLE_1))
                await asyncio.sleep(4.0)
                took = time.monotonic() - t0
                live_polls, dead_polls = live.polls - live0, dead.polls - dead0
                assert dead_polls <= 3, f"the dead unit was tried {dead_polls} times in {took} s"
                free_s = took - (counters.no_response - silent0) * 0.3  # the line's timeout
                assert live_polls >= 0.6 * free_s / 0.2, (
                    f"the live unit was polled {live_polls} times in {took:.1f} s "
                    f"({free_s:.1f} s not spent waiting on the dead one, polling every 0.2 s)"
                )
                await until(
                    lambda: len(sub.packs(POLE_1)) - packs0 >= live_polls // 2,
                    what="the live unit's packs at the broker",
                )
                sim.restore(2)
                await until(
                    lambda: bus.devices[POLE_2].online is True, timeout_s=70, what="unit 2 back"
                )
                gw.stop()
                await task
                await sim.stop()

    run(scenario(), timeout_s=120)


def test_serial_port_unplugged_and_back_reconnects(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        with VirtualLine() as line:
            link = str(tmp_path / "ttyUSB0")  # the stable name a config uses
            gw_port, dev_port = line.endpoint(link=link), line.endpoint()
            sim = await SimulatedBus(
                {1: POLE_ENV}, serial_port=dev_port, baudrate=19200, parity="N", stopbits=2
            ).start()
            gw = Gateway(
                gateway_config(tmp_path, broker.url, [rtu_bus(gw_port)], [pole(POLE_1, 1)])
            )
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                await until(lambda: len(sub.packs(POLE_1)) >= 2, what="packs before the unplug")
                bus = gw.buses["cabinet-485"]
                line.unplug(link)
                await until(lambda: not bus.connected, what="the bus to notice the unplug")
                await asyncio.sleep(1.0)
                line.endpoint(link=link)  # plugged back in (a new /dev/pts behind the same name)
                before = len(sub.packs(POLE_1))
                took = await until(
                    lambda: len(sub.packs(POLE_1)) > before + 1,
                    timeout_s=10,
                    what="packs after the re-plug",
                )
                assert took < 3.0, f"polling resumed {took:.1f} s after the re-plug"
                assert bus.counters.reconnects >= 1
                gw.stop()
                await task
                await sim.stop()
        assert sub.seqs(POLE_1) == list(range(1, len(sub.seqs(POLE_1)) + 1))

    run(scenario())


def test_broker_down_then_back_loses_nothing_and_keeps_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        broker = LocalBroker().start()
        # the gateway reaches the broker through a link the test holds down until the test
        # has subscribed to the restarted broker (which keeps no sessions): every pack the
        # broker takes is then seen, and a gap can only be the gateway's
        wan = await Relay(broker.host, broker.port).start()
        try:
            with VirtualLine() as line:
                gw_port, sim = await start_poles(line, [1, 2])
                gw = Gateway(
                    gateway_config(
                        tmp_path,
                        f"mqtt://127.0.0.1:{wan.port}",
                        [rtu_bus(gw_port)],
                        [pole(POLE_1, 1, 0.1), pole(POLE_2, 2, 0.1)],
                    )
                )
                task = asyncio.create_task(gw.run())
                # subscribed until the broker dies: every pack it took is seen by the test
                async with Collector(broker.host, broker.port) as sub:
                    await until(lambda: len(sub.packs(POLE_1)) >= 3, what="packs before the outage")
                    broker.stop()
                    wan.cut()
                    await until(lambda: not gw.uplink.connected, what="the uplink to notice")
                depth_before = gw.queue.depth
                await until(  # the platform is away: packs wait on disk
                    lambda: gw.queue.depth >= depth_before + 20, what="packs queued on disk"
                )
                broker.start()
                async with Collector(broker.host, broker.port) as sub2:
                    await wan.restore()
                    took = await until(lambda: gw.uplink.connected, timeout_s=10, what="reconnect")
                    assert took < 2.0, f"reconnected {took:.2f} s after the broker came back"
                    await until(
                        lambda: gw.queue.depth == 0, timeout_s=20, what="the backlog to drain"
                    )
                    last = gw.queue.last_seq(POLE_1)
                    # polling goes on: packs after ``last`` may be in already (waiting for
                    # ``last`` to be the newest seen timed out on a loaded machine)
                    await until(
                        lambda: max(sub.seqs(POLE_1) + sub2.seqs(POLE_1), default=0) >= last,
                        what="the last pack",
                    )
                    gw.stop()
                    await task
                await sim.stop()
            for code in (POLE_1, POLE_2):
                seqs = sub.seqs(code) + sub2.seqs(code)
                assert seqs == list(range(1, len(seqs) + 1)), f"{code}: gap or reorder in {seqs}"
                assert len(seqs) >= 10
        finally:
            await wan.close()
            broker.stop()

    run(scenario(), timeout_s=90)


def test_commands_write_points_and_report_every_error(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        with VirtualLine() as line:
            gw_port, sim = await start_poles(line, [1])
            config = gateway_config(
                tmp_path,
                broker.url,
                [rtu_bus(gw_port)],
                [pole(POLE_1, 1, 1.0), pole(POLE_2, 2, 1.0)],
            )
            gw = Gateway(config)
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                await until(lambda: gw.uplink.connected, what="connection")
                cmd = config.topic("cmd", POLE_1)
                sends = [
                    (cmd, b'{"id": 1, "set": {"lamp_level": 40}}'),
                    (
                        cmd,
                        __import__("cbor2").dumps(
                            {"id": 2, "set": {"lamp_level": 55, "tilt_threshold": 7.5}}
                        ),
                    ),
                    (cmd, b'{"id": 3, "set": {"lamp_level": 150}}'),
                    (cmd, b'{"id": 4, "set": {"temperature": 20}}'),
                    (cmd, b'{"id": 5, "set": {"no_such_point": 1}}'),
                    (
                        config.topic("cmd", "371600PL000009Z"),
                        b'{"id": 6, "set": {"lamp_level": 1}}',
                    ),
                    (cmd, b"not a command"),
                    (
                        config.topic("cmd", POLE_2),
                        b'{"id": 8, "set": {"lamp_level": 10}}',
                    ),  # silent unit
                ]
                sim.remove(2)
                for topic, body in sends:
                    await sub.publish(topic, body)
                await until(
                    lambda: (
                        len(sub.on("/cmd-result/" + POLE_1)) >= 6
                        and len(sub.on("/cmd-result/371600PL000009Z")) == 1
                        and len(sub.on("/cmd-result/" + POLE_2)) == 1
                    ),
                    timeout_s=15,
                    what="results",
                )
                assert await sim.get(1, "lamp_level") == 55
                assert await sim.get(1, "tilt_threshold") == 7.5
                gw.stop()
                await task
                await sim.stop()
        results = {}
        for m in sub.messages:
            if "/cmd-result/" in m.topic:
                body = __import__("cbor2").loads(m.payload)
                results[body["id"]] = body
        assert results[1]["ok"] and results[2]["ok"]
        assert "outside 0..100" in results[3]["error"]
        assert "read-only" in results[4]["error"]
        assert "no_such_point" in results[5]["error"]
        assert "unknown device" in results[6]["error"]
        assert results[None]["ok"] is False and "neither" in results[None]["error"]
        assert "no answer" in results[8]["error"]

    run(scenario(), timeout_s=60)


def test_a_command_whose_answer_is_lost_is_written_again_and_acknowledged(
    broker: LocalBroker, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # one frame lost on the wire (noise, a busy device) must not fail the platform's command:
    # setting a register twice is harmless, so the gateway writes again
    async def scenario() -> None:
        with VirtualLine() as line:
            gw_port, dev_port = line.endpoint(), line.endpoint()
            sim = await SimulatedBus(
                {1: POLE_ENV}, serial_port=dev_port, baudrate=19200, parity="N", stopbits=2
            ).start()
            config = gateway_config(
                tmp_path, broker.url, [rtu_bus(gw_port)], [pole(POLE_1, 1, 60.0)]
            )
            gw = Gateway(config)
            bus = gw.buses["cabinet-485"]
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                try:
                    await until(lambda: gw.uplink.connected and sub.packs(POLE_1), what="a poll")
                    line.drop_next(8, sender=dev_port)  # the write's echo: 8 bytes
                    await sub.publish(
                        config.topic("cmd", POLE_1), b'{"id": 1, "set": {"lamp_level": 40}}'
                    )
                    await until(lambda: sub.on("/cmd-result/" + POLE_1), what="the result")
                finally:
                    gw.stop()
                    await task
                    await sim.stop()
            result = __import__("cbor2").loads(sub.on("/cmd-result/" + POLE_1)[0].payload)
            assert result == {"id": 1, "ok": True, "set": {"lamp_level": 40}}
            assert bus.counters.no_response == 1 and bus.counters.writes == 1
            assert line.faults_pending == 0

    run(scenario(), timeout_s=60)


def test_corrupt_and_truncated_answers_are_counted_not_fatal(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        with VirtualLine() as line:
            gw_port, sim = await start_poles(line, [1])
            gw = Gateway(
                gateway_config(tmp_path, broker.url, [rtu_bus(gw_port)], [pole(POLE_1, 1, 0.1)])
            )
            async with Collector(broker.host, broker.port) as sub:
                task = asyncio.create_task(gw.run())
                await until(lambda: len(sub.packs(POLE_1)) >= 2, what="packs")
                # one fault at a time, each hitting an answer, with a good poll between them
                # (back to back, they would push the unit into its offline backoff)
                for _ in range(5):
                    for damage, what in ((line.corrupt_next, "garbled"), (line.drop_next, "cut")):
                        damage(4, sender=sim.port)
                        await until(lambda: line.faults_pending == 0, what=f"a {what} answer")
                        before = len(sub.packs(POLE_1))
                        await until(lambda n=before: len(sub.packs(POLE_1)) > n, what="a good poll")
                health = gw.health()
                gw.stop()
                await task
                await sim.stop()
        counters = health["buses"][0]["counters"]
        assert counters["bad_response"] + counters["no_response"] >= 10, counters
        assert counters["bad_response"] >= 1, counters
        assert sub.seqs(POLE_1) == list(range(1, len(sub.seqs(POLE_1)) + 1))

    run(scenario(), timeout_s=60)


def test_health_and_metrics_endpoints(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> tuple[dict, str]:
        port = free_port()
        sim = await start_meter(port)
        gw = meter_gateway(tmp_path, broker.url, port, 0.2)
        task = asyncio.create_task(gw.run())
        await until(
            lambda: gw.buses["meters"].devices[METER].online is True and gw.uplink.connected,
            what="meter online and the uplink connected",
        )
        url = f"http://127.0.0.1:{gw.status.port}"
        health = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(url + "/health")))
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url + "/metrics").read().decode()
        )
        gw.stop()
        await task
        await sim.stop()
        return health, metrics

    health, metrics = run(scenario())
    assert health["devices"][0]["code"] == METER and health["devices"][0]["online"] is True
    assert health["mqtt"]["connected"] is True
    assert "queue" in health and "depth" in health["queue"]
    assert f'polekit_device_online{{device="{METER}",bus="meters"}} 1' in metrics
    assert (
        "polekit_queue_depth " in metrics
        and "# TYPE polekit_mqtt_published_total counter" in metrics
    )


def test_tcp_device_power_cycle_is_reconnected(broker: LocalBroker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        port = free_port()
        sim = await start_meter(port)
        gw = meter_gateway(tmp_path, broker.url, port, 0.1)
        async with Collector(broker.host, broker.port) as sub:
            task = asyncio.create_task(gw.run())
            await until(lambda: len(sub.packs(METER)) >= 2, what="packs")
            await sim.stop()  # the meter loses power: its socket goes away
            bus = gw.buses["meters"]
            await until(
                lambda: not bus.connected or bus.devices[METER].online is False,
                what="the gateway to notice",
            )
            await asyncio.sleep(1.0)
            sim = await start_meter(port)
            before = len(sub.packs(METER))
            took = await until(
                lambda: len(sub.packs(METER)) > before, timeout_s=10, what="packs again"
            )
            assert took < 3.0, f"polling resumed {took:.1f} s after the meter came back"
            gw.stop()
            await task
        await sim.stop()
        assert sub.seqs(METER) == list(range(1, len(sub.seqs(METER)) + 1))

    run(scenario())


def test_embedded_amqtt_broker_works_as_the_fallback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        port = free_port()
        sim = await start_meter(port)
        await sim.set(3, "power", 1500.0)
        with LocalBroker(kind="amqtt") as amqtt:
            gw = meter_gateway(tmp_path, amqtt.url, port, 0.2)
            async with Collector(amqtt.host, amqtt.port) as sub:
                task = asyncio.create_task(gw.run())
                await until(lambda: len(sub.packs(METER)) >= 3, what="packs through amqtt")
                gw.stop()
                await task
        await sim.stop()
        assert values_of(sub.packs(METER)[0])["power"] == (1500.0, "W")
        assert sub.seqs(METER)[:3] == [1, 2, 3]

    run(scenario())
