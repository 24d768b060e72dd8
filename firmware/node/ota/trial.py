# The trial of a new version: it confirms itself, or asks the boot selector to roll back.
#
# A version the boot record (record.py) says is "trial" runs its self-test (selftest.py)
# before the node's tasks start; a failure writes "failed": 4 and resets (the boot
# selector, /main.py, then rolls back). A sensor the old version already had down when it
# installed the update (the record's "known_down") does not fail it: a node with a dead
# sensor can still be updated. Then the uplink must be healthy for `trial_s` seconds: the
# node's link counts its good exchanges (answered Modbus requests, adverts sent, broker
# acknowledgements) and a silence longer than trial_s itself starts the count again (a
# master polling every minute or two is healthy; the trial must be longer than its poll).
# Healthy for trial_s: the record becomes "confirmed". Not confirmed within 2 * trial_s:
# "failed": 5 and a reset. The watchdog, the crash loop and an exception at
# start-up are the boot selector's own checks; this file is the version's side.
import time

from protocols import ota

from . import record


# Ask the boot selector for a rollback with ``code`` (protocols.ota RB_*), then reset.
# ``before_reset`` (the node's state flush) runs first.
def fail(code, before_reset=None):
    import machine

    rec = record.load()
    rec["failed"] = code
    record.save(rec)
    print("polekit: trial failed: %s; rolling back" % ota.rollback_text(code))
    if before_reset:
        before_reset()
    machine.reset()


# A version on trial (``boot``: its boot record): its self-test before the node's tasks
# start (they would share its buses), a rollback when it fails, else the node runs.
async def selftest_then(node, boot=None):
    if await selftest(boot, node.state.flush):
        await node.run()


# The self-test of a version on trial: True when it passed; else a rollback is asked for
# (fail: ``before_reset`` runs, then the reset).
async def selftest(boot, before_reset=None):
    from .. import selftest as deploy_selftest

    rows = await deploy_selftest.run()
    known = (boot or {}).get("known_down") or ()
    bad = [r for r in rows if not r[1]]
    for name, _ok, detail in bad:
        was = " (down before the update: not held against it)" if name in known else ""
        print("polekit: trial self-test: %s: %s%s" % (name, detail, was))
    if [r for r in bad if r[0] not in known]:
        fail(ota.RB_SELFTEST, before_reset)
        return False
    return True


# Watches ``node.uplink_exchanges()`` (a counter of good exchanges on its uplink) for
# ``trial_s`` seconds; ``node.state.flush()`` runs before a reset.
class Trial:
    def __init__(self, trial_s, node, clock=None):
        self.trial_ms = trial_s * 1000
        self.quiet_ms = self.trial_ms  # a silence as long as the trial: not healthy
        self.exchanges = node.uplink_exchanges
        self.before_reset = node.state.flush
        self.on_confirmed = node.ota_confirmed
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
        rec = confirm()
        self.confirmed = True
        self.on_confirmed(rec)  # what the node reports: no longer on trial


# The version on trial keeps its slot: the boot record says "confirmed" (the boot selector
# no longer counts its boots or rolls it back). Returns the record.
def confirm():
    rec = record.load()
    rec["state"] = "confirmed"
    rec["boots"] = 0
    record.save(rec)
    print("polekit: version %s confirmed after its trial" % rec.get("version"))
    return rec
