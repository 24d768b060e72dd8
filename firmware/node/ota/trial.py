# The trial of a new version: it confirms itself, or asks the boot selector to roll back.
#
# A version the boot record (record.py) says is "trial" runs its self-test (selftest.py)
# before the node's tasks start; a failure writes "failed": 4 and resets (the boot
# selector, /main.py, then rolls back). Then the uplink must be healthy for `trial_s`
# seconds: the node's link counts its good exchanges (answered Modbus requests, adverts
# sent, broker acknowledgements) and a silence longer than quiet_ms starts the count
# again. Healthy for trial_s: the record becomes "confirmed". Not confirmed within
# 2 * trial_s: "failed": 5 and a reset. The watchdog, the crash loop and an exception at
# start-up are the boot selector's own checks; this file is the version's side.
import time

from protocols import ota

from . import record


# Ask the boot selector for a rollback with ``code`` (protocols.ota RB_*), then reset.
# ``before_reset`` (the node's state flush) runs first.
def fail(code, before_reset=None):
    import machine

    rec = record.load() or {}
    rec["failed"] = code
    record.save(rec)
    print("polekit: trial failed: %s; rolling back" % ota.rollback_text(code))
    if before_reset:
        before_reset()
    machine.reset()


# A version on trial: its self-test before the node's tasks start (they would share its
# buses), a rollback when it fails, else the node runs.
async def selftest_then(node):
    from .. import selftest

    rows = await selftest.run()
    bad = [r for r in rows if not r[1]]
    for name, _ok, detail in bad:
        print("polekit: trial self-test: %s: %s" % (name, detail))
    if bad:
        fail(ota.RB_SELFTEST, node.state.flush)
        return
    await node.run()


# Watches ``node.uplink_exchanges()`` (a counter of good exchanges on its uplink) for
# ``trial_s`` seconds; ``node.state.flush()`` runs before a reset.
class Trial:
    def __init__(self, trial_s, node, clock=None):
        self.trial_ms = trial_s * 1000
        self.quiet_ms = max(5000, self.trial_ms // 2)
        self.exchanges = node.uplink_exchanges
        self.before_reset = node.state.flush
        self.clock = clock or time.ticks_ms
        self.confirmed = False

    async def run(self):
        from asyncio import sleep_ms

        start = self.clock()
        seen = self.exchanges()
        healthy_since = None
        last_ok = start
        while True:
            await sleep_ms(200)
            now = self.clock()
            n = self.exchanges()
            if n != seen:
                seen = n
                last_ok = now
                if healthy_since is None:
                    healthy_since = now
            elif healthy_since is not None and time.ticks_diff(now, last_ok) > self.quiet_ms:
                healthy_since = None
            if healthy_since is not None and time.ticks_diff(now, healthy_since) >= self.trial_ms:
                self.confirm()
                return
            if time.ticks_diff(now, start) >= 2 * self.trial_ms:
                fail(ota.RB_UPLINK, self.before_reset)
                return

    def confirm(self):
        rec = record.load() or {}
        rec["state"] = "confirmed"
        rec["boots"] = 0
        record.save(rec)
        self.confirmed = True
        print("polekit: version %s confirmed after its trial" % rec.get("version"))
