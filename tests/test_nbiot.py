"""The NB-IoT uplink (issue 17 item 2): the node's NbIot transport
(firmware/node/uplinks/nbiot.py) runs in the emulated board's MicroPython VM, under the
node's own MqttLink and outbox, and talks AT over the board's modem UART (a pseudo-terminal
paced at 9600 baud) to the emulated BC260Y (hil/atmodem.py), which bridges its MQTT client
to a real mosquitto. What reaches the broker is read by an independent paho subscriber and
decoded with cbor2. Faults are the module's: a coverage gap, a +QMTSTAT disconnect, a
module that hangs until its PWRKEY (GPIO 18, watched by the modem through the board's
control channel) is pressed, PSM between reports, and a command queued by the broker for a
sleeping node (persistent session, QoS 1 subscription) delivered at its next wake."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish
import pytest
from uplinkkit import Subscriber, records, seq_of, wait_for

from polekit.boards import Board, load
from polekit.firmware.install import install
from polekit.hil.atmodem import AtModem
from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard
from polekit.protocols import identity

from boardkit import board_exec

BOARD = Path(__file__).with_name("boards") / "nbiot-test-esp32.toml"
PWRKEY = 18
NODE_ID = "water-nb-3"
CODE = identity.make("371600", "PL", 23)
BASE = f"polekit/v1/{NODE_ID}"
CLOCK = 1767225600.5  # 2026-01-01T00:00:00.5Z, passed in (never the host's clock)
# BC260Y-like timings, shortened: attach, a publish's round trip over the radio, a boot
REGISTRATION_S, LATENCY_S, BOOT_S = 0.6, 0.15, 0.3


class NbNode:
    """An emulated board with the node's libraries, the emulated modem on its modem UART,
    and (in the VM) ``nb`` (NbIot) under ``link`` (MqttLink) with its outbox on flash."""

    def __init__(self, board: EmulatedBoard, modem: AtModem, broker: LocalBroker) -> None:
        self.board, self.modem = board, modem
        self.run(
            f"""
from machine import UART, Pin
from node.uplinks.nbiot import NbIot
from node.uplinks.mqtt_link import MqttLink
from node.outbox import Outbox
from node.state import StateFile
nb = NbIot(UART(1, 9600, tx=17, rx=16, timeout=50), Pin({PWRKEY}, Pin.OUT), "{broker.host}",
           {broker.port}, attach_timeout_ms=3000, psm_active_s=2)
link = MqttLink(nb, Outbox("/outbox.bin"), "{NODE_ID}", StateFile("/state.json"),
                clock=lambda: {CLOCK})
link.on_command(lambda code, body: body["set"])
def report(level):
    return link.report("{CODE}", {{"water_level": level}})
