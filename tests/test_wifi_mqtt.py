"""The Wi-Fi MQTT transport (firmware/node/uplinks/wifi_mqtt.py) on the emulated board, in the
board's MicroPython with the umqtt.simple the ESP32 firmware freezes (firmware/vendor/umqtt)
over the board's TCP sockets, against brokers that misbehave the ways real ones and real
networks do: silent after a PINGRESP or a command, no CONNACK, an oversize command, a
keepalive shorter than the report interval, the 65536th packet id.

The misbehaving broker is a raw TCP server in this file (MQTT 3.1.1 framing, section 2); the
well-behaved one is mosquitto (hil/broker.py). The references for what the chip does:
ports/esp32/modsocket.c (v1.27.0; setblocking(True) is settimeout(None)), umqtt.simple 1.7.0
(wait_msg() calls setblocking(True) after a packet's first byte), extmod/modtls_mbedtls.c
(v1.27.0; its SSLSocket has no settimeout) and micropython-lib's ssl.py at 6ae440a (its
SSLContext sets verify_mode CERT_NONE)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uplinkkit import Subscriber, wait_for

from polekit.hil.broker import LocalBroker
from polekit.hil.emulator import EmulatedBoard

from boardkit import board_exec

REFS = Path(__file__).parent / "refs"


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        digit, n = n & 0x7F, n >> 7
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def _publish(topic: str, payload: bytes, pid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", pid) + payload
    return b"\x32" + _remaining_length(len(body)) + body  # QoS 1


class RawBroker:
    """Just enough of an MQTT 3.1.1 broker to misbehave on purpose. ``mode``:
    "normal"; "no-connack" (never answers CONNECT); "pingresp-then-silence" and
    "command-then-silence" (a PUBLISH on data/ gets a PINGRESP, or a command, instead of its
    PUBACK, then nothing); "big-command" (an oversize command right after the SUBACK)."""

    def __init__(self, mode: str = "normal") -> None:
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.publishes: list[tuple[str, bytes]] = []  # what the node published
        self.acked: list[int] = []  # packet ids the node sent PUBACK for
        self.packets: list[int] = []  # every packet type the node sent
        self.command = b'{"id": 1, "set": {"report_s": 60}}'
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()
        for c in self._conns:
            c.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _packet(self, conn: socket.socket) -> tuple[int, bytes]:
        first = self._read(conn, 1)[0]
        size = shift = 0
        while True:
            b = self._read(conn, 1)[0]
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first, self._read(conn, size)

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                first, body = self._packet(conn)
                kind = first & 0xF0
                self.packets.append(kind)
                if kind == 0x10 and self.mode != "no-connack":
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind == 0x80:
                    conn.sendall(b"\x90\x03" + body[:2] + b"\x01")
                    if self.mode == "big-command":
                        big = b'{"id": 9, "set": {"x": "' + b"a" * 1000 + b'"}}'
                        conn.sendall(_publish("polekit/v1/n1/cmd/DEV", big, 7))
                elif kind == 0xC0:
                    conn.sendall(b"\xd0\x00")
                elif kind == 0x40:
                    self.acked.append(struct.unpack("!H", body[:2])[0])
                elif kind == 0x30:
                    (tlen,) = struct.unpack("!H", body[:2])
                    topic = body[2 : 2 + tlen].decode()
                    pid = body[2 + tlen : 4 + tlen]
                    self.publishes.append((topic, body[4 + tlen :]))
                    if "/data/" in topic and self.mode == "pingresp-then-silence":
                        conn.sendall(b"\xd0\x00")  # a late PINGRESP, then nothing
                        continue
                    if "/data/" in topic and self.mode == "command-then-silence":
                        conn.sendall(_publish("polekit/v1/n1/cmd/DEV", self.command, 5))
                        continue
                    conn.sendall(b"\x40\x02" + pid)
                elif kind == 0xE0:
                    return
        except (EOFError, OSError):
            return
        finally:
            conn.close()


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedBoard]:
    """A pole board with the node bundle compiled as it ships, and no main.py."""
    from polekit.firmware.install import install

    flash = tmp_path_factory.mktemp("flash")
    install(flash, "pole-env-esp32", start=False, compiled=True)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as b:
        yield b


@pytest.fixture
def raw_broker() -> Iterator[RawBroker]:
    b = RawBroker()
    yield b
    b.close()


_node_count = [0]


def _node(board: EmulatedBoard, port: int, **wifi: Any) -> str:
    """A fresh node in the board's REPL: ``wifi`` (WifiMqtt) under ``link`` (MqttLink), its
    outbox and state in files of their own; a handler that takes any setting."""
    _node_count[0] += 1
    n = _node_count[0]
    args = "".join(f", {k}={v!r}" for k, v in wifi.items())
    return board_exec(
        board,
        "import time, json\n"
        "from node.outbox import Outbox\n"
        "from node.state import StateFile\n"
        "from node.uplinks.mqtt_link import MqttLink\n"
        "from node.uplinks.wifi_mqtt import WifiMqtt\n"
        f"wifi = WifiMqtt('ap', 'key', '127.0.0.1', {port}{args})\n"
        f"box = Outbox('/box{n}.bin', 8192)\n"
        f"link = MqttLink(wifi, box, 'n1', StateFile('/state{n}.json'), clock=lambda: None)\n"
        "applied = []\n"
        "link.on_command(lambda code, body: applied.append(body) or body['set'])\n"
        "def timed_flush(budget_ms, stay=False):\n"
        "    t = time.ticks_ms()\n"
        "    sent = link.flush(budget_ms, stay)\n"
        "    print(sent, time.ticks_diff(time.ticks_ms(), t), link.faults, len(box))\n",
    )


def _flush(board: EmulatedBoard, budget_ms: int, stay: bool = False) -> tuple[int, int, int, int]:
    """(packs sent, ms the flush took, faults so far, packs held); the host gives up long
    after the budget (a hung board fails the test, it does not hang it)."""
    out = board_exec(board, f"timed_flush({budget_ms}, {stay})", timeout_s=budget_ms / 1000 + 20)
    sent, took_ms, faults, held = (int(x) for x in out.split())
    return sent, took_ms, faults, held


@pytest.mark.parametrize("mode", ["pingresp-then-silence", "command-then-silence", "no-connack"])
def test_a_broker_that_goes_silent_costs_the_flush_its_timeout_not_the_node(
    board: EmulatedBoard, raw_broker: RawBroker, mode: str
) -> None:
    # umqtt's wait_msg() turns the socket blocking after a packet's first byte: on the chip
    # that removes the timeout, so a PINGRESP or a command before the PUBACK used to leave
    # publish() waiting for ever; a broker that never sends CONNACK likewise
    raw_broker.mode = mode
    _node(board, raw_broker.port, timeout_s=2)
    board_exec(board, "link.report('DEV', {'temperature': 20.0})")
    sent, took_ms, faults, held = _flush(board, 5000)
    # the pack stays (and, after a command, its result joins it)
    assert (sent, faults, held) == (0, 1, 2 if mode == "command-then-silence" else 1)
    assert took_ms < 5000 + 1000, took_ms  # within about its budget (timeout_s is 2 s)
    if mode == "no-connack":
        assert raw_broker.packets[:1] == [0x10] and 0x30 not in raw_broker.packets


def test_a_command_is_on_flash_before_its_puback_and_survives_a_failed_flush(
    board: EmulatedBoard, raw_broker: RawBroker
) -> None:
    # the broker sends a command instead of the PUBACK, then nothing: the node applies it,
    # puts its result in the outbox (flash), and only then acknowledges it; the publish
    # then times out, and the result is still there for the next flush (and a reset)
    raw_broker.mode = "command-then-silence"
    _node(board, raw_broker.port, timeout_s=2)
    board_exec(board, "link.report('DEV', {'temperature': 20.0})")
    sent, _, faults, held = _flush(board, 5000)
    assert (sent, faults) == (0, 1)
    wait_for(lambda: 5 in raw_broker.acked, 5, "the node's PUBACK of the command")
    assert held == 2  # the data pack, and the command's result
    out = board_exec(
        board,
        "print(json.dumps(applied))\n"
        "b2 = Outbox(box.path, 8192)\n"  # as after a reset: what is on flash
        "b2.peek(); b2.pop(b2.peeked)\n"
        "kind, code, payload = b2.peek()\n"
        "print(kind, code, payload.decode())\n",
    )
    applied, result = out.splitlines()
    assert json.loads(applied) == [{"id": 1, "set": {"report_s": 60}}]
    kind, code, body = result.split(" ", 2)
    assert (kind, code) == ("cmd-result", "DEV")
    assert json.loads(body) == {"id": 1, "ok": True, "set": {"report_s": 60}}
    raw_broker.mode = "normal"
    assert _flush(board, 5000)[0] == 2
    assert ("polekit/v1/n1/cmd-result/DEV", body.encode()) in raw_broker.publishes


@pytest.fixture
def fresh_board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    """A board of its own: the emulated socket path leaks heap per byte read (docs/hil.md),
    so a test that reads kilobytes starts from a fresh heap."""
    from polekit.firmware.install import install

    install(tmp_path / "flash", "pole-env-esp32", start=False, compiled=True)
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as b:
        yield b


def test_an_oversize_command_is_drained_answered_and_acknowledged(
    fresh_board: EmulatedBoard, raw_broker: RawBroker
) -> None:
    board = fresh_board
    # umqtt reads a PUBLISH's body with one read(n): a 20 kB command would be allocated
    # whole (MemoryError on a chip, at every connect, as the persistent session sends it
    # again); the node drains it through a small buffer, answers "too large" and
    # acknowledges it. Here a 1 kB command over a 512-byte limit: the emulated board's
    # socket path costs several times the bytes it reads in heap (docs/hil.md), so a
    # 20 kB one would exhaust the emulated heap whatever the node does
    raw_broker.mode = "big-command"
    _node(board, raw_broker.port, timeout_s=2, message_max_bytes=512)
    board_exec(board, "link.report('DEV', {'temperature': 20.0})")
    sent, _, faults, held = _flush(board, 5000)
    assert (faults, held) == (0, 0) and sent == 2, (sent, faults, held)
    wait_for(lambda: 7 in raw_broker.acked, 5, "the node's PUBACK of the big command")
    results = [p for t, p in raw_broker.publishes if t == "polekit/v1/n1/cmd-result/DEV"]
    assert len(results) == 1
    result = json.loads(results[0])  # answered in JSON: the command's first byte was "{"
    assert result["ok"] is False and result["id"] is None
    assert "command of 1027 bytes is over what the radio reads" in result["error"]
    assert board_exec(board, "print(applied, wifi.drained)") == "[] 1"


def _board_tls(board: EmulatedBoard) -> None:
    # the emulated board has no TLS: micropython-lib's own ssl.py (the chip's frozen one,
    # unmodified) over a stand-in for the C `tls` module with v1.27.0's API (no crypto: it
    # passes bytes through), which records what a real handshake would have been asked
    ssl_py = (REFS / "micropython-lib-ssl.py.txt").read_text()
    board_exec(
        board,
        f"with open('/lib/ssl.py', 'w') as f:\n    f.write({ssl_py!r})\n"
        f"with open('/lib/tls.py', 'w') as f:\n    f.write({TLS_STANDIN!r})\n"
        "with open('/ca.der', 'wb') as f:\n    f.write(b'0\\x82 a CA')\n",
    )


TLS_STANDIN = """
# extmod/modtls_mbedtls.c (MicroPython v1.27.0) without the crypto: its constants, its
# SSLContext (verify_mode attribute, load_verify_locations(cadata), wrap_socket's keywords)
# and its SSLSocket's methods: read, readinto, readline, write, recv, send, setblocking
# (passed to the socket), close; no settimeout
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1
handshakes = []


