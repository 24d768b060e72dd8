"""bench/battery.py's arithmetic on known inputs (the bench itself runs on demand, never here):
the battery's life with self-discharge, one wake's charge from the current model, and the
node's rules turning weather into wakes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "battery.py"
    spec = importlib.util.spec_from_file_location("bench_battery", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


battery = _bench()


def test_life_is_usable_charge_over_load_plus_self_discharge() -> None:
    pack = battery.Battery()  # 2 x 19 Ah, 90 % usable, 1 %/year
    # 1 mA: 34.2 Ah usable against 1 mA + 38 Ah x 1 % a year (0.0434 mA)
    assert pack.life_years(1.0) == pytest.approx(34200 / (1 + 380 / 8766) / 8766)
    assert pack.life_years(1.0) == pytest.approx(3.74, abs=0.01)
    # self-discharge alone caps an idle pack at 90 years (0.9 / 1 %)
    assert pack.life_years(0.0) == pytest.approx(90.0)
    assert battery.Battery(derate=0.5).life_years(1.0) == pytest.approx(pack.life_years(1.0) / 2)


def _figures(**over: float) -> dict[str, tuple[float, str]]:
    figures = {name: (0.0, "test") for name in battery.FIGURES}
    figures.update({name: (value, "test") for name, value in over.items()})
    return figures


def test_one_wifi_report_costs_awake_radio_and_loop_charge() -> None:
    figures = _figures(
        esp32_awake_ma=50,
        wifi_rx_ma=90,
        wifi_tx_ma=260,
        wifi_join_s=1,
        wifi_kbit_s=1000,
        boot_s=0.5,
        loop_supply_v=12,
        boost_efficiency=1.0,
        battery_v=3.0,
        level_span_m=5,
        esp32_sleep_ma=0.01,
    )
    measured = {"report": {"awake_s": 2.0, "loop_s": 1.0, "radio_s": 0.5, "up_bytes": 12500}}
    wake = battery.Wake(0.0, "timer", "report", [], 2.5)  # 12 mA in the loop at 2.5 m
    b = battery.day_budget("wifi", [wake], measured, figures)
    # awake 2 + 0.5 boot + 1 join = 3.5 s, of which radio 0.5 + 1 = 1.5 s; TX 0.1 s
    assert b.awake_s == pytest.approx(3.5) and b.radio_s == pytest.approx(1.5)
    assert b.charge_mas["esp32 awake"] == pytest.approx(2.0 * 50)
    assert b.charge_mas["wi-fi radio"] == pytest.approx(1.5 * 90 + 0.1 * (260 - 90))
    assert b.charge_mas["4-20 mA loop + flow meter"] == pytest.approx(1.0 * 12 * 12 / 3.0)
    assert b.charge_mas["esp32 deep sleep"] == pytest.approx((86400 - 3.5) * 0.01)


def test_an_nbiot_report_pays_the_rrc_tail_and_the_active_time() -> None:
    figures = _figures(
        esp32_awake_ma=50,
        nbiot_rx_ma=60,
        nbiot_tx_ma=160,
        nbiot_idle_ma=5,
        nbiot_psm_ma=0.004,
        nbiot_rrc_tail_s=20,
        nbiot_t3324_s=10,
        nbiot_kbit_s=20,
        battery_v=3.6,
        boost_efficiency=1.0,
        level_span_m=5,
    )
    measured = {"report": {"awake_s": 4.0, "loop_s": 0.0, "radio_s": 3.0, "up_bytes": 250}}
    wake = battery.Wake(0.0, "timer", "report", [], None)
    b = battery.day_budget("nbiot", [wake], measured, figures)
    assert b.charge_mas["nb-iot connected"] == pytest.approx(23 * 60 + 0.1 * 100)
    assert b.charge_mas["nb-iot idle (T3324)"] == pytest.approx(10 * 5)
    assert b.charge_mas["nb-iot PSM"] == pytest.approx((86400 - 33) * 0.004)


def test_the_storm_day_wakes_follow_the_nodes_rules() -> None:
    rules = battery.Rules()
    awake = {"report": 2.0, "tip": 0.3, "alarm": 2.0}
    dry = battery.wakes(battery.dry_day(), rules, awake)
    assert [w.kind for w in dry] == ["report"] * 24  # hourly, from midnight
    storm = battery.storm_day()
    assert len(storm.tips) == 600  # 120 mm of rain at 0.2 mm a tip
    day = battery.wakes(storm, rules, awake)
    changes = [e for w in day for e in w.events]
    # each alarm once on and once off: hysteresis, not one event per wavering sample
    for name in ("rain", "level", "rise", "cover"):
        assert changes.count(name + " on") == 1 and changes.count(name + " off") == 1, changes
    (lift,) = [w for w in day if w.cause == "cover"]
    assert lift.kind == "alarm" and "cover on" in lift.events
    # while it rains a report comes every storm_report_s (at a timer or a tip wake)
    during = [w.t for w in day if w.level_m is not None and 13 * 3600 <= w.t < 17 * 3600]
    assert max(b - a for a, b in zip(during, during[1:], strict=False)) <= rules.storm_report_s + 1
    tips = sum(1 for w in day if w.cause == "tip")
    assert 0 < tips <= 600
