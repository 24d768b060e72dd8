"""How long the water node lasts on its batteries: a day of weather with a storm, turned into
wakes, awake seconds, radio-on seconds and a projected battery life for each uplink.

    .venv/bin/python bench/battery.py               # measure on the emulated board, then project
    .venv/bin/python bench/battery.py --model-only  # the last measured figures (MEASURED below)

What it does
------------
1. Weather. A dry day is 24 hourly reports. A storm day (``storm_day``) has 6 h of rain
   peaking at 40 mm/h (120 mm, 600 tips of the 0.2 mm bucket), the water rising from 0.5 m
   to 1.9 m at 0.7 m/h and falling back, and the manhole cover lifted for 20 minutes. The
   node's own rules (firmware/node/water.py, boards/water-esp32.toml [config]) turn it into
   wakes: a timer wake each report_s (3600 s), or storm_report_s (300 s) while it rains; an
   EXT0 wake at each rain tip; an EXT1 wake when the cover lifts; alarms with hysteresis
   (rain over 30 mm/h over 10 min, water over 1.5 m, rising faster than 0.5 m/h, cover open).
   Each wake is one of three kinds: "report" (timer, sample and send), "tip" (count, no
   radio), "alarm" (an event sent at once; with a sample and report).
2. Awake time per kind, measured: the real water node (the bundle ``polekit build`` makes)
   on the emulated water-esp32, held to an ESP32's speed as the HIL plugin's
   --hil-chip-speed does (hil/chip_speed.py: Pystone against the ESP32's published 1661/s,
   hil/throttle.py: the CPU share that gives it), a handful of cycles of each kind, per
   uplink: Wi-Fi through a counting TCP relay to mosquitto, NB-IoT through the emulated
   BC260Y (hil/atmodem.py). Per cycle: the node's own awake time (it prints it: "water
   cycle {...awake_ms...}"), the seconds the sensor supply (GPIO 26) was on (watched from
   the host), the seconds the radio link was in use (Wi-Fi: the TCP connection from connect
   to deep sleep; NB-IoT: the first AT command of the wake to AT+QMTDISC) and the bytes the
   node sent. The medians are kept in MEASURED (the run prints them to paste back).
   An alarm wake is measured as a cover-lift wake (sample, report and event): a rain alarm
   at a tip wake does less (no sample), so the storm's alarm wakes are counted high.
3. Current model: charge per wake from the figures below, plus sleep between wakes; the
   week is 6 dry days and 1 storm day ("hourly reports and a storm a week"); life is the
   usable capacity over the week's average current, with self-discharge.

Figures and their sources (every number the model uses; [A] marks an assumption of ours)
-----------------------------------------------------------------------------------------
[E1] Espressif, ESP32-WROOM-32 Datasheet, Table 4 "Power Consumption by Power Modes"
     (http://38.142.81.21:8001/manual/adafruit/3320/datasheet-english/page-12.html):
     Modem-sleep (CPU on, radio off) at 240 MHz 30-50 mA: we take 50 mA awake;
     Deep-sleep, RTC timer + RTC memory: 10 uA.
[E2] Espressif, ESP-WROOM-32 Datasheet, Table 5 "Power Consumption by Power Modes"
     (https://www.manualshelf.com/manual/espressif-systems/espwroom32/user-s-manual-english/page-12.html):
     Wi-Fi TX packet 13-21 dBm: 160-260 mA, we take 260 mA; Wi-Fi RX and listening
     80-90 mA, we take 90 mA while the link is up.
[E3] Espressif, esp-iot-solution "Current Consumption Test for ESP32 in Deep sleep"
     (https://docs.espressif.com/projects/esp-iot-solution/en/latest/low_power_solution/deep-sleep_current_test.html):
     EXT0 wake armed on GPIO 27: 6.4 uA; EXT1: 5.2-5.3 uA. Our wake sources fit inside
     [E1]'s 10 uA, which the model uses.
[E4] Espressif, ESP8266EX Datasheet, Table 3-4 notes
     (http://38.142.81.21:8001/manual/espressif/esp8266ex/data-sheet-english/page-17.html):
     after deep sleep a node "wakes up to connect to the AP (taking about 0.3 ~ 1 s)":
     1 s of association and DHCP at the RX current per Wi-Fi wake (the emulated board
     joins at once, so this is added to the measured times).
[Q1] Quectel, BC65 Hardware Design, 3.5.2 "Deep Sleep Mode"
     (https://manualshive.com/ru/manual/quectel/bc65/3584825?page=21): deep sleep (modem in
     PSM) typically 4 uA; we use 4 uA for the BC260Y in PSM. Quectel, BC660K-GL Hardware
     Design 3.4.2 (https://manualshive.com/ru/manual/quectel/bc660k-gl/bc660k-gl_manual_3588677-22.html):
     800 nA, and the PSM procedure the model follows: after the data, the "UE inactive
     time" (connected), then idle for the active time T3324, then PSM until the next data
     or T3412. The BC260Y's own hardware design was not reachable from here: its figures
     are the same family's, to be checked against it.
[S1] SIMCom, SIM7020 Hardware Design V1.02, Table 30
     (https://www.easymanua.ls/simcom/sim7020e/manual/1051073?p=38): NB-IoT idle mode
     typically 5.6 mA, used for T3324 (the module awake, registered, no data).
[S2] SIMCom, SIM7000 Hardware Design, as listed by the Botletics SIM7000 shield wiki
     (https://github.com/botletics/SIM7000-LTE-Shield/wiki/Current-Consumption): LTE data
     167 mA at 23 dBm: the module's current while it transmits.
[A1] NB-IoT connected-mode receive current 60 mA (no reachable figure; above the idle
     currents and well under the TX current: a high guess).
[A2] RRC inactivity after the last packet: 20 s connected. The network sets it, the device
     cannot (Deutsche Telekom's iotcreators forum, "RRC inactivity timer duration for
     NB-IoT and LTE-M": https://forum.iotcreators.com/topic/686/rrc-inactivity-timer-duration-for-nb-iot-and-lte-m/1).
     T3324 10 s: what the firmware asks for (nbiot_psm_active_s).
[A3] Air time: the bytes the node sent at 1 Mbit/s on Wi-Fi (802.11b's lowest rate) and
     20 kbit/s on NB-IoT (under the 54 kbit/s multi-tone peak Quectel gives for BC95-G).
[A4] ESP32 boot after a deep-sleep wake (ROM, bootloader, MicroPython's start) before the
     node's awake clock starts: 0.3 s at the awake current.
[A5] The 4-20 mA loop: the transducer draws 4 + 16 * level / 5 m mA (its span, NAMUR NE 43
     linear range) from a 12 V boost converter at 85 % efficiency, i.e. I_loop * 12 /
     (3.6 * 0.85) from the cells; the Hall flow meter on the same switched supply 6 mA. The
     board powers both only while it samples (GPIO 26; the level's 150 ms warm-up and the
     flow meter's 1 s gate are inside the measured on-time).
[A6] The rest of the board asleep (regulator quiescent current, the battery divider): 5 uA.
[B1] Cells: 2 x 19 Ah Li-SOCl2 D (the issue's figure; ER34615-class bobbin cells, rated to
     a 2.0 V cut-off at a few mA: Linden's Handbook of Batteries, Fig. 14.17, D-size
     bobbin cell, 19.0 Ah at ~4 mA, 18.4 Ah at 1 mA, 17 Ah at 0.2 mA, the loss at low rates
     being parasitic self-discharge). Self-discharge 1 % of capacity a year at room
     temperature (VARTA Li/SOCl2 handbook; Maxell ER; EEMB ER10450 datasheet: "1 % or less
     per year"): INCLUDED. Cut-off: the board browns out near 3.0 V (the ESP32's minimum
     supply), not at the cells' 2.0 V; on the flat Li-SOCl2 plateau we take 90 % of the
     rated capacity as usable [A]: INCLUDED. Temperature derating: NOT included (a manhole
     stays near ground temperature; pass --derate 0.8 for a cold site). Peak current: a
     bobbin cell cannot give Wi-Fi's 260 mA peaks (Linden: ~35 mA already costs two thirds
     of the capacity); the board needs a hybrid layer capacitor or supercapacitor across
     the cells, and the model then sees the average current, which is what it computes.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from polekit.firmware.node.wake_rules import Alarm  # the node's own rule, one crossing a change

HOURS_PER_YEAR = 8766.0
DAY_S = 86400
TARGET_YEARS = 2.0

# (value, source) for every figure of the current model; docstring above for each source
FIGURES: dict[str, tuple[float, str]] = {
    "esp32_awake_ma": (50.0, "E1"),
    "esp32_sleep_ma": (0.010, "E1"),
    "wifi_rx_ma": (90.0, "E2"),
    "wifi_tx_ma": (260.0, "E2"),
    "wifi_join_s": (1.0, "E4"),
    "wifi_kbit_s": (1000.0, "A3"),
    "nbiot_psm_ma": (0.004, "Q1"),
    "nbiot_idle_ma": (5.6, "S1"),
    "nbiot_tx_ma": (167.0, "S2"),
    "nbiot_rx_ma": (60.0, "A1"),
    "nbiot_rrc_tail_s": (20.0, "A2"),
    "nbiot_t3324_s": (10.0, "A2"),
    "nbiot_kbit_s": (20.0, "A3"),
    "boot_s": (0.3, "A4"),
    "loop_supply_v": (12.0, "A5"),
    "boost_efficiency": (0.85, "A5"),
    "battery_v": (3.6, "B1"),
    "flow_meter_ma": (6.0, "A5"),
    "board_sleep_ma": (0.005, "A6"),
    "level_span_m": (5.0, "A5"),
}


@dataclass(frozen=True)
class Battery:
    """The pack: ``cells`` in parallel of ``cell_ah`` each (B1 in the docstring)."""

    cells: int = 2
    cell_ah: float = 19.0
    usable: float = 0.90  # board cut-off near 3.0 V on the flat plateau
    self_discharge_per_year: float = 0.01  # of the rated capacity
    derate: float = 1.0  # temperature: not included unless asked

    @property
    def rated_mah(self) -> float:
        return self.cells * self.cell_ah * 1000

    def life_years(self, average_ma: float) -> float:
        """Years until the usable charge is spent by ``average_ma`` plus self-discharge."""
        usable = self.rated_mah * self.usable * self.derate
        leak_ma = self.rated_mah * self.self_discharge_per_year / HOURS_PER_YEAR
        return usable / (average_ma + leak_ma) / HOURS_PER_YEAR


# Per uplink and cycle kind, the medians measured on the emulated board at the ESP32's speed
# (python bench/battery.py prints these; pasted from its last run, see docs/firmware.md):
# awake_s: the node's awake time (its own ticks_ms at deep sleep); vm_boot_s: the part of it
# before main.py, the emulated VM's boot; loop_s: sensor supply on; radio_s: link in use;
# up_bytes: what the node sent in the cycle; n: cycles measured.
MEASURED: dict[str, dict[str, dict[str, float]]] = {
    "wifi": {
        "report": {
            "awake_s": 6.81,
            "vm_boot_s": 2.21,
            "loop_s": 1.343,
            "radio_s": 0.597,
            "up_bytes": 563,
            "n": 4,
        },
        "tip": {
            "awake_s": 3.359,
            "vm_boot_s": 2.478,
            "loop_s": 0.0,
            "radio_s": 0.0,
            "up_bytes": 0,
            "n": 2,
        },
        "alarm": {
            "awake_s": 6.914,
            "vm_boot_s": 2.321,
            "loop_s": 1.38,
            "radio_s": 0.817,
            "up_bytes": 686,
            "n": 3,
        },
    },
    "nbiot": {
        "report": {
            "awake_s": 9.856,
            "vm_boot_s": 2.772,
            "loop_s": 1.38,
            "radio_s": 2.814,
            "up_bytes": 563,
            "n": 4,
        },
        "tip": {
            "awake_s": 3.99,
            "vm_boot_s": 2.14,
            "loop_s": 0.0,
            "radio_s": 0.0,
            "up_bytes": 0,
            "n": 2,
        },
        "alarm": {
            "awake_s": 10.834,
            "vm_boot_s": 2.617,
            "loop_s": 1.358,
            "radio_s": 3.465,
            "up_bytes": 686,
            "n": 3,
        },
    },
}
MEASURED_ON = (
    "the water node of s23-water3 (the short rain-tip wake, node/tipwake.py) at a CPU share "
    "of 0.028 (Pystone 1779/s against the ESP32's 1661/s when it was found), emulated BC260Y "
    "with its default timings (send latency 0.2 s)"
)
# The short tip wake against the whole cycle it replaced, the same way (node's awake_ms at a
# CPU share of 0.028; Wi-Fi; docs/firmware.md): whole cycle, 7 wakes, median 3.81 s (2.56 s
# of it after main.py, 4 of them); short wake, 6 wakes, median 3.54 s (1.44 s after main.py,
# 4 of them). Unthrottled (the VM's own speed, 8 wakes each): 166 ms -> 150 ms after main.py,
# of which about 140 ms is waiting for the emulated contact to open (100 ms) and debounce.


# ---- the weather and the node's rules --------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """The node's settings that shape its wakes (boards/water-esp32.toml [config])."""

    report_s: int = 3600
    storm_report_s: int = 300
    mm_per_tip: float = 0.2
    rain_window_s: int = 600
    rain_mm_h: float = 30.0
    rain_hysteresis_mm_h: float = 10.0
    level_high_m: float = 1.5
    level_hysteresis_m: float = 0.1
    rise_m_h: float = 0.5
    rise_hysteresis_m_h: float = 0.2


