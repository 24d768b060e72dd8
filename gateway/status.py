"""The local status endpoint: ``/health`` (JSON) and ``/metrics`` (Prometheus text).

A deliberately small HTTP/1.0 server on asyncio streams, loopback by default: it answers
the gateway's own ``polekit gateway status`` and a Prometheus scraper, nothing else. It
has no authentication, so it is bounded against whoever can reach it: at most
``MAX_CONNECTIONS`` clients at once (the rest get 503 at once), a request line and
headers of at most 8 KiB each (414, 431), ``IDLE_TIMEOUT_S`` to send a request; and each
kind of trouble is logged once per episode with a count, never once per connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("polekit.gateway.status")

MAX_CONNECTIONS = 32
MAX_LINE_BYTES = 8 * 1024  # the request line, and each header line
MAX_HEADER_BYTES = 8 * 1024  # all header lines together
IDLE_TIMEOUT_S = 5.0  # to send the whole request and take the answer

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def exposure_warning(host: str) -> str | None:
    """Why listening on ``host`` exposes the endpoint (None for loopback): it has no
    authentication, and /health names every device, the queue and the broker."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (
        f"[status] listen = '{host}' is reachable from other machines, and /health and "
        "/metrics have no authentication (they show devices, queue and broker): keep "
        "127.0.0.1, or let only the monitoring host reach the port (firewall)"
    )


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


class _Episode:
    """One kind of trouble (a flood at the cap, accept() out of file descriptors), logged
    once when it starts and once, with its count, after ``quiet_s`` without it: a flood
    that flaps around the limit is still one episode, two lines."""

    def __init__(self, start_text: str, end_text: str, quiet_s: float = 5.0) -> None:
        self.start_text = start_text
        self.end_text = end_text  # formatted with the count
        self.quiet_s = quiet_s
        self.count = 0
        self._last = 0.0

    def note(self, loop: asyncio.AbstractEventLoop, level: int, *args: object) -> None:
        """Count one occurrence; the first of an episode is logged (with ``args``)."""
        self._last = loop.time()
        if self.count == 0:
            log.log(level, self.start_text, *args)
            loop.call_later(self.quiet_s, self._check, loop)
        self.count += 1

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        quiet_for = loop.time() - self._last
        if quiet_for < self.quiet_s:
            loop.call_later(self.quiet_s - quiet_for, self._check, loop)
            return
        log.warning(self.end_text, self.count)
        self.count = 0


class StatusServer:
    """Serves ``snapshot()`` as /health and /metrics on ``host:port`` (0 = any free port)."""

    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        host: str,
        port: int,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.snapshot = snapshot
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.open = 0
        self.refused = _Episode(
            "status: %d connections open, the most it serves: answering 503",
            "status: connection flood over; %d connections were answered 503",
        )
        self.accept_errors = _Episode(
            "status: cannot accept connections: %s; counting until it can again",
            "status: accepting again; %d accept() calls failed",
        )
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Listen; ``port`` holds the bound port afterwards."""
        # backlog: asyncio accepts up to that many at once before serving any, each an fd
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            limit=MAX_LINE_BYTES,
            backlog=self.max_connections,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        if self._loop.get_exception_handler() is None:
            self._loop.set_exception_handler(self._on_loop_error)
        log.info("status on http://%s:%d/health", self.host, self.port)
        warning = exposure_warning(self.host)
        if warning is not None:
            log.warning("%s", warning)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._loop is not None and self._loop.get_exception_handler() == self._on_loop_error:
            self._loop.set_exception_handler(None)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio reports each failed accept() (EMFILE in a connection flood) with a
        # traceback, thousands a minute: one line per episode instead, with its count
        if context.get("message") == "socket.accept() out of system resource":
            self.accept_errors.note(loop, logging.ERROR, context.get("exception"))
            return
        loop.default_exception_handler(context)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.max_connections:
            self.refused.note(asyncio.get_running_loop(), logging.WARNING, self.open)
            await self._refuse(writer)
            return
        self.open += 1
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                await self._answer(reader, writer)
        except (TimeoutError, ConnectionError):
            pass  # an idle client (timed out) or one that went away: nothing to answer
        finally:
            self.open -= 1
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(_response(503, b"too many connections; try again\n"))
            async with asyncio.timeout(1):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # the client is gone or does not read: it is closed either way
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readline()
        except ValueError:  # longer than MAX_LINE_BYTES
            writer.write(_response(414, b"request line too long\n"))
            await writer.drain()
            return
        header_bytes = 0
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                line, header_bytes = b"", MAX_HEADER_BYTES + 1
            header_bytes += len(line)
            if header_bytes > MAX_HEADER_BYTES:
                writer.write(_response(431, b"request headers too large\n"))
                await writer.drain()
                return
            if line in (b"\r\n", b"\n", b""):
                break
        parts = request.decode("latin-1").split()
        if len(parts) < 2:
            code, ctype, body = 400, "text/plain", b"send GET /health or GET /metrics\n"
        elif parts[0] not in ("GET", "HEAD"):
            code, ctype, body = 405, "text/plain", b"only GET\n"
        elif parts[1] == "/health":
            code, ctype = 200, "application/json"
            body = json.dumps(self.snapshot(), indent=1).encode()
        elif parts[1] == "/metrics":
            code, ctype = 200, "text/plain; version=0.0.4"
            body = metrics_text(self.snapshot()).encode()
        else:
            code, ctype, body = 404, "text/plain", b"try /health or /metrics\n"
        writer.write(_response(code, body, ctype, head_only=parts[:1] == ["HEAD"]))
        await writer.drain()


def _response(code: int, body: bytes, ctype: str = "text/plain", head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.0 {code} {_REASONS[code]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (b"" if head_only else body)
