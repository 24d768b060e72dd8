"""The emulated street: poles on one RS-485 line, a third-party energy meter on the same
line, community kits and a third-party thermometer on the virtual BLE air, the gateway,
the broker and the platform, driven by a script of what happens in a day.

Everything is a real part: the node firmware in the MicroPython VM, pymodbus on paced
pseudo-terminals, bleak on the virtual air, the gateway's own code, an amqtt (or the given)
broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from polekit.demo.platform import Platform
from polekit.demo.relay import Relay
from polekit.protocols import identity, modbus

REGION = "371600"
OVERTIME_S = 30.0  # the longest the street runs on after its day for late alarms and results
# how long the broker may take to (re)start and the platform to subscribe: amqtt loads its
# plugins in seconds on a busy machine, not in the tenth of a second it takes on an idle one
START_S = 60.0
THERMO_ADDR = "A4:C1:38:00:00:01"


@dataclass
class Options:
    poles: int = 3
    community: int = 2
    duration: float = 60.0
    broker: str | None = None  # an existing broker's URL; default: an embedded amqtt
    faults: tuple[str, ...] = ()  # names in polekit.demo.faults.FAULTS
    water: bool = False  # a battery water node on Wi-Fi MQTT, and a storm


@dataclass
class Step:
    at: float  # fraction of the run
    what: str
    action: Callable[[], Any]
    done: bool = False


@dataclass
class Street:
    options: Options
    log: Callable[[str], None] = print
    # the run's files (flash images, the air's socket, the gateway's queue); removed at the
    # end of the run
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="polekit-demo-")))
    boards: list[Any] = field(default_factory=list)
    poles: list[tuple[str, Any]] = field(default_factory=list)
    community: list[tuple[str, Any]] = field(default_factory=list)
    unpowered: list[Any] = field(default_factory=list)  # boards a fault switched off
    outage: tuple[float, float] | None = None
    queue_peak: int = 0
    overtime_s: float = 0.0  # how long the street ran on for the platform to see it all
    started: float = 0.0
    broker: Any = None  # the embedded broker (a new one after the outage), None with --broker
    water: tuple[str, Any] | None = None  # (code, board) of the water node, with --water
    wan_port: int = 0  # the relay's port: the water node's way to the broker
    level_m: float = 0.0  # the river at the water node, as last set

    # ---- the parts ----------------------------------------------------------------------

    def codes(self) -> dict[str, str]:
        n, m = self.options.poles, self.options.community
        out = {identity.make(REGION, "PL", i): "modbus" for i in range(1, n + 1)}
        out[identity.make(REGION, "EM", 1)] = "modbus"
        out.update({identity.make(REGION, "SO", j): "ble" for j in range(1, m + 1)})
        out[identity.make(REGION, "TH", 1)] = "ble"
        if self.options.water:
            out[identity.make(REGION, "WL", 1)] = "wifi"
        return out

    def _start_boards(self) -> None:
        from polekit.firmware.install import install
        from polekit.hil.air import SimulatedBTHomeDevice, VirtualAir
        from polekit.hil.emulator import EmulatedBoard
        from polekit.hil.line import VirtualLine

        self.line = VirtualLine(baudrate=9600, bits_per_char=11)
        for i in range(1, self.options.poles + 1):
            code = identity.make(REGION, "PL", i)
            flash = install(
                self.work / f"pole{i}",
                "pole-env-esp32",
                {"device_code": code, "unit": i, "sample_ms": 500},
            )
            board = EmulatedBoard(
                "pole-env-esp32", fs_dir=flash, rs485_line=self.line, unique_id=f"24a16000{i:04x}"
            ).start()
            self.boards.append(board)
            self.poles.append((code, board))
            self.log(f"pole {code} up on the RS-485 line, unit {i}")
        self.air = VirtualAir(self.work / "air.sock")
        for j in range(1, self.options.community + 1):
            code = identity.make(REGION, "SO", j)
            flash = install(
                self.work / f"kit{j}",
                "community-sos-esp32c3",
                {"device_code": code, "advert_s": 2, "name": f"sos-{j}"},
            )
            board = EmulatedBoard(
                "community-sos-esp32c3",
                fs_dir=flash,
                air=self.air.path,
                unique_id=f"c0ffee00{j:04x}",
            ).start()
            board.set("battery.voltage", 3.7 + 0.1 * j)
            self.boards.append(board)
            self.community.append((code, board))
            self.log(f"community kit {code} up on the virtual air, {board.mac}")
        started = time.time()
        self.thermo = SimulatedBTHomeDevice(
            self.air.path,
            THERMO_ADDR,
            lambda: {
                "temperature": round(21 + 1.5 * math.sin((time.time() - started) / 20), 2),
                "humidity": 45.0,
                "battery": 77,
            },
            every_s=2.0,
        )
        self.log(f"third-party BTHome thermometer {THERMO_ADDR} advertising")
        if self.options.water:
            self._start_water_node()

    def _start_water_node(self) -> None:
        # the battery node by the river: its own Wi-Fi MQTT uplink to the broker (through
        # the relay, the street's WAN), deep sleep between reports; reports every 10 s in
        # dry weather, every 5 s while it rains, so a minute's storm shows
        from polekit.firmware.install import install
        from polekit.hil.emulator import EmulatedBoard

        code = identity.make(REGION, "WL", 1)
        flash = install(
            self.work / "water",
            "water-esp32",
            {
                "device_code": code,
                "uplink": "wifi",
                "mqtt_host": "127.0.0.1",
                "mqtt_port": self.wan_port,
                "report_s": 10,
                "storm_report_s": 5,
                "flow_gate_ms": 500,
            },
            compiled=True,
        )
        board = EmulatedBoard("water-esp32", fs_dir=flash, unique_id="30aea4000001").start()
        self.level_m = 0.5
        board.set("level.metres", self.level_m)
        self.boards.append(board)
        self.water = (code, board)
        self.log(f"water node {code} up by the river: Wi-Fi MQTT, asleep between reports")

    async def _start_meter(self) -> None:
        from polekit.hil.fieldbus import SimulatedBus

        unit = self.options.poles + 1
        self.meter = await SimulatedBus(
            {unit: modbus.register_map("sdm120")},
            serial_port=self.line.endpoint(),
            baudrate=9600,
            parity="N",
            stopbits=2,
            shared=True,
        ).start()
        for name, value in (
            ("voltage", 231.2),
            ("current", 0.42),
            ("power", 97.1),
            ("frequency", 50.0),
        ):
            await self.meter.set(unit, name, value)
        self.meter_unit = unit
        self.log(f"Eastron SDM120 energy meter on the same line, unit {unit}")

    def _gateway_config(self, mqtt_port: int) -> Any:
        from polekit.gateway.config import parse_config

        devices: list[dict[str, Any]] = [
            {
                "code": code,
                "bus": "street-485",
                "unit": i,
                "map": "pole-env",
                "poll_interval": 2.0,
            }
            for i, (code, _) in enumerate(self.poles, start=1)
        ]
        devices.append(
            {
                "code": identity.make(REGION, "EM", 1),
                "bus": "street-485",
                "unit": self.meter_unit,
                "map": "sdm120",
                "poll_interval": 5.0,
            }
        )
        for code, board in self.community:
            devices.append({"code": code, "transport": "ble", "address": board.mac, "interval": 2})
        devices.append(
            {
                "code": identity.make(REGION, "TH", 1),
                "transport": "ble",
                "address": THERMO_ADDR,
                "interval": 2,
            }
        )
        return parse_config(
            {
                "gateway": {"id": "demo-street", "data_dir": str(self.work / "gateway")},
                "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "format": "senml+json"},
                "bus": [
                    {
                        "name": "street-485",
                        "type": "rtu",
                        "port": self.line.endpoint(),
                        "baudrate": 9600,
                        "parity": "N",
                        # a real pole answers in milliseconds; an emulated one on a busy
                        # machine can take a second or more (its VM waits for the CPU)
                        "timeout": 3.0,
                    }
                ],
                "ble": {"air": self.air.path},
                "device": devices,
                "status": {"port": 0},
            },
            self.work / "gateway.toml",
        )

    # ---- the script ---------------------------------------------------------------------

    def script(self, platform: Platform) -> list[Step]:
        """What happens in the day; each alarm raised is announced to ``platform`` (which
        must then see it once). The platform's command and the broker's outage are carried
        out by ``_special`` (they need the running parts)."""
        pole1 = self.poles[0][1]
        last_pole = self.poles[-1][1]
        kit1 = self.community[0][1] if self.community else None
        kit2 = self.community[-1][1] if self.community else None

        raise_ = platform.raise_alarm
        first_sos = True

        def tilt() -> None:
            pole1.set("adxl345.tilt", 28.0)
            raise_("tilt")

        def water() -> None:
            last_pole.set("water.active", 1)
            raise_("water")

        def sos() -> None:
            nonlocal first_sos
            if kit1 is not None:
                if first_sos and "dead-radio" in self.options.faults:
                    kit1.set("ble.absent", 1)
                first_sos = False
                kit1.set("sos.press", 300)
                raise_("sos")

        def smoke() -> None:
            if kit2 is not None:
                kit2.set("smoke.active", 1)
                raise_("smoke")

        steps = [
            Step(0.20, "a truck hits pole 1: it leans 28 degrees", tilt),
            Step(0.30, "a resident presses the SOS button", sos),
            Step(0.38, "water rises in the underpass by the last pole", water),
            Step(0.44, "smoke in a community room", smoke),
            Step(0.50, "the platform dims pole 1's lamp to 30 %", lambda: None),
            Step(0.56, "the platform's broker goes down", lambda: None),
            Step(0.74, "the broker is back", lambda: None),
            Step(0.80, "another SOS press", sos),
        ]
        if self.water is not None:
            steps += self._storm(platform)
            steps.sort(key=lambda step: step.at)
        if self.options.broker is not None:
            steps = [s for s in steps if "broker" not in s.what]
        return steps

    def _storm(self, platform: Platform) -> list[Step]:
        """The water node's storm: rain, the river rising (``_physics`` ramps it from 0.30
        to 0.50 of the run: one rising-water alarm, and a high-water one past 1.5 m), a
        manhole cover lifted (its EXT1 wake: an alarm at once), then calm."""
        assert self.water is not None
        board = self.water[1]
        raise_ = platform.raise_alarm

        def rain(mm_h: float) -> Callable[[], None]:
            return lambda: board.set("rain.rate_mm_h", mm_h)

        def cover(is_open: int) -> Callable[[], None]:
            def act() -> None:
                board.set("cover.open", is_open)
                if is_open:
                    raise_("cover_open")

            return act

        return [
            Step(0.10, "a storm: rain over the river, 36 mm/h", rain(36.0)),
            Step(0.30, "the river rises fast", lambda: raise_("level_rising")),
            Step(0.46, "the river passes 1.5 m", lambda: raise_("level_high")),
            Step(0.62, "floodwater lifts a manhole cover", cover(1)),
            Step(0.84, "the rain stops; the cover is put back", rain(0.0)),
            Step(0.85, "", cover(0)),
        ]

    # ---- running ------------------------------------------------------------------------

    async def run(self, render: Callable[[Street, Any, Any, str], None]) -> dict[str, Any]:
        """Run the day; the summary. ``render`` is called with the parts about twice a
        second. The run's files are removed however it ends."""
        try:
            return await self._run(render)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)  # flash images, air socket, queue

    async def _run(self, render: Callable[[Street, Any, Any, str], None]) -> dict[str, Any]:
        from polekit.gateway.app import Gateway

        loop = asyncio.get_running_loop()
        if self.options.broker:
            url = urlsplit(self.options.broker)
            host, port = url.hostname or "127.0.0.1", url.port or 1883
            try:  # a typo in --broker is said at once, not after the platform gave up
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                writer.close()
            except (OSError, TimeoutError) as exc:
                raise RuntimeError(
                    f"cannot reach the broker {self.options.broker} "
                    f"({exc or 'no answer in 10 s'}); is it running?"
                ) from None
        else:
            self.broker = await self._start_broker()
            host, port = self.broker.host, self.broker.port
            self.log(f"embedded amqtt broker on {self.broker.url}")
        relay = await Relay(host, port).start()
        platform = Platform(host, port, "senml+json", self.codes())
        subscribed = asyncio.Event()
        platform_task = loop.create_task(platform.run(subscribed))
        gw = None
        gw_task = None
        try:
            await asyncio.wait_for(subscribed.wait(), START_S)
            self.wan_port = relay.port
            await asyncio.to_thread(self._start_boards)
            await self._start_meter()
            gw = Gateway(self._gateway_config(relay.port))
            gw_task = loop.create_task(gw.run())
            self.log("gateway running: Modbus RTU + BLE in, SenML over MQTT out")
            steps = self.script(platform)
            self.started = time.monotonic()
            duration = self.options.duration
            note = "starting"
            while (elapsed := time.monotonic() - self.started) < duration:
                frac = elapsed / duration
                await self._physics(frac)
                for step in steps:
                    if not step.done and frac >= step.at:
                        step.done = True
                        if step.what:
                            note = step.what
                            self.log(f"{elapsed:5.1f} s  {step.what}")
                        await self._special(step, platform, relay, subscribed, gw)
                        await asyncio.to_thread(step.action)
                self.queue_peak = max(self.queue_peak, gw.queue.depth)
                render(self, gw, platform, note)
                await asyncio.sleep(0.5)
            return await self._finish(gw, platform, render)
        finally:
            if gw is not None and gw_task is not None:
                gw.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gw_task, 15)
            platform_task.cancel()
            await asyncio.gather(platform_task, return_exceptions=True)
            await relay.close()
            await asyncio.to_thread(self._stop_boards)
            await self._stop_meter()
            for part in ("line", "air"):
                if getattr(self, part, None) is not None:
                    getattr(self, part).close()
                    setattr(self, part, None)
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)

    async def _special(
        self,
        step: Step,
        platform: Platform,
        relay: Relay,
        subscribed: asyncio.Event,
        gw: Any,
    ) -> None:
        if step.what.startswith("the platform dims"):
            code, board = self.poles[0]
            if "dead-pole" in self.options.faults:
                self.unpowered.append(board)
                await asyncio.to_thread(board.stop)  # it loses power
            await platform.send_command(
                gw.config.topic("cmd", code),
                code,
                "demo-lamp",
                {"lamp_level": 30},
                "dim the lamp to 30 %",
            )
        elif step.what.endswith("goes down"):
            relay.cut()
            await asyncio.to_thread(self.broker.stop)
            self.outage = (time.monotonic(), 0.0)
        elif step.what.endswith("is back"):
            # a new broker on a new port: the old one's may be taken meanwhile (a busy
            # machine's outgoing connections get their ports from the same free range)
            self.broker = await self._start_broker()
            platform.port = self.broker.port
            relay.upstream = (self.broker.host, self.broker.port)
            await asyncio.wait_for(subscribed.wait(), START_S)  # the platform listens first
            await relay.restore()
            if self.outage:
                self.outage = (self.outage[0], time.monotonic())

    async def _start_broker(self) -> Any:
        """An embedded amqtt broker on a free port; three tries, since another program can
        take the port between its choice and the broker's bind."""
        from polekit.hil.broker import LocalBroker

        tries = 3
        while True:
            try:
                return await asyncio.to_thread(LocalBroker(kind="amqtt").start, START_S)
            except RuntimeError:
                tries -= 1
                if not tries:
                    raise

    async def _physics(self, frac: float) -> None:
        # a day from 06:00 to 24:00 in the run: sunrise, noon, dusk
        sun = max(0.0, math.sin(math.pi * min(1.0, frac * 1.2)))
        for i, (_code, board) in enumerate(self.poles):
            if board in self.unpowered:
                continue
            temp = round(12 + 14 * sun + 0.7 * i, 2)
            lux = round(60000 * sun**2 + 5, 1)
            await asyncio.to_thread(board.set, "sht3x.temperature", temp)
            await asyncio.to_thread(board.set, "bh1750.illuminance", lux)
        if self.water is not None:
            # the river: 0.5 m, rising to 1.8 m between 0.30 and 0.50 of the run (a steady
            # climb: every sample in it sees the rise), high until 0.88, then falling back
            level = 0.5 + 1.3 * min(1.0, max(0.0, (frac - 0.30) / 0.20))
            if frac >= 0.88:
                level = 0.8
            level = round(level, 2)
            if level != self.level_m:
                self.level_m = level
                await asyncio.to_thread(self.water[1].set, "level.metres", level)

    async def _finish(self, gw: Any, platform: Platform, render: Any) -> dict[str, Any]:
        # on a busy machine the emulated boards answer late: the street goes on (for
        # OVERTIME_S at most) until the platform has seen every alarm raised and has every
        # command's result. Late is not lost; never is, and the verdict says so
        overtime = time.monotonic()
        while platform.waiting() and time.monotonic() - overtime < OVERTIME_S:
            render(self, gw, platform, "overtime: the platform waits for what is late")
            await asyncio.sleep(0.3)
        self.overtime_s = round(time.monotonic() - overtime, 1)
        # the street goes quiet; everything the gateway produced must reach the platform:
        # readings, events and command results (only what the gateway produced is waited
        # for here: what never reached it is already counted)
        await asyncio.to_thread(self._stop_boards)
        await self._stop_meter()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            render(self, gw, platform, "draining: the street is quiet")
            if (
                gw.queue.depth == 0
                and platform.delivered >= gw.readings
                and platform.events >= gw.events
                and platform.results >= gw.commands.handled
            ):
                break
            await asyncio.sleep(0.3)
        produced, delivered = gw.readings, platform.delivered
        failures = platform.failures(produced)
        water = None
        if self.water is not None:
            view = platform.devices[self.water[0]]
            water = {
                "code": view.code,
                "packs": view.packs,
                "readings": view.readings,
                "lost": view.lost,
                "values": dict(view.values),
            }
            if not view.packs:
                failures.append(f"no report from the water node {view.code} reached the platform")
        lamp = platform.commands.get("demo-lamp")
        return {
            "duration_s": self.options.duration,
            "devices": [
                {"code": d.code, "transport": d.transport, "readings_delivered": d.readings}
                for d in platform.devices.values()
            ],
            "readings_produced": produced,
            "readings_delivered": delivered,
            "lost": max(0, produced - delivered),
            "alarms_raised": dict(platform.raised),
            "alarms_seen": dict(platform.alarms),
            "commands": [
                {
                    "id": c.id,
                    "device": c.device,
                    "what": c.what,
                    "acknowledged": c.acknowledged,
                    "rtt_ms": c.rtt_ms,
                    "reason": c.reason,
                }
                for c in platform.commands.values()
            ],
            "command_acknowledged": bool(lamp and lamp.acknowledged),
            "command_rtt_ms": lamp.rtt_ms if lamp else None,
            "broker_outage_s": round(self.outage[1] - self.outage[0], 1)
            if self.outage and self.outage[1]
            else 0.0,
            "queue_peak": self.queue_peak,
            "overtime_s": self.overtime_s,
            # how the wire and the air went, for whoever looks into a failure
            "rs485": dict(vars(gw.buses["street-485"].counters)),
            "ble": dict(vars(gw.ble.counters)) if gw.ble is not None else {},
            "faults": list(self.options.faults),
            "water": water,
            "failures": failures,
            "verdict": platform.verdict(failures),
        }

    def _stop_boards(self) -> None:
        for board in self.boards:
            board.stop()
        self.boards.clear()
        thermo = getattr(self, "thermo", None)
        if thermo is not None:
            thermo.close()
            self.thermo = None

    async def _stop_meter(self) -> None:
        meter = getattr(self, "meter", None)
        if meter is not None:
            self.meter = None
            await meter.stop()