@dataclass
class Weather:
    """A day: rain tip times (s from midnight), the water level and the cover, by time."""

    tips: list[float]
    level_m: Any  # callable t -> metres
    cover_open: tuple[float, float] | None  # (from, to) s, or None

    def cover_is_open(self, t: float) -> bool:
        return self.cover_open is not None and self.cover_open[0] <= t < self.cover_open[1]


def dry_day() -> Weather:
    return Weather([], lambda t: 0.5, None)


def storm_day(peak_mm_h: float = 40.0, mm_per_tip: float = 0.2) -> Weather:
    """6 h of rain from 12:00, rising to ``peak_mm_h`` at 15:00 and easing off by 18:00; the
    water rises from 0.5 m to 1.9 m between 13:30 and 15:30 (0.7 m/h) and falls back to
    0.6 m by midnight; the cover is lifted from 16:30 to 16:50."""
    start, peak, end = 12 * 3600, 15 * 3600, 18 * 3600
    tips: list[float] = []
    fallen = 0.0
    for t in range(start, end):
        rate = peak_mm_h * (1 - abs(t - peak) / (peak - start))  # mm/h, triangular
        fallen += rate / 3600
        while fallen >= mm_per_tip * (len(tips) + 1):
            tips.append(float(t))

    def level(t: float) -> float:
        rise_from, rise_to, fall_to = 13.5 * 3600, 15.5 * 3600, 24 * 3600
        if t < rise_from:
            return 0.5
        if t < rise_to:
            return 0.5 + 1.4 * (t - rise_from) / (rise_to - rise_from)
        return 1.9 - 1.3 * min(1.0, (t - rise_to) / (fall_to - rise_to))

    return Weather(tips, level, (16.5 * 3600, 16.5 * 3600 + 1200))


