# `socket` for the emulated board: the ESP32 port's TCP socket (ports/esp32/modsocket.c,
# MicroPython v1.27.0) over real connections the board's main thread opens on the host
# (hil/js/sockets.mjs). Calls block as on the chip: a read waits for data, the peer's close,
# an error or the socket's timeout (settimeout; None: for ever, 0: non-blocking), and the
# errors are the chip's: OSError(ETIMEDOUT) for a timeout, EAGAIN when a non-blocking socket
# has nothing, ECONNREFUSED, ECONNRESET, EHOSTUNREACH (no Wi-Fi), OSError(-202) for a name
# the resolver cannot find. The link is the board's Wi-Fi: the host's `wifi.up` = 0 drops
# every connection (ECONNRESET) and refuses new ones (EHOSTUNREACH).
#
# UDP (SOCK_DGRAM: sendto, recv/recvfrom with the socket's timeout; micropython-lib's ntptime
# uses it) goes to the host's network through node:dgram, the same Wi-Fi: down, sendto raises
# EHOSTUNREACH. What the emulated board does not have: raw sockets, listening sockets (bind,
# listen, accept), and TLS (the chip's ssl module wraps a socket in
# mbedTLS; here there is none, see docs/hil.md). Calls are held to the chip's (see
# machine.py): "_name" parameters are positional-only.
import errno as _errno
import json as _json

import js as _js
import network as _network

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
SOL_SOCKET = 4095
SO_REUSEADDR = 4
SO_BROADCAST = 32
SO_BINDTODEVICE = 4107
IP_ADD_MEMBERSHIP = 3
TCP_NODELAY = 1
MSG_PEEK = 1
MSG_DONTWAIT = 8

_UNSET = object()  # write()'s third argument left out
_CHUNK = 1024  # bytes a read() without a size asks the network for at a time


def _error(name):
    return OSError(getattr(_errno, name, _errno.EIO))


def _call(req):
    # one blocking request to the board's network; raises what the chip raises
    reply = _json.loads(_js.polekitHw.net(_json.dumps(req)))
    if "interrupt" in reply:
        raise KeyboardInterrupt
    if "code" in reply:
        raise OSError(reply["code"])
    return reply


def _resolve(host):
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        raise TypeError("can't convert %s to str" % type(host).__name__)
    return _call({"op": "resolve", "host": host or "0.0.0.0"})["addr"]


def getaddrinfo(_host, _port, _af=0, _type=0, _proto=0, _flags=0):
    addr = _resolve(_host)
    return [(AF_INET, _type or SOCK_STREAM, _proto, _host, (addr, int(_port)))]


