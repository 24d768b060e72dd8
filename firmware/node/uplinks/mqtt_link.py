# A node that talks to the platform itself, without a gateway: the platform contract of the
# gateway's SenML adapter (gateway/platforms/senml.py) with the node's own id in the
# gateway's place, over any transport with the small interface below (Wi-Fi, NB-IoT).
#
# Topics, under {prefix}/{node_id}:
#   data/{code}        SenML-CBOR pack per report (protocols/senml.py, as the gateway sends:
#                      base name urn:dev:pk:{code}:, base time when the clock is set, a
#                      record per quantity in its primary unit, and a "seq" record)
#   event/{code}       the same, for alarms sent at once
#   state              retained JSON {"state": "online", "node": id, "dropped": n, ...the
#                      transport's status}; the last will says "offline"
#   cmd/{code}         commands in, the gateway's shape: {"id": ..., "set": {...}} (JSON or CBOR),
#                      or {"id": ..., "ota": "http://.../"} (an update: ota_http.py)
#   cmd-result/{code}  {"id", "ok": true, "set": {...}} or {"id", "ok": false, "error": "..."},
#                      in the command's own encoding
# Everything outbound goes through the outbox (outbox.py) and is popped only after its
# PUBACK, so a link fault or a reset loses nothing. seq counts packs per device and topic
# kind (data, event) from 1, kept in the node's StateFile and flushed to flash before the
# pack carrying it is queued: a reset never reuses a number, so a gap means a loss.
#
# The transport (one per radio; MqttLink uses only this):
#   connect(client_id, will_topic, will_payload)  OSError on failure; retained QoS 1 will
#   publish(topic, payload, retain=False)         QoS 1: returns after PUBACK, else OSError
#   subscribe(topic)                              QoS 1
#   poll(wait_ms=0)                               [(topic str, payload bytes)] received
#   close(); status() -> dict; sleep()
import json
import time

from protocols import cbor, senml
from protocols.model import quantity

COMMAND_MAX_BYTES = 4096  # a node's commands are a few settings; more is not read
ERROR_MAX_CHARS = 300  # as the gateway's results (gateway/commands.py)
_EPOCH_2000 = 946684800  # Unix seconds at 2000-01-01, the epoch of older ports' time.time()
_CLOCK_SET = 1577836800  # 2020-01-01: an earlier clock was never set (no NTP yet)

_ms = getattr(time, "ticks_ms", lambda: int(time.monotonic() * 1000))  # type: ignore[attr-defined]
_diff = getattr(time, "ticks_diff", lambda a, b: a - b)


# Unix seconds now, or None while the clock is not set (the pack then carries no base time
# and the platform stamps it on arrival)
def unix_time():
    t = time.time()
    if time.gmtime(0)[0] == 2000:
        t += _EPOCH_2000
    return t if t >= _CLOCK_SET else None


