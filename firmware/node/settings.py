# Settings from /config.json, checked against a node's defaults and limits: each problem is
# one log line and the default is kept, so a typo never stops a node from working.
#
# The tables below are the one definition of what each kind of node accepts: the node
# checks its /config.json against them at start and in its self-test, and the host
# (`polekit deploy --set`, `provision`'s config.* columns) checks a deployment's settings
# against them before anything is written to a board. docs/firmware.md lists them.
import json

# The pole node (Modbus over RS-485)
POLE_DEFAULTS = {
    "unit": 1,
    "baudrate": 9600,
    "sample_ms": 1000,
    "tilt_ms": 200,
    "tilt_threshold": 10.0,
    "tilt_hysteresis": 2.0,
    "lamp_default": 100,
    "watchdog_ms": 5000,
    "report_s": 300,
    "ota_trial_s": 120,
}
# key: (low, high) accepted
POLE_LIMITS = {
    "unit": (1, 247),
    "baudrate": (1200, 115200),
    "sample_ms": (100, 3600000),
    "tilt_ms": (20, 60000),
    "tilt_threshold": (0, 90),
    "tilt_hysteresis": (0, 30),
    "lamp_default": (0, 100),
    "watchdog_ms": (0, 60000),
    "report_s": (1, 3600),
    "ota_trial_s": (5, 86400),
}
POLE_TEXTS = ("device_code", "board")
# Report policy defaults per quantity: (filter, window, delta in the register's unit).
# Any of them can be changed per node: "report": {"temperature": {"delta": 0.5}}.
REPORTED = {
    "temperature": ("median", 5, 0.1),
    "humidity": ("median", 5, 0.5),
    "illuminance": ("median", 5, 1.0),
    "pm1": ("average", 5, 1),
    "pm2_5": ("average", 5, 1),
    "pm10": ("average", 5, 1),
    "noise": ("average", 3, 0.5),
    "tilt": ("median", 3, 0.2),
}

# The community node (BTHome over BLE)
COMMUNITY_DEFAULTS = {
    "advert_s": 30,
    "event_s": 5,
    "long_press_ms": 2000,
    "name": "polekit",
    "ota_trial_s": 60,
}
COMMUNITY_LIMITS = {
    "advert_s": (1, 3600),
    "event_s": (1, 60),
    "long_press_ms": (100, 60000),
    "ota_trial_s": (5, 86400),
}
COMMUNITY_TEXTS = ("device_code", "board", "name", "bindkey")


# (settings, problems): `limits` maps a numeric key to (low, high); `texts` are keys whose
# value is a string.
def check(config, defaults, limits, texts=POLE_TEXTS):
    good = dict(defaults)
    problems = []
    for key, value in config.items():
        if key in texts:
            if isinstance(value, str):
                good[key] = value
            else:
                problems.append("config: %s = %r must be text; ignored" % (key, value))
        elif key not in limits:
            problems.append("config: unknown key %r ignored" % key)
        elif (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not limits[key][0] <= value <= limits[key][1]
        ):
            problems.append(
                "config: %s = %r must be a number %s..%s; using %r"
                % (key, value, limits[key][0], limits[key][1], defaults.get(key))
            )
        else:
            good[key] = value
    return good, problems


# The keys a node with this uplink accepts ("ble": the community node; else the pole node).
def known_keys(uplink):
    if uplink in ("wifi", "mqtt"):  # the tables of nodes that talk to a broker themselves
        from .settings_mqtt import known_keys as broker_keys

        return broker_keys(uplink, set(POLE_LIMITS) | set(POLE_TEXTS) | {"report"})
    if uplink == "ble":
        return set(COMMUNITY_LIMITS) | set(COMMUNITY_TEXTS)
    return set(POLE_LIMITS) | set(POLE_TEXTS) | {"report"}


# (settings, problems) of a config for a node with this uplink: the defaults merged in,
# one line per problem (the default is kept for each).
def validate(config, uplink):
    if uplink in ("wifi", "mqtt"):
        from .settings_mqtt import validate as validate_broker

        return validate_broker(config, uplink)
    if uplink == "ble":
        return check(config, COMMUNITY_DEFAULTS, COMMUNITY_LIMITS, COMMUNITY_TEXTS)
    rest = {k: v for k, v in config.items() if k != "report"}
    good, problems = check(rest, POLE_DEFAULTS, POLE_LIMITS)
    good["report"], more = _check_report(config.get("report", {}))
    return good, problems + more


def _check_report(given):
    from .policy import check_policy  # the pole node's only: a community node never loads it

    if not isinstance(given, dict):
        return {}, ['config: report must be an object like {"temperature": {"delta": 0.2}}']
    good, problems = {}, []
    for name, settings in given.items():
        if name not in REPORTED:
            problems.append(
                "config: report.%s: no such quantity (known: %s) ignored"
                % (name, ", ".join(sorted(REPORTED)))
            )
            continue
        f, window, delta = REPORTED[name]
        defaults = {"filter": f, "window": window, "delta": delta, "max_s": None}
        good[name], more = check_policy(name, settings, defaults)
        problems += more
    return good, problems


def load_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