"""
        )

    def run(self, code: str, timeout_s: float = 90) -> str:
        return board_exec(self.board, code, timeout_s)

    def flush(self) -> tuple[int, int, int]:
        """One flush: (packs sent, packs left in the outbox, link faults so far)."""
        out = self.run("print(link.flush(), len(link.outbox), link.faults)")
        sent, left, faults = (int(x) for x in out.split())
        return sent, left, faults

    def value(self, expr: str) -> Any:
        return json.loads(self.run(f"import json; print(json.dumps({expr}))"))


@pytest.fixture
def board_def() -> Board:
    return load(BOARD)


@contextmanager
def nb_rig(
    tmp_path: Path, board_def: Board, **modem: Any
) -> Iterator[tuple[NbNode, Subscriber, LocalBroker]]:
    """The node and the emulated modem (``modem``: AtModem's options, another firmware)."""
    flash = tmp_path / "flash"
    install(flash, board_def, start=False, compiled=True)
    with (
        LocalBroker() as broker,
        Subscriber(broker.host, broker.port, f"{BASE}/#") as sub,
        EmulatedBoard(board_def, fs_dir=flash) as board,
        AtModem(
            board.uarts["modem"],
            board=board,
            pwrkey_pin=PWRKEY,
            registration_delay_s=REGISTRATION_S,
            send_latency_s=LATENCY_S,
            boot_s=BOOT_S,
            **modem,
        ) as at_modem,
    ):
        yield NbNode(board, at_modem, broker), sub, broker


@pytest.fixture
def rig(tmp_path: Path, board_def: Board) -> Iterator[tuple[NbNode, Subscriber, LocalBroker]]:
    with nb_rig(tmp_path, board_def) as parts:
        yield parts


def _seqs(sub: Subscriber) -> list[int]:
    return [seq_of(m.pack()) for m in sub.on(f"{BASE}/data/{CODE}")]


def _state(sub: Subscriber) -> list[dict[str, Any]]:
    # the will is the plain word (the module's strings take no quotes); "online" is JSON
    return [
        {"state": "offline"} if m.payload == b"offline" else m.json()
        for m in sub.on(f"{BASE}/state")
    ]


def test_packs_reach_the_broker_with_qos1_through_the_modem(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    node, sub, _ = rig
    node.run("report(1.25); report(1.5); report(1.75)")
    assert node.flush() == (3, 0, 0)
    wait_for(lambda: len(_seqs(sub)) == 3, 10, "three packs at the broker")
    assert _seqs(sub) == [1, 2, 3]
    last = records(sub.on(f"{BASE}/data/{CODE}")[-1].pack())
    level = last[f"urn:dev:pk:{CODE}:water_level"]
    assert level[2] == 1.75 and level[1] == "m"  # RFC 8428 labels: v, u
    # QoS 1 with the fixed-length form, acknowledged as +QMTPUB: 0,<msgID>,0
    pubs = [c for c in node.modem.commands if c.startswith("AT+QMTPUB=0,")]
    assert pubs and all(c.split(",")[2] == "1" for c in pubs)
    assert 'AT+QMTCFG="session",0,0' in node.modem.commands
    online = _state(sub)[-1]
    assert online["state"] == "online"
    assert online["csq"] == 22 and online["rssi"] == -69 and online["cereg"] == 1


def test_a_coverage_gap_keeps_packs_in_the_outbox_until_it_ends(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    node, sub, _ = rig
    node.run("report(1.0)")
    assert node.flush() == (1, 0, 0)
    node.modem.set_coverage(False)  # the link ends with +QMTSTAT: 0,2
    node.run("report(1.1); report(1.2)")
    sent, left, faults = node.flush()
    assert (sent, left) == (0, 2) and faults == 1
    # still no coverage: the attach times out, the packs wait, and the radio goes off (an
    # unregistered module cannot enter PSM: it would search the whole gap)
    assert node.flush() == (0, 2, 2)
    assert "not registered (+CEREG stat 2)" in node.value("link.last_fault")
    assert "AT+CFUN=0" in node.modem.commands and node.modem.fun == 0
    status = node.value("nb.status()")
    assert status["cereg"] == 0 and status["radio_off"]  # not searching
    node.run("link.sleep()")  # no PSM asked of a module with its radio off
    assert not any(c.startswith("AT+CPSMS") for c in node.modem.commands)
    node.modem.set_coverage(True)
    assert node.flush() == (2, 0, 2)  # the next wake switches the radio on again
    assert "AT+CFUN=1" in node.modem.commands and node.modem.fun == 1
    wait_for(lambda: len(_seqs(sub)) == 3, 10, "the packs held through the gap")
    assert _seqs(sub) == [1, 2, 3]


def test_a_qmtstat_disconnect_is_recovered(rig: tuple[NbNode, Subscriber, LocalBroker]) -> None:
    node, sub, _ = rig
    node.run("report(2.0)")
    assert node.flush() == (1, 0, 0)
    node.modem.drop_connection(1)  # +QMTSTAT: 0,1, the broker sees the link die
    wait_for(lambda: _state(sub)[-1]["state"] == "offline", 10, "the will")
    # no quotes in an AT string (Quectel documents no escapes): the will is the word
    assert sub.on(f"{BASE}/state")[-1].payload == b"offline"
    node.run("report(2.1)")
    assert node.flush() == (0, 1, 1)  # the loss is found and counted; the pack stays
    assert node.value("nb.link_losses") == 1
    assert node.flush() == (1, 0, 1)  # the next flush connects again
    wait_for(lambda: _seqs(sub) == [1, 2], 10, "the pack after the disconnect")
    assert _state(sub)[-1]["state"] == "online"


def test_a_hung_module_is_recovered_by_its_power_key(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    node, sub, _ = rig
    node.run("report(3.0)")
    assert node.flush() == (1, 0, 0)
    node.modem.hang()
    node.run("report(3.1)")
    assert node.flush() == (0, 1, 1)  # no answer to AT+QMTPUB: a fault, the pack stays
    assert node.modem.state == "hung"
    assert node.flush() == (1, 0, 1)  # silent to AT: PWRKEY held, the module boots again
    wait_for(lambda: _seqs(sub) == [1, 2], 10, "the pack after the recovery")
    events = [e for _, e in node.modem.events]
    assert "reboot" in events
    press = next(e for e in events if e.startswith("pwrkey"))
    assert float(press.split()[1].rstrip("s")) >= 0.5  # long enough to power it up
    assert node.board.get(f"pin.{PWRKEY}") == 0  # released again
    assert node.value("nb.recoveries") == 1
    assert _state(sub)[-1]["recoveries"] == 1


def test_psm_sleep_between_reports(rig: tuple[NbNode, Subscriber, LocalBroker]) -> None:
    node, sub, _ = rig
    modem = node.modem
    node.run("report(4.0)")
    assert node.flush() == (1, 0, 0)
    node.run("link.close(); nb.sleep()")
    assert modem.commands[-1].startswith('AT+CPSMS=1,,,"')
    assert modem.psm_active_s == 2  # T3324 as the node asked for it
    wait_for(lambda: modem.state == "psm", 10, "the module in PSM")
    entered = next(t for t, e in modem.events if e == "psm")
    said = len(modem.commands)
    time.sleep(1.0)  # a quiet second: the node does not talk to a sleeping module
    assert modem.last_rx < entered and len(modem.commands) == said
    node.run("report(4.1)")
    assert node.flush() == (1, 0, 0)
    wait_for(lambda: _seqs(sub) == [1, 2], 10, "the report after the wake")
    events = [e for _, e in modem.events]
    assert "wake" in events and "reboot" not in events  # PSM kept the registration
    assert node.value("nb.wakes") == 1 and node.value("nb.recoveries") == 0


def test_a_command_sent_while_the_node_sleeps_arrives_at_its_next_wake(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    node, sub, broker = rig
    node.run("report(5.0)")
    assert node.flush() == (1, 0, 0)  # connected: subscribed to cmd/+ in a persistent session
    node.run("link.close(); nb.sleep()")
    wait_for(lambda: node.modem.state == "psm", 10, "the module in PSM")
    command = {"id": 41, "set": {"report_s": 600}}
    publish.single(
        f"{BASE}/cmd/{CODE}", json.dumps(command), qos=1, hostname=broker.host, port=broker.port
    )
    results = f"{BASE}/cmd-result/{CODE}"
    time.sleep(0.5)
    assert not sub.on(results)  # asleep: the broker holds the command
    sent, left, _ = node.flush()  # the wake: connect, the queued command, its result
    assert left == 0 and sent >= 1
    wait_for(lambda: bool(sub.on(results)), 10, "the command's result")
    assert sub.on(results)[-1].json() == {"id": 41, "ok": True, "set": {"report_s": 600}}
    assert any(c.startswith("AT+QMTCONN=0,") for c in node.modem.commands)


def test_a_command_taken_during_the_disconnect_is_answered_at_the_next_wake(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    # the module acknowledges a message by itself: one that comes while it disconnects
    # (the broker sent it just then) is the node's to keep, or it is lost for good
    node, sub, _ = rig
    node.run("report(6.0)")
    assert node.flush() == (1, 0, 0)
    command = json.dumps({"id": 77, "set": {"report_s": 900}}).encode()
    node.modem.on_next_ok(
        "+QMTDISC", after=lambda: node.modem.deliver(f"{BASE}/cmd/{CODE}", command, 9)
    )
    node.run("link.sleep()")
    assert node.value("len(link.outbox)") == 1  # its result, on flash before the sleep
    assert node.value("link.commands") == 1
    assert node.flush() == (1, 0, 0)  # the next wake sends it
    results = f"{BASE}/cmd-result/{CODE}"
    wait_for(lambda: bool(sub.on(results)), 10, "the command's result")
    assert sub.on(results)[-1].json() == {"id": 77, "ok": True, "set": {"report_s": 900}}


def test_a_module_that_sends_no_length_and_takes_no_will_still_carries_commands(
    tmp_path: Path, board_def: Board
) -> None:
    # a BC26-family firmware: AT+QMTCFG "recv/mode" and "will" are not its settings, and
    # its +QMTRECV has no length field
    with nb_rig(tmp_path, board_def, qmtcfg_refused=("recv/mode", "will")) as (node, sub, broker):
        node.run("report(7.0)")
        assert node.flush() == (1, 0, 0)
        publish.single(
            f"{BASE}/cmd/{CODE}",
            json.dumps({"id": "a,b", "set": {"report_s": 120}}),
            qos=1,
            hostname=broker.host,
            port=broker.port,
        )
        results = f"{BASE}/cmd-result/{CODE}"
        deadline = time.monotonic() + 10
        while not sub.on(results) and time.monotonic() < deadline:
            node.run("link.flush(500, stay=True)")
        assert sub.on(results)[-1].json() == {"id": "a,b", "ok": True, "set": {"report_s": 120}}
        assert node.value("nb.bad_frames") == 0
        assert node.value("nb.refused") == ["will", "recv/mode"]


def test_bad_and_cut_receive_frames_are_counted_and_dropped(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    node, sub, _ = rig
    node.run("report(8.0)")
    assert node.flush() == (1, 0, 0)
    # a length that is not a number: counted and dropped, never a ValueError out of flush
    node.modem.send_raw(b'\r\n+QMTRECV: 0,9,"t/x",zz,"{}"\r\n')
    assert node.run("print(nb.poll(300), nb.bad_frames)") == "[] 1"
    # a frame cut short (bytes lost in a UART overflow): its length would swallow every
    # answer after it; a silence ends it
    node.modem.send_raw(b'\r\n+QMTRECV: 0,10,"t/x",400,"{\\"id\\": 1')
    assert node.run("print(nb.poll(1500), nb.bad_frames)") == "[] 2"
    node.run("report(8.1)")
    assert node.flush() == (1, 0, 0)
    wait_for(lambda: _seqs(sub) == [1, 2], 10, "the pack after the bad frames")


def test_a_qmtstat_before_the_ok_ends_the_publish_at_once(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    node, sub, _ = rig
    node.run("report(9.0)")
    assert node.flush() == (1, 0, 0)
    node.modem.on_next_ok("+QMTPUB", before=lambda: node.modem.drop_connection(1))
    node.run("report(9.1)")
    started = time.monotonic()
    assert node.flush() == (0, 1, 1)
    assert time.monotonic() - started < 10  # not the 40 s wait for a +QMTPUB never coming
    assert node.flush() == (1, 0, 1)
    wait_for(lambda: _seqs(sub)[-1] == 2, 10, "the pack again after the loss")


def test_the_registration_stat_is_read_by_position_with_location_reports_on(
    tmp_path: Path, board_def: Board
) -> None:
    # a module left at AT+CEREG=2: +CEREG: 2,1,"1A2B","0C0D0E0F",9 (the last field is
    # the access technology, 9 = NB-IoT, not the stat)
    with nb_rig(tmp_path, board_def, cereg_n=2) as (node, sub, _):
        node.run("report(10.0)")
        assert node.flush() == (1, 0, 0)
        assert node.value("nb.status()['cereg']") == 1
        wait_for(lambda: _seqs(sub) == [1], 10, "the pack")


def test_a_board_powered_on_has_no_clock_until_the_network_gives_its_time(
    rig: tuple[NbNode, Subscriber, LocalBroker],
) -> None:
    # an ESP32 counts from 2000-01-01 at power-on (MicroPython's epoch on the port): before
    # the clock is set a pack has no base time; the network's time (AT+CCLK?) sets it
    node, sub, _ = rig
    node.run("from node.uplinks.mqtt_link import unix_time\nfrom node.clock import set_clock")
    assert node.value("unix_time()") is None
    assert node.value("set_clock(nb)") is False  # not registered yet: no network time
    assert node.flush() == (0, 0, 0)  # connected
    assert node.value("set_clock(nb)") is True
    assert "AT+CCLK?" in node.modem.commands
    assert abs(node.value("unix_time()") - time.time()) < 5
    node.run("link.clock = unix_time\nreport(11.0)")
    assert node.flush() == (1, 0, 0)
    wait_for(lambda: bool(_seqs(sub)), 10, "the pack")
    pack = sub.on(f"{BASE}/data/{CODE}")[-1].pack()
    assert abs(pack[0][-3] - time.time()) < 5  # bt (RFC 8428 label -3): the node's time
