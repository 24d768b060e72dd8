# The Wi-Fi MQTT transport: network.WLAN for the radio, micropython-lib's umqtt.simple
# 1.7.0 (frozen in the ESP32 firmware; the bundle ships the same file as /lib/umqtt) for
# MQTT, behind the transport interface mqtt_link.py uses: every failure is an OSError,
# publishes are QoS 1 and return after their PUBACK.
#
# umqtt.simple hands us its socket through the `ssl=` hook (it calls
# ssl.wrap_socket(sock, server_hostname=...) on the connected socket, TLS or not here),
# and we give it back a _LinkSocket, which keeps three promises umqtt's own code does not:
# - no wait without a limit: wait_msg() calls setblocking(True) after a packet's first
#   byte, which on the chip (ports/esp32/modsocket.c) removes the timeout, so a broker
#   that goes silent after a PINGRESP or a command would hang publish() for ever; here
#   setblocking(True) means "wait timeout_s". connect() gets the timeout as well, set on
#   the TCP socket before TLS wraps it: the TLS socket of MicroPython v1.27.0
#   (extmod/modtls_mbedtls.c) has no settimeout, it reads through the TCP socket's;
# - no allocation a broker chooses: umqtt reads a PUBLISH's topic and body with one
#   read(n) each; a read over MESSAGE_MAX_BYTES is drained through a small buffer and
#   handed on as its first bytes and its size, so an oversize command is answered
#   "too large" (and acknowledged) instead of raising MemoryError at every connect;
# - packet ids in range: umqtt counts self.pid up for ever and packs it as 16 bits
#   ("!H"), so its 65536th publish would carry id 0 (MQTT 3.1.1 section 2.3.1 forbids it:
#   the broker drops the link) and never match its PUBACK. An id is free again once its
#   exchange is over (QoS 1 here waits for each PUBACK), so the count restarts at 0.
# umqtt's MQTTException (a refused CONNECT), its asserts on a malformed reply, an
# IndexError on a closed socket and MemoryError become OSError here, so a caller handles
# one error family.
#
# A message is handed to `handler` (MqttLink sets it) inside umqtt's callback, which runs
# before umqtt sends the PUBACK: the command is applied and its result is on flash before
# the broker forgets the message, so a fault, a sleep or a reset right after cannot lose it
# (a fault before the PUBACK makes the broker deliver it again at the next connect).
#
# The session is persistent (clean_session=False): commands sent while the node was away
# wait at the broker and arrive when it connects. umqtt.simple pings only when called, so
# `keeps_alive` is False: MqttLink ends a flush with close() (a DISCONNECT: no will)
# unless its caller flushes again within the keepalive.
#
# TLS: an ssl.SSLContext that verifies the broker against `ca_file` (the CA's DER
# certificate on flash) and its name (server_hostname). verify_mode is set to
# CERT_REQUIRED explicitly: micropython-lib's ssl.SSLContext (v1.27.0's pin) sets
# CERT_NONE in its constructor, whatever the protocol. TLS without a CA is refused:
# encrypted but unauthenticated is not offered. The emulated board has no TLS.
import time
from errno import ECONNREFUSED, ECONNRESET, ENOMEM, ETIMEDOUT

import network

MESSAGE_MAX_BYTES = 4096  # the most one read of a PUBLISH may allocate (topic or body)
_EPOCH_2000 = 946684800  # Unix seconds at 2000-01-01, the ESP32 port's epoch
_DRAIN_BYTES = 128  # the buffer an oversize body is drained through
_HEAD_BYTES = 16  # the first bytes of an oversize body kept (to answer in its encoding)
_PID_MAX = 65535


