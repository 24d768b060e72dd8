"""The peer's side: ThingsBoard IoT Gateway 3.8.5 from PyPI in a scratch virtualenv, its
tb_gateway.json and Modbus connector config for a case, and the command that runs it.

The peer is pointed at our mosquitto as if it were ThingsBoard's MQTT transport: it
publishes its devices' telemetry to ``v1/gateway/telemetry``. At its first connection it
asks the platform for its session limits (RPC ``getSessionLimits``) and sends no
telemetry until it has an answer, so ``SessionLimits`` answers it as a self-hosted
ThingsBoard with transport rate limits off (their default) would: no rate limits, 64 KiB
payloads, 100 messages in flight. (The peer also hears its own request on the topic it
subscribes to, and logs one ERROR for it; a real ThingsBoard does not echo it.)

Two configs, both with the memory storage (tb_gateway.json's default) and reports on
every read (``ON_RECEIVED``):
- ``best``: one range read of a unit's 10 registers (``"address": "0-9"``);
- ``usual``: one timeseries entry, so one request, per register (the shape of the
  connector's own example config).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from peerkit.cases import Case
from peerkit.launch import Launch
from peerkit.simulator import RTU_FRAMING
from peerkit.subscriber import thingsboard_polls

PEER_VERSION = "3.8.5"
# what its Modbus connector would pip-install at run time (modbus_connector.py pins it):
# installed with the gateway so nothing is installed while it is measured
PEER_PACKAGES = [
    f"thingsboard-gateway=={PEER_VERSION}",
    "pymodbus==3.9.2",
    "pyserial",
    "pyserial-asyncio",
]
DEFAULT_VENV = Path.home() / ".cache" / "polekit-bench" / f"tb-gateway-{PEER_VERSION}"
FLAVOURS = ("best", "usual")


def device_name(unit: int) -> str:
    """The device name the peer gives the device at ``unit``."""
    return f"unit-{unit}"


def install(venv: Path, python: str = sys.executable) -> None:
    """Create ``venv`` with ``python`` and pip-install the peer into it (never into the
    project's own environment). Raises SystemExit with one line when it cannot."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PEER_PACKAGES]
    done = subprocess.run(pip, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = [ln for ln in done.stderr.splitlines() if not ln.startswith("WARNING: Location")]
        raise SystemExit(
            f"pip could not install the peer into {venv}: {' '.join(tail[-3:]) or 'no reason'}"
        )
    check_installed(venv)


def check_installed(venv: Path) -> str:
    """The peer's version in ``venv``; SystemExit with what to run when it is missing."""
    python = venv / "bin" / "python"
    probe = "import importlib.metadata as m; print(m.version('thingsboard-gateway'))"
    try:
        found = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        found = ""
    if found != PEER_VERSION:
        raise SystemExit(
            f"ThingsBoard IoT Gateway {PEER_VERSION} is not installed in {venv}: run "
            f"`.venv/bin/python bench/peer_thingsboard.py --install-peer` (or --only polekit)"
        )
    return found


def _package_dir(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages/thingsboard_gateway"))
    if not found:
        raise SystemExit(f"no thingsboard_gateway package in {venv}; run --install-peer")
    return found[0]


def _timeseries(flavour: str, registers: int) -> list[dict[str, Any]]:
    if flavour == "best":
        return [
            {
                "tag": "r${address}",
                "type": "16uint",
                "functionCode": 3,
                "objectsCount": 1,
                "address": f"0-{registers - 1}",
            }
        ]
    return [
        {"tag": f"r{i}", "type": "16uint", "functionCode": 3, "objectsCount": 1, "address": i}
        for i in range(registers)
    ]


def _slave(case: Case, endpoint: Any, unit: int, flavour: str) -> dict[str, Any]:
    slave: dict[str, Any] = {
        "unitId": unit,
        "deviceName": device_name(unit),
        "deviceType": "default",
        "timeout": 1,
        "byteOrder": "BIG",
        "wordOrder": "BIG",
        "pollPeriod": round(case.poll_s * 1000),
        "attributes": [],
        "timeseries": _timeseries(flavour, case.spec.registers),
        "attributeUpdates": [],
        "rpc": [],
    }
    if case.spec.kind == "rtu":
        return {
            **slave,
            "type": "serial",
            "method": "rtu",
            "port": endpoint,
            "baudrate": case.spec.baud,
            "bytesize": 8,
            **RTU_FRAMING,
        }
    host, port = endpoint
    return {**slave, "type": "tcp", "method": "socket", "host": host, "port": port}


def _main_config(broker_port: int) -> dict[str, Any]:
    return {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60,
            "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": "polekit-bench"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {
            "type": "memory",
            "read_records_count": 100,
            "max_records_count": 100000,
        },
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }


def _logs_config(package: Path, log_dir: Path) -> dict[str, Any]:
    # the package's own logging config, at WARNING, its files in this run's folder
    logs: dict[str, Any] = json.loads((package / "config" / "logs.json").read_text())
    for handler in logs["handlers"].values():
        if "filename" in handler:
            handler["filename"] = str(log_dir / Path(handler["filename"]).name)
    for logger in logs["loggers"].values():
        logger["level"] = "WARNING"
    return logs


SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {},
    "gatewayRateLimits": {},
}


class SessionLimits:
    """Answers the peer's ``getSessionLimits`` RPC on the broker, as ThingsBoard does."""

    def __init__(self, host: str, port: int) -> None:
        self.answered = 0
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="polekit-bench-tb-stand-in"
        )
        self._client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self._client.on_connect = lambda c, *_: c.subscribe("v1/devices/me/rpc/request/+", 1)
        self._client.on_message = self._on_request
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_request(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            method = json.loads(msg.payload).get("method")
        except ValueError:
            return  # not an RPC call of the peer's
        if method == "getSessionLimits":
            request_id = msg.topic.rsplit("/", 1)[1]
            client.publish(
                f"v1/devices/me/rpc/response/{request_id}", json.dumps(SESSION_LIMITS), qos=1
            )
            self.answered += 1

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def launch(
    case: Case, endpoint: Any, broker_port: int, run_dir: Path, venv: Path, flavour: str
) -> Launch:
    """Write the peer's configs into ``run_dir`` and say how to run it on them."""
    config_dir = run_dir / "config"
    log_dir = run_dir / "logs"
    config_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(exist_ok=True)
    package = _package_dir(venv)
    (config_dir / "tb_gateway.json").write_text(json.dumps(_main_config(broker_port), indent=2))
    (config_dir / "logs.json").write_text(json.dumps(_logs_config(package, log_dir), indent=2))
    slaves = [_slave(case, endpoint, u, flavour) for u in case.spec.all_units]
    (config_dir / "modbus.json").write_text(
        json.dumps({"name": "Modbus", "master": {"slaves": slaves}}, indent=2)
    )
    return Launch(
        gateway=f"tb-gw {PEER_VERSION} {flavour}",
        argv=[str(venv / "bin" / "thingsboard-gateway")],
        cwd=run_dir,
        env={"TB_GW_CONFIG_DIR": str(config_dir) + "/"},
        topic="v1/gateway/telemetry",
        decode=thingsboard_polls,
        unit_of={device_name(u): u for u in case.spec.all_units}.get,
        notes=[],
        log=run_dir / "gateway.log",
        helper=SessionLimits,
    )
