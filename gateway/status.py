"""The local status endpoint: ``/health`` (JSON) and ``/metrics`` (Prometheus text).

A deliberately small HTTP/1.0 server on asyncio streams, loopback by default: it answers
the gateway's own ``polekit gateway status`` and a Prometheus scraper, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("polekit.gateway.status")


def metrics_text(health: dict[str, Any]) -> str:
    """Prometheus exposition of the health snapshot."""
    lines = [
        "# HELP polekit_queue_depth Messages waiting on disk for the broker.",
        "# TYPE polekit_queue_depth gauge",
        f"polekit_queue_depth {health['queue']['depth']}",
        "# TYPE polekit_queue_bytes gauge",
        f"polekit_queue_bytes {health['queue']['bytes']}",
        "# HELP polekit_queue_dropped_total Oldest messages dropped: size cap or disk full.",
        "# TYPE polekit_queue_dropped_total counter",
        f"polekit_queue_dropped_total {health['queue']['dropped']}",
        "# HELP polekit_queue_disk_bytes The queue's files on disk (database, WAL, index).",
        "# TYPE polekit_queue_disk_bytes gauge",
        f"polekit_queue_disk_bytes {health['queue']['disk_bytes']}",
        "# HELP polekit_queue_disk_full 1 while the disk is full and the oldest are dropped.",
        "# TYPE polekit_queue_disk_full gauge",
        f"polekit_queue_disk_full {int(health['queue']['disk_full'])}",
        "# HELP polekit_queue_write_errors_total Messages the queue could not store.",
        "# TYPE polekit_queue_write_errors_total counter",
        f"polekit_queue_write_errors_total {health['queue']['write_errors']}",
        "# HELP polekit_commit_latency_ms From a device's answer to its pack on disk.",
        "# TYPE polekit_commit_latency_ms gauge",
        *(
            f'polekit_commit_latency_ms{{quantile="{q}"}} {health["queue"]["commit_latency_ms"][k]}'
            for k, q in (("p50", "0.5"), ("p99", "0.99"))
            if health["queue"]["commit_latency_ms"][k] is not None
        ),
        "# TYPE polekit_mqtt_connected gauge",
        f"polekit_mqtt_connected {int(health['mqtt']['connected'])}",
        "# TYPE polekit_mqtt_published_total counter",
        f"polekit_mqtt_published_total {health['mqtt']['published']}",
        "# TYPE polekit_bus_connected gauge",
    ]
    for bus in health["buses"]:
        lines.append(f'polekit_bus_connected{{bus="{bus["name"]}"}} {int(bus["connected"])}')
    lines.append("# TYPE polekit_bus_events_total counter")
    for bus in health["buses"]:
        for key, value in bus["counters"].items():
            lines.append(f'polekit_bus_events_total{{bus="{bus["name"]}",event="{key}"}} {value}')
    lines.append("# TYPE polekit_device_online gauge")
    lines.append("# TYPE polekit_device_polls_total counter")
    for dev in health["devices"]:
        label = f'device="{dev["code"]}",bus="{dev["bus"]}"'
        lines.append(f"polekit_device_online{{{label}}} {int(bool(dev['online']))}")
        lines.append(f"polekit_device_polls_total{{{label}}} {dev['polls']}")
    commands = health["commands"]
    lines += [
        "# HELP polekit_commands_handled_total Commands received; each got a result.",
        "# TYPE polekit_commands_handled_total counter",
        f"polekit_commands_handled_total {commands['handled']}",
        "# HELP polekit_commands_failed_total Commands answered with an error, for any reason.",
        "# TYPE polekit_commands_failed_total counter",
        f"polekit_commands_failed_total {commands['failed']}",
        "# HELP polekit_commands_rejected_total Commands refused before reaching a device.",
        "# TYPE polekit_commands_rejected_total counter",
    ]
    for reason in ("malformed", "too_large", "rate_limited"):
        lines.append(f'polekit_commands_rejected_total{{reason="{reason}"}} {commands[reason]}')
    return "\n".join(lines) + "\n"


class StatusServer:
    """Serves ``snapshot()`` as /health and /metrics on ``host:port`` (0 = any free port)."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], host: str, port: int) -> None:
        self.snapshot = snapshot
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; ``port`` holds the bound port afterwards."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("status on http://%s:%d/health", self.host, self.port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/health":
                body, ctype, code = (
                    json.dumps(self.snapshot(), indent=1).encode(),
                    "application/json",
                    "200 OK",
                )
            elif path == "/metrics":
                body, ctype, code = (
                    metrics_text(self.snapshot()).encode(),
                    "text/plain; version=0.0.4",
                    "200 OK",
                )
            else:
                body, ctype, code = b"try /health or /metrics\n", "text/plain", "404 Not Found"
            writer.write(
                f"HTTP/1.0 {code}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass  # a scanner or a closed client: nothing to answer
        finally:
            writer.close()
