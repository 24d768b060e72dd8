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
from pathlib import Path
from typing import Any

import cbor2
from linkkit import BN, BT, VB, PahoTransport, Subscriber, U, V, records, seq_of, wait_for
from nodekit_host import node_module

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
        node.link.flush()
        wait_for(lambda: bool(sub.on(f"{BASE}/state")), 5, "state online")
        node.transport.close()  # the radio gone: no DISCONNECT reaches the broker
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
