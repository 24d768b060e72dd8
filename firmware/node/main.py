# Installed as /main.py on the board: the boot selector, then the polekit node.
#
# The one file an update never replaces. It reads the boot record (/ota/boot.json, see
# node/ota/record.py), puts the active application slot's lib on sys.path (slot "a": /lib,
# slot "b": /slot_b/lib) and starts node.start.main(), which chooses the node. A version on
# trial is rolled back to the previous slot, by this file alone, when: it raised at start-up
# (1, then a reset), the watchdog reset the board during its trial (2), it booted TRIAL_BOOTS
# times without confirming itself (3, a crash loop), or it asked for it ("failed": 4
# self-test, 5 uplink). On trial a watchdog is armed before the version's first import
# (BOOT_WDT_MS, re-armed shorter by the node once its tasks run): a version that hangs
# before then, or whose start returns without running its node, is reset by it and rolled
# back (2); on trial node.start raises where it would stop quietly (safe mode), (1).
# Kept small and frozen in what it reads: the record's format outlives every update.
import json
import os
import sys

import machine

BOOT = "/ota/boot.json"
ROOTS = {"a": "", "b": "/slot_b"}
TRIAL_BOOTS = 3
BOOT_WDT_MS = 30000  # start-up and self-test of a version on trial, at most (a chip: ~3 s)


def _record():
    for name in (BOOT, BOOT + ".new"):
        try:
            with open(name) as f:
                rec = json.load(f)
            if isinstance(rec, dict) and rec.get("slot") in ROOTS:
                return rec
        except (OSError, ValueError):
            pass  # absent or cut short: the other copy, or a cable install
    return None


def _save(rec):
    with open(BOOT + ".new", "w") as f:
        json.dump(rec, f)
    os.rename(BOOT + ".new", BOOT)


def _rollback(rec, code):
    print(
        "polekit: version %s failed its trial (reason %d); back to %s"
        % (rec.get("version"), code, rec.get("previous"))
    )
    failed = rec.get("slot")
    rec["slot"] = rec.get("prev_slot", "a")
    rec["prev_slot"] = failed
    rec["version"], rec["previous"] = rec.get("previous"), rec.get("version")
    rec["state"] = "rolled_back"
    rec["rollback"] = code
    rec.pop("failed", None)
    _save(rec)


def _select():
    rec = _record()
    if rec and rec.get("state") == "trial":
        code = rec.get("failed", 0)
        if not code and machine.reset_cause() == machine.WDT_RESET:
            code = 2
        if not code and rec.get("boots", 0) >= TRIAL_BOOTS:
            code = 3
        if code:
            _rollback(rec, code)
        else:
            rec["boots"] = rec.get("boots", 0) + 1
            _save(rec)
    if rec and rec["slot"] != "a":
        sys.path[sys.path.index("/lib")] = ROOTS[rec["slot"]] + "/lib"
    return rec


# still on trial (the version has not confirmed itself since this boot began)
def _on_trial(was):
    return was and (_record() or {}).get("state") == "trial"


def _start():
    try:
        os.stat("/maintenance")
        print("polekit: maintenance: node not started (a deploy is running; it clears this)")
        return
    except OSError:
        pass
    rec = _select()
    trial = bool(rec) and rec.get("state") == "trial"
    if trial:
        machine.WDT(timeout=BOOT_WDT_MS)  # cannot be stopped: the node re-arms it, or it bites
    try:
        from node.start import main

        main(rec)
    except Exception as exc:  # noqa: BLE001 - a version on trial that cannot start is rolled back
        if not _on_trial(trial):
            raise
        sys.print_exception(exc)
        rec = _record() or rec
        rec["failed"] = 1
        _save(rec)
        machine.reset()


_start()