class _LinkSocket:
    # what umqtt.simple reads and writes: `stream` (the TCP socket, or the TLS socket over
    # it) with the timeout kept on `tcp`, and oversize reads drained
    def __init__(self, tcp, stream, timeout_s, max_bytes):
        self.max_bytes = max_bytes
        self.tcp = tcp
        self.stream = stream
        self.timeout_s = timeout_s
        self.skipped = 0  # size of the last drained read (0: none since the last message)
        self.head = b""  # its first bytes
        self._buf = bytearray(_DRAIN_BYTES)

    def setblocking(self, flag):
        self.tcp.settimeout(self.timeout_s if flag else 0)

    def settimeout(self, value):
        self.tcp.settimeout(self.timeout_s if value is None else value)

    def write(self, buf, n=-1):
        return self.stream.write(buf) if n < 0 else self.stream.write(buf, n)

    def read(self, n):
        if n <= self.max_bytes:
            return self.stream.read(n)
        buf = self._buf
        mv = memoryview(buf)
        left = n
        head = b""
        while left:
            got = self.stream.readinto(mv[: min(left, len(buf))])
            if not got:
                raise OSError(ECONNRESET, "link closed inside a %d-byte packet" % n)
            if not head:
                head = bytes(buf[: min(got, _HEAD_BYTES)])
            left -= got
        self.skipped = n
        self.head = head
        return b""

    def close(self):
        self.stream.close()