@dataclass
class Wake:
    t: float
    cause: str  # timer | tip | cover
    kind: str  # report | tip | alarm
    events: list[str]
    level_m: float | None


def wakes(weather: Weather, rules: Rules, awake_s: dict[str, float]) -> list[Wake]:
    """The node's wakes through the day, by water.py's rules: what wakes it, whether a
    report is due, which alarms change. ``awake_s`` per kind: tips that fall while it is
    awake are counted without a wake of their own (the gauge's interrupt)."""
    out: list[Wake] = []
    alarms = {
        name: Alarm(name, False) for name in ("rain_heavy", "level_high", "level_rising", "cover")
    }
    seen: list[float] = []  # tip times counted so far
    tips = iter(weather.tips)
    next_tip = next(tips, math.inf)
    next_report = 0.0
    last_level: tuple[float, float] | None = None
    cover_woke = False
    t = 0.0
    while True:
        cover_at = math.inf
        if weather.cover_open and not cover_woke and weather.cover_open[0] >= t:
            cover_at = weather.cover_open[0]
        at = min(next_report, next_tip, cover_at)
        if at >= DAY_S:
            return out
        t = at
        # a tie wakes it once; the cover's wake samples like a timer's
        cause = "cover" if at == cover_at else "tip" if at == next_tip else "timer"
        if cause == "cover":
            cover_woke = True
        while next_tip <= t:
            seen.append(next_tip)
            next_tip = next(tips, math.inf)
        events: list[str] = []
        rate = sum(1 for x in seen if x > t - rules.rain_window_s) * rules.mm_per_tip
        rate *= 3600 / rules.rain_window_s
        _note(
            alarms["rain_heavy"], rate, rules.rain_mm_h, rules.rain_hysteresis_mm_h, events, "rain"
        )
        due = t >= next_report or cause == "cover"
        level = None
        if due:
            level = weather.level_m(t)
            rise = None
            if last_level is not None and t > last_level[1]:
                rise = (level - last_level[0]) * 3600 / (t - last_level[1])
            last_level = (level, t)
            _note(
                alarms["level_high"],
                level,
                rules.level_high_m,
                rules.level_hysteresis_m,
                events,
                "level",
            )
            _note(
                alarms["level_rising"],
                rise,
                rules.rise_m_h,
                rules.rise_hysteresis_m_h,
                events,
                "rise",
            )
            opened = 1.0 if weather.cover_is_open(t) else 0.0
            _note(alarms["cover"], opened, 0.5, 0.0, events, "cover")
            raining = bool(seen) and t - seen[-1] < rules.report_s
            next_report = t + (rules.storm_report_s if raining else rules.report_s)
        kind = "alarm" if events else "report" if due else "tip"
        out.append(Wake(t, cause, kind, events, level))
        awake_until = t + awake_s[kind]
        while next_tip <= awake_until:  # counted while awake: no wake of their own
            seen.append(next_tip)
            next_tip = next(tips, math.inf)
        t = awake_until


