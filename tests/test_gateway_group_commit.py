"""The bus poller never waits for the disk (issue 19 items 1 and 5): a poll is handed to the
durable queue and the bus goes on; the writer commits what has gathered as one group. A
slow disk is made with the queue's ``sync_delay_s`` (each fsync'ed commit takes that much
longer); the devices are real pymodbus servers on loopback that number every read they
answer (``node_seq``), so nothing lost can hide."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gwproc import CountingDevices, node_seq_of

from polekit.gateway.app import Gateway
from polekit.gateway.queue import DurableQueue
from polekit.hil.broker import free_port
from polekit.protocols import identity, senml

from gwkit import gateway_config, run, until

CODES = {u: identity.make("371600", "PL", 300 + u) for u in (1, 2, 3, 4)}


def _gateway(
    tmp_path: Path, devices: CountingDevices, queue: DurableQueue, poll_s: float
) -> Gateway:
    # no broker listens: everything polled stays in the queue, where the test reads it
    config = gateway_config(
        tmp_path / "data",
        f"mqtt://127.0.0.1:{free_port()}",
        [{"name": "b", "type": "tcp", "host": "127.0.0.1", "port": devices.tcp_port}],
        [
            {"code": c, "bus": "b", "unit": u, "map": "pole-env", "poll_interval": poll_s}
            for u, c in CODES.items()
        ],
    )
    return Gateway(config, queue=queue)


def _polls(gw: Gateway) -> int:
    return sum(s.polls for s in gw.buses["b"].devices.values())


async def _stored_node_seqs(path: Path) -> dict[str, list[int]]:
    q = DurableQueue(path)
    try:
        stored = await q.peek(100_000)
    finally:
        q.close()
    out: dict[str, list[int]] = {c: [] for c in CODES.values()}
    for m in stored:
        code = m.topic.rsplit("/", 1)[1]
        out[code].append(node_seq_of(senml.resolve(senml.decode_cbor(m.payload), now=0)))
    return out


def _check_nothing_lost(devices: CountingDevices, stored: dict[str, list[int]]) -> None:
    # every read a device answered is in the queue once, in order
    for unit, code in CODES.items():
        assert stored[code] == sorted(devices.answered[unit]), code


def test_polls_continue_at_their_rate_while_commits_are_slow(tmp_path: Path) -> None:
    # 100 ms a commit: a poller that waited for its commit would make 10 polls a second on
    # the whole bus; this one keeps its 4 x 20 a second and the writer commits in groups
    sync_s, poll_s = 0.1, 0.05

    async def scenario() -> None:
        devices = await CountingDevices(list(CODES)).start()
        path = tmp_path / "data" / "queue.sqlite3"
        queue = DurableQueue(path, sync_delay_s=sync_s)
        gw = _gateway(tmp_path, devices, queue, poll_s)
        task = asyncio.create_task(gw.run())
        try:
            await until(lambda: _polls(gw) >= 10, what="polls")
            polls0, commits0, t0 = _polls(gw), queue.commits, time.monotonic()
            await asyncio.sleep(2.0)
            rate = (_polls(gw) - polls0) / (time.monotonic() - t0)
            commits = queue.commits - commits0
        finally:
            gw.stop()
            await task
        await devices.stop()
        serialised = 1 / sync_s
        print(f"{rate:.1f} polls/s, {commits} commits in 2 s, largest group {queue.group_peak}")
        assert rate >= 4 * serialised, f"{rate:.1f} polls/s: the poller waits for the disk"
        assert commits <= 2.0 / sync_s + 1  # one fsync a group, not one a poll
        assert queue.group_peak > 1
        _check_nothing_lost(devices, await _stored_node_seqs(path))

    run(scenario(), timeout_s=60)


def test_a_bus_that_outruns_the_disk_slows_down_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    # 200 ms a commit and room for 4 uncommitted polls: the bus (nominal 80 polls/s) can
    # go no faster than 4 polls per commit; what waits for the disk never passes 4
    sync_s, room, poll_s = 0.2, 4, 0.05

    async def scenario() -> None:
        devices = await CountingDevices(list(CODES)).start()
        path = tmp_path / "data" / "queue.sqlite3"
        queue = DurableQueue(path, sync_delay_s=sync_s, max_uncommitted=room)
        gw = _gateway(tmp_path, devices, queue, poll_s)
        task = asyncio.create_task(gw.run())
        peak = 0
        try:
            await until(lambda: _polls(gw) >= 4, what="polls")
            polls0, t0 = _polls(gw), time.monotonic()
            while time.monotonic() - t0 < 2.0:
                peak = max(peak, queue.uncommitted, len(queue._pending))
                await asyncio.sleep(0.005)
            rate = (_polls(gw) - polls0) / (time.monotonic() - t0)
        finally:
            gw.stop()
            await task
        await devices.stop()
        print(f"{rate:.1f} polls/s, at most {peak} uncommitted")
        assert peak <= room
        # `room` counts the group being committed too: about room / 2 polls a commit
        # (groups alternate k and room - k), never more than room + the one in hand
        assert rate <= (room + 1) / sync_s * 1.2, f"{rate:.1f} polls/s"
        assert rate >= 0.25 * room / sync_s, f"{rate:.1f} polls/s: the bus stalled"
        _check_nothing_lost(devices, await _stored_node_seqs(path))

    run(scenario(), timeout_s=60)
