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


def main():
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

    from .settings import load_json, save_json

    config = load_json("/config.json", None)
    board = load_json("/board.json", None)
    crashes = load_json(CRASH_FILE, {"count": 0}).get("count", 0)
    if board is None or not isinstance(config, dict):
        print(
            "polekit: safe mode: /board.json or /config.json missing or not JSON; the REPL is up. "
            "Redeploy with `polekit deploy`."
        )
        return
    battery = board.get("uplink") == "mqtt"  # the water node: each wake ends in deep sleep
    if crashes >= SAFE_MODE_AFTER:
        print(
            "polekit: safe mode: the node crashed at start %d times in a row; the REPL is up. "
            "Fix the config, then delete %s." % (crashes, CRASH_FILE)
        )
        if battery:
            _sleep_instead(config)
        return
    if battery:
        try:
            from .water import main as water_main  # alone: its heap is the budget

            water_main(config, board, BOOT_MS)  # calls started() once up; sleeps, never returns
        except Exception as exc:  # noqa: BLE001 - counted, shown, then the node sleeps
            _failed(crashes, exc)
            _sleep_instead(config)
        return
    try:
        if board.get("uplink") == "ble":
            from .community import CommunityNode

            node = CommunityNode(config, board)
        else:
            from .app import PoleNode

            node = PoleNode(config, board)  # type: ignore[assignment]  # both have run()
    except Exception as exc:  # noqa: BLE001 - counted, shown, and the REPL stays usable
        _failed(crashes, exc)
        return
    if crashes:
        save_json(CRASH_FILE, {"count": 0})
    if board.get("uplink") == "ble":
        print("polekit community node %s up, BTHome over BLE" % config.get("device_code", "?"))
    else:
        print(
            "polekit node %s up, unit %d"
            % (node.config.get("device_code", "?"), node.config["unit"])
        )
    asyncio.run(node.run())


def _failed(crashes, exc):
    from .settings import save_json

    save_json(CRASH_FILE, {"count": crashes + 1})
    print("polekit: start failed (%d/%d before safe mode):" % (crashes + 1, SAFE_MODE_AFTER))
    import sys

    sys.print_exception(exc)
