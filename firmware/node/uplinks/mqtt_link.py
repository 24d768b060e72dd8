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
#                      transport's status}; the last will says "offline" ("node" where the
#                      gateway's says "gateway": docs/protocols.md, the node's dialect)
#   cmd/{code}         commands in, the gateway's shape: {"id": ..., "set": {...}} (JSON if
#                      it starts with "{" after white space, else CBOR, as the gateway reads),
#                      or {"id": ..., "ota": "http://.../"} (an update: ota_http.py)
#   cmd-result/{code}  {"id", "ok": true, "set": {...}} or {"id", "ok": false, "error": "..."},
#                      in the command's own encoding
# Everything outbound goes through the outbox (outbox.py) and is popped only after its
# PUBACK, so a link fault or a reset loses nothing. seq counts packs per device and topic
# kind (data, event) from 1, kept in the node's StateFile and flushed to flash before the
# pack carrying it is queued: a reset never reuses a number, so a gap means a loss.
#
# A command is answered durably: its result is put in the outbox (on flash) by the time the
# transport acknowledges the command (see `handler` below), so a fault, a sleep or a reset
# after the PUBACK cannot lose it, and a fault before it makes the broker send it again.
#
# The transport (one per radio; MqttLink uses only this):
#   connect(client_id, will_topic, will_payload)  OSError on failure; retained QoS 1 will
#   publish(topic, payload, retain=False)         QoS 1: returns after PUBACK, else OSError
#   subscribe(topic)                              QoS 1
#   poll(wait_ms=0)                               [(topic str, payload bytes)] received
#   close()                                       DISCONNECT when it can (no will); never raises
#   status() -> dict
#   sleep()       before deep sleep: DISCONNECT, radio to sleep; returns the messages it
#                 holds unread ([(topic, payload)], or None): a radio that acknowledges by
#                 itself may take one during the DISCONNECT, and nobody else will read it
#   handler      set by MqttLink: a transport whose client acknowledges a message when its
#                callback returns (umqtt.simple) calls handler(topic, payload, size) from
#                that callback and poll() returns none; payload may be only the first bytes
#                of a message over the transport's limit, size is the message's. A radio
#                that acknowledges by itself (the BC260Y) returns them from poll()
#   keeps_alive  True when the radio keeps the link alive between calls (the BC260Y's own
#                MQTT client pings); False (umqtt.simple pings only when called): flush()
#                then ends with close(), else the broker would drop a node that reports
#                less often than its keepalive and publish its will
import json
import time

from protocols import cbor, senml
from protocols.model import quantity

