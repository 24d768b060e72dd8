# Settings from /config.json, checked against a node's defaults and limits: each problem is
# one log line and the default is kept, so a typo never stops a node from working.
import json


# (settings, problems): `limits` maps a numeric key to (low, high); `texts` are keys whose
# value is a string.
def check(config, defaults, limits, texts=("device_code", "board")):
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


def load_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