def _note(
    alarm: Alarm, value: float | None, on: float, hyst: float, out: list[str], name: str
) -> None:
    changed = alarm.update(value, on, hyst)
    if changed is not None:
        out.append(name + (" on" if changed else " off"))


# ---- the current model ---------------------------------------------------------------


@dataclass
class DayBudget:
    """One day on one uplink: the wakes by kind, seconds awake, radio on, loop powered,
    and the charge (mAs) by where it went."""

    uplink: str
    counts: dict[str, int] = field(default_factory=dict)
    awake_s: float = 0.0
    radio_s: float = 0.0
    loop_s: float = 0.0
    charge_mas: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, mas: float) -> None:
        self.charge_mas[part] = self.charge_mas.get(part, 0.0) + mas

    @property
    def total_mas(self) -> float:
        return sum(self.charge_mas.values())

    @property
    def average_ma(self) -> float:
        return self.total_mas / DAY_S


def fig(name: str, figures: dict[str, tuple[float, str]] | None = None) -> float:
    return (figures or FIGURES)[name][0]


def day_budget(
    uplink: str,
    day: list[Wake],
    measured: dict[str, dict[str, float]],
    figures: dict[str, tuple[float, str]] | None = None,
    without_vm_boot: bool = False,
) -> DayBudget:
    """The charge one day of ``day``'s wakes takes on ``uplink`` ("wifi" or "nbiot"), from
    the per-kind ``measured`` times and the current model's ``figures``.
    ``without_vm_boot``: the emulated VM's boot (vm_boot_s) left out of each wake, the chip's
    boot_s [A4] standing for it alone (by default both are charged: on the high side)."""

    def f(name: str) -> float:
        return fig(name, figures)

    budget = DayBudget(uplink)
    module_on_s = 0.0
    for wake in day:
        m = measured[wake.kind]
        budget.counts[wake.kind] = budget.counts.get(wake.kind, 0) + 1
        awake = m["awake_s"] + f("boot_s")
        if without_vm_boot:
            awake -= m.get("vm_boot_s", 0.0)
        radio = m["radio_s"]
        uses_radio = radio > 0
        if uplink == "wifi" and uses_radio:
            radio += f("wifi_join_s")  # the emulated board joins at once; a real one does not
            awake += f("wifi_join_s")
            tx_s = m["up_bytes"] * 8 / (f("wifi_kbit_s") * 1000)
            budget.add("esp32 awake", (awake - radio) * f("esp32_awake_ma"))
            budget.add(
                "wi-fi radio", radio * f("wifi_rx_ma") + tx_s * (f("wifi_tx_ma") - f("wifi_rx_ma"))
            )
        else:
            budget.add("esp32 awake", awake * f("esp32_awake_ma"))
        if uplink == "nbiot" and uses_radio:
            tx_s = m["up_bytes"] * 8 / (f("nbiot_kbit_s") * 1000)
            connected = radio + f("nbiot_rrc_tail_s")
            budget.add(
                "nb-iot connected",
                connected * f("nbiot_rx_ma") + tx_s * (f("nbiot_tx_ma") - f("nbiot_rx_ma")),
            )
            budget.add("nb-iot idle (T3324)", f("nbiot_t3324_s") * f("nbiot_idle_ma"))
            radio = connected
            module_on_s += connected + f("nbiot_t3324_s")
        budget.awake_s += awake
        budget.radio_s += radio
        budget.loop_s += m["loop_s"]
        level = wake.level_m if wake.level_m is not None else 0.5
        loop_ma = 4 + 16 * min(1.0, level / f("level_span_m"))
        from_cells = loop_ma * f("loop_supply_v") / (f("battery_v") * f("boost_efficiency"))
        budget.add("4-20 mA loop + flow meter", m["loop_s"] * (from_cells + f("flow_meter_ma")))
    asleep = DAY_S - budget.awake_s
    budget.add("esp32 deep sleep", asleep * f("esp32_sleep_ma"))
    budget.add("board asleep", asleep * f("board_sleep_ma"))
    if uplink == "nbiot":
        budget.add("nb-iot PSM", (DAY_S - module_on_s) * f("nbiot_psm_ma"))
    return budget