class MqttLink:
    def __init__(self, transport, outbox, node_id, state, prefix="polekit/v1", clock=unix_time):
        self.transport = transport
        self.outbox = outbox
        self.node_id = node_id
        self.state = state  # a StateFile: seq per device and kind survives resets in it
        self.clock = clock
        self.base = prefix + "/" + node_id
        self.connected = False
        self.handler = None
        self.sent = 0  # packs acknowledged by the broker
        self.faults = 0  # link faults: failed connects, publishes, polls
        self.last_fault = None  # the last one's text, for the log and the self-test
        self.commands = 0  # commands answered (every one gets a result)
        self.commands_failed = 0  # answered with ok: false
        self._told_dropped = -1  # the dropped count the retained state last said

    def topic(self, kind, code=None):
        return self.base + "/" + kind + ("/" + code if code else "")

    # a report: values {quantity: value in its primary unit, or (value, unit)} of device
    # `code` as a SenML-CBOR pack into the outbox; returns the pack's seq. Raises
    # SenMLError for a name or value SenML refuses (before a seq is spent), OSError when
    # the flash refuses the write.
    def report(self, code, values):
        return self._queue("data", code, values)

    # an alarm or state change, sent like a report on event/{code}
    def event(self, code, values):
        return self._queue("event", code, values)

    # handler(code, body) -> the points as set ({name: value}) for the result, or a whole
    # result dict with "ok"; it raises ValueError (or TypeError, OSError) to refuse, with
    # the reason the platform will read
    def on_command(self, handler):
        self.handler = handler

    def _queue(self, kind, code, values):
        readings = []
        for name, value in values.items():
            unit = None
            if isinstance(value, tuple):
                value, unit = value
            elif not (value is True or value is False):
                q = quantity(name)
                unit = q[1] if q else None
            readings.append((name, value, unit))
        readings.append(("seq", 0, None))
        records = senml.pack_readings(code, readings, base_time=self.clock())
        key = "seq." + kind + "." + code
        seq = self.state.get(key, 0) + 1
        records[-1]["v"] = seq
        payload = senml.encode_cbor(records)  # validates: a bad pack spends no seq
        self.state.set(key, seq, now=True)  # on flash before the pack that carries it
        self.outbox.put(kind, code, payload)
        return seq

    # connect if needed, publish the retained state, drain the outbox (QoS 1, each pack
    # popped after its PUBACK) and answer the commands that came in, for up to budget_ms.
    # Returns the packs sent. A link fault is counted (faults, last_fault), the transport
    # closed, and the rest stays in the outbox for the next flush: it never raises for one.
    def flush(self, budget_ms=30000):
        started = _ms()
        sent = 0
        try:
            if not self.connected:
                self._connect()
            elif self._told_dropped != self.outbox.dropped:
                self._publish_state()
            while True:
                for topic, payload in self.transport.poll(0):
                    self._command(topic, payload)
                item = self.outbox.peek()
                if item is None or _diff(_ms(), started) >= budget_ms:
                    break
                kind, code, payload = item
                self.transport.publish(self.topic(kind, code), payload)
                self.outbox.pop()
                sent += 1
                self.sent += 1
        except OSError as exc:
            self.faults += 1
            self.last_fault = "%s: %r" % (type(exc).__name__, exc.args)
            self._close()
        return sent

    # a planned stop (before deep sleep): the retained state says "offline" at once (the
    # will would wait for the broker to notice), then the link closes; the will may repeat
    # it (transports close without a DISCONNECT). A fault on the way is counted, not raised
    def close(self):
        if self.connected:
            try:
                self.transport.publish(self.topic("state"), self._state("offline"), True)
            except OSError as exc:
                self.faults += 1
                self.last_fault = "%s: %r" % (type(exc).__name__, exc.args)
        self._close()

    def _connect(self):
        self.transport.connect(
            "polekit-" + self.node_id, self.topic("state"), self._state("offline")
        )
        self.connected = True
        self.transport.subscribe(self.topic("cmd", "+"))
        self._publish_state()

    def _close(self):
        self.connected = False
        try:
            self.transport.close()
        except OSError:  # noqa: S110 - closing a link that just failed may fail as well
            pass

    def _state(self, state):
        body = {"state": state, "node": self.node_id}
        if state == "online":
            body["dropped"] = self.outbox.dropped
            body.update(self.transport.status())
        return json.dumps(body).encode()

    def _publish_state(self):
        dropped = self.outbox.dropped
        self.transport.publish(self.topic("state"), self._state("online"), True)
        self._told_dropped = dropped

    def _command(self, topic, payload):
        # every command gets a result on cmd-result/{code}, through the outbox
        prefix = self.topic("cmd") + "/"
        if not topic.startswith(prefix):
            return
        code = topic[len(prefix) :]
        as_json = bytes(payload[:1]) == b"{"
        cid = None
        try:
            if len(payload) > COMMAND_MAX_BYTES:
                raise ValueError(
                    "command of %d bytes is over the %d-byte limit; it was not read"
                    % (len(payload), COMMAND_MAX_BYTES)
                )
            body = json.loads(payload) if as_json else cbor.loads(payload)
            if not isinstance(body, dict):
                raise ValueError('body must be a map like {"id": 1, "set": {"report_s": 600}}')
            cid = body.get("id")
            if cid is True or cid is False or not (cid is None or isinstance(cid, (int, str))):
                cid = None
                raise ValueError("id must be text or an integer; the command was not applied")
            changes = body.get("set")
            # {"id": 7, "ota": URL}: an update to fetch (ota_http.py); the handler takes it
            if "ota" not in body and (not isinstance(changes, dict) or not changes):
                raise ValueError('body must be a map like {"id": 1, "set": {"report_s": 600}}')
            result = self._applied(code, body)
            result["id"] = cid
        except (ValueError, TypeError, OSError) as exc:
            result = {"id": cid, "ok": False, "error": str(exc)[:ERROR_MAX_CHARS]}
        self.commands += 1
        if not result.get("ok"):
            self.commands_failed += 1
        encoded = json.dumps(result).encode() if as_json else cbor.dumps(result)
        self.outbox.put("cmd-result", code, encoded)

    def _applied(self, code, body):
        handler = self.handler
        if handler is None:
            raise ValueError("this node takes no commands")
        try:
            out = handler(code, body)
        except (ValueError, TypeError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - a handler's bug: answered, printed, node goes on
            print("polekit: command to %s: internal error %r" % (code, exc))
            raise ValueError(
                "internal error (%s); see the node's log" % type(exc).__name__
            ) from None
        if isinstance(out, dict) and "ok" in out:
            return dict(out)
        return {"id": None, "ok": True, "set": out if isinstance(out, dict) else {}}
