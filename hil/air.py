"""The virtual BLE air: emulated boards, simulated devices and gateways in separate
processes advertise, scan and connect through one relay on a Unix socket.

JSON lines. A client says who it is first: ``{"op": "hello", "role": "peripheral", "addr":
"AA:BB:CC:DD:EE:FF", "rssi": -60}`` or ``{"op": "hello", "role": "central"}``.

    peripheral -> {"op": "adv", "data": hex, "resp": hex}     centrals <- {"ev": "adv", "addr",
                                                                         "data", "resp", "rssi"}
    central    -> {"op": "connect", "id", "addr"}      peripheral <- {"ev": "connect", "id", "conn"}
    peripheral -> {"op": "reply", "id", ...}           central    <- {"reply": id, ...}
    central    -> {"op": "read"|"write", "id", "conn", "handle"[, "data"]}  (forwarded, replied)
    peripheral -> {"op": "notify", "conn", "handle", "data"}  its central <- {"ev": "notify", ...}
    either     -> {"op": "disconnect", "conn"}         the other <- {"ev": "disconnect", "conn"}

A connect to an address nobody advertises gets ``{"reply": id, "error": ...}`` at once; a
peripheral that does not answer within ``REPLY_TIMEOUT_S`` the same, so a dead device never
stalls a central.

``loss`` makes a busy or distant scanner: each advert reaches each central with probability
``1 - loss``, drawn from a generator seeded with ``seed`` (a test's losses are the same at
every run). GATT traffic is never lost (the link layer retransmits it).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Any

from polekit.hil import socket_path

REPLY_TIMEOUT_S = 5.0


class _Client:
    def __init__(self, handler: socketserver.StreamRequestHandler) -> None:
        self.handler = handler
        self.role = ""
        self.addr = ""
        self.rssi = -60
        self.lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with self.lock:
            try:
                self.handler.wfile.write(data)
                self.handler.wfile.flush()
            except (OSError, ValueError):
                pass


class VirtualAir:
    """The relay; ``path`` is its Unix socket. Runs in a thread of the process that made it
    (the demo, a test, ``polekit ble air``)."""

    def __init__(self, path: Path | str, loss: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be 0 <= loss < 1, not {loss}")
        self.path = str(path)
        self.loss = loss
        self._chance = random.Random(seed)
        socket_path.claim(self.path)  # OSError when a file or a live air is there
        self.clients: list[_Client] = []
        self.peripherals: dict[str, _Client] = {}
        self.conns: dict[int, tuple[_Client, _Client]] = {}  # conn -> (central, peripheral)
        self.pending: dict[int, tuple[_Client, Any, float]] = {}  # air id -> (central, id, t)
        self.ids = itertools.count(1)
        self.counters = {"adverts": 0, "lost": 0, "connects": 0, "errors": 0}
        self.lock = threading.Lock()
        air = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                client = _Client(self)
                with air.lock:
                    air.clients.append(client)
                try:
                    for line in self.rfile:
                        try:
                            msg = json.loads(line)
                        except ValueError:
                            continue
                        air._message(client, msg)
                except ConnectionResetError:  # noqa: S110 - a board reset its radio: gone, as at EOF
                    pass
                finally:
                    air._gone(client)

        self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> VirtualAir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- routing ----------------------------------------------------------------------

    def _message(self, client: _Client, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "hello":
            client.role = str(msg.get("role", "central"))
            client.rssi = int(msg.get("rssi", -60))
            if client.role == "peripheral":
                client.addr = str(msg["addr"]).upper()
                with self.lock:
                    self.peripherals[client.addr] = client
            return
        if op == "adv" and client.role == "peripheral":
            self.counters["adverts"] += 1
            ev = {
                "ev": "adv",
                "addr": client.addr,
                "data": msg.get("data", ""),
                "resp": msg.get("resp", ""),
                "rssi": client.rssi,
            }
            with self.lock:
                centrals = [c for c in self.clients if c.role == "central"]
                heard = [c for c in centrals if self._chance.random() >= self.loss]
                self.counters["lost"] += len(centrals) - len(heard)
            for c in heard:
                c.send(ev)
            return
        if op == "connect":
            self._connect(client, msg)
            return
        if op in ("read", "write"):
            pair = self.conns.get(int(msg.get("conn", -1)))
            if pair is None:
                client.send({"reply": msg.get("id"), "error": "not connected"})
                return
            air_id = self._pending(client, msg.get("id"))
            pair[1].send({**msg, "ev": op, "op": None, "id": air_id})
            return
        if op == "reply":
            with self.lock:
                waiting = self.pending.pop(int(msg.get("id", -1)), None)
            if waiting is not None:
                central, their_id, _ = waiting
                out = {k: v for k, v in msg.items() if k not in ("op", "id")}
                central.send({**out, "reply": their_id})
            return
        if op == "notify":
            pair = self.conns.get(int(msg.get("conn", -1)))
            if pair is not None:
                pair[0].send({**msg, "op": None, "ev": "notify"})
            return
        if op == "disconnect":
            conn = int(msg.get("conn", -1))
            with self.lock:
                pair = self.conns.pop(conn, None)
            if pair is not None:
                other = pair[1] if client is pair[0] else pair[0]
                other.send({"ev": "disconnect", "conn": conn})

    def drop_links(self, addr: str) -> int:
        """A radio fault: every connection to the peripheral ``addr`` drops (both ends hear
        the disconnect, as after a link's supervision timeout); it keeps advertising.
        Returns how many dropped."""
        addr = addr.upper()
        with self.lock:
            dead = [c for c, (_, p) in self.conns.items() if p.addr == addr]
            pairs = [self.conns.pop(c) for c in dead]
        for conn, (central, peripheral) in zip(dead, pairs, strict=True):
            central.send({"ev": "disconnect", "conn": conn})
            peripheral.send({"ev": "disconnect", "conn": conn})
        return len(dead)

    def _pending(self, central: _Client, their_id: Any) -> int:
        air_id = next(self.ids)
        with self.lock:
            self.pending[air_id] = (central, their_id, time.monotonic())
        return air_id

    def _connect(self, central: _Client, msg: dict[str, Any]) -> None:
        addr = str(msg.get("addr", "")).upper()
        with self.lock:
            peripheral = self.peripherals.get(addr)
        if peripheral is None:
            self.counters["errors"] += 1
            central.send({"reply": msg.get("id"), "error": f"no device {addr} on the air"})
            return
        conn = next(self.ids)
        with self.lock:
            self.conns[conn] = (central, peripheral)
        self.counters["connects"] += 1
        air_id = self._pending(central, msg.get("id"))
        peripheral.send({"ev": "connect", "id": air_id, "conn": conn})

    def _gone(self, client: _Client) -> None:
        with self.lock:
            if client in self.clients:
                self.clients.remove(client)
            if self.peripherals.get(client.addr) is client:
                del self.peripherals[client.addr]
            dead = [c for c, pair in self.conns.items() if client in pair]
            pairs = [self.conns.pop(c) for c in dead]
        for conn, pair in zip(dead, pairs, strict=True):
            other = pair[1] if client is pair[0] else pair[0]
            other.send({"ev": "disconnect", "conn": conn})

    def _reap(self) -> None:
        # a peripheral that never replies: its central hears so instead of waiting forever
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self.lock:
                late = [i for i, (_, _, t) in self.pending.items() if now - t > REPLY_TIMEOUT_S]
                expired = [self.pending.pop(i) for i in late]
            for central, their_id, _ in expired:
                self.counters["errors"] += 1
                central.send({"reply": their_id, "error": "the device did not answer"})


class AirPeripheral:
    """A peripheral's link to the air (blocking, with a reader thread). ``on_event(msg)`` is
    called for connect/read/write/disconnect and returns the reply's fields (or None)."""

    def __init__(self, path: Path | str, addr: str, on_event: Any = None, rssi: int = -60):
        self.addr = addr.upper()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.lock = threading.Lock()
        self.on_event = on_event
        self.send({"op": "hello", "role": "peripheral", "addr": self.addr, "rssi": rssi})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def send(self, msg: dict[str, Any]) -> None:
        with self.lock:
            try:
                self.sock.sendall((json.dumps(msg) + "\n").encode())
            except OSError:
                pass

    def advertise(self, data: bytes, resp: bytes = b"") -> None:
        self.send({"op": "adv", "data": data.hex(), "resp": resp.hex()})

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _read(self) -> None:
        for line in self.sock.makefile("rb"):
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            reply: dict[str, Any] | None = None
            try:
                reply = self.on_event(msg) if self.on_event else None
            except Exception as exc:  # noqa: BLE001 - the central gets the error, the air goes on
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            if "id" in msg and msg.get("ev") in ("connect", "read", "write"):
                self.send({"op": "reply", "id": msg["id"], **(reply or {})})


class SimulatedBTHomeDevice:
    """A third-party BTHome v2 sensor on the air (a room thermometer with BTHome firmware):
    advertises ``values()`` every ``every_s`` with a rising packet id, in its own thread."""

    def __init__(
        self,
        path: Path | str,
        addr: str,
        values: Any,
        every_s: float = 2.0,
        name: str = "ATC_thermo",
        key: bytes | None = None,
    ) -> None:
        self.link = AirPeripheral(path, addr)
        self.values = values
        self.every_s = every_s
        self.name = name
        self.key = key
        self.packet_id = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from polekit.protocols import bthome

        mac = bytes.fromhex(self.link.addr.replace(":", ""))
        while not self._stop.is_set():
            self.packet_id = (self.packet_id + 1) & 0xFF
            sd = bthome.encode(
                self.values(), self.packet_id, key=self.key, mac=mac, counter=self.sent
            )
            self.link.advertise(bthome.advert(sd, None if self.key else self.name))
            self.sent += 1
            self._stop.wait(self.every_s)

    def close(self) -> None:
        self._stop.set()
        self.link.close()