def week_average_ma(dry: DayBudget, storm: DayBudget, storms_a_week: int = 1) -> float:
    return (dry.total_mas * (7 - storms_a_week) + storm.total_mas * storms_a_week) / (7 * DAY_S)


def project(
    measured: dict[str, dict[str, dict[str, float]]] | None = None,
    battery: Battery | None = None,
    rules: Rules | None = None,
    without_vm_boot: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per uplink: the dry and storm days' budgets, the week's average current, the life."""
    measured = measured or MEASURED
    battery = battery or Battery()
    rules = rules or Rules()
    out: dict[str, dict[str, Any]] = {}
    for uplink, kinds in measured.items():
        awake = {k: v["awake_s"] for k, v in kinds.items()}
        dry = day_budget(uplink, wakes(dry_day(), rules, awake), kinds, None, without_vm_boot)
        storm_wakes = wakes(storm_day(), rules, awake)
        storm = day_budget(uplink, storm_wakes, kinds, None, without_vm_boot)
        average = week_average_ma(dry, storm)
        years = battery.life_years(average)
        out[uplink] = {
            "dry": dry,
            "storm": storm,
            "storm_wakes": storm_wakes,
            "average_ma": average,
            "years": years,
            "ratio": years / TARGET_YEARS,
        }
    return out


# ---- measuring on the emulated board -----------------------------------------------------


def _chip_share(rounds: int) -> tuple[float, float, float]:
    """The CPU share that runs the VM at the ESP32's Pystone rate, found on a bare board as
    the HIL plugin's --hil-chip-speed does: (share, VM's rate, rate at the share)."""
    from polekit.hil.chip_speed import ESP32_PYSTONES, chip_share, pystones
    from polekit.hil.emulator import EmulatedBoard
    from polekit.hil.pytest_plugin import Board

    with EmulatedBoard("water-esp32") as target:
        board = Board(target)
        board.soft_reset()
        vm = pystones(board, rounds)
        share = chip_share(vm)
        tried: list[tuple[float, float]] = []  # (share, rate achieved)
        for _ in range(4):
            target.throttle(share)
            achieved = pystones(board, max(3, rounds // 2))
            tried.append((share, achieved))
            if abs(achieved / ESP32_PYSTONES - 1) < 0.15:
                break
            share = max(0.01, min(1.0, share * max(0.5, min(2.0, ESP32_PYSTONES / achieved))))
        share, achieved = min(tried, key=lambda t: abs(t[1] / ESP32_PYSTONES - 1))
        return share, vm, achieved


REPORT_S = 20  # the measuring node's report interval: a timer cycle every 20 s


class _Relay:
    """A TCP relay between the node and the broker that notes when each connection opened
    and closed and the bytes the node sent: the Wi-Fi link's time in use, seen from outside."""

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.upstream = ("127.0.0.1", upstream_port)
        self.links: list[list[float]] = []  # [opened, closed or inf, bytes up]
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        import time

        while not self._stop.is_set():
            try:
                node, _ = self._server.accept()
            except OSError:
                return
            link = [time.monotonic(), math.inf, 0.0]
            self.links.append(link)
            broker = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(node, broker, link), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, node, None), daemon=True).start()

    def _pipe(self, src: Any, dst: Any, link: list[float] | None) -> None:
        import time

        try:
            while data := src.recv(4096):
                if link is not None:
                    link[2] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            if link is not None and link[1] == math.inf:
                link[1] = time.monotonic()
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._server.close()