class WifiMqtt:
    keeps_alive = False  # umqtt.simple pings only when called (see above)

    def __init__(
        self,
        ssid,
        key,
        host,
        port=1883,
        user=None,
        password=None,
        tls=False,
        keepalive=60,
        timeout_s=10,
        ca_file=None,
        message_max_bytes=MESSAGE_MAX_BYTES,
        ntp_host="pool.ntp.org",
    ):
        self.ssid = ssid
        self.message_max_bytes = message_max_bytes
        self.key = key
        self.host = host
        self.port = port
        self.user = user
        # umqtt sends a password whenever it sends a user name (and len(None) fails)
        self.password = "" if user and password is None else password
        if tls and not ca_file:
            raise ValueError("mqtt_tls needs the broker's CA certificate (ca_file, DER)")
        self.tls = tls
        self.ca_file = ca_file
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.client = None
        self._context = None  # the SSLContext of the link being opened
        self.sock = None  # the _LinkSocket of the open link
        self.handler = None  # handler(topic, payload, size): messages before their PUBACK
        self.received = []  # without a handler: (topic, payload) for poll() to return
        self.drained = 0  # messages over MESSAGE_MAX_BYTES, drained unread
        self._last_ms = 0  # ticks_ms of the last packet sent (keepalive pings)
        self.wlan = network.WLAN(network.STA_IF)
        self.ntp_host = ntp_host

    # the access point, within timeout_s (an update's HTTP pull needs it without MQTT)
    def join(self):
        wlan = self.wlan
        if wlan.isconnected():
            return
        wlan.active(True)
        wlan.connect(self.ssid, self.key)
        started = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), started) > self.timeout_s * 1000:
                raise OSError(ETIMEDOUT, "Wi-Fi %r not joined" % self.ssid)
            time.sleep_ms(100)

    def connect(self, client_id, will_topic, will_payload):
        from umqtt.simple import MQTTClient

        self.close()
        self.join()
        self._context = self._tls() if self.tls else None
        client = MQTTClient(
            client_id, self.host, self.port, self.user, self.password, self.keepalive, ssl=self
        )
        client.set_callback(self._on_message)
        client.set_last_will(will_topic, will_payload, True, 1)
        self.client = client
        try:
            client.connect(False, self.timeout_s)  # the TCP connect and the CONNACK too
        except Exception as exc:  # noqa: BLE001 - each becomes OSError (_link_error)
            self._drop()
            raise _link_error(exc) from None
        self._last_ms = time.ticks_ms()

    def wrap_socket(self, sock, server_hostname=None):
        # umqtt's ssl= hook: the connected TCP socket, its timeout already set
        stream = sock
        if self._context is not None:
            stream = self._context.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = _LinkSocket(sock, stream, self.timeout_s, self.message_max_bytes)
        return self.sock

    def _tls(self):
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # the constructor set CERT_NONE; verify_mode is a property of micropython-lib's
        # ssl.py (python-stdlib/ssl at 6ae440a) that the ESP32 stubs leave out
        ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
        with open(self.ca_file, "rb") as f:
            ctx.load_verify_locations(cadata=f.read())
        return ctx

    def _on_message(self, topic, payload):
        # inside umqtt's wait_msg(), before its PUBACK
        sock = self.sock
        size = len(payload)
        if sock is not None and sock.skipped:
            size, payload = sock.skipped, sock.head
            sock.skipped, sock.head = 0, b""
            self.drained += 1
        if not topic:
            return  # a topic over MESSAGE_MAX_BYTES: not one of ours, nothing to answer
        topic = bytes(topic).decode()
        if self.handler is None:
            self.received.append((topic, bytes(payload)))
        else:
            self.handler(topic, bytes(payload), size)

    def _ready(self):
        client = self.client
        if client is None:
            raise OSError(ECONNREFUSED, "not connected")
        if client.pid >= _PID_MAX - 1:
            client.pid = 0  # the next exchange uses 1 (the last one is over: see above)
        return client

    def publish(self, topic, payload, retain=False):
        try:
            self._ready().publish(topic, payload, retain, 1)
        except Exception as exc:  # noqa: BLE001 - each becomes OSError (_link_error)
            raise _link_error(exc) from None
        self._last_ms = time.ticks_ms()

    def subscribe(self, topic):
        try:
            self._ready().subscribe(topic, 1)
        except Exception as exc:  # noqa: BLE001
            raise _link_error(exc) from None
        self._last_ms = time.ticks_ms()

    def poll(self, wait_ms=0):
        client = self._ready()
        started = time.ticks_ms()
        try:
            if self.keepalive and time.ticks_diff(started, self._last_ms) > self.keepalive * 500:
                client.ping()  # half the keepalive: the broker never takes the node for gone
                self._last_ms = started
            while True:
                while client.check_msg() is not None:
                    pass  # whatever is waiting (a PUBLISH goes to the handler)
                if self.received or time.ticks_diff(time.ticks_ms(), started) >= wait_ms:
                    break
                time.sleep_ms(20)
        except Exception as exc:  # noqa: BLE001
            raise _link_error(exc) from None
        out, self.received = self.received, []
        return out

    def close(self):
        # a DISCONNECT (the broker then drops the will: a planned end) and the socket
        # closed; never raises: after a fault the DISCONNECT goes nowhere and the will fires
        sock = self.sock
        if sock is not None and self.client is not None:
            try:
                sock.settimeout(self.timeout_s)
                sock.write(b"\xe0\x00")
            except OSError:
                pass  # the link is already gone
        self._drop()

    def _drop(self):
        sock, self.sock, self.client = self.sock, None, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass  # closing a dead TLS link may fail as well

    def status(self):
        try:
            return {"rssi": self.wlan.status("rssi")}
        except (OSError, ValueError):
            return {}

    def clock(self):
        """Unix seconds from NTP (micropython-lib's ntptime, the ESP32 firmware's own copy;
        one UDP round trip to ``ntp_host``), or None: no Wi-Fi, no answer within 1 s, or no
        ntptime in this bundle."""
        if not self.wlan.isconnected():
            return None
        try:
            import ntptime
        except ImportError:
            return None
        ntptime.host = self.ntp_host
        try:
            secs = ntptime.time()  # in the port's epoch
        except (OSError, IndexError, ValueError):  # no answer, or a short one
            return None
        return secs + (_EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0)

    def sleep(self):
        pass  # the Wi-Fi node's radio sleeps with the chip (deep sleep)


def _link_error(exc):
    # one error family for the caller: OSError as it came, else an OSError saying what
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, MemoryError):
        return OSError(ENOMEM, "MQTT: out of memory")
    return OSError(ECONNREFUSED, "MQTT %s: %r" % (type(exc).__name__, exc.args))


# A WifiMqtt from a node's checked settings (settings_mqtt.MQTT_DEFAULTS/LIMITS/TEXTS merged in);
# ValueError naming what is missing
def from_settings(s):
    missing = [k for k in ("wifi_ssid", "mqtt_host") if not s.get(k)]
    if missing:
        raise ValueError(
            "config: %s needed for the Wi-Fi MQTT uplink; set them with `polekit deploy --set`"
            % " and ".join(missing)
        )
    return WifiMqtt(
        s["wifi_ssid"],
        s.get("wifi_key", ""),
        s["mqtt_host"],
        s.get("mqtt_port", 1883),
        s.get("mqtt_user"),
        s.get("mqtt_password"),
        bool(s.get("mqtt_tls", 0)),
        s.get("mqtt_keepalive_s", 60),
        s.get("mqtt_timeout_s", 10),
        s.get("mqtt_ca_file"),
    )
