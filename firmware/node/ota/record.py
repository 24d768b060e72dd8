# The boot record (/ota/boot.json): which application slot runs, and whether it is on trial.
#
# Two slots hold the application (lib/node, lib/protocols, lib/umqtt): slot "a" at the
# flash's root (/lib/..., where `polekit deploy` and a cable install put it) and slot "b"
# under /slot_b (/slot_b/lib/...). The boot selector (/main.py, the one file an update
# never replaces) reads this record at every boot, puts the active slot's lib on sys.path,
# and rolls back by itself; the running version confirms itself (trial.py) or asks for a
# rollback by writing "failed". No record: slot "a", confirmed (a cable install).
#
# Fields: slot ("a"/"b", the one that runs), state ("trial", "confirmed", "rolled_back"),
# version (of the slot that runs), previous (the version that ran before the last switch:
# the old one during a trial, the failed one after a rollback), prev_slot (where to roll
# back to), boots (boots on trial), rollback (code, protocols/ota.py), failed (a code the
# running version wrote: the boot selector rolls back at the next boot).
# main.py has its own copy of the paths and field names: this format is frozen, since the
# boot selector that reads it is never updated. Written atomically (.new, then rename).
import os

from .. import state

PATH = "/ota/boot.json"
DIR = "/ota"
ROOTS = {"a": "", "b": "/slot_b"}  # slot -> folder that holds its lib/
TRIAL_BOOTS = 3  # boots on trial without confirming: a crash loop


def other(slot):
    return "b" if slot == "a" else "a"


def load():
    return state.load(PATH)  # {} when there is none


def save(record):
    try:
        os.mkdir(DIR)
    except OSError:
        pass  # it exists
    state.save(PATH, record)


# The slot that runs ("a" when there is no record).
def active():
    rec = load()
    return rec.get("slot", "a") if rec else "a"