def measure(
    uplink: str,
    share: float,
    cycles: int,
    log: Any = print,
    kinds: tuple[str, ...] = ("report", "tip", "alarm"),
) -> dict[str, dict[str, float]]:
    """Run the real water node on ``uplink`` at CPU ``share`` for ``cycles`` of each of
    ``kinds`` (timer reports, rain-tip wakes, cover alarms); the medians per kind (see
    MEASURED; a kind not measured keeps its stored figures)."""
    import json
    import re
    import shutil
    import tempfile
    import threading
    import time
    from pathlib import Path

    from polekit.firmware.install import install
    from polekit.hil.atmodem import AtModem
    from polekit.hil.broker import LocalBroker
    from polekit.hil.emulator import EmulatedBoard

    stamps: list[tuple[float, str]] = []  # (host time, board event)
    supply: list[tuple[float, int]] = []  # (host time, GPIO 26 level)
    commands: list[tuple[float, str]] = []  # (host time, AT command), NB-IoT

    class TimedModem(AtModem):
        def _execute(self, cmd: Any) -> None:
            commands.append((time.monotonic(), cmd.name))
            super()._execute(cmd)

    work = Path(tempfile.mkdtemp(prefix="polekit-battery-"))
    broker = LocalBroker()
    broker.start()
    relay = _Relay(broker.port) if uplink == "wifi" else None
    config = {
        "device_code": "WATER-BENCH",
        "uplink": uplink,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": relay.port if relay else broker.port,
        "report_s": REPORT_S,
        "storm_report_s": REPORT_S,
    }
    flash = install(work / "flash", "water-esp32", config, compiled=True)
    board = EmulatedBoard("water-esp32", fs_dir=flash)
    board.watch_pin(26, lambda level: supply.append((time.monotonic(), level)))
    done = threading.Event()
    modem = None

    def poll() -> None:
        seen = 0
        while not done.is_set():
            events = board.events
            while seen < len(events):
                stamps.append((time.monotonic(), str(events[seen].get("event"))))
                seen += 1
            time.sleep(0.005)

    def sleeps() -> int:
        return sum(1 for _, e in stamps if e == "deepsleep")

    def wait_sleep(n: int, timeout_s: float = REPORT_S * 3 + 60) -> None:
        deadline = time.monotonic() + timeout_s
        while sleeps() < n:
            if time.monotonic() > deadline:
                tail = bytes(board.serial_log).decode(errors="replace")[-1500:]
                raise RuntimeError(f"no deep sleep {n} within {timeout_s:.0f} s:\n{tail}")
            time.sleep(0.02)

    try:
        board.start()
        board.throttle(share)
        threading.Thread(target=poll, daemon=True).start()
        if uplink == "nbiot":
            modem = TimedModem(board.uarts["modem"], board=board, pwrkey_pin=18).start()
        n = 1
        wait_sleep(n)  # the power-on cycle: not counted (it starts from nothing)
        for _ in range(cycles if "report" in kinds else 0):  # timer reports
            n += 1
            wait_sleep(n)
        for _ in range(cycles if "tip" in kinds else 0):  # a tip soon after it fell asleep
            time.sleep(1.0)
            board.set("rain.tips", 1)
            n += 1
            wait_sleep(n)
        for i in range(cycles if "alarm" in kinds else 0):  # the cover lifts (EXT1), closes
            if i % 2 == 0:
                time.sleep(1.0)
                board.set("cover.open", 1)
            else:
                board.set("cover.open", 0)
            n += 1
            wait_sleep(n)
        time.sleep(0.5)
    finally:
        done.set()
        if modem is not None:
            modem.stop()
        board.stop()
        if relay is not None:
            relay.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    log_text = bytes(board.serial_log).decode(errors="replace")
    summaries = [json.loads(m) for m in re.findall(r"water cycle (\{.*\})", log_text)]
    asleep = [t for t, e in stamps if e == "deepsleep"]
    rows: dict[str, list[dict[str, float]]] = {"report": [], "tip": [], "alarm": []}
    for k, summary in enumerate(summaries[1:], start=1):  # the power-on cycle left out
        if k >= len(asleep):
            break
        # from the previous deep sleep to this one: the pin and link events of the cycle
        # (the board's "booted" can come after the firmware's first steps)
        start, end = asleep[k - 1], asleep[k]
        kind = "alarm" if summary["alarms"] else "report" if summary["reported"] else "tip"
        on = None
        loop_s = 0.0
        for t, level in supply:
            if start <= t <= end + 0.05:
                if level and on is None:
                    on = t
                elif not level and on is not None:
                    loop_s += t - on
                    on = None
        radio_s, up = 0.0, 0.0
        if relay is not None:
            for opened, closed, sent in relay.links:
                if start <= opened <= end:
                    radio_s += min(closed, end) - opened
                    up += sent
        else:
            times = [t for t, _ in commands if start <= t <= end]
            if times:
                radio_s = times[-1] - times[0]
        rows[kind].append(
            {
                # the node's own awake time (ticks_ms at deep sleep); vm_boot_s is the part
                # before main.py (the emulated VM's boot: JavaScript, its file system, the
                # ROM modules as bytecode, where the chip runs C), for the record only
                "awake_s": summary["awake_ms"] / 1000,
                "vm_boot_s": summary.get("boot_ms", 0) / 1000,
                "loop_s": loop_s,
                "radio_s": radio_s,
                "up_bytes": up,
            }
        )
        log(f"  {uplink} cycle {k}: {kind:6} {rows[kind][-1]}")
    out: dict[str, dict[str, float]] = {}
    for kind, got in rows.items():
        if not got or kind not in kinds:
            out[kind] = dict(MEASURED[uplink][kind])
            log(f"  {uplink}: no {kind} cycle measured; kept the stored figures")
            continue
        med = {key: round(statistics.median(r[key] for r in got), 3) for key in got[0]}
        med["n"] = len(got)
        out[kind] = med
    return out


