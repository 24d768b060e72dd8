"""What holds data must survive: kill -9 of the gateway process, restarts, a full disk cap."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from pathlib import Path

from polekit.gateway.queue import DurableQueue, QueueWriteError
from polekit.hil.broker import LocalBroker
from polekit.hil.fieldbus import SimulatedBus
from polekit.hil.line import VirtualLine
from polekit.protocols import modbus
from polekit.protocols.errors import ProtocolError

from gwkit import POLE_1, POLE_2, Collector, gateway_run_argv, run, until

CONFIG = """
[gateway]
id = "gw-kill"
data_dir = "{data}"

[mqtt]
url = "{url}"

[status]
port = 0

[[bus]]
name = "cabinet-485"
type = "rtu"
port = "{port}"
baudrate = 19200
parity = "N"
timeout = 0.3

[[device]]
code = "{pole1}"
bus = "cabinet-485"
unit = 1
map = "pole-env"
poll_interval = 0.05

[[device]]
code = "{pole2}"
bus = "cabinet-485"
unit = 2
map = "pole-env"
poll_interval = 0.05
"""


def _start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        gateway_run_argv(config),
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,  # noqa: SIM115
    )


def test_kill_9_mid_stream_loses_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        with LocalBroker() as broker, VirtualLine() as line:
            link = str(tmp_path / "ttyRS485")
            line.endpoint(link=link)
            dev_port = line.endpoint()
            env = modbus.register_map("pole-env")
            sim = await SimulatedBus(
                {1: env, 2: env}, serial_port=dev_port, baudrate=19200, parity="N", stopbits=2
            ).start()
            config = tmp_path / "gateway.toml"
            config.write_text(
                CONFIG.format(
                    data=tmp_path / "data", url=broker.url, port=link, pole1=POLE_1, pole2=POLE_2
                )
            )
            log = tmp_path / "gateway.log"
            async with Collector(broker.host, broker.port) as sub:
                for _ in range(3):  # three hard kills at random points of the stream
                    gw = _start_gateway(config, log)
                    before = len(sub.seqs(POLE_1))
                    await until(
                        lambda b=before: len(sub.seqs(POLE_1)) >= b + 15,
                        timeout_s=30,
                        what="packs from the gateway",
                    )
                    await asyncio.sleep(0.137)
                    os.kill(gw.pid, signal.SIGKILL)
                    gw.wait()
                    # the broker tells the platform through the gateway's last will
                    await until(
                        lambda: b"offline" in sub.on("/gw-kill/state")[-1].payload,
                        what="the last will",
                    )
                gw = _start_gateway(config, log)  # last run ends cleanly, with SIGTERM
                before = len(sub.seqs(POLE_1))
                await until(
                    lambda: len(sub.seqs(POLE_1)) >= before + 15, timeout_s=30, what="packs"
                )
                gw.send_signal(signal.SIGTERM)
                assert gw.wait(timeout=15) == 0, log.read_text()[-2000:]
                await until(
                    lambda: (
                        bool(sub.on("/gw-kill/state"))
                        and b"offline" in sub.on("/gw-kill/state")[-1].payload
                    ),
                    what="offline state",
                )
                await asyncio.sleep(0.5)
            await sim.stop()
            queue = DurableQueue(tmp_path / "data" / "queue.sqlite3")
            left, last = queue.depth, {c: queue.last_seq(c) for c in (POLE_1, POLE_2)}
            queue.close()
        assert left == 0
        for code in (POLE_1, POLE_2):
            seqs = sub.seqs(code)
            assert sorted(set(seqs)) == list(range(1, last[code] + 1)), f"{code}: a gap"
            # at-least-once across a kill -9: a pack the broker had acknowledged may come again,
            # but only packs from around the kill moments
            assert len(seqs) - len(set(seqs)) <= 3 * 200

    run(scenario(), timeout_s=150)


def test_queue_cap_drops_oldest_counts_and_remembers(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "q.sqlite3"
        q = DurableQueue(path, max_bytes=2000)
        for _ in range(50):
            await q.append("t/data/x", lambda seq: seq.to_bytes(4, "big") + b"." * 96, device="x")
        assert q.size_bytes <= 2000
        assert q.depth == 2000 // (100 + len("t/data/x"))
        assert q.dropped == 50 - q.depth
        oldest = (await q.peek(1))[0]
        assert oldest.seq == q.dropped + 1  # the oldest were dropped, the newest kept, in order
        q.close()
        q = DurableQueue(path, max_bytes=2000)  # a restart keeps the count and the sequence
        assert q.dropped == 50 - q.depth
        assert await q.append("t/data/x", lambda seq: b"y", device="x") == 51
        q.close()

    run(scenario())


def test_queue_is_a_fifo_that_acks_by_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        q = DurableQueue(tmp_path / "q.sqlite3")
        seqs = await asyncio.gather(
            *(q.append("t", lambda s: b"%d" % s, device=f"d{i % 3}") for i in range(30))
        )
        assert sorted(seqs) == sorted([s for s in range(1, 11)] * 3)
        batch = await q.peek(10)
        assert [m.id for m in batch] == sorted(m.id for m in batch)
        await q.ack([m.id for m in batch[:5]])
        assert q.depth == 25 and (await q.peek(1))[0].id == batch[5].id
        q.close()

    run(scenario())


def test_a_poisoned_batch_fails_only_the_bad_message_and_later_appends_complete(
    tmp_path: Path,
) -> None:
    # issue 13 item 1: one payload that cannot be encoded, in a group commit with good
    # ones, while another append waits for the next batch
    async def scenario() -> None:
        q = DurableQueue(tmp_path / "q.sqlite3")
        entered, release = threading.Event(), threading.Event()

        def poisoned(seq: int) -> bytes:
            entered.set()
            release.wait(10)  # hold the batch until a later append is pending
            raise ProtocolError("nesting deeper than 32")

        try:
            first = [
                asyncio.create_task(q.append("t/data/x", lambda s: b"x%d" % s, device="x")),
                asyncio.create_task(q.append("t/cmd-result/x", poisoned)),
                asyncio.create_task(q.append("t/data/x", lambda s: b"x%d" % s, device="x")),
                asyncio.create_task(q.append("t/event/x", b"an event")),
            ]
            await until(entered.is_set, what="the poisoned batch in the writer")
            later = asyncio.create_task(q.append("t/data/x", lambda s: b"x%d" % s, device="x"))
            await asyncio.sleep(0)  # `later` is pending behind the batch in the writer
            release.set()
            outcomes = await asyncio.wait_for(
                asyncio.gather(*first, return_exceptions=True), timeout=10
            )
            assert outcomes[0] == 1 and outcomes[2] == 2 and outcomes[3] == 0
            assert isinstance(outcomes[1], ProtocolError)
            assert await asyncio.wait_for(later, timeout=10) == 3  # no number was skipped
            stored = await q.peek()
            assert [m.payload for m in stored] == [b"x1", b"x2", b"an event", b"x3"]
            assert q.depth == 4
        finally:
            release.set()
            q.close()

    run(scenario())


def test_a_batch_the_database_refuses_fails_its_producers_and_the_writer_serves_on(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        q = DurableQueue(tmp_path / "q.sqlite3")
        try:
            # a real SQLITE_FULL: the connection may not grow the file past its size now
            pages = q._db.execute("PRAGMA page_count").fetchone()[0]
            q._db.execute(f"PRAGMA max_page_count = {pages + 2}")
            big = b"\xff" * 1_000_000
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    q.append("t/data/x", lambda s: big, device="x"),
                    q.append("t/data/x", lambda s: b"small", device="x"),
                    return_exceptions=True,
                ),
                timeout=10,
            )
            assert all(isinstance(o, QueueWriteError) for o in outcomes), outcomes
            assert "full" in str(outcomes[0])
            assert q.depth == 0 and q.last_seq("x") == 0
            q._db.execute("PRAGMA max_page_count = 1073741823")
            assert (
                await asyncio.wait_for(q.append("t/data/x", lambda s: b"ok", device="x"), 10) == 1
            )
            assert [m.payload for m in await q.peek()] == [b"ok"]
        finally:
            q.close()

    run(scenario())
