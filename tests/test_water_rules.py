"""The water node's rules that need no board (issue 17 item 3), run on CPython: the water's
rise rate over a span long enough that the ADC's noise is not a rate, an alarm kept as
changed only once its event is in the outbox, and each alarm's hysteresis inside (0,
threshold) at config load and in the platform's commands.

RTC memory is a plain map here (node/rtcstore.py keeps one as JSON in the chip's RTC slow
memory); the outbox and the link are the node's own (node/outbox.py, node/uplinks/
mqtt_link.py) on real files."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nodekit_host import node_module

wake_rules = node_module("wake_rules")
settings_mqtt = node_module("settings_mqtt")


class Rtc:
    """RTC memory as RtcStore offers it to the rules: get and set on a map."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value


# 3 mV of ADC noise on the 4-20 mA loop through 120 ohm: 0.025 mA of 16 mA over 5 m, 7.8 mm
NOISE_M = 0.0078
STORM_MS = 300_000  # the storm report interval: the shortest span a rate is taken over


def test_a_cover_wake_seconds_after_a_report_does_not_turn_noise_into_a_rise() -> None:
    rtc = Rtc()
    t0 = 1_000_000
    assert wake_rules.rise_rate(rtc, 1.0, t0, STORM_MS) is None  # the first sample: a base
    # a cover wake 10 s later: 7.8 mm of noise would be 2.8 m/h, over the 0.5 m/h alarm
    assert wake_rules.rise_rate(rtc, 1.0 + NOISE_M, t0 + 10_000, STORM_MS) is None
    assert wake_rules.alarm_change(rtc, "level_rising", None, 0.5, 0.2) is None
    # the next report: the rate is over the whole span from the report before the wake
    rise = wake_rules.rise_rate(rtc, 1.0 + NOISE_M, t0 + STORM_MS, STORM_MS)
    assert rise == pytest.approx(NOISE_M * 3600 / 300)  # 0.094 m/h: under the alarm
    assert (rtc.get("lv"), rtc.get("lt")) == (1.0 + NOISE_M, t0 + STORM_MS)  # the new base
    # a real rise is seen over a report interval: 0.1 m in 5 min is 1.2 m/h
    rise = wake_rules.rise_rate(rtc, 1.1 + NOISE_M, t0 + 2 * STORM_MS, STORM_MS)
    assert rise == pytest.approx(1.2)


def test_a_clock_set_back_starts_the_rise_over() -> None:
    rtc = Rtc()
    wake_rules.rise_rate(rtc, 1.0, 5_000_000, STORM_MS)
    assert wake_rules.rise_rate(rtc, 1.2, 1_000_000, STORM_MS) is None
    assert rtc.get("lt") == 1_000_000  # the new base, not a span that never ends


def _link(folder: Path) -> Any:
    outbox = node_module("outbox").Outbox(str(folder / "outbox" / "out.bin"), 4096)
    state = node_module("state").StateFile(str(folder / "seq.json"))
    return node_module("uplinks.mqtt_link").MqttLink(
        SimpleNamespace(), outbox, "w1", state
    )  # queues only: no transport


def test_an_alarm_whose_event_was_not_queued_is_sent_at_the_next_wake(tmp_path: Path) -> None:
    rtc = Rtc()
    (tmp_path / "outbox").mkdir()
    link = _link(tmp_path)
    changed = wake_rules.alarm_change(rtc, "level_high", 1.6, 1.5, 0.1)
    assert changed is True
    shutil.rmtree(tmp_path / "outbox")  # the flash fails under the outbox: put raises
    with pytest.raises(OSError):
        wake_rules.queue_alarm(
            rtc, "level_high", changed, lambda: link.event("W1", {"alarm": "level_high"})
        )
    assert rtc.get("alarms", {}).get("level_high", False) is False  # not kept as raised
    # the next wake: the crossing is seen again, and this time its event is queued
    (tmp_path / "outbox").mkdir()
    link = _link(tmp_path)
    changed = wake_rules.alarm_change(rtc, "level_high", 1.6, 1.5, 0.1)
    assert changed is True
    wake_rules.queue_alarm(
        rtc, "level_high", changed, lambda: link.event("W1", {"alarm": "level_high"})
    )
    assert len(link.outbox) == 1 and rtc.get("alarms") == {"level_high": True}
    assert wake_rules.alarm_change(rtc, "level_high", 1.6, 1.5, 0.1) is None  # once a crossing


WATER = dict(settings_mqtt.WATER_DEFAULTS)


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"level_high_m": 1.0, "level_hysteresis_m": 1.0}, "level_hysteresis_m"),
        ({"rise_hysteresis_m_h": 0}, "rise_hysteresis_m_h"),
        ({"rain_mm_h": 20, "rain_hysteresis_mm_h": 25}, "rain_hysteresis_mm_h"),
    ],
)
def test_a_hysteresis_outside_its_threshold_is_refused_at_config_load(
    given: dict[str, float], key: str
) -> None:
    good, problems = settings_mqtt.validate(dict(given, device_code="W1"), "mqtt")
    assert len(problems) == 1 and problems[0].startswith("config: " + key), problems
    assert good[key] == WATER[key]  # the default kept
    for on, band in settings_mqtt.WATER_HYSTERESES:
        assert 0 < good[band] < good[on]


def test_a_threshold_under_the_default_hysteresis_goes_back_to_its_default_too() -> None:
    good, problems = settings_mqtt.validate(
        {"level_high_m": 0.05, "level_hysteresis_m": 0.2}, "mqtt"
    )
    assert good["level_hysteresis_m"] == 0.1 and good["level_high_m"] == 1.5, problems
    assert "level_hysteresis_m = 0.2" in problems[0] and "level_high_m = 1.5" in problems[0]


def test_sound_hystereses_pass() -> None:
    good, problems = settings_mqtt.validate({"rise_m_h": 50, "rise_hysteresis_m_h": 20}, "mqtt")
    assert problems == [] and good["rise_hysteresis_m_h"] == 20


def test_a_command_that_would_make_an_alarm_never_clear_says_why() -> None:
    # what WaterNode.on_command asks of the settings as the command would leave them
    faults = settings_mqtt.hysteresis_faults(dict(WATER, rain_mm_h=5))
    assert [(band, on) for band, on, _ in faults] == [("rain_hysteresis_mm_h", "rain_mm_h")]
    assert "never clears" in faults[0][2] and "rain_mm_h = 5" in faults[0][2]
    assert settings_mqtt.hysteresis_faults(WATER) == []
