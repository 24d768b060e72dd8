# The Wi-Fi MQTT transport: network.WLAN for the radio, micropython-lib's umqtt.simple
# (shipped in the bundle as /lib/umqtt/simple.py) for MQTT, behind the transport interface
# mqtt_link.py uses: every failure is an OSError, publishes are QoS 1 and return after
# their PUBACK.
#
# umqtt.simple sets no socket timeout and turns the socket back to blocking after each
# read, so the timeout is set again before every exchange: a broker that stops answering
# costs timeout_s, never a hung node. Its MQTTException (a refused CONNECT) and its asserts
# on a malformed reply become OSError here, so a caller handles one error family.
# The session is persistent (clean_session=False): commands sent while the node was away
# (asleep, out of coverage) wait at the broker and arrive when it connects.
# TLS: the ESP32 port wraps the socket with its ssl module (ssl_params go to
# ssl.wrap_socket); the emulated board has no TLS.
import time
from errno import ECONNREFUSED, ETIMEDOUT

import network


class WifiMqtt:
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
        ssl_params=None,
    ):
        self.ssid = ssid
        self.key = key
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.tls = tls
        self.ssl_params = ssl_params or {}
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.client = None
        self.received = []
        self._last_ms = 0  # ticks_ms of the last packet sent (keepalive pings)
        self.wlan = network.WLAN(network.STA_IF)

    def _join(self):
        # the access point, within timeout_s
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
        self._join()
        client = MQTTClient(
            client_id,
            self.host,
            self.port,
            self.user,
            self.password,
            self.keepalive,
            self.tls,
            self.ssl_params,
        )
        client.set_callback(self._on_message)
        client.set_last_will(will_topic, will_payload, True, 1)
        self.client = client
        try:
            client.connect(False)
        except Exception as exc:
            self.close()
            raise _link_error(exc) from None
        self._timed()
        self._last_ms = time.ticks_ms()

    def _on_message(self, topic, payload):
        self.received.append((topic.decode(), bytes(payload)))

    def _timed(self):
        # before each exchange: umqtt.simple's reads leave the socket blocking for ever
        client = self.client
        if client is None:
            raise OSError(ECONNREFUSED, "not connected")
        client.sock.settimeout(self.timeout_s)
        return client

    def publish(self, topic, payload, retain=False):
        try:
            self._timed().publish(topic, payload, retain, 1)
        except Exception as exc:
            raise _link_error(exc) from None
        self._last_ms = time.ticks_ms()

    def subscribe(self, topic):
        try:
            self._timed().subscribe(topic, 1)
        except Exception as exc:
            raise _link_error(exc) from None

    def poll(self, wait_ms=0):
        client = self._timed()
        started = time.ticks_ms()
        try:
            if self.keepalive and time.ticks_diff(started, self._last_ms) > self.keepalive * 500:
                client.ping()  # half the keepalive: the broker never takes the node for gone
                self._last_ms = started
            while True:
                while True:  # whatever is waiting; check_msg() says None after a PUBLISH too
                    count = len(self.received)
                    if client.check_msg() is None and len(self.received) == count:
                        break
                if self.received or time.ticks_diff(time.ticks_ms(), started) >= wait_ms:
                    break
                time.sleep_ms(20)
        except Exception as exc:
            raise _link_error(exc) from None
        out, self.received = self.received, []
        return out

    def close(self):
        client, self.client = self.client, None
        if client is not None and client.sock is not None:
            client.sock.close()

    def status(self):
        try:
            return {"rssi": self.wlan.status("rssi")}
        except (OSError, ValueError):
            return {}

    def sleep(self):
        pass  # the Wi-Fi node's radio sleeps with the chip (deep sleep)


def _link_error(exc):
    # one error family for the caller: OSError as it came, else an OSError saying what
    if isinstance(exc, OSError):
        return exc
    return OSError(ECONNREFUSED, "MQTT %s: %r" % (type(exc).__name__, exc.args))


# A WifiMqtt from a node's checked settings (settings.MQTT_DEFAULTS/LIMITS/TEXTS merged in);
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
    )