# ---- printing --------------------------------------------------------------------------


def _rows(result: dict[str, dict[str, Any]]) -> Iterator[str]:
    for uplink, r in result.items():
        name = {"wifi": "Wi-Fi", "nbiot": "NB-IoT (PSM)"}[uplink]
        yield f"\n== {name}"
        for day in ("dry", "storm"):
            b: DayBudget = r[day]
            kinds = ", ".join(f"{b.counts.get(k, 0)} {k}" for k in ("report", "tip", "alarm"))
            n = sum(b.counts.values())
            yield (
                f"  {day:5} day: {n:4} wakes ({kinds}); awake {b.awake_s:7.1f} s, "
                f"radio on {b.radio_s:7.1f} s, loop powered {b.loop_s:6.1f} s; "
                f"{b.total_mas / 3600:6.2f} mAh, {b.average_ma * 1000:6.1f} uA average"
            )
        storm: DayBudget = r["storm"]
        for part, mas in sorted(storm.charge_mas.items(), key=lambda kv: -kv[1]):
            yield f"      storm day {part:28} {mas / 3600:7.3f} mAh ({mas / storm.total_mas:5.1%})"
        yield (
            f"  week (6 dry + 1 storm): {r['average_ma'] * 1000:.1f} uA average -> "
            f"{r['years']:.1f} years; {r['ratio']:.2f}x the {TARGET_YEARS:.0f}-year target"
        )


