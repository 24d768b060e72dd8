"""A node without a gateway (issue 17 item 1): MqttLink (firmware/node/uplinks/mqtt_link.py)
delivers SenML-CBOR packs to a real mosquitto on the gateway's SenML topics, with the node's
id in the gateway's place; QoS 1, a pack popped only after its PUBACK; retained state with
the last will "offline"; seq per device kept across resets; a broker outage and a reset in
the middle lose nothing; a full outbox drops the oldest and says how many; commands on
cmd/{code} get their result on cmd-result/{code} in the gateway's shape.

The host tests run the node's own modules on CPython over a real MQTT client (paho, behind
the same transport interface as the board's Wi-Fi and NB-IoT transports); the emulated
board test runs them in the board's MicroPython over umqtt.simple and its TCP sockets.
What reaches the broker is read by an independent subscriber and decoded with cbor2 (the
reference CBOR decoder), against RFC 8428's labels and the reference model's units."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cbor2
from nodekit_host import node_module
from uplinkkit import BN, BT, VB, PahoTransport, Subscriber, U, V, records, seq_of, wait_for

from polekit.hil.broker import LocalBroker
from polekit.protocols import identity

NODE_ID = "water-node-7"
CODE = identity.make("371600", "PL", 17)
BASE = f"polekit/v1/{NODE_ID}"
CLOCK = 1767225600.25  # 2026-01-01T00:00:00.25Z, passed in (never the host's clock)


class Node:
    """The node's link as the board builds it, over files in ``folder`` (its flash)."""

    def __init__(self, folder: Path, broker: LocalBroker, capacity: int = 32768) -> None:
        state_mod = node_module("state")
        outbox_mod = node_module("outbox")
        link_mod = node_module("uplinks.mqtt_link")
        self.state = state_mod.StateFile(str(folder / "state.json"))
        self.outbox = outbox_mod.Outbox(str(folder / "outbox.bin"), capacity)
        self.transport = PahoTransport(broker.host, broker.port, timeout_s=3)
        self.link = link_mod.MqttLink(
            self.transport, self.outbox, NODE_ID, self.state, clock=lambda: CLOCK
        )


def _data(sub: Subscriber) -> list[list[dict[Any, Any]]]:
    return [m.pack() for m in sub.on(f"{BASE}/data/{CODE}")]


def test_packs_reach_the_broker_with_names_units_values_and_seq(tmp_path: Path) -> None:
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
        node = Node(tmp_path, broker)
        # water_level in cm: converted to the model's primary unit (m) in the pack
        assert node.link.report(CODE, {"water_level": (153.0, "cm"), "temperature": 11.5}) == 1
        assert node.link.report(CODE, {"water_level": 1.55, "water": True}) == 2
        assert node.link.event(CODE, {"water": True}) == 1  # events count on their own
        assert node.link.flush() == 3
        assert len(node.outbox) == 0
        wait_for(lambda: len(_data(sub)) == 2, 5, "two packs on data/")
        first, second = _data(sub)
        recs = records(first)
        base = f"urn:dev:pk:{CODE}:"
        assert first[0][BN] == base and first[0][BT] == CLOCK
        assert recs[base + "water_level"][U] == "m" and recs[base + "water_level"][V] == 1.53
        assert recs[base + "temperature"][U] == "Cel" and recs[base + "temperature"][V] == 11.5
        assert recs[base + "seq"][V] == 1 and U not in recs[base + "seq"]
        assert records(second)[base + "water"][VB] is True
        assert seq_of(second) == 2
        events = sub.on(f"{BASE}/event/{CODE}")
        assert [seq_of(m.pack()) for m in events] == [1]
        # the retained state: online, with the dropped count and the radio's status
        state = [m for m in sub.on(f"{BASE}/state")][-1]
        assert state.json() == {"state": "online", "node": NODE_ID, "dropped": 0, "rssi": -61}


