"""TCP sockets on the emulated board, and micropython-lib's umqtt.simple over them.

The board's `socket` (hil/vmlib/socket.py) reaches real host connections in its main thread
(hil/js/sockets.mjs). The peers here are real: mosquitto (hil/broker.py), an independent
paho-mqtt client, plain host sockets. The references for what the board must do are the
ESP32 port's: ports/esp32/modsocket.c (v1.27.0) for errors and timeouts, and micropython-lib's
umqtt.simple as MicroPython v1.27.0 freezes it (firmware/vendor/umqtt), run unmodified.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polekit.hil.broker import LocalBroker, free_port
from polekit.hil.emulator import EmulatedBoard

from boardkit import MPREMOTE, board_exec

WIFI_UP = (
    "import network, socket, errno, time\n"
    "wlan = network.WLAN(network.STA_IF)\nwlan.active(True)\nwlan.connect('pole-ap', 'key')\n"
)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedBoard]:
    """A pole board with the node bundle (umqtt.simple as the .mpy it ships) and no main.py."""
    from polekit.firmware.install import install

    flash = tmp_path_factory.mktemp("flash")
    install(flash, "pole-env-esp32", start=False, compiled=True)
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as b:
        yield b


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A host TCP server on an ephemeral loopback port (it never answers by itself)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        s.settimeout(10)
        yield s


def _paho(broker: LocalBroker, client_id: str) -> object:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_umqtt_simple_publishes_qos1_and_receives_what_it_subscribed(board, broker):
    # an independent subscriber (paho) sees the board's QoS 1 publish byte for byte, and a
    # message paho publishes reaches the board's subscription
    got: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
    subscribed = threading.Event()
    sub = _paho(broker, "witness")
    sub.on_message = lambda c, u, m: got.put((m.topic, m.payload, m.qos))  # type: ignore[attr-defined]
    sub.on_subscribe = lambda *a: subscribed.set()  # type: ignore[attr-defined]
    sub.subscribe("polekit/test/board/data", qos=1)  # type: ignore[attr-defined]
    assert subscribed.wait(10)
    payload = bytes(range(256)) + b"\x00\xff"
    try:
        out = board_exec(
            board,
            WIFI_UP + "from umqtt.simple import MQTTClient\n"
            "inbox = []\n"
            f"mq = MQTTClient('board-1', '127.0.0.1', {broker.port}, keepalive=60)\n"
            "mq.set_callback(lambda t, m: inbox.append((t, m)))\n"
            "print(mq.connect())\n"
            "mq.subscribe(b'polekit/test/board/cmd', 1)\n"
            f"mq.publish(b'polekit/test/board/data', {payload!r}, qos=1)\n"
            "print('published')\n",
        )
        assert out.splitlines() == ["0", "published"]  # no session present, PUBACK came
        topic, data, qos = got.get(timeout=10)
        assert (topic, data, qos) == ("polekit/test/board/data", payload, 1)

        info = sub.publish("polekit/test/board/cmd", b'{"id": 7, "set": {"interval": 30}}', qos=1)  # type: ignore[attr-defined]
        info.wait_for_publish(10)
        out = board_exec(
            board,
            "mq.sock.settimeout(10)\nmq.wait_msg()\nprint(inbox)\nmq.disconnect()\n",
        )
        assert out == '[(b\'polekit/test/board/cmd\', b\'{"id": 7, "set": {"interval": 30}}\')]'
    finally:
        sub.loop_stop()  # type: ignore[attr-defined]
        sub.disconnect()  # type: ignore[attr-defined]


# micropython-lib's micropython/umqtt.simple/umqtt/simple.py (version 1.7.0) at 6ae440a, the
# commit MicroPython v1.27.0 pins as lib/micropython-lib: the module the ESP32_GENERIC firmware
# freezes (ports/esp32/boards/manifest.py: require("umqtt.simple")) and finds before /lib
UMQTT_SHA256 = "0792c0bd6d9219c8180a9ee7dae3d7c15fafe53e0605fa30839b1033fa4a189c"


def test_the_bundle_ships_the_umqtt_simple_the_chip_freezes_byte_for_byte(board):
    import hashlib

    from polekit.firmware.deploy.bundle import build

    files = build("pole-env-esp32", mpy=None).files
    assert hashlib.sha256(files["lib/umqtt/simple.py"]).hexdigest() == UMQTT_SHA256
    assert b"MIT License" in files["lib/umqtt/LICENSE"]
    assert b"6ae440a8a144233e6e703f6759b7e7a0afaa37a4" in files["lib/umqtt/LICENSE"]
    # and the board imports that one (the emulated board freezes nothing; the chip finds its
    # frozen copy of the same file first)
    out = board_exec(board, "import umqtt.simple\nprint(umqtt.simple.__file__)")
    assert out == "/lib/umqtt/simple.mpy"


def test_connect_to_a_closed_port_raises_econnrefused(board):
    port = free_port()
    out = board_exec(
        board,
        WIFI_UP + "s = socket.socket()\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "except OSError as e:\n"
        "    print(e.args[0] == errno.ECONNREFUSED)\n"
        "s.close()\n",
    )
    assert out == "True"


def test_a_read_with_no_data_times_out_after_the_socket_timeout(board, listener):
    port = listener.getsockname()[1]
    started = time.monotonic()
    out = board_exec(
        board,
        WIFI_UP + "s = socket.socket()\n"
        f"s.connect(('127.0.0.1', {port}))\n"
        "s.settimeout(0.5)\n"
        "t = time.ticks_ms()\n"
        "try:\n"
        "    s.recv(10)\n"
        "except OSError as e:\n"
        "    print(e.args[0] == errno.ETIMEDOUT, time.ticks_diff(time.ticks_ms(), t))\n"
        "s.setblocking(False)\n"
        "try:\n"
        "    s.recv(10)\n"
        "except OSError as e:\n"
        "    print(e.args[0] == errno.EAGAIN, s.read(10))\n"
        "s.close()\n",
    )
    timed_out, waited_ms = out.splitlines()[0].split()
    assert timed_out == "True"
    assert 450 <= int(waited_ms) <= 1500
    assert out.splitlines()[1] == "True None"  # non-blocking: EAGAIN; a stream read: None
    assert time.monotonic() - started < 30


def test_wifi_down_drops_connections_and_refuses_new_ones(board, broker, listener):
    port = listener.getsockname()[1]
    try:
        out = board_exec(
            board,
            WIFI_UP + "from umqtt.simple import MQTTClient\n"
            f"mq = MQTTClient('board-2', '127.0.0.1', {broker.port})\n"
            "mq.connect()\n"
            "mq.publish(b'polekit/test/up', b'1', qos=1)\n"
            "print(wlan.isconnected())\n",
        )
        assert out == "True"
        board.set("wifi.up", 0)
        out = board_exec(
            board,
            "mq.sock.settimeout(5)\n"
            "try:\n"
            "    mq.publish(b'polekit/test/up', b'2', qos=1)\n"
            "except OSError as e:\n"
            "    print('publish', e.args[0] == errno.ECONNRESET)\n"
            "print(wlan.isconnected(), wlan.status() == network.STAT_NO_AP_FOUND)\n"
            "s = socket.socket()\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port}))\n"
            "except OSError as e:\n"
            "    print('connect', e.args[0] == errno.EHOSTUNREACH)\n",
        )
        assert out.splitlines() == ["publish True", "False True", "connect True"]
        board.set("wifi.up", 1)
        out = board_exec(
            board,
            "print(wlan.isconnected())\n"
            "s = socket.socket()\n"
            f"s.connect(('127.0.0.1', {port}))\n"
            "s.close()\nprint('connected')\n",
        )
        assert out.splitlines() == ["True", "connected"]
    finally:
        board.set("wifi.up", 1)


def test_wifi_down_ends_a_read_the_board_is_blocked_in(board, listener):
    # the link is the hardware's: it drops under a VM that is waiting in recv() for ever
    port = listener.getsockname()[1]
    result: dict[str, str] = {}

    def run() -> None:
        result["out"] = board_exec(
            board,
            WIFI_UP + "s = socket.socket()\n"
            f"s.connect(('127.0.0.1', {port}))\n"
            "s.send(b'waiting')\n"
            "try:\n"
            "    s.recv(10)\n"
            "except OSError as e:\n"
            "    print(e.args[0] == errno.ECONNRESET)\n",
        )

    worker = threading.Thread(target=run)
    worker.start()
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(7) == b"waiting"  # the board is in recv() now (or about to be)
            board.set("wifi.up", 0)
            worker.join(20)
            assert result.get("out") == "True"
    finally:
        board.set("wifi.up", 1)
        worker.join(20)


@pytest.fixture
def bare_board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as b:
        yield b


def test_watchdog_resets_a_board_blocked_in_a_socket_read(bare_board, listener):
    # the watchdog lives in the board's main thread: a VM blocked for ever in recv() cannot
    # feed it, and the reset ends the connection the host held for that VM
    port = listener.getsockname()[1]
    code = (
        WIFI_UP + "import machine\n"
        f"s = socket.socket()\ns.connect(('127.0.0.1', {port}))\n"
        "machine.WDT(timeout=1000)\n"
        "s.recv(10)\n"
    )
    before = len(bare_board.events)
    run = subprocess.Popen(
        [MPREMOTE, "connect", bare_board.repl, "resume", "exec", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(15)
            bare_board.wait_event("wdt-reset", timeout_s=15, after=before)
            assert conn.recv(10) == b""  # the host closed the dead VM's connection
        bare_board.wait_event("booted", timeout_s=15, after=before + 1)
    finally:
        run.kill()
        run.wait()
    assert board_exec(bare_board, "import machine\nprint(machine.reset_cause())") == "3"


def test_a_power_cut_ends_the_boards_connections(bare_board, listener):
    # RAM and the TCP stack are gone with the power: the peer sees the connection end
    port = listener.getsockname()[1]
    board_exec(bare_board, WIFI_UP + f"s = socket.socket()\ns.connect(('127.0.0.1', {port}))")
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(15)
        bare_board.power_cycle()
        assert conn.recv(10) == b""


def test_ctrl_c_interrupts_a_blocked_read_as_on_the_chip(bare_board, listener):
    # the chip checks for a pending KeyboardInterrupt between its 100 ms polls of the socket,
    # so Ctrl-C ends a blocked recv() with KeyboardInterrupt; the board is not restarted
    port = listener.getsockname()[1]
    program = (
        WIFI_UP + f"s = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.send(b'x')\n"
        "try:\n    s.recv(10)\nexcept KeyboardInterrupt:\n    print('interrupted')\n"
    )
    with open(bare_board.repl, "r+b", buffering=0) as tty:
        tty.write(f"exec({program!r})\r".encode())
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(1) == b"x"  # the board is in recv() now
            tty.write(b"\x03")
            bare_board.wait_output("interrupted", timeout_s=10)
    assert not any(e.get("event") == "hard-reset" for e in bare_board.events)