def print_projection(result: dict[str, dict[str, Any]], battery: Battery) -> None:
    storm_wakes = next(iter(result.values()))["storm_wakes"]
    alarms = [f"{w.t / 3600:05.2f} h {', '.join(w.events)}" for w in storm_wakes if w.events]
    print("Storm day's alarms (the node's rules on the simulated weather):")
    for line in alarms:
        print("  " + line)
    for line in _rows(result):
        print(line)
    print(
        f"\nBattery: {battery.cells} x {battery.cell_ah:g} Ah Li-SOCl2"
        f" = {battery.rated_mah / 1000:g} Ah;"
        f" included: self-discharge {battery.self_discharge_per_year:.0%}/year, cut-off (usable"
        f" {battery.usable:.0%} of rated, board browns out near 3.0 V); temperature derating"
        f" {'x%.2f' % battery.derate if battery.derate != 1 else 'NOT included'}."
    )
    print(f"Measured awake times: {MEASURED_ON}")
    for uplink, r in result.items():
        print(
            f"RESULT {uplink}: {r['years']:.1f} years, ratio to the 2-year target {r['ratio']:.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-only", action="store_true", help="use MEASURED, no board")
    parser.add_argument("--cycles", type=int, default=3, help="cycles of each kind to measure")
    parser.add_argument("--uplink", choices=("wifi", "nbiot"), action="append")
    parser.add_argument(
        "--kind",
        choices=("report", "tip", "alarm"),
        action="append",
        help="measure only these wakes (the others keep MEASURED's figures)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="Pystone rounds for the speed")
    parser.add_argument(
        "--share", type=float, help="CPU share for the chip's speed (skip finding it)"
    )
    parser.add_argument("--derate", type=float, default=1.0, help="temperature derating factor")
    parser.add_argument(
        "--without-vm-boot",
        action="store_true",
        help="leave the emulated VM's boot out of each wake (the chip's boot_s stays)",
    )
    args = parser.parse_args(argv)
    battery = Battery(derate=args.derate)
    measured = MEASURED
    if not args.model_only:
        global MEASURED_ON
        if args.share:
            share, vm, achieved = args.share, math.nan, math.nan
        else:
            share, vm, achieved = _chip_share(args.rounds)
        print(
            f"chip speed: VM {vm:.0f} pystones/s; at a CPU share of {share:.3f}: {achieved:.0f}/s "
            f"(an ESP32: 1661/s)"
        )
        measured = {k: dict(v) for k, v in MEASURED.items()}
        for uplink in args.uplink or ("wifi", "nbiot"):
            kinds = tuple(args.kind or ("report", "tip", "alarm"))
            measured[uplink] = measure(uplink, share, args.cycles, kinds=kinds)
        for kind, got in measured["nbiot"].items():  # the modem sends what the Wi-Fi node does
            got["up_bytes"] = measured["wifi"][kind]["up_bytes"]
        MEASURED_ON = (
            f"this run, at a CPU share of {share:.3f} ({achieved / 1661:.2f} of the chip's speed)"
        )
        print("MEASURED = " + repr(measured))
    print_projection(project(measured, battery, None, args.without_vm_boot), battery)


if __name__ == "__main__":
    main()
