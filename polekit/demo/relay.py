"""The gateway's WAN link to the platform, as a TCP relay on loopback the demo can cut.

The demo kills the broker mid-run; when it comes back, the platform side must be
subscribed again before the gateway drains its queue into it (a restarted broker keeps no
sessions). The relay lets the demo bring the link up only once the platform is listening,
as a cabinet's 4G link comes back on its own time.
"""

from __future__ import annotations

import asyncio
import contextlib


class Relay:
    """Forwards ``127.0.0.1:port`` to ``upstream``; ``cut()`` takes it down, ``restore()``
    brings it back on the same port."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def up(self) -> bool:
        """Whether the link carries connections."""
        return self._server is not None

    async def start(self) -> Relay:
        """Listen (on a free port the first time, on the same port after a cut)."""
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def restore(self) -> None:
        """The link comes back: new connections go through again."""
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self.cut()

    def cut(self) -> None:
        """The link goes down: every connection through it is dropped and new ones are
        refused at once (an MQTT client that got a TCP accept and then silence would wait
        out its CONNACK timeout instead of retrying)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._links):
            w.close()
        self._links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}
