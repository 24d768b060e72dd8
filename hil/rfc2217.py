"""An emulated board's serial port served as RFC 2217 (telnet serial) on loopback.

esptool, mpremote and pyserial all open ``rfc2217://127.0.0.1:PORT``. Unlike a
pseudo-terminal, RFC 2217 carries the modem lines, so the dev board's auto-reset circuit can
be emulated: RTS drives EN (reset) and DTR drives IO0 (BOOT) through the usual two
transistors, and releasing EN samples IO0. esptool's default reset (``--before
default-reset``) thus puts the emulated chip into its ROM bootloader exactly as on a real
board, and ``--after hard-reset`` starts the application.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import serial
from serial import rfc2217

# EN rises through the dev board's RC (10 kOhm, 1 uF); pyserial's RFC 2217 client also sets
# one modem line per ~50 ms acknowledgement, so IO0 is sampled a little later than on a wire
EN_RC_DELAY_S = 0.1


class DevBoardPort:
    """The serial object pyserial's RFC 2217 PortManager drives: data goes to the board's
    pseudo-terminal, DTR/RTS go to the auto-reset circuit."""

    def __init__(self, board: Any) -> None:
        self.board = board
        self.tty = serial.Serial(board.repl, 115200, timeout=0.05)
        self.baudrate = 115200
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self.cts = self.dsr = self.ri = self.cd = False
        self._rts = self._dtr = False
        self._timer: threading.Timer | None = None
        self.resets = 0

    def _pins(self) -> tuple[bool, bool]:
        # EN = not (RTS and not DTR); IO0 = not (DTR and not RTS)
        return not (self._rts and not self._dtr), not (self._dtr and not self._rts)

    def _change(self, rts: bool, dtr: bool) -> None:
        en_before, _ = self._pins()
        self._rts, self._dtr = rts, dtr
        en, _io0 = self._pins()
        if en and not en_before:
            # EN rises through the board's RC delay; the chip samples IO0 when it is out of
            # reset, so both lines changing one after the other still read as one step
            self._timer = threading.Timer(EN_RC_DELAY_S, self._released)
            self._timer.daemon = True
            self._timer.start()
        elif not en and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _released(self) -> None:
        en, io0 = self._pins()
        self._timer = None
        if en:
            self.resets += 1
            self.board.strap_reset(download=not io0)

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._change(bool(value), self._dtr)

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._change(self._rts, bool(value))

    def reset_input_buffer(self) -> None:
        self.tty.reset_input_buffer()

    def reset_output_buffer(self) -> None:
        self.tty.reset_output_buffer()

    def close(self) -> None:
        self.tty.close()


class _Writer:
    # PortManager writes its telnet answers with .write()
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.conn.sendall(data)


class Rfc2217Server:
    """Serves ``board`` on ``rfc2217://host:port`` (port 0: any free one); one client at a
    time, as a USB serial port allows."""

    def __init__(self, board: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.board = board
        self.sock = socket.create_server((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"rfc2217://{self.host}:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() below; close alone does not
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=2)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = DevBoardPort(self.board)
        manager = rfc2217.PortManager(port, _Writer(conn))
        done = threading.Event()

        def board_to_client() -> None:
            while not done.is_set():
                try:
                    data = port.tty.read(max(1, port.tty.in_waiting))  # no waiting for more
                except (serial.SerialException, OSError, TypeError):
                    return
                if data:
                    try:
                        conn.sendall(b"".join(manager.escape(data)))
                    except OSError:
                        return

        reader = threading.Thread(target=board_to_client, daemon=True)
        reader.start()
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    break
                if not data:
                    break
                out = b"".join(manager.filter(data))
                if out:
                    port.tty.write(out)
        finally:
            done.set()
            reader.join(timeout=1)
            port.close()
