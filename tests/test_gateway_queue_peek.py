"""The uplink's view of the durable queue (issue 19 item 5): ``peek`` answers from the
committed messages kept in memory while they are the whole backlog, so the uplink does
not queue behind the writer thread (a slow commit), and it answers exactly what the file
holds in every state: acknowledged, dropped for the cap, left by an earlier run, and a
backlog larger than memory keeps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from polekit.gateway import queue as queue_module
from polekit.gateway.queue import DurableQueue, Message

from gwkit import run


async def _in_file(path: Path, limit: int) -> list[Message]:
    # a second connection reads what is committed (WAL: readers see the last commit)
    reader = DurableQueue(path)
    try:
        return await reader.peek(limit)
    finally:
        reader.close()


def test_peek_does_not_wait_behind_a_slow_commit(tmp_path: Path) -> None:
    # every fsync'ed commit takes 0.5 s: a peek that went to the writer thread would wait
    # for the commit in progress before it could read what was committed before it
    async def scenario() -> None:
        q = DurableQueue(tmp_path / "q.sqlite3", sync_delay_s=0.5)
        try:
            await q.append("t/a", b"first", device="a")
            later = await q.submit("t/a", b"second", device="a")  # the writer is busy now
            start = time.monotonic()
            seen = await q.peek(10)
            took = time.monotonic() - start
            assert [m.payload for m in seen] == [b"first"]
            assert took < 0.25, f"peek waited {took:.2f} s for the commit in progress"
            assert await later == 2
            assert [m.payload for m in await q.peek(10)] == [b"first", b"second"]
        finally:
            await q.drain()
            q.close()

    run(scenario())


def test_peek_answers_what_the_file_holds_in_every_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "RECENT_MAX", 8)  # a backlog past memory, quickly
    path = tmp_path / "q.sqlite3"

    async def check(q: DurableQueue, limit: int = 100) -> list[Message]:
        mine = await q.peek(limit)
        assert mine == await _in_file(path, limit)
        return mine

    async def scenario() -> None:
        q = DurableQueue(path, max_bytes=40 * 1024)
        try:
            for i in range(5):
                await q.append(f"t/d{i % 2}", b"%d" % i, device=f"d{i % 2}")
            first = await check(q)
            assert [m.payload for m in first] == [b"0", b"1", b"2", b"3", b"4"]
            assert [m.seq for m in first] == [1, 1, 2, 2, 3]
            await q.ack([first[0].id, first[2].id])  # out of order acks: a gap
            assert [m.payload for m in await check(q)] == [b"1", b"3", b"4"]
            assert [m.payload for m in await check(q, 2)] == [b"1", b"3"]
            # a backlog larger than memory keeps: the oldest come from the file
            await asyncio.gather(*(q.append("t/d2", b"x%d" % i, device="d2") for i in range(20)))
            backlog = await check(q)
            assert len(backlog) == 23 and backlog[0].payload == b"1"
            await q.ack([m.id for m in backlog[:18]])  # the rest fit in memory again
            assert [m.payload for m in await check(q)] == [b"x15", b"x16", b"x17", b"x18", b"x19"]
            # the cap drops the oldest: they leave memory with the file
            big = b"y" * 4000
            for _ in range(12):
                await q.append("t/d3", big, device="d3")
            assert q.dropped > 0
            await check(q)
        finally:
            await q.drain()
            q.close()
        # an earlier run's messages: read from the file until they are acknowledged
        q = DurableQueue(path, max_bytes=40 * 1024)
        try:
            left = await check(q)
            await q.append("t/d4", b"new", device="d4")
            assert (await check(q))[-1].payload == b"new"
            await q.ack([m.id for m in left])
            assert [m.payload for m in await check(q)] == [b"new"]
        finally:
            await q.drain()
            q.close()

    run(scenario())