def test_the_last_will_says_offline_when_the_link_dies(tmp_path: Path) -> None:
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, f"{BASE}/state") as sub:
        node = Node(tmp_path, broker)
        node.link.flush(stay=True)  # a node that stays connected between flushes
        wait_for(lambda: bool(sub.on(f"{BASE}/state")), 5, "state online")
        node.transport.drop()  # the radio gone: no DISCONNECT reaches the broker
        wait_for(lambda: sub.on(f"{BASE}/state")[-1].json()["state"] == "offline", 5, "the will")
        assert sub.on(f"{BASE}/state")[-1].json() == {"state": "offline", "node": NODE_ID}
        # a new subscriber gets it as the retained state: the will was published retained
        with Subscriber(broker.host, broker.port, f"{BASE}/state") as late:
            wait_for(lambda: bool(late.on(f"{BASE}/state")), 5, "the retained state")
            assert late.on(f"{BASE}/state")[0].retain
            assert late.on(f"{BASE}/state")[0].json()["state"] == "offline"


def test_a_broker_outage_and_a_reset_in_the_middle_lose_nothing(tmp_path: Path) -> None:
    broker = LocalBroker().start()
    try:
        with Subscriber(broker.host, broker.port, f"{BASE}/data/+") as sub:
            node = Node(tmp_path, broker)
            for i in range(5):
                node.link.report(CODE, {"water_level": 1.0 + i / 100})
            assert node.link.flush() == 5
            broker.stop()  # the platform goes away
            for i in range(5, 10):
                node.link.report(CODE, {"water_level": 1.0 + i / 100})
            assert node.link.flush() == 0
            assert node.link.faults == 1 and not node.link.connected
            assert len(node.outbox) == 5
            # a reset: the node's RAM is gone, its flash (the folder) stays
            node = Node(tmp_path, broker)
            assert len(node.outbox) == 5
            for i in range(10, 15):
                node.link.report(CODE, {"water_level": 1.0 + i / 100})
            broker.start()  # the same port
            wait_for(sub.subscribed.is_set, 10, "the subscriber back")
            assert node.link.flush() == 10
            wait_for(lambda: len(_data(sub)) >= 15, 5, "all 15 packs")
    finally:
        broker.stop()
    packs = _data(sub)
    seqs = [seq_of(p) for p in packs]
    assert sorted(set(seqs)) == list(range(1, 16)), seqs  # none lost, the reset reused none
    for p in packs:
        level = records(p)[f"urn:dev:pk:{CODE}:water_level"][V]
        assert level == 1.0 + (seq_of(p) - 1) / 100, (seq_of(p), level)


def test_a_full_outbox_drops_the_oldest_and_the_state_says_how_many(tmp_path: Path) -> None:
    broker = LocalBroker()  # not started: the node reports into a broker outage
    node = Node(tmp_path, broker, capacity=2048)  # 256-byte segments
    for i in range(60):
        node.link.report(CODE, {"water_level": i / 100})
    assert node.link.flush() == 0 and node.link.faults == 1
    dropped = node.outbox.dropped
    held = len(node.outbox)
    assert dropped > 0 and dropped + held == 60
    with broker, Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
        assert node.link.flush() == held
        wait_for(lambda: len(_data(sub)) == held, 5, "the packs held")
        # the oldest went: what arrives is the newest, in order, with no gap among them
        assert [seq_of(p) for p in _data(sub)] == list(range(dropped + 1, 61))
        state = sub.on(f"{BASE}/state")[-1].json()
        assert state["state"] == "online" and state["dropped"] == dropped


def _command(sub: Subscriber, broker: LocalBroker, payload: bytes) -> None:
    import paho.mqtt.publish as publish

    publish.single(f"{BASE}/cmd/{CODE}", payload, qos=1, hostname=broker.host, port=broker.port)


