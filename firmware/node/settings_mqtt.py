# The settings of nodes that talk to a broker themselves (Wi-Fi MQTT, NB-IoT): the water
# node's tables and the MQTT uplink's. A module of its own so that the pole and community
# nodes, which never use them, do not hold them in their heap (settings.py loads this one
# only for the uplinks "wifi" and "mqtt").
from .settings import check
from .settings import validate as validate_local

# The water node (MQTT straight to the broker over Wi-Fi or NB-IoT; boards with uplink "mqtt"):
# its own keys here; its link takes the MQTT uplink's table below (one set of broker
# settings for both radios; node_id defaults to its device code)
WATER_DEFAULTS = {
    "uplink": "wifi",
    "report_s": 3600,
    "storm_report_s": 300,
    "level_high_m": 1.5,
    "level_hysteresis_m": 0.1,
    "rise_m_h": 0.5,
    "rise_hysteresis_m_h": 0.2,
    "rain_mm_h": 30,
    "rain_hysteresis_mm_h": 10,
    "rain_window_s": 600,
    "tilt_deg": 20,
    "flow_gate_ms": 1000,
    "flush_ms": 30000,
}
# rain_window_s: the rain rate is over this window of the last TIPS_KEPT (60) tip times
# (water.py), so its ceiling is 60 tips a window: 72 mm/h at 600 s and 0.2 mm a tip
WATER_LIMITS = {
    "report_s": (5, 86400),
    "storm_report_s": (5, 86400),
    "level_high_m": (0, 100),
    "level_hysteresis_m": (0, 10),
    "rise_m_h": (0, 100),
    "rise_hysteresis_m_h": (0, 100),
    "rain_mm_h": (0, 500),
    "rain_hysteresis_mm_h": (0, 500),
    "rain_window_s": (10, 600),
    "tilt_deg": (0, 90),
    "flow_gate_ms": (100, 10000),
    "flush_ms": (1000, 120000),
}
WATER_TEXTS = ("device_code", "board", "uplink")
# each alarm's (threshold, hysteresis): on above the threshold, off below it minus the
# hysteresis, which must be inside (0, threshold): at or above the threshold the alarm
# never clears, at 0 it chatters on the sensor's noise
WATER_HYSTERESES = (
    ("level_high_m", "level_hysteresis_m"),
    ("rise_m_h", "rise_hysteresis_m_h"),
    ("rain_mm_h", "rain_hysteresis_mm_h"),
)
WATER_UPLINKS = ("wifi", "nbiot")


def hysteresis_faults(settings):
    """What is wrong with each alarm's hysteresis against its threshold in `settings` (all
    keys present): a (hysteresis key, threshold key, why) a pair not 0 < hysteresis <
    threshold."""
    faults = []
    for on, band in WATER_HYSTERESES:
        if not 0 < settings[band] < settings[on]:
            why = "%s = %r must be more than 0 and less than %s = %r (%s)" % (
                band,
                settings[band],
                on,
                settings[on],
                "at 0 the alarm chatters" if settings[band] <= 0 else "the alarm never clears",
            )
            faults.append((band, on, why))
    return faults


def check_hystereses(good):
    """The config lines for `hysteresis_faults(good)`; each pair at fault goes back to its
    defaults (the hysteresis alone when its default fits the threshold given)."""
    problems = []
    for band, on, why in hysteresis_faults(good):
        good[band] = WATER_DEFAULTS[band]
        kept = "using %s = %r" % (band, good[band])
        if not good[band] < good[on]:
            good[on] = WATER_DEFAULTS[on]
            kept += " and %s = %r" % (on, good[on])
        problems.append("config: %s; %s" % (why, kept))
    return problems


# The Wi-Fi MQTT uplink (uplinks/wifi_mqtt.py, uplinks/mqtt_link.py), for nodes that talk to
# the broker themselves; a node kind that has it merges these into its own tables.
# `node_id` names the node in its topics ({mqtt_prefix}/{node_id}/...); `mqtt_tls` 1 wraps
# the socket in TLS (the ESP32 port's ssl; the emulated board has none), verified against
# the CA certificate (DER) at `mqtt_ca_file` on the node's flash.
MQTT_DEFAULTS = {
    "mqtt_port": 1883,
    "mqtt_keepalive_s": 60,
    "mqtt_timeout_s": 10,
    "mqtt_tls": 0,
    "mqtt_prefix": "polekit/v1",
    "outbox_bytes": 32768,
}
MQTT_LIMITS = {
    "mqtt_port": (1, 65535),
    "mqtt_keepalive_s": (0, 65535),
    "mqtt_timeout_s": (1, 120),
    "mqtt_tls": (0, 1),
    "outbox_bytes": (2048, 262144),
}
MQTT_TEXTS = (
    "node_id",
    "wifi_ssid",
    "wifi_key",
    "mqtt_host",
    "mqtt_user",
    "mqtt_password",
    "mqtt_prefix",
    "mqtt_ca_file",
)


# what the MQTT tables cannot say: a topic level with an MQTT wildcard or "/" in node_id
# (a wildcard in a publish topic makes the broker drop the link), none in mqtt_prefix
def mqtt_problems(good):
    problems = []
    for key, banned in (("node_id", "/+#"), ("mqtt_prefix", "+#")):
        value = good.get(key, "")
        if any(ch in value for ch in banned):
            problems.append(
                "config: %s = %r must not contain %s (MQTT topic characters); using %r"
                % (key, value, " ".join(banned), MQTT_DEFAULTS.get(key, ""))
            )
            good[key] = MQTT_DEFAULTS.get(key, "")
    return problems


# The keys a node with this uplink accepts ("wifi": the pole node reporting over Wi-Fi MQTT,
# `pole_keys` its own; "mqtt": the water node)
def known_keys(uplink, pole_keys):
    mqtt = set(MQTT_LIMITS) | set(MQTT_TEXTS)
    if uplink == "wifi":
        return pole_keys | mqtt
    return set(WATER_LIMITS) | set(WATER_TEXTS) | mqtt


def validate(config, uplink):
    if uplink == "wifi":
        mqtt = {k: v for k, v in config.items() if k in MQTT_LIMITS or k in MQTT_TEXTS}
        local = {k: v for k, v in config.items() if k not in mqtt}
        good, problems = validate_local(local, "modbus")
        more, problems2 = check(mqtt, MQTT_DEFAULTS, MQTT_LIMITS, MQTT_TEXTS)
        good.update(more)
        return good, problems + problems2 + mqtt_problems(good)
    good, problems = check(
        config,
        dict(WATER_DEFAULTS, **MQTT_DEFAULTS),
        dict(WATER_LIMITS, **MQTT_LIMITS),
        WATER_TEXTS + MQTT_TEXTS,
    )
    problems += mqtt_problems(good) + check_hystereses(good)
    if not good.get("node_id"):  # its topics are {mqtt_prefix}/{device code}/... by default
        good["node_id"] = good.get("device_code", "node")
    if good["uplink"] not in WATER_UPLINKS:
        problems.append(
            "config: uplink = %r must be one of %s; using %r"
            % (good["uplink"], ", ".join(WATER_UPLINKS), WATER_DEFAULTS["uplink"])
        )
        good["uplink"] = WATER_DEFAULTS["uplink"]
    return good, problems
