# What /main.py starts: the node the board is, chosen before any of them is imported (the
# water node's cycle needs the heap the pole node's Modbus tables would take), with the
# maintenance flag, the crash count and safe mode shared by all. A water node woken by a
# rain tip takes its short wake (tipwake.py) before any of it: no file read, no driver
# built, unless that wake finds a report or an alarm due. Imports are inside main() for
# that reason.
import time

BOOT_MS = time.ticks_ms()  # the firmware starts: what came before is the chip's boot

CRASH_FILE = "/crashes.json"
SAFE_MODE_AFTER = 3  # start-up crashes in a row; resets alone (brownouts) never count
RETRY_S = 3600  # a battery node that cannot start sleeps this long (or its report_s) and retries


def started():
    """The node is up: its start-up crash count starts over. A node whose main never
    returns (the water node ends each wake in deep sleep) calls this once it has started,
    before its first deep sleep; the others are cleared by main() below."""
    from .settings import load_json, save_json

    if load_json(CRASH_FILE, {"count": 0}).get("count", 0):
        save_json(CRASH_FILE, {"count": 0})


def _sleep_instead(config):
    # a battery node must not wait at the REPL for a person (its battery would be flat in
    # days): it sleeps for its report interval and tries again at the next wake
    import machine

    s = config.get("report_s") if isinstance(config, dict) else None
    s = s if isinstance(s, int) and 5 <= s <= 86400 else RETRY_S
    print("polekit: a battery node: asleep for %d s, then it tries again" % s)
    machine.deepsleep(s * 1000)


# ``boot``: the boot record /main.py's boot selector read (None: no update ever ran)
def main(boot=None):
    import os

    try:
        os.stat("/maintenance")
        print("polekit: maintenance: node not started (a deploy is running; it clears this)")
        return
    except OSError:
        pass
    import machine

    if machine.wake_reason() == machine.EXT0_WAKE:  # only the water node arms EXT0: a tip
        try:
            from .tipwake import start as tip_wake

            wake = tip_wake(BOOT_MS)
        except (KeyError, TypeError, ValueError) as exc:  # a record of another version
            print("polekit: tip wake: %r; the whole cycle runs" % (exc,))
            wake = None
        if wake is not None:
            import asyncio

            asyncio.run(wake.finish())
            return
    import asyncio

    from .settings import load_json

    config = load_json("/config.json", None)
    board = load_json("/board.json", None)
    crashes = load_json(CRASH_FILE, {"count": 0}).get("count", 0)
    if board is None or not isinstance(config, dict):
        _quiet(
            boot,
            "polekit: safe mode: /board.json or /config.json missing or not JSON; the REPL is up. "
            "Redeploy with `polekit deploy`.",
        )
        return
    battery = board.get("uplink") == "mqtt"  # the water node: each wake ends in deep sleep
    if crashes >= SAFE_MODE_AFTER:
        _quiet(
            boot,
            "polekit: safe mode: the node crashed at start %d times in a row; the REPL is up. "
            "Fix the config, then delete %s." % (crashes, CRASH_FILE),
        )
        if battery:
            _sleep_instead(config)
        return
    try:
        os.stat("/ota/check")  # node/ota/verify.py's PENDING: an update's signature to check
    except OSError:
        pass
    else:
        asyncio.run(check_boot(board))  # it ends in a reset (the emulated board's
        return  # asyncio.run returns at once: nothing may follow it here)
    if battery:
        try:
            if not _on_trial(boot) and _update_work():  # an update's work: a boot of its own
                from .ota_wake import run as ota_wake

                asyncio.run(ota_wake(config, board))  # it ends in a reset
                return
            from .water import main as water_main  # alone: its heap is the budget

            water_main(config, board, BOOT_MS, boot)  # calls started() once up; never returns
        except Exception as exc:  # noqa: BLE001 - counted, shown, then the node sleeps
            if _on_trial(boot):
                raise  # the boot selector (/main.py) rolls this version back
            _failed(crashes, exc)
            _sleep_instead(config)
        return
    node = _make_node(config, board, boot, crashes)
    if node:
        asyncio.run(_run(node, boot))


# the node's state names an update's work (node/ota_wake.py): read without loading that
# module, whose code a wake of the node would otherwise hold
def _update_work():
    from .ota import PULL_KEY, REPORT_KEY
    from .state import load

    state = load("/state.json")  # the water node's StateFile (water.py STATE_FILE)
    return bool(state.get(PULL_KEY) or state.get(REPORT_KEY))


def _on_trial(boot):
    return bool(boot) and boot.get("state") == "trial"


# The node stops at the REPL for a person; a version on trial raises instead: the boot
# selector (/main.py) rolls it back (the version it replaced started here).
def _quiet(boot, text):
    if _on_trial(boot):
        raise RuntimeError(text)
    print(text)


# An update's signature checked before the node starts, in a boot of its own (node/ota/
# verify.py boot_check), then a reset. A watchdog is armed for it (fed at each of its steps):
# a check that hangs resets the node, which then starts without a verdict. ``board``: the
# board map (its "name"). A node started by other code than main() (a test's Wi-Fi node)
# runs it the same way when verify.PENDING exists.
async def check_boot(board):
    import machine

    from .ota import verify
    from .version import VERSION  # what runs: the version the update is checked against

    verify.WDT = machine.WDT(timeout=verify.CHECK_WDT_MS)  # type: ignore[assignment]  # None until armed
    try:
        await verify.boot_check(board.get("name"), "%d.%d" % VERSION)
    finally:
        machine.reset()  # the node starts in a heap the check never touched


def _run(node, boot):
    if _on_trial(boot):
        return _trial(node, boot)
    return node.run()


# A version on trial: the node's construction leaves garbage that the trial's code would
# not fit beside (the emulated board's VM collects only between steps, so a collection and
# a yield first), then its self-test, whose failure rolls the version back.
async def _trial(node, boot):
    import asyncio
    import gc

    gc.collect()
    await asyncio.sleep_ms(1)
    from .ota.trial import selftest_then

    await selftest_then(node, boot)


# The node for this board, or None when it cannot start (counted toward safe mode).
def _make_node(config, board, boot, crashes):
    from .settings import save_json

    try:
        if board.get("uplink") == "ble":
            from .community import CommunityNode

            node = CommunityNode(config, board)
        else:
            from .app import PoleNode

            node = PoleNode(config, board, boot)  # type: ignore[assignment]  # both have run()
    except Exception as exc:  # noqa: BLE001 - counted, shown, and the REPL stays usable
        if _on_trial(boot):
            raise  # the boot selector (/main.py) rolls this version back
        _failed(crashes, exc)
        return None
    if crashes:
        save_json(CRASH_FILE, {"count": 0})
    if board.get("uplink") == "ble":
        print("polekit community node %s up, BTHome over BLE" % config.get("device_code", "?"))
    else:
        print(
            "polekit node %s up, unit %d"
            % (node.config.get("device_code", "?"), node.config["unit"])
        )
    return node


def _failed(crashes, exc):
    from .settings import save_json

    save_json(CRASH_FILE, {"count": crashes + 1})
    print("polekit: start failed (%d/%d before safe mode):" % (crashes + 1, SAFE_MODE_AFTER))
    import sys

    sys.print_exception(exc)