class SSLContext:
    def __init__(self, protocol):
        self.verify_mode = CERT_REQUIRED if protocol == PROTOCOL_TLS_CLIENT else CERT_NONE
        self.cadata = None

    def load_verify_locations(self, cadata):
        self.cadata = cadata

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        handshakes.append({"verify_mode": self.verify_mode, "ca": self.cadata is not None,
                           "server_hostname": server_hostname,
                           "tcp_timeout_ms": sock._timeout_ms})
        return SSLSocket(sock)


class SSLSocket:
    def __init__(self, sock):
        self._sock = sock

    def read(self, n=-1):
        return self._sock.read(n)

    def readinto(self, buf, n=-1):
        return self._sock.readinto(buf, n)

    def readline(self):
        return self._sock.readline()

    def write(self, buf, n=-1):
        return self._sock.write(buf, n)

    def recv(self, n):
        return self._sock.recv(n)

    def send(self, buf):
        return self._sock.send(buf)

    def setblocking(self, flag):
        return self._sock.setblocking(flag)

    def close(self):
        self._sock.close()
"""


def test_tls_verifies_the_broker_and_keeps_its_timeouts(board: EmulatedBoard) -> None:
    _board_tls(board)
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, "polekit/v1/#") as sub:
        _node(board, broker.port, timeout_s=2, tls=True, ca_file="/ca.der")
        board_exec(board, "link.report('DEV', {'temperature': 20.0})")
        sent, _, faults, held = _flush(board, 5000)
        assert (sent, faults, held) == (1, 0, 0), board_exec(board, "print(link.last_fault)")
        wait_for(lambda: bool(sub.on("polekit/v1/n1/data/DEV")), 5, "the pack")
    out = board_exec(board, "import tls\nprint(json.dumps(tls.handshakes))")
    (handshake,) = json.loads(out)
    assert handshake == {
        "verify_mode": 2,  # CERT_REQUIRED, though ssl.SSLContext() set CERT_NONE
        "ca": True,
        "server_hostname": "127.0.0.1",
        "tcp_timeout_ms": 2000,  # set on the TCP socket before the handshake
    }


def test_a_node_reporting_less_often_than_its_keepalive_is_not_taken_for_dead(
    board: EmulatedBoard,
) -> None:
    # umqtt pings only when called: a node that stayed connected between flushes spaced
    # more than 1.5 x keepalive apart would be dropped by the broker (its will published:
    # "offline") and fail its next publish; each flush ends with a DISCONNECT instead
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, "polekit/v1/#") as sub:
        _node(board, broker.port, timeout_s=2, keepalive=1)
        for _ in range(2):
            board_exec(board, "link.report('DEV', {'temperature': 20.0})")
            assert _flush(board, 5000)[:3:2] == (1, 0)
            deadline = time.monotonic() + 2.5  # the gap between reports: past 1.5 x 1 s
            while time.monotonic() < deadline:
                time.sleep(0.1)
        wait_for(lambda: len(sub.on("polekit/v1/n1/data/DEV")) == 2, 5, "both packs")
        states = [m.json()["state"] for m in sub.on("polekit/v1/n1/state")]
    assert "offline" not in states, states


def test_packet_ids_restart_before_they_would_wrap_to_zero(board: EmulatedBoard) -> None:
    # umqtt packs its ever-growing pid as 16 bits: the 65536th exchange would carry id 0,
    # which MQTT forbids (the broker drops the link) and never match its PUBACK
    with LocalBroker() as broker, Subscriber(broker.host, broker.port, "polekit/v1/#") as sub:
        _node(board, broker.port, timeout_s=2)
        assert _flush(board, 5000, stay=True)[2] == 0
        board_exec(
            board,
            "wifi.client.pid = 65532\n"
            "for i in range(6):\n    link.report('DEV', {'temperature': 20.0 + i})\n",
        )
        sent, _, faults, held = _flush(board, 5000, stay=True)
        assert (sent, faults, held) == (6, 0, 0)
        wait_for(lambda: len(sub.on("polekit/v1/n1/data/DEV")) == 6, 5, "six packs")
        assert 0 < int(board_exec(board, "print(wifi.client.pid)")) < 10


class NtpServer:
    """A tiny NTP server (RFC 5905 server mode, version 4) on a UDP port of the loopback: its
    transmit timestamp is the host's clock in NTP seconds (since 1900)."""

    DELTA_1900 = 2208988800  # NTP seconds at 1970-01-01

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.asked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            if len(query) < 48 or query[0] & 0x07 != 3:  # mode 3: a client's request
                continue
            self.asked += 1
            now = time.time() + self.DELTA_1900
            secs, frac = int(now), int((now % 1) * 2**32)
            reply = bytearray(48)
            reply[0] = 0x24  # LI 0, version 4, mode 4 (server)
            reply[1] = 1  # stratum 1
            reply[24:32] = query[40:48]  # originate: the client's transmit
            reply[32:40] = struct.pack("!II", secs, frac)  # receive
            reply[40:48] = struct.pack("!II", secs, frac)  # transmit
            self.sock.sendto(bytes(reply), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def test_a_board_powered_on_has_no_clock_until_ntp_sets_it(tmp_path: Path) -> None:
    # an ESP32 counts from 2000-01-01 at power-on (MicroPython's epoch on the port): packs
    # made before the clock is set have no base time; NTP (micropython-lib's ntptime over the
    # board's UDP) sets it, and the packs then carry the node's time
    from polekit.firmware.install import install

    install(tmp_path / "flash", "water-esp32", start=False, compiled=True)
    ntp = NtpServer()
    try:
        with (
            LocalBroker() as broker,
            Subscriber(broker.host, broker.port, "polekit/v1/w1/#") as sub,
            EmulatedBoard("water-esp32", fs_dir=tmp_path / "flash") as board,
        ):
            board.set("net.udp_forward.123", ntp.port)  # the test network's NAT: 123 needs root
            board_exec(
                board,
                "from node.outbox import Outbox\nfrom node.state import StateFile\n"
                "from node.uplinks.mqtt_link import MqttLink, unix_time\n"
                "from node.uplinks.wifi_mqtt import WifiMqtt\nfrom node.clock import set_clock\n"
                f"wifi = WifiMqtt('ap', 'key', '127.0.0.1', {broker.port}, ntp_host='127.0.0.1')\n"
                "link = MqttLink(wifi, Outbox('/o.bin'), 'w1', StateFile('/s.json'))\n",
            )
            assert board_exec(board, "print(unix_time())") == "None"
            assert board_exec(board, "print(link.flush(5000))") == "0"  # Wi-Fi up
            assert board_exec(board, "print(set_clock(wifi))") == "True"
            assert ntp.asked == 1
            node_time = float(board_exec(board, "print(unix_time())"))
            assert abs(node_time - time.time()) < 5
            board_exec(board, "link.report('WTR1', {'water_level': 1.0}); link.flush(5000)")
            wait_for(lambda: bool(sub.on("polekit/v1/w1/data/WTR1")), 10, "the pack")
            pack = sub.on("polekit/v1/w1/data/WTR1")[-1].pack()
            assert abs(pack[0][-3] - time.time()) < 5  # bt (RFC 8428 label -3)
            board.set("wifi.up", 0)  # no network: no time, and no exception
            assert board_exec(board, "print(set_clock(wifi))") == "False"
    finally:
        ntp.close()