class socket:  # noqa: N801 - the chip's name
    def __init__(self, _af=AF_INET, _type=SOCK_STREAM, _proto=0):
        if _type not in (SOCK_STREAM, SOCK_DGRAM):
            raise NotImplementedError(
                "the emulated board has TCP and UDP sockets; a real ESP32 has raw ones too"
            )
        self._udp = _type == SOCK_DGRAM
        self._id = None  # the host's connection, once connected
        self._timeout_ms = None  # None: block for ever (the chip's default); 0: non-blocking
        self._closed = False
        self._peer_closed = False

    def _conn(self):
        if self._closed:
            raise OSError(_errno.EBADF)
        if self._id is None:
            raise OSError(_errno.ENOTCONN)
        return self._id

    def settimeout(self, _value):
        self._timeout_ms = None if _value is None else max(0, int(_value * 1000))

    def setblocking(self, _flag):
        self._timeout_ms = None if _flag else 0

    def setsockopt(self, _level, _optname, _value):
        if _optname == IP_ADD_MEMBERSHIP and len(_value) != 8:
            raise ValueError
        if _optname not in (SO_REUSEADDR, SO_BROADCAST, SO_BINDTODEVICE, TCP_NODELAY):
            if _optname != IP_ADD_MEMBERSHIP:
                print("Warning: lwip.setsockopt() option not implemented")

    def connect(self, _address):
        if self._closed:
            raise OSError(_errno.EBADF)
        if self._id is not None:
            raise OSError(getattr(_errno, "EISCONN", _errno.EALREADY))
        host, port = _address
        addr = _resolve(host)
        # no route without the station up (lwIP's ERR_RTE); the board's host is its network,
        # so even 127.0.0.1 (the host's broker) is reached through Wi-Fi here
        if not _network.WLAN(_network.STA_IF).isconnected():
            raise OSError(_errno.EHOSTUNREACH)
        wait = self._timeout_ms != 0
        reply = _call(
            {
                "op": "connect",
                "host": addr,
                "port": int(port),
                "timeout_ms": self._timeout_ms,
                "wait": wait,
            }
        )
        if "id" in reply:
            self._id = reply["id"]
        if "errno" in reply:  # a refused or timed-out connect; EINPROGRESS if non-blocking
            raise _error(reply["errno"])

    def _datagram(self, n, flags=0):
        # one datagram (up to n bytes of it; the rest is dropped, as lwIP does) and its sender
        if self._closed:
            raise OSError(_errno.EBADF)
        if self._id is None:  # nothing sent from it yet: nothing can come to it
            self._id = _call({"op": "udp-open"})["id"]
        timeout = 0 if flags & MSG_DONTWAIT else self._timeout_ms
        reply = _call({"op": "recvfrom", "id": self._id, "n": n, "timeout_ms": timeout})
        if "errno" in reply:
            raise _error(reply["errno"])
        return bytes.fromhex(reply["hex"]), (reply["host"], reply["port"])

    def recvfrom(self, _bufsize):
        if not self._udp:
            return self._recv(_bufsize), None
        return self._datagram(_bufsize)

    def sendto(self, _bytes, _address):
        if self._closed:
            raise OSError(_errno.EBADF)
        host, port = _address
        addr = _resolve(host)
        if not _network.WLAN(_network.STA_IF).isconnected():
            raise OSError(_errno.EHOSTUNREACH)
        if self._id is None:
            self._id = _call({"op": "udp-open"})["id"]
        data = bytes(_bytes)
        reply = _call(
            {"op": "sendto", "id": self._id, "host": addr, "port": int(port), "hex": data.hex()}
        )
        if "errno" in reply:
            raise _error(reply["errno"])
        return reply["n"]

    def _recv(self, n, flags=0):
        # one read from the network: up to n bytes, b"" at the peer's close
        if self._udp:
            return self._datagram(n, flags)[0]
        conn = self._conn()
        if self._peer_closed or n <= 0:
            return b""
        timeout = 0 if flags & MSG_DONTWAIT else self._timeout_ms
        req = {"op": "recv", "id": conn, "n": n, "timeout_ms": timeout}
        if flags & MSG_PEEK:
            req["peek"] = True
        reply = _call(req)
        if "errno" in reply:
            raise _error(reply["errno"])
        data = bytes.fromhex(reply["hex"])
        if not data:
            self._peer_closed = True
        return data

    def recv(self, _bufsize, _flags=0):
        return self._recv(_bufsize, _flags)

    def _read(self, size):
        # the stream read (py/stream.c): no short reads on a blocking socket; on a
        # non-blocking one what is there, or None when nothing is
        out = bytearray()
        while size < 0 or len(out) < size:
            try:
                chunk = self._recv(_CHUNK if size < 0 else size - len(out))
            except OSError as e:
                if e.args[0] == _errno.EAGAIN:
                    return bytes(out) if out else None
                raise
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def read(self, _size=-1):
        return self._read(_size)

    def readinto(self, _buf, _nbytes=-1):
        want = len(_buf) if _nbytes < 0 else min(_nbytes, len(_buf))
        data = self._read(want)
        if data is None:
            return None
        _buf[: len(data)] = data
        return len(data)

    def readline(self):
        out = bytearray()
        while not out.endswith(b"\n"):
            c = self._read(1)
            if c is None:
                return bytes(out) if out else None
            if not c:
                break
            out += c
        return bytes(out)

    def _send(self, data):
        reply = _call({"op": "send", "id": self._conn(), "hex": bytes(data).hex()})
        if "errno" in reply:
            raise _error(reply["errno"])
        return reply["n"]

    def send(self, _bytes):
        return self._send(_bytes)

    def sendall(self, _bytes):
        self._send(_bytes)

    def write(self, _buf, _x=-1, _y=_UNSET):
        # write(buf), write(buf, max_len) or write(buf, off, max_len), as py/stream.c takes them
        data = memoryview(_buf)
        if _y is _UNSET:
            off, max_len = 0, _x
        else:
            off, max_len = min(_x, len(data)), _y
        data = data[off:]
        if max_len >= 0:
            data = data[:max_len]
        return self._send(data)

    def makefile(self, _mode="rb", _buffering=0):
        return self

    def fileno(self):
        return -1 if self._id is None else self._id

    def close(self):
        if self._id is not None:
            _call({"op": "close", "id": self._id})
        self._id = None
        self._closed = True