def test_commands_get_their_result_in_the_gateways_shape(tmp_path: Path) -> None:
    applied: list[tuple[str, dict[str, Any]]] = []

    def handler(code: str, body: dict[str, Any]) -> dict[str, Any]:
        applied.append((code, body))
        if "report_s" not in body["set"]:
            raise ValueError(f"no setting {next(iter(body['set']))}; this node has report_s")
        return {"report_s": body["set"]["report_s"]}

    results = f"{BASE}/cmd-result/{CODE}"
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
        node = Node(tmp_path, broker)
        node.link.on_command(handler)
        node.link.flush()  # connects and subscribes (a persistent session from here on)
        _command(sub, broker, b'{"id": 7, "set": {"report_s": 600}}')
        _command(sub, broker, cbor2.dumps({"id": "c-8", "set": {"lamp": 1}}))
        _command(sub, broker, b'{"set": "nothing"}')
        _command(sub, broker, b"\xff\x00")

        def answered() -> bool:
            node.link.flush()
            return len(sub.on(results)) == 4

        wait_for(answered, 10, "four results")
        got = [m.payload for m in sub.on(results)]
    assert json.loads(got[0]) == {"id": 7, "ok": True, "set": {"report_s": 600}}
    failed = cbor2.loads(got[1])  # a CBOR command is answered in CBOR
    assert failed["id"] == "c-8" and failed["ok"] is False
    assert failed["error"] == "no setting lamp; this node has report_s"
    bad = json.loads(got[2])
    assert bad["id"] is None and bad["ok"] is False and "body must be a map" in bad["error"]
    assert cbor2.loads(got[3])["ok"] is False
    assert [c for c, _ in applied] == [CODE, CODE]
    assert node.link.commands == 4 and node.link.commands_failed == 3


def test_seq_is_on_flash_before_the_pack_carrying_it_is_queued(tmp_path: Path) -> None:
    # a power cut between the two may leave a gap in seq (a pack lost before it was put),
    # never a number used twice: at the moment of the put, the flash already holds it
    broker = LocalBroker()  # never started: nothing here needs it
    node = Node(tmp_path, broker)
    on_flash: list[int | None] = []
    put = node.outbox.put

    def watching_put(kind: str, code: str, payload: bytes) -> None:
        fresh = node_module("state").StateFile(str(tmp_path / "state.json"))
        on_flash.append(fresh.get(f"seq.{kind}.{code}"))
        put(kind, code, payload)

    node.outbox.put = watching_put
    for _ in range(3):
        node.link.report(CODE, {"water_level": 2.0})
    node.link.event(CODE, {"water": True})
    assert on_flash == [1, 2, 3, 1]


# ---- on the emulated board: MicroPython, umqtt.simple, the board's TCP sockets --------

BOARD_MAIN = """
# the test's node: a report every %(interval_ms)d ms through MqttLink over WifiMqtt, until
# seq %(total)d; then it stays connected for commands. asyncio, as the node app runs: the
# board saves its flash while the loop waits
import asyncio

from node.outbox import Outbox
from node.state import StateFile
from node.uplinks.mqtt_link import MqttLink
from node.uplinks.wifi_mqtt import WifiMqtt

CODE = %(code)r
state = StateFile("/state.json")
box = Outbox("/outbox.bin", 8192)
wifi = WifiMqtt("polekit-lab", "lab-key", "127.0.0.1", %(port)d, timeout_s=2)
link = MqttLink(wifi, box, %(node_id)r, state, clock=lambda: None)
report_ms = [%(interval_ms)d]


def handler(code, body):
    value = body["set"].get("report_ms")
    if not isinstance(value, int) or not 100 <= value <= 60000:
        raise ValueError("report_ms takes 100..60000")
    report_ms[0] = value
    return {"report_ms": value}


link.on_command(handler)
print("node up, held %%d, seq %%d" %% (len(box), state.get("seq.data." + CODE, 0)))


async def main():
    while True:
        seq = state.get("seq.data." + CODE, 0)
        if seq < %(total)d:
            seq = link.report(CODE, {"water_level": (seq + 1) * 10, "temperature": (20.5, "Cel")})
            seq -= 1
        sent = link.flush(3000, stay=True)  # it flushes well within the keepalive
        print("seq %%d sent %%d held %%d faults %%d" %% (seq + 1, sent, len(box), link.faults))
        await asyncio.sleep_ms(report_ms[0])


asyncio.run(main())
"""


