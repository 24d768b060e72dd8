# Corrections to micropython-esp32-stubs 1.27.0.post1's socket.pyi (see machine.pyi here for
# how they apply). Checked against MicroPython v1.27.0, ports/esp32/modsocket.c and py/stream.c.
from _mpy_shed import AnyReadableBuf

class socket:  # noqa: N801 - the chip's name
    # modsocket.c line 694: socket_recv_obj is VAR_BETWEEN 2..3, the flags (MSG_PEEK,
    # MSG_DONTWAIT) by position; the stub leaves them out
    def recv(self, bufsize: int, flags: int = 0, /) -> bytes: ...
    # modsocket.c line 911: write is py/stream.c's mp_stream_write_obj (line 292, VAR_BETWEEN
    # 2..4): write(buf), write(buf, max_len) or write(buf, off, max_len); umqtt.simple calls
    # write(pkt, n). On a non-blocking socket that can take nothing it returns None.
    def write(
        self, buf: AnyReadableBuf, off_or_len: int = -1, max_len: int = -1, /
    ) -> int | None: ...
