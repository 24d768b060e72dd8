"""A Sparkplug B host application on pysparkplug (run from .venv-refs/sparkplug): it
subscribes to spBv1.0/GROUP/#, decodes every message with pysparkplug and prints it as a
JSON line; engineering units are read from each metric's PropertySet with the protobuf
classes pysparkplug ships (its own compiled sparkplug_b.proto). Commands come on stdin,
one JSON line each: {"dcmd": DEVICE, "edge": EDGE, "metrics": [[name, datatype, value]]}
or {"rebirth": EDGE}. Usage: spb_host.py HOST PORT GROUP."""

import json
import sys
import threading
import time

import pysparkplug as spb
from pysparkplug._protobuf import sparkplug_b_pb2


def units(raw: bytes) -> dict:
    out = {}
    payload = sparkplug_b_pb2.Payload.FromString(raw)
    for m in payload.metrics:
        if m.HasField("properties"):
            for key, value in zip(m.properties.keys, m.properties.values, strict=True):
                if key == "engUnit":
                    out[m.name] = value.string_value
    return out


def main() -> None:
    host, port, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = spb.Client(client_id="spb-reference-host")
    lock = threading.Lock()

    def show(_client, message) -> None:
        t = message.topic
        p = message.payload
        line = {"type": str(t.message_type), "edge": t.edge_node_id, "device": t.device_id}
        if isinstance(p, spb.NDeath):
            line["bdSeq"] = p.bd_seq_metric.value
        else:
            line["timestamp"] = p.timestamp
            line["seq"] = getattr(p, "seq", None)
            line["metrics"] = [
                {
                    "name": m.name,
                    "datatype": m.datatype.name,
                    "value": m.value,
                    "is_null": m.is_null,
                    "timestamp": m.timestamp,
                }
                for m in getattr(p, "metrics", ())
            ]
        with lock:
            print(json.dumps(line), flush=True)

    client.connect(host, port=port, blocking=False)
    deadline = time.monotonic() + 20
    while not client._client.is_connected():
        if time.monotonic() > deadline:
            sys.exit("the host did not connect")
        time.sleep(0.05)

    def show_units(_c, _u, mqtt_message) -> None:
        with lock:
            print(
                json.dumps(
                    {
                        "type": "units",
                        "topic": mqtt_message.topic,
                        "units": units(mqtt_message.payload),
                    }
                ),
                flush=True,
            )

    client._client.message_callback_add(f"spBv1.0/{group}/DBIRTH/#", show_units)
    client.subscribe(spb.Topic.from_str(f"spBv1.0/{group}/#"), spb.QoS.AT_LEAST_ONCE, show)
    with lock:
        print(json.dumps({"type": "ready"}), flush=True)
    for raw in sys.stdin:
        cmd = json.loads(raw)
        now = spb.get_current_timestamp()
        if "rebirth" in cmd:
            topic = spb.Topic(
                group_id=group, message_type=spb.MessageType.NCMD, edge_node_id=cmd["rebirth"]
            )
            metric = spb.Metric(
                timestamp=now,
                name="Node Control/Rebirth",
                datatype=spb.DataType.BOOLEAN,
                value=True,
            )
            payload = spb.NCmd(timestamp=now, metrics=(metric,))
        else:
            topic = spb.Topic(
                group_id=group,
                message_type=spb.MessageType.DCMD,
                edge_node_id=cmd["edge"],
                device_id=cmd["dcmd"],
            )
            metrics = tuple(
                spb.Metric(timestamp=now, name=n, datatype=spb.DataType[d], value=v)
                for n, d, v in cmd["metrics"]
            )
            payload = spb.DCmd(timestamp=now, metrics=metrics)
        client.publish(
            spb.Message(topic=topic, payload=payload, qos=spb.QoS.AT_LEAST_ONCE, retain=False)
        )


main()
