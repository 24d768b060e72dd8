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
    if crashes >= SAFE_MODE_AFTER:
        print(
            "polekit: safe mode: the node crashed at start %d times in a row; the REPL is up. "
            "Fix the config, then delete %s." % (crashes, CRASH_FILE)
        )
        return
    try:
        if board.get("uplink") == "mqtt":  # the water node: its cycle ends in deep sleep
            from .water import main as water_main  # alone: its heap is the budget

            water_main(config, board, BOOT_MS)
            if crashes:
                save_json(CRASH_FILE, {"count": 0})
            return
        if board.get("uplink") == "ble":
            from .community import CommunityNode

            node = CommunityNode(config, board)
        else:
            from .app import PoleNode

            node = PoleNode(config, board)  # type: ignore[assignment]  # both have run()
    except Exception as exc:  # noqa: BLE001 - counted, shown, and the REPL stays usable
        save_json(CRASH_FILE, {"count": crashes + 1})
        print("polekit: start failed (%d/%d before safe mode):" % (crashes + 1, SAFE_MODE_AFTER))
        import sys

        sys.print_exception(exc)
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
