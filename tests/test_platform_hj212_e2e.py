"""HJ 212-2017 end to end with real parts: pymodbus pole-env devices (CountingDevices:
each read numbered in node_seq), the in-process gateway delivering to a SenML platform on
a real mosquitto AND to an HJ 212 platform played by tests/hj212_platform.py over TCP.

One scenario, in order: real-time (2011), minute (2051) and hour (2061) packets arrive
with the annex's codes and the devices' values; a packet the platform leaves unanswered
is sent again, byte for byte, after answer_timeout_s; during the HJ 212 platform's outage
SenML goes on, and afterwards the backlog is re-uploaded in order, with every poll SenML
got (node_seq) in it; the platform's 1011 time request is answered 9011/1011/9012; a
device that stops answering is reported with Flag=D. The short intervals (minute_s = 2,
hour_s = 4) are the test's own config."""

from __future__ import annotations

import tomllib
from pathlib import Path

from gwproc import CountingDevices, node_seq_of
from hj212_platform import Hj212Platform
from platkit import pole_code, write_platform_config

from polekit.gateway.app import Gateway
from polekit.gateway.config import parse_config
from polekit.hil.broker import LocalBroker
from polekit.protocols import hj212

from gwkit import Collector, gateway_running, run, until

MN = "010000A8900016F000169DC0"
MN2 = "POLE2ENV0000000000000002"


def node_seqs(platform: Hj212Platform, mn: str) -> list[int]:
    """node_seq of each real-time packet of ``mn``, in arrival order, resends left out."""
    seen: set[str] = set()
    out = []
    for r in platform.data(2011, mn):
        if r.packet["QN"] in seen:
            continue
        seen.add(r.packet["QN"])
        if "node_seq-Rtd" in r.packet["CP"]:
            out.append(int(float(r.packet["CP"]["node_seq-Rtd"])))
    return out


def test_hj212_platform_end_to_end(tmp_path: Path) -> None:
    async def scenario() -> None:
        devices = await CountingDevices([1, 2]).start()
        platform = await Hj212Platform().start()
        code1, code2 = pole_code(1), pole_code(2)
        await devices.set(1, "pm2_5", 35)
        await devices.set(1, "noise", 55.5)
        await devices.set(1, "temperature", 21.5)
        try:
            with LocalBroker(kind="mosquitto") as broker:
                platforms = [
                    {"kind": "senml"},
                    {
                        "kind": "hj212",
                        "host": "127.0.0.1",
                        "port": platform.port,
                        "mn": MN,
                        "pw": "123456",
                        "mns": {code2: MN2},
                        "minute_s": 2,
                        "hour_s": 4,
                        "answer_timeout_s": 1,
                        "retries": 3,
                        "names": {"node_seq": "node_seq"},
                    },
                ]
                path = write_platform_config(tmp_path, broker, platforms, devices, (1, 2), 0.2)
                config = parse_config(tomllib.loads(path.read_text()), path)
                gw = Gateway(config)
                async with (
                    Collector(broker.host, broker.port, topic_filter="#") as sub,
                    gateway_running(gw, broker.host, broker.port),
                ):
                    # real-time data with the annex's codes, in the standard's units
                    await until(lambda: len(platform.data(2011, MN)) >= 3, 20, "2011 packets")
                    rt = platform.data(2011, MN)[-1].packet
                    assert rt["ST"] == "22" and rt["PW"] == "123456" and rt["Flag"] == "5"
                    cp = rt["CP"]
                    assert cp["a34004-Rtd"] == "35.0" and cp["a34004-Flag"] == "N"
                    assert cp["LA-Rtd"] == "55.5" and cp["a01001-Rtd"] == "21.5"
                    assert len(cp["DataTime"]) == 14
                    assert platform.data(2011, MN2), "device 2 under its own MN"
                    # minute and hour data: Min/Avg/Max of what was delivered
                    await until(lambda: platform.data(2051, MN), 20, "a 2051 packet")
                    await until(lambda: platform.data(2061, MN), 20, "a 2061 packet")
                    for cn in (2051, 2061):
                        agg = platform.data(cn, MN)[-1].packet["CP"]
                        assert agg["a34004-Min"] == agg["a34004-Avg"] == "35.0", agg
                        assert agg["a34004-Max"] == "35.0" and agg["a34004-Flag"] == "N"
                        assert agg["LA-Avg"] == "55.5"  # a steady level's Leq is that level
                        assert int(agg["DataTime"][-2:]) % (2 if cn == 2051 else 4) == 0

                    # an unanswered packet is sent again, the same bytes
                    platform.ignore = 1
                    mark = len(platform.packets)
                    await until(
                        lambda: any(
                            r.raw == s.raw and r is not s
                            for r in platform.packets[mark:]
                            for s in platform.packets[mark:]
                        ),
                        20,
                        "a resent packet",
                    )
                    hj = next(d for d in gw.deliveries if d.platform.kind == "hj212")
                    assert hj.uplink.resent >= 1

                    # the platform's outage: SenML goes on, HJ 212 data waits in the queue
                    await platform.stop()
                    got = len(sub.packs(code1))
                    await until(lambda: len(sub.packs(code1)) >= got + 10, 20, "SenML packs")
                    await until(lambda: hj.queue.depth >= 10, 20, "an HJ 212 backlog")
                    outage_seq = max(node_seqs(platform, MN))
                    await platform.start()  # the same port
                    sent = max(node_seq_of(p) for p in sub.packs(code1))
                    await until(lambda: max(node_seqs(platform, MN)) >= sent, 30, "the backlog")
                    seqs = node_seqs(platform, MN)
                    assert seqs == sorted(seqs), "re-uploaded in order"
                    assert max(seqs) > outage_seq
                    senml_seqs = {node_seq_of(p) for p in sub.packs(code1)}
                    missing = {s for s in senml_seqs if s <= max(seqs)} - set(seqs)
                    assert not missing, (
                        f"polls SenML got but the HJ 212 platform did not: {missing}"
                    )
                    qns = [r.packet["QN"] for r in platform.data(None, MN)]
                    assert qns == sorted(qns)

                    # the platform asks for the station's time: 9011, 1011, 9012
                    qn = "20240101120000123"
                    ask = hj212.encode(
                        [
                            ("QN", qn),
                            ("ST", 22),
                            ("CN", 1011),
                            ("PW", "123456"),
                            ("MN", MN),
                            ("Flag", 5),
                        ],
                        "PolId=a34004",
                    )
                    await platform.send(ask)
                    await until(
                        lambda: (
                            [
                                r.cn
                                for r in platform.packets
                                if r.packet.get("QN") == qn and r.cn in (9011, 1011, 9012)
                            ]
                            == [9011, 1011, 9012]
                        ),
                        10,
                        "the answers to 1011",
                    )
                    answers = {r.cn: r.packet for r in platform.packets if r.packet.get("QN") == qn}
                    assert answers[9011]["CP"] == {"QnRtn": "1"}
                    assert len(answers[1011]["CP"]["SystemTime"]) == 14
                    assert answers[9012]["CP"] == {"ExeRtn": "1"}

                    # a device that stops answering: its last values, flagged D
                    devices.remove(2)
                    await until(
                        lambda: any(
                            r.packet["CP"].get("a34004-Flag") == "D"
                            for r in platform.data(2011, MN2)
                        ),
                        30,
                        "device 2 flagged D",
                    )
        finally:
            await devices.stop()
            if platform._server is not None:
                await platform.stop()

    run(scenario(), timeout_s=150)