COMMAND_MAX_BYTES = 4096  # a node's commands are a few settings; more is not read
ERROR_MAX_CHARS = 300  # as the gateway's results (gateway/commands.py)
ID_MAX_CHARS = 128  # as the gateway's command ids (gateway/commands.py ID_MAX_CHARS)
SEQ_FILE = "/seq.json"  # the packs' sequence numbers, a kind and a device code each
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
        transport.handler = self._command

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
        self.outbox.check(kind, code, payload)  # nor does one the outbox cannot hold
        self.state.set(key, seq, now=True)  # on flash before the pack that carries it
        self.outbox.put(kind, code, payload)
        return seq

    # connect if needed, publish the retained state, drain the outbox (QoS 1, each pack
    # popped after its PUBACK) and answer the commands that came in, for up to budget_ms.
    # Returns the packs sent. A link fault (or MemoryError) is counted (faults,
    # last_fault), the transport closed, and the rest stays in the outbox for the next
    # flush: it never raises. Then, on a transport that does not keep the link alive by
    # itself, the link is closed with a DISCONNECT (no will) unless `stay`: a caller that
    # flushes again within the keepalive (a mains node listening for commands) stays
    # connected, and each flush pings when half the keepalive has gone by.
    def flush(self, budget_ms=30000, stay=False):
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
                at = self.outbox.peeked
                self.transport.publish(self.topic(kind, code), payload)
                self.outbox.pop(at)  # that pack, even if a put dropped it meanwhile
                sent += 1
                self.sent += 1
            if not (stay or self.transport.keeps_alive):
                self._close()
        except (OSError, MemoryError) as exc:
            self.faults += 1
            self.last_fault = "%s: %r" % (type(exc).__name__, exc.args)
            self._close()
        return sent

    # a planned stop (before deep sleep): the retained state says "offline" at once, then
    # the link closes with a DISCONNECT. A fault on the way is counted, not raised
    def close(self):
        if self.connected:
            try:
                self.transport.publish(self.topic("state"), self._state("offline"), True)
            except OSError as exc:
                self.faults += 1
                self.last_fault = "%s: %r" % (type(exc).__name__, exc.args)
        self._close()

    # before deep sleep: the link ends and the radio sleeps (transport.sleep()). A command
    # the radio took meanwhile (the BC260Y acknowledges one that comes during its
    # DISCONNECT; the broker will not send it again) is applied and answered now: its
    # result waits in the outbox for the next wake. Never raises for a link fault
    def sleep(self):
        self.connected = False
        held = self.transport.sleep()
        for topic, payload in held or ():
            try:
                self._command(topic, payload)
            except (OSError, MemoryError) as exc:  # the flash or the heap: it is lost
                self.faults += 1
                self.last_fault = "%s: %r" % (type(exc).__name__, exc.args)

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

    def _command(self, topic, payload, size=None):
        # every command gets a result on cmd-result/{code}, put in the outbox before this
        # returns (the transport acknowledges the command after it); raises only OSError or
        # MemoryError (the flash or the heap failed: not acknowledged, sent again)
        prefix = self.topic("cmd") + "/"
        if not topic.startswith(prefix):
            return
        code = topic[len(prefix) :]
        payload = bytes(payload)
        if size is None:
            size = len(payload)
        as_json = payload.lstrip()[:1] == b"{"
        cid = None
        try:
            if size > COMMAND_MAX_BYTES:
                raise ValueError(
                    "command of %d bytes is over the %d-byte limit; it was not read"
                    % (size, COMMAND_MAX_BYTES)
                )
            if size > len(payload):  # the transport drained it unread
                raise ValueError(
                    "command of %d bytes is over what the radio reads; it was not read" % size
                )
            body = json.loads(payload) if as_json else cbor.loads(payload)
            if not isinstance(body, dict):
                raise ValueError('body must be a map like {"id": 1, "set": {"report_s": 600}}')
            cid = _command_id(body.get("id"))
            changes = body.get("set")
            # {"id": 7, "ota": URL}: an update to fetch (ota_http.py); the handler takes it
            if "ota" not in body and (not isinstance(changes, dict) or not changes):
                raise ValueError('body must be a map like {"id": 1, "set": {"report_s": 600}}')
            result = self._applied(code, body)
            result["id"] = cid
        except (ValueError, TypeError, OSError) as exc:
            result = {"id": cid, "ok": False, "error": str(exc)[:ERROR_MAX_CHARS]}
        self.commands += 1
        ok = result.get("ok") is True
        if not ok:
            self.commands_failed += 1
        try:
            self.outbox.put("cmd-result", code, _encoded(result, as_json))
            return
        except (ValueError, TypeError) as exc:  # not encodable, or too big for the outbox
            why = "%s: %s" % (type(exc).__name__, str(exc)[:120])
        print("polekit: result of a command to %s not sendable (%s)" % (code[:40], why))
        if ok:
            self.commands_failed += 1
        short = {
            "id": cid,
            "ok": False,
            "error": "its result could not be sent (%s); %s"
            % (why, "it was applied" if ok else "it was not applied"),
        }
        try:
            self.outbox.put("cmd-result", code, _encoded(short, as_json))
        except ValueError:  # a device code too long for any record: nowhere to answer
            print("polekit: command to %r dropped: no result fits" % code[:40])

    def _applied(self, code, body):
        handler = self.handler
        if handler is None:
            raise ValueError("this node takes no commands")
        try:
            out = handler(code, body)
        except (ValueError, TypeError, OSError):
            raise
        except MemoryError:
            raise  # the heap, not the command: not acknowledged, sent again
        except Exception as exc:  # noqa: BLE001 - a handler's bug: answered, printed, node goes on
            print("polekit: command to %s: internal error %r" % (code, exc))
            raise ValueError(
                "internal error (%s); see the node's log" % type(exc).__name__
            ) from None
        if isinstance(out, dict) and "ok" in out:
            return dict(out)
        return {"id": None, "ok": True, "set": out if isinstance(out, dict) else {}}


# The node's link over ``transport`` (WifiMqtt, NbIotMqtt) from its checked MQTT settings
# (settings_mqtt): its outbox file, the packs' sequence numbers, its id and topic prefix.
def from_settings(c, transport):
    from ..outbox import Outbox
    from ..state import StateFile

    return MqttLink(
        transport,
        Outbox(capacity=c["outbox_bytes"]),
        c["node_id"],
        StateFile(SEQ_FILE),
        c["mqtt_prefix"],
    )


# the id a result can echo, as the gateway takes them (gateway/commands.py _check_id): text
# of up to ID_MAX_CHARS characters or a 64-bit integer; ValueError for anything else
def _command_id(value):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 63:
        return value
    if isinstance(value, str) and len(value) <= ID_MAX_CHARS:
        return value
    raise ValueError(
        "id must be text of up to %d characters or a 64-bit integer; the command was not "
        "applied" % ID_MAX_CHARS
    )


def _encoded(result, as_json):
    # a result in its command's encoding; ValueError or TypeError if a value cannot be
    return json.dumps(result).encode() if as_json else cbor.dumps(result)
