"""Runs ThingsBoard's own gateway client (tb-mqtt-client's TBGatewayMqttClient) through
a list of steps against a broker, so a test can record what it publishes and compare it
with the thingsboard adapter's messages. Runs in .venv-refs/thingsboard (its paho copy
cannot share aiomqtt's). Usage: tb_gateway.py HOST PORT TOKEN STEPS_JSON, where each step
is ["connect", device, type] | ["disconnect", device] | ["telemetry", device, {"ts",
"values"}] | ["attributes", device, {...}] | ["rpc_reply", device, id, data]. Prints
"done" when every publish was acknowledged."""

import json
import sys
import time

from tb_gateway_mqtt import TBGatewayMqttClient


def main() -> None:
    host, port, token, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    client = TBGatewayMqttClient(host, port, username=token, client_id="tb-reference")
    client.connect()
    deadline = time.monotonic() + 20
    while not client.is_connected():
        if time.monotonic() > deadline:
            sys.exit("the reference client did not connect")
        time.sleep(0.05)
    for step in steps:
        kind, device = step[0], step[1]
        if kind == "connect":
            info = client.gw_connect_device(device, step[2])
        elif kind == "disconnect":
            info = client.gw_disconnect_device(device)
        elif kind == "telemetry":
            info = client.gw_send_telemetry(device, step[2])
        elif kind == "attributes":
            info = client.gw_send_attributes(device, step[2])
        elif kind == "rpc_reply":
            info = client.gw_send_rpc_reply(device, step[2], step[3])
        else:
            sys.exit(f"unknown step {kind}")
        info.get()  # waits for the PUBACK
    client.disconnect()
    print("done", flush=True)


main()
