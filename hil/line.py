"""A virtual RS-485 line: pseudo-terminals joined into one multi-drop bus.

Each ``endpoint()`` is a path (``/dev/pts/N``) that pyserial, pymodbus or the emulated
board's UART bridge opens like a USB adapter. A byte written by one endpoint reaches every
other endpoint, as on a real two-wire RS-485 bus. With ``baudrate`` set, the pump releases
bytes no faster than the line would carry them (``bits_per_char`` bits a character, 11 on
a Modbus line) and a new talker waits out t3.5 after the last frame, so throughput measured
across it is the real line's. Faults for tests:
``unplug(path)`` removes an endpoint as a pulled USB adapter does; ``drop_next(n)`` and
``corrupt_next(n)`` damage the next bytes on the wire.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from dataclasses import dataclass, field

from polekit.protocols import modbus

# characters a receiver gets at once at most: a UART's receive FIFO or a USB adapter's
# packet (64 bytes on an FTDI); a Modbus request fits, a long answer comes in a few bursts
RX_BURST_CHARS = 64


@dataclass
class _Endpoint:
    master: int
    slave: int
    path: str
    link: str | None = None
    pending: bytearray = field(default_factory=bytearray)


class VirtualLine:
    """A multi-drop serial bus of pseudo-terminal endpoints, pumped by one thread.

    Use as a context manager, or call ``close()``; it owns its file descriptors and thread.
    """

    def __init__(self, baudrate: int | None = None, bits_per_char: int = 11) -> None:
        self.baudrate = baudrate
        self.bits_per_char = bits_per_char
        # when another drop starts talking, its first character waits until the previous
        # frame has been followed by t3.5 of silence: what a receiver needs to see the frame
        # end (a simulated slave would otherwise answer faster than any real one can)
        self.frame_gap_s = modbus.t35_s(baudrate) if baudrate else 0.0
        self._last_sender: _Endpoint | None = None
        self.bytes_carried = 0
        # bytes a drop lost because nobody read its end (its buffer was full): an endpoint
        # made and never opened (an emulated board's spare `uarts` path on a shared line), a
        # program that stopped reading. On a wire a receiver that does not read overruns its
        # own FIFO; the others hear every byte. A blocking write here stalled the whole line.
        self.overruns = 0
        self._endpoints: list[_Endpoint] = []
        self._lock = threading.Lock()
        self._drop = 0
        self._corrupt = 0
        self._drop_from: str | None = None
        self._corrupt_from: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="virtual-rs485", daemon=True)
        self._thread.start()

    def __enter__(self) -> VirtualLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def endpoint(self, link: str | None = None) -> str:
        """Add a drop to the bus; returns the path to open. ``link`` also makes a symlink
        to it at that path (a stable name such as ``/tmp/x/ttyUSB0`` for configs)."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: a serial port passes bytes as they are
        tty.setraw(master)
        os.set_blocking(master, False)  # a drop nobody reads loses bytes; it never holds the wire
        path = os.ttyname(slave)
        if link:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(path, link)
        with self._lock:
            self._endpoints.append(_Endpoint(master, slave, path, link))
        os.write(self._wake_w, b"x")
        return link or path

    def unplug(self, path: str) -> None:
        """Remove the endpoint ``path`` (and its symlink): whoever has it open sees an I/O error."""
        with self._lock:
            for ep in self._endpoints:
                if path in (ep.path, ep.link):
                    self._endpoints.remove(ep)
                    break
            else:
                raise KeyError(f"no endpoint {path} on this line")
        if ep.link and os.path.lexists(ep.link):
            os.unlink(ep.link)
        os.close(ep.master)
        os.close(ep.slave)
        os.write(self._wake_w, b"x")

    def drop_next(self, n: int, sender: str | None = None) -> None:
        """Lose the next ``n`` bytes on the wire (noise that swallows characters); with
        ``sender``, only bytes that endpoint sends (e.g. a device's answers)."""
        self._drop, self._drop_from = n, sender

    def corrupt_next(self, n: int, sender: str | None = None) -> None:
        """Flip bits in the next ``n`` bytes on the wire (``sender`` as in ``drop_next``)."""
        self._corrupt, self._corrupt_from = n, sender

    @property
    def faults_pending(self) -> int:
        """Bytes still to be dropped or corrupted: 0 once armed faults have hit the wire."""
        return self._drop + self._corrupt

    def close(self) -> None:
        """Stop the pump and close every endpoint."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for ep in list(self._endpoints):
            self.unplug(ep.link or ep.path)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _pump(self) -> None:
        char_s = self.bits_per_char / self.baudrate if self.baudrate else 0.0
        line_free_at = 0.0  # when the wire finishes the last character put on it
        while not self._closed:
            with self._lock:
                eps = list(self._endpoints)
            fds = [ep.master for ep in eps] + [self._wake_r]
            try:
                ready, _, _ = select.select(fds, [], [], 0.2)
            except (OSError, ValueError):
                continue  # an endpoint was unplugged under us
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            for ep in eps:
                if ep.master not in ready:
                    continue
                try:
                    data = os.read(ep.master, 4096)
                except OSError:
                    continue
                data = self._damage(data, ep)
                if not data:
                    continue
                if char_s:
                    line_free_at = self._paced(eps, ep, data, char_s, line_free_at)
                else:
                    self._deliver(eps, ep, data)

    def _paced(
        self,
        eps: list[_Endpoint],
        sender: _Endpoint,
        data: bytes,
        char_s: float,
        line_free_at: float,
    ) -> float:
        # characters reach the receivers once the wire has carried them whole, a burst at a
        # time (RX_BURST_CHARS at most): as a UART hands its FIFO over at the end of a burst
        # and a USB adapter sends a packet. A frame thus arrives whole, as on the chip; sent
        # byte by byte, a busy host would put gaps into it that the wire never had, and the
        # receiver would rightly take them for the end of a broken frame
        gap = self.frame_gap_s if sender is not self._last_sender else 0.0
        self._last_sender = sender
        start = max(line_free_at + gap, time.monotonic())
        sent = 0
        while sent < len(data):
            end = min(len(data), sent + RX_BURST_CHARS)
            time.sleep(max(0.0, start + end * char_s - time.monotonic()))
            due = min(len(data), int((time.monotonic() - start) / char_s))  # late: more is due
            self._deliver(eps, sender, data[sent : max(end, due)])
            sent = max(end, due)
        return start + len(data) * char_s

    def _damage(self, data: bytes, sender: _Endpoint) -> bytes:
        names = (sender.path, sender.link)
        if self._drop and self._drop_from in (None, *names):
            n = min(self._drop, len(data))
            self._drop -= n
            data = data[n:]
        if self._corrupt and data and self._corrupt_from in (None, *names):
            n = min(self._corrupt, len(data))
            self._corrupt -= n
            data = bytes(b ^ 0x5A for b in data[:n]) + data[n:]
        return data

    def _deliver(self, eps: list[_Endpoint], sender: _Endpoint, data: bytes) -> None:
        self.bytes_carried += len(data)
        for other in eps:
            if other is not sender:
                try:
                    n = os.write(other.master, data)
                except BlockingIOError:
                    n = 0
                except OSError:
                    continue  # unplugged between select and write: the bytes are lost, as on a wire
                self.overruns += len(data) - n