def test_a_node_on_the_emulated_board_delivers_through_outage_and_reset(
    tmp_path: Path,
) -> None:
    from polekit.firmware.install import install
    from polekit.hil.emulator import EmulatedBoard

    total = 30
    flash = install(tmp_path / "flash", "pole-env-esp32", start=False)
    assert (flash / "lib" / "umqtt" / "simple.py").exists() or (
        flash / "lib" / "umqtt" / "simple.mpy"
    ).exists(), "umqtt.simple is not in the node bundle"
    broker = LocalBroker().start()
    (flash / "main.py").write_text(
        BOARD_MAIN
        % {
            "interval_ms": 150,
            "total": total,
            "code": CODE,
            "port": broker.port,
            "node_id": NODE_ID,
        }
    )
    data = f"{BASE}/data/{CODE}"
    results = f"{BASE}/cmd-result/{CODE}"
    state = f"{BASE}/state"
    try:
        with Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
            with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
                wait_for(lambda: len(sub.on(data)) >= 4, 60, "four packs from the board")
                board.set("wifi.up", 0)  # the access point gone: open connections drop
                board.wait_output("faults 1", 30)
                board.set("wifi.up", 1)
                at = len(sub.on(data))
                wait_for(lambda: len(sub.on(data)) >= at + 3, 30, "packs after Wi-Fi is back")
                broker.stop()  # the platform goes away while the node keeps reporting
                board.wait_output("faults 2", 30)
                at = len(board.serial_log)
                wait_for(lambda: b"held 4 " in board.serial_log[at:], 30, "four packs held")
                board.reset()  # RAM gone in the middle of the outage; the flash stays
                board.wait_output("node up, held", 30)
                broker.start()  # the same port
                wait_for(sub.subscribed.is_set, 10, "the subscriber back")
                wait_for(
                    lambda: {seq_of(m.pack()) for m in sub.on(data)} >= set(range(1, total + 1)),
                    90,
                    f"seq 1..{total} at the subscriber",
                )
                # a command from the platform: its result comes back on cmd-result/{code}
                _command(sub, broker, b'{"id": "r1", "set": {"report_ms": 400}}')
                _command(sub, broker, b'{"id": "r2", "set": {"report_ms": 5}}')
                wait_for(lambda: len(sub.on(results)) >= 2, 30, "two command results")
                online = sub.on(state)[-1].json()
                log = bytes(board.serial_log).decode(errors="replace")
            # the board is gone (no DISCONNECT): the broker publishes its will
            wait_for(lambda: sub.on(state)[-1].json()["state"] == "offline", 10, "the will")
    finally:
        broker.stop()
    packs = [m.pack() for m in sub.on(data)]
    base = f"urn:dev:pk:{CODE}:"
    for pack in packs:
        recs = records(pack)
        seq = seq_of(pack)
        assert recs[base + "water_level"][U] == "m"
        assert recs[base + "water_level"][V] == seq * 10, (seq, recs)  # the value it sent
        assert recs[base + "temperature"][U] == "Cel" and recs[base + "temperature"][V] == 20.5
        assert BT not in pack[0]  # the board's clock was never set: no base time
    seqs = sorted(seq_of(p) for p in packs)
    assert sorted(set(seqs)) == list(range(1, total + 1)), seqs
    # the reset came with packs held, and they went out after it
    boots = [int(n) for n in re.findall(r"node up, held (\d+)", log)]
    assert boots[0] == 0 and boots[1] >= 4, boots
    print(f"{len(packs)} packs for {total} seqs (duplicates allowed); boots held {boots}")
    by_id = {json.loads(m.payload)["id"]: json.loads(m.payload) for m in sub.on(results)}
    assert by_id["r1"] == {"id": "r1", "ok": True, "set": {"report_ms": 400}}
    assert by_id["r2"]["ok"] is False and by_id["r2"]["error"] == "report_ms takes 100..60000"
    assert online == {"state": "online", "node": NODE_ID, "dropped": 0, "rssi": -55}


