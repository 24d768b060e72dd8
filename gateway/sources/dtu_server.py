"""DTU server mode: the gateway listens, a cellular DTU dials in and carries the RS-485 line.

A DTU (data transfer unit: a 4G modem with a serial port) behind a NAT cannot be reached;
it connects out to a server it is set up with, sends a registration packet (its IMEI or an
ID the integrator typed in) and then passes bytes both ways between that TCP connection
and its serial port. So the line's Modbus master, the gateway, is the TCP *server* here
while still the Modbus *client*: once a DTU has registered, its accepted socket becomes the
transport of the bus's pymodbus client (RTU framer), exactly as if the client had dialled
it (asyncio's ``connect_accepted_socket``). A connection whose first bytes are not the
expected registration is logged and closed; without ``registration`` the first DTU to
connect is taken, and whatever it sends before the first request is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from polekit.gateway.config import BusConfig

log = logging.getLogger("polekit.gateway.dtu")

REGISTRATION_WAIT_S = 10.0  # a DTU sends its registration within seconds of connecting


class DtuListener:
    """The listening socket of one ``dtu-server`` bus (it owns the socket)."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._sock: socket.socket | None = None
        self.refused = 0  # connections closed for a wrong or missing registration

    @property
    def port(self) -> int:
        """The TCP port it listens on (the one the system chose for port 0)."""
        self._listen()
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def _listen(self) -> None:
        if self._sock is None:
            sock = socket.create_server(
                (self.bus.host or "0.0.0.0", self.bus.tcp_port), reuse_port=False
            )
            sock.setblocking(False)
            self._sock = sock

    async def attach(self, client: Any) -> str:
        """Wait for a DTU to connect and register, then make its socket the transport of
        ``client`` (an AsyncModbusTcpClient with the RTU framer); returns who it is."""
        self._listen()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(self._sock)
            conn.setblocking(False)
            who = f"{peer[0]}:{peer[1]}"
            expected = (self.bus.registration or "").encode()
            if expected:
                got = b""
                try:
                    async with asyncio.timeout(REGISTRATION_WAIT_S):
                        while len(got) < len(expected):
                            chunk = await loop.sock_recv(conn, len(expected) - len(got))
                            if not chunk:
                                break
                            got += chunk
                except TimeoutError:
                    pass
                if got != expected:
                    self.refused += 1
                    log.warning(
                        "bus %s: DTU at %s registered as %r, not %r; closing it",
                        self.bus.name,
                        who,
                        got.decode(errors="replace")[:64],
                        self.bus.registration,
                    )
                    conn.close()
                    continue
                who = f"{self.bus.registration} at {who}"
            await loop.connect_accepted_socket(lambda: client.ctx, conn)

            async def no_dialling() -> bool:
                return False  # pymodbus must not dial out for this line: the DTU dials in

            client.ctx.connect = no_dialling
            return who

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
