"""A test server that plays an environmental platform taking HJ 212-2017 over TCP: it
keeps every packet a station sends (parsed), answers data packets that ask for it with a
data answer (CN=9014, same QN, ST=91, Flag=4), can stay silent to some packets (to see
them sent again), can go away and come back on the same port (an outage), and can send
the station a request (CN=1011) and keep its answers."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from polekit.protocols import hj212


@dataclass
class Received:
    raw: bytes
    packet: dict[str, Any]
    at: float  # loop time

    @property
    def cn(self) -> int:
        return int(self.packet["CN"])


@dataclass
class Hj212Platform:
    """``await start()``; ``port`` is where it listens (kept across ``stop``/``start``).
    ``ignore`` packets (counted down) get no answer; ``packets`` all that came in."""

    port: int = 0
    packets: list[Received] = field(default_factory=list)
    ignore: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> Hj212Platform:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """An outage: stop listening and drop every connection."""
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        self._writers.clear()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    def data(self, cn: int | None = None, mn: str | None = None) -> list[Received]:
        """Data packets (not answers), of command ``cn`` when given."""
        return [
            r
            for r in self.packets
            if r.cn < 9000 and (cn is None or r.cn == cn) and (mn is None or r.packet["MN"] == mn)
        ]

    async def send(self, packet: bytes) -> None:
        """A packet to the station on its latest connection."""
        self._writers[-1].write(packet)
        await self._writers[-1].drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        buf = b""
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                buf += chunk
                while (n := hj212.frame_length(buf)) > 0:
                    raw, buf = buf[:n], buf[n:]
                    p = hj212.parse(raw)
                    self.packets.append(Received(raw, p, asyncio.get_running_loop().time()))
                    if int(p["CN"]) >= 9000 or not hj212.wants_answer(p):
                        continue
                    if self.ignore > 0:
                        self.ignore -= 1
                        continue
                    answer = hj212.encode(
                        [
                            ("QN", p["QN"]),
                            ("ST", 91),
                            ("CN", 9014),
                            ("PW", p["PW"]),
                            ("MN", p["MN"]),
                            ("Flag", 4),
                        ]
                    )
                    writer.write(answer)
                    await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