def test_a_planned_close_says_offline_and_the_next_flush_comes_back_online(
    tmp_path: Path,
) -> None:
    # before deep sleep: the retained state says offline at once (a will would wait for the
    # broker's keepalive), and the next wake's flush says online again
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, f"{BASE}/state") as sub:
        node = Node(tmp_path, broker)
        node.link.flush(stay=True)
        node.link.close()
        assert not node.link.connected and node.link.faults == 0
        wait_for(lambda: len(sub.on(f"{BASE}/state")) >= 2, 5, "online, then offline")
        node.link.report(CODE, {"water_level": 0.5})
        assert node.link.flush() == 1

        def said() -> list[str]:
            return [m.json()["state"] for m in sub.on(f"{BASE}/state")]

        wait_for(lambda: said() == ["online", "offline", "online"], 5, "online again")


def test_bad_commands_never_stop_a_flush_and_each_gets_a_result(tmp_path: Path) -> None:
    # an id too long for any result (the gateway caps ids at 128 characters), a handler
    # whose result cannot be encoded, a JSON command after white space (the gateway strips
    # it before it looks for "{"): each is answered, the good one after them too
    def handler(code: str, body: dict[str, Any]) -> dict[str, Any]:
        if "blob" in body["set"]:
            return {"blob": b"\x01"}  # bytes: json.dumps refuses them
        return dict(body["set"])

    results = f"{BASE}/cmd-result/{CODE}"
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, f"{BASE}/#") as sub:
        node = Node(tmp_path, broker)
        node.link.on_command(handler)
        node.link.flush()
        _command(sub, broker, b'{"id": "%s", "set": {"report_s": 60}}' % (b"x" * 4050))
        _command(sub, broker, b'{"id": 2, "set": {"blob": 1}}')
        _command(sub, broker, b' \n{"id": 3, "set": {"report_s": 60}}')

        def answered() -> bool:
            node.link.flush()  # never raises
            return len(sub.on(results)) == 3

        wait_for(answered, 10, "three results")
        got = [json.loads(m.payload) for m in sub.on(results)]
    assert got[0]["ok"] is False and got[0]["id"] is None
    assert "id must be text of up to 128 characters" in got[0]["error"]
    assert got[1]["id"] == 2 and got[1]["ok"] is False
    assert "could not be sent" in got[1]["error"] and "it was applied" in got[1]["error"]
    assert got[2] == {"id": 3, "ok": True, "set": {"report_s": 60}}  # JSON, not CBOR


def test_a_pack_the_outbox_refuses_spends_no_seq(tmp_path: Path) -> None:
    import pytest

    node = Node(tmp_path, LocalBroker(), capacity=2048)  # 256-byte segments
    big = {q: 1.0 for q in ["temperature", "humidity", "illuminance", "pm1", "pm2_5", "pm10"]}
    big.update({"noise": 1.0, "tilt": 1.0, "water_level": 1.0})
    with pytest.raises(ValueError, match="does not fit"):
        node.link.report(CODE, big)
    assert node.state.get(f"seq.data.{CODE}") is None
    assert node.link.report(CODE, {"temperature": 1.0}) == 1  # no gap


def test_wifi_nodes_take_the_mqtt_settings_and_refuse_wildcards_in_topics() -> None:
    # `polekit deploy --set mqtt_host=...` checks keys with known_keys/validate of the
    # board's uplink; a node id with "/", "+" or "#" would put a wildcard or a level in
    # every publish topic (MQTT 3.1.1 section 4.7.1: the broker drops the link)
    settings = node_module("settings")
    assert {"mqtt_host", "wifi_ssid", "node_id", "mqtt_keepalive_s"} <= settings.known_keys("wifi")
    good, problems = settings.validate(
        {"mqtt_host": "broker", "node_id": "pole+7", "mqtt_prefix": "city/#", "report_s": 60},
        "wifi",
    )
    assert good["mqtt_host"] == "broker" and good["report_s"] == 60
    assert good["node_id"] == "" and good["mqtt_prefix"] == "polekit/v1"
    assert len(problems) == 2 and all("must not contain" in p for p in problems)
    assert settings.validate({"node_id": "water-node-7"}, "wifi")[1] == []
