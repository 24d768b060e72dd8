"""The queue at a stop: ``drain()`` waits for what was handed over before it, not for an
uplink still acknowledging a backlog (a SIGTERM must not wait for the whole backlog to be
sent), and ``close()`` leaves no producer waiting on a message it will never store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from polekit.gateway.queue import DurableQueue, QueueWriteError

from gwkit import run


def test_drain_waits_for_what_came_before_it_not_for_later_acknowledgements(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[float, int, int]:
        queue = DurableQueue(tmp_path / "q.sqlite3")
        try:
            for _ in range(3000):
                await queue.submit("t", b"x" * 20, device="d")
            await queue.drain()  # all 3,000 on disk

            async def uplink() -> None:  # acknowledges the backlog one message at a time
                while True:
                    for m in await queue.peek(1):
                        queue.acked([m.id])
                    await asyncio.sleep(0.002)  # a broker answering on a LAN

            acking = asyncio.create_task(uplink())
            await asyncio.sleep(0.05)
            last = await queue.submit("t", b"last", device="d")
            started = time.monotonic()
            await queue.drain()
            took = time.monotonic() - started
            assert last.done() and last.result() == 3001
            depth = queue.depth
            acking.cancel()
            await asyncio.gather(acking, return_exceptions=True)
            return took, depth, 3001
        finally:
            queue.close()

    took, depth, _ = run(scenario())
    assert depth > 1000, depth  # the backlog was still being acknowledged
    assert took < 1.0, took


def test_close_fails_what_it_will_not_store_and_refuses_more(tmp_path: Path) -> None:
    async def scenario() -> None:
        queue = DurableQueue(tmp_path / "q.sqlite3")
        pending = await queue.submit("t", b"never written")  # the writer starts next turn
        queue.close()
        with pytest.raises(QueueWriteError):
            await asyncio.wait_for(pending, 2)
        with pytest.raises(QueueWriteError, match="closed"):
            await queue.submit("t", b"after the close")

    run(scenario())
