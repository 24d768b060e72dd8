# A battery node's update over Wi-Fi HTTP in boots of its own (node.start runs this when
# the node's state names an update's work: ota.PULL_KEY or ota.REPORT_KEY).
#
# The water node's wake holds its drivers and its MQTT client: ~5 KB of the ESP32's heap
# would be left beside the pull, its session and their modules (measured on the emulated
# board). So its wake only keeps an `ota` command (ota_http.queue) and resets; this boot
# has the uplink without the drivers: Wi-Fi, the outbox and MqttLink, the pull
# (ota_http.OtaCommand) and the staging (ota/session.py). It fetches the header and resets
# into the check boot, fetches the files the next time and resets into the new version, or
# puts the command's result (a refusal, a failure, the status of the version that runs
# after its trial wake or a rollback) in the outbox and sends it; then it resets, and the
# node's own wake goes on with its schedule.
import machine

from .ota import PULL_KEY, REPORT_KEY
from .state import StateFile

WDT_MS = 60000  # past the flush's budget: a boot that hangs is reset, never left awake
STATE_FILE = "/state.json"  # the node's (water.py STATE_FILE, DOWN_KEY "down")


def _busy(code, body):
    raise ValueError("the node is installing an update; send the command again in a minute")


# the boot: its work, then a reset; an error drops the update's work (printed) so that the
# node's wakes go on, never a boot that fails the same way at every start
async def run(config, board):
    state = StateFile(STATE_FILE)
    try:
        await _work(config, board, state)
    except Exception as exc:  # noqa: BLE001 - a bug or MemoryError: shown, the node goes on
        import sys

        print("ota: the update's boot failed; the update is dropped:")
        sys.print_exception(exc)
        state.set(PULL_KEY, None)
        state.set(REPORT_KEY, None, now=True)
        machine.reset()


async def _work(config, board, state):
    from .ota import verify
    from .ota_http import OtaCommand
    from .settings import validate
    from .uplinks import mqtt_link, wifi_mqtt

    c = validate(config, "mqtt")[0]
    wdt = machine.WDT(timeout=c["flush_ms"] + WDT_MS)
    verify.WDT = wdt  # type: ignore[assignment]  # None until armed; fed at each pull step
    link = mqtt_link.from_settings(c, wifi_mqtt.from_settings(c))
    link.on_command(_busy)

    def reset():
        state.flush()
        machine.reset()

    def session():
        from .ota.session import OtaSession
        from .version import VERSION

        down = state.get("down") or []  # the node's sensors down at its last sample
        return OtaSession(board.get("name"), "%d.%d" % VERSION, reset, down=lambda: down)

    ota = OtaCommand(link.outbox, state, session, reset)
    ota.resume()  # the work is taken off the state first: it never runs twice
    try:
        link.transport.join()  # the pull's sockets need the access point
    except OSError as exc:
        print("ota: %r; the pull tries all the same" % (exc,))
    await ota.finish()  # an update that went on reset the node in there
    wdt.feed()
    sent = link.flush(c["flush_ms"])  # the command's result, with what else waits
    print("ota: %d sent; back to the node's wakes" % sent)
    reset()
