# Report policy for one quantity: what is worth sending.
#
# Samples go through a filter over the last `window` samples ("median" shrugs off a single
# wild reading, "average" smooths noise, "none" passes each sample as it is). The filtered
# value is reported when it moved at least `delta` from the value last reported, or when
# `max_s` seconds passed since that report (a heartbeat, so a receiver can tell a steady
# value from a dead node). The first sample is always reported. Alarms do not go through
# here: they are raised from raw samples at once.
import time

# CPython (host tests) has no ticks_diff; MicroPython's wraps around like this
_diff = getattr(time, "ticks_diff", lambda a, b: a - b)

FILTERS = ("median", "average", "none")
# key: (default, low, high)
POLICY_KEYS = {
    "window": (5, 1, 32),
    "delta": (0, 0, 1000000),
    "max_s": (300, 1, 86400),
}


class Policy:
    def __init__(self, filter="median", window=5, delta=0, max_s=300):
        self.filter = filter
        self.window = 1 if filter == "none" else int(window)
        self.delta = delta
        self.max_ms = int(max_s * 1000)
        self.samples = []
        self.last = None
        self.last_ms = 0

    def filtered(self):
        s = self.samples
        if self.filter == "average":
            return sum(s) / len(s)
        s = sorted(s)
        n = len(s)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2

    # A sample in; the value to report now, or None when nothing is worth sending.
    def offer(self, value, now_ms=None):
        now = time.ticks_ms() if now_ms is None else now_ms
        self.samples.append(value)
        if len(self.samples) > self.window:
            self.samples.pop(0)
        v = self.filtered()
        if (
            self.last is None
            or abs(v - self.last) >= self.delta
            or _diff(now, self.last_ms) >= self.max_ms
        ):
            self.last = v
            self.last_ms = now
            return v
        return None


# Check one quantity's policy settings (a dict from the config); returns (settings,
# problems) with defaults kept for anything wrong, so a typo never stops a node.
def check_policy(name, given, defaults):
    good = dict(defaults)
    problems = []
    if not isinstance(given, dict):
        return good, ['config: report.%s must be an object like {"delta": 0.2}' % name]
    for key, value in given.items():
        if key == "filter":
            if value in FILTERS:
                good[key] = value
            else:
                problems.append(
                    "config: report.%s.filter = %r must be one of %s; using %r"
                    % (name, value, "/".join(FILTERS), defaults["filter"])
                )
        elif key not in POLICY_KEYS:
            problems.append(
                "config: report.%s.%s unknown (known: filter, %s) ignored"
                % (name, key, ", ".join(sorted(POLICY_KEYS)))
            )
        else:
            low, high = POLICY_KEYS[key][1:]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (low <= value <= high)
            ):
                problems.append(
                    "config: report.%s.%s = %r must be a number %s..%s; using %r"
                    % (name, key, value, low, high, defaults[key])
                )
            else:
                good[key] = value
    return good, problems
