"""An emulated Quectel BC260Y NB-IoT module on the host end of an emulated board's UART.

``AtModem(board.uarts["modem"], board=board, pwrkey_pin=18)`` answers the firmware's AT
commands as the module's documents say and bridges its MQTT client to a real broker with
paho-mqtt: the firmware's CONNECT, SUBSCRIBE and QoS 1 PUBLISH become paho's, the broker's
PUBACK comes back as ``+QMTPUB: <id>,<msgID>,0`` and its messages as ``+QMTRECV`` URCs.

What it follows (Quectel's BC260Y MQTT note was not at hand; the BC26's and the BG95's,
the same MQTT AT command family, were):
- BC26 MQTT Application Note V1.1 (2019-04-22) and BG95&BG77&BG600L Series MQTT Application
  Note V1.1 (2020-05-28): AT+QMTCFG ("version", "keepalive", "session", "will", "timeout",
  "recv/mode"), AT+QMTOPEN/QMTCLOSE/QMTCONN/QMTDISC/QMTSUB/QMTPUB (the BG95's fixed-length
  form ``...,"<topic>",<msglen>`` then ``>`` and exactly msglen bytes, so binary SenML-CBOR
  needs no escaping; the Ctrl-Z-ended and quoted-message forms are taken too), the result
  codes of +QMTOPEN (-1..5), +QMTCONN (<result>,<ret_code> = the CONNACK code),
  +QMTPUB/+QMTSUB (0 acked, 1 retransmitting, 2 failed) and +QMTSTAT (1 closed by peer,
  2 PINGREQ timed out, ... 7 link not alive);
- 3GPP TS 27.007: +CEREG (<stat>: 0 not searching, 1 home, 2 searching, 3 denied, 5
  roaming; with <n> 2 the read answer and the URC carry <tac>,<ci>,<AcT> after the stat),
  +CFUN (0 minimum functionality: the radio off, deregistered; 1 full), +CSQ (<rssi>
  0..31 = -113..-51 dBm, 99 unknown), +CPSMS (timers coded as TS 24.008 GPRS Timer 3 /
  Timer 2 bit strings), +CMEE and +CME ERROR codes (3 operation not allowed, 4 not
  supported, 30 no network service, 50 incorrect parameters);
- strings: Quectel documents no escapes in the QMT commands' strings, so a string runs
  from its quote to the next quote as it is (a backslash is a backslash);
- BC260Y hardware design: PWRKEY driven low (through the board's transistor: the MCU pin
  high) wakes the module from PSM; held >= 500 ms it powers the module up, after which it
  prints ``RDY``. A hung module is taken back by that long press here (the issue's fault).

Timings are the module's in kind, scaled for tests: ``registration_delay_s`` (attach after
boot or a coverage gap), ``send_latency_s`` (a PUBLISH's round trip over the radio),
``boot_s``; PSM starts when the active time the firmware asked for in AT+CPSMS has passed
with no MQTT link and a quiet UART. Faults, from tests: ``set_coverage(False)``,
``lose_registration()``, ``drop_connection(err)`` (+QMTSTAT), ``hang()`` (nothing answers
until a PWRKEY press of >= 500 ms), ``fail_next(command, cme)``, ``on_next_ok(command,
before=, after=)`` (something said or done around the next such command's OK: a +QMTSTAT
before it, a +QMTRECV after it), ``deliver(topic, payload)`` (a message from the broker, as
a +QMTRECV in the link's receive mode). A module of another firmware: ``qmtcfg_refused``
(AT+QMTCFG settings it answers +CME ERROR: 50 to, e.g. "recv/mode" on a BC26, which then
sends +QMTRECV without a length) and ``cereg_n`` (the +CEREG report level it powers up with).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

LINKS = range(6)  # the manual's <tcpconnectID> 0..5
# +CME ERROR codes (3GPP TS 27.007 9.2) the module gives, with their verbose texts
CME_TEXT = {
    3: "operation not allowed",
    4: "operation not supported",
    30: "no network service",
    50: "incorrect parameters",
    100: "unknown",
}
# +QMTSTAT <err_code> (BC26/BG95 MQTT notes, "+QMTSTAT" URC)
QMTSTAT_CLOSED_BY_PEER = 1
QMTSTAT_PING_TIMEOUT = 2
# +QMTCONN <ret_code>: the CONNACK return code, as paho names it
_CONNACK = (
    "Success",
    "Unsupported protocol version",
    "Client identifier not valid",
    "Server unavailable",
    "Bad user name or password",
    "Not authorized",
)
PWRKEY_POWER_ON_S = 0.5  # a press at least this long powers a (hung) module up again
# TS 24.008 10.5.7.4a GPRS Timer 3 (T3412 extended) and 10.5.7.3 GPRS Timer 2 (T3324):
# bits 8-6 the unit in seconds (None: deactivated), bits 5-1 the count
_TIMER3_UNIT_S = (600, 3600, 36000, 2, 30, 60, 1152000, None)
_TIMER2_UNIT_S = (2, 60, 360, None, None, None, None, None)


class AtSyntaxError(ValueError):
    """A command line the module cannot parse (it answers ERROR)."""


@dataclass(frozen=True)
class AtCommand:
    """One parsed command line: ``AT+QMTPUB=0,1,1,0,"t",5`` is name "+QMTPUB", kind "set"
    and args (0, 1, 1, 0, "t", 5); an omitted parameter is None. Basic commands (ATE0)
    are name "E", kind "set", args (0,); a bare AT is name "" and kind "exec"."""

    name: str
    kind: str  # "exec" | "read" (?) | "test" (=?) | "set" (=...)
    args: tuple[int | str | None, ...] = ()


def parse_args(text: str) -> tuple[int | str | None, ...]:
    """The comma-separated parameters of a set command: quoted strings (commas inside are
    kept), integers, None where a parameter is left out (``1,,,"00000100"``)."""
    args: list[int | str | None] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise AtSyntaxError(f"unterminated string in {text!r}")
            args.append(text[i + 1 : end])  # as it is: no escapes (Quectel documents none)
            i = end + 1
            if i < n and text[i] != ",":
                raise AtSyntaxError(f"text after a string in {text!r}")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            item = text[i:end].strip()
            if not item:
                args.append(None)
            elif item.lstrip("-").isdigit():
                args.append(int(item))
            else:
                args.append(item)
            i = end
        if i >= n:
            return tuple(args)
        i += 1  # the comma


def parse_command(line: str) -> AtCommand:
    """One command line (without its CR) as the module reads it."""
    if line[:2].upper() != "AT":
        raise AtSyntaxError(f"not an AT command: {line!r}")
    body = line[2:]
    if not body:
        return AtCommand("", "exec")
    if body[0] in "+&^$":
        cut = next((i for i, c in enumerate(body) if c in "=?"), len(body))
        name, rest = body[:cut].upper(), body[cut:]
        if rest == "":
            return AtCommand(name, "exec")
        if rest == "?":
            return AtCommand(name, "read")
        if rest == "=?":
            return AtCommand(name, "test")
        if rest.startswith("="):
            return AtCommand(name, "set", parse_args(rest[1:]))
        raise AtSyntaxError(f"bad command {line!r}")
    name, value = body[0].upper(), body[1:]
    if value == "":
        return AtCommand(name, "exec")
    if value.isdigit():
        return AtCommand(name, "set", (int(value),))
    raise AtSyntaxError(f"bad command {line!r}")


def timer_s(bits: str | None, units: tuple[int | None, ...]) -> int | None:
    """Seconds of a TS 24.008 timer given as its 8-character bit string; None if it is
    deactivated or not given."""
    if not bits or len(bits) != 8 or set(bits) - {"0", "1"}:
        return None
    unit = units[int(bits[:3], 2)]
    return None if unit is None else unit * int(bits[3:], 2)


@dataclass
class _Link:
    """One MQTT client of the module (<tcpconnectID>): its settings and its bridge."""

    version: int = 4
    keepalive_s: int = 120
    clean_session: int = 1
    will: tuple[int, int, str, str] | None = None  # qos, retain, topic, message
    recv_with_length: int = 0
    host: str = ""
    port: int = 0
    opened: bool = False
    client: Any = None  # paho's client while connected
    client_id: str = ""
    pending: dict[int, int] = field(default_factory=dict)  # paho mid -> the module's msgID


class AtModem:
    """The module on ``port`` (the host end of the board's modem UART, a pseudo-terminal);
    it watches GPIO ``pwrkey_pin`` of ``board`` as its PWRKEY (``pwrkey_active`` is the
    MCU level that pulls PWRKEY low). Owns a reader thread, a clock thread and one paho
    client per open MQTT link; use as a context manager or call ``start()``/``stop()``."""

    def __init__(
        self,
        port: str,
        *,
        board: Any = None,
        pwrkey_pin: int | None = None,
        pwrkey_active: int = 1,
        registration_delay_s: float = 1.0,
        send_latency_s: float = 0.2,
        boot_s: float = 0.3,
        csq: int = 22,
        qmtcfg_refused: tuple[str, ...] = (),
        cereg_n: int = 0,
    ) -> None:
        self.port = port
        self.registration_delay_s = registration_delay_s
        self.send_latency_s = send_latency_s
        self.boot_s = boot_s
        self.csq = csq
        self.qmtcfg_refused = {name.lower() for name in qmtcfg_refused}
        self.cereg_n_at_power_up = cereg_n
        self.fun = 1  # +CFUN: 1 full functionality, 0 the radio off
        self.state = "on"  # on | psm | hung | booting
        self.coverage = True
        self.commands: list[str] = []  # every command line the module took, in order
        self.events: list[tuple[float, str]] = []  # (monotonic time, psm|wake|reboot|...)
        self.last_rx = time.monotonic()  # when the firmware last sent the module a byte
        self.psm_mode = 0
        self.psm_active_s: int | None = None
        self.psm_tau_s: int | None = None
        self._board = board
        self._pwrkey_pin = pwrkey_pin
        self._pwrkey_active = pwrkey_active
        self._pressed_at: float | None = None
        self._lock = threading.RLock()
        self._fd = -1
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rx = bytearray()
        self._data_mode: tuple[Callable[[bytes], None], int | None] | None = None
        self._fail: dict[str, int] = {}
        self._around_ok: dict[str, tuple[Any, Any]] = {}
        self._pending_ok: tuple[Any, Any] | None = None
        self._inbox: queue.Queue[tuple[str, int, Any, int, tuple[Any, ...]]] = queue.Queue()
        self._reset_settings()
        self._registered_at = time.monotonic() + registration_delay_s
        self._last_activity = time.monotonic()
        self._cereg_said = 2

    # ---- life cycle ------------------------------------------------------------------

    def start(self) -> AtModem:
        """Open the UART and start answering (the module is powered and attaching)."""
        self._fd = os.open(self.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        if self._board is not None and self._pwrkey_pin is not None:
            self._board.watch_pin(self._pwrkey_pin, self._pwrkey)
        for target in (self._read_loop, self._clock, self._dispatch):
            t = threading.Thread(target=target, name=f"atmodem-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Close every MQTT link (abruptly, as a power cut would) and the UART."""
        self._stop.set()
        with self._lock:
            for i in LINKS:
                self._close_link(i, graceful=False)
        for t in self._threads:
            t.join(timeout=2)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AtModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- faults, for tests -----------------------------------------------------------

    def set_coverage(self, on: bool) -> None:
        """No coverage: registration is lost (+CEREG stat 2, searching), CSQ reads 99 and
        every MQTT link ends with +QMTSTAT: <id>,2 (its PINGREQ goes unanswered). Coverage
        back: the module registers again after ``registration_delay_s``."""
        with self._lock:
            self.coverage = on
            self.events.append((time.monotonic(), "coverage" if on else "no-coverage"))
            if on:
                self._registered_at = time.monotonic() + self.registration_delay_s
            else:
                self._drop_all(QMTSTAT_PING_TIMEOUT)

    def lose_registration(self) -> None:
        """The network detaches the module: searching for ``registration_delay_s``, then
        registered again; MQTT links end with +QMTSTAT: <id>,1."""
        with self._lock:
            self._registered_at = time.monotonic() + self.registration_delay_s
            self.events.append((time.monotonic(), "deregistered"))
            self._drop_all(QMTSTAT_CLOSED_BY_PEER)

    def drop_connection(self, err_code: int = QMTSTAT_CLOSED_BY_PEER) -> None:
        """Every open MQTT link ends with +QMTSTAT: <id>,<err_code> (the broker sees the
        connection go without a DISCONNECT: it publishes the will)."""
        with self._lock:
            self._drop_all(err_code)

    def hang(self) -> None:
        """The module stops answering anything (its MQTT links die with it) until PWRKEY
        is held for ``PWRKEY_POWER_ON_S``."""
        with self._lock:
            self.state = "hung"
            self.events.append((time.monotonic(), "hung"))
            for i in LINKS:
                self._close_link(i, graceful=False)

    def fail_next(self, command: str, cme: int) -> None:
        """The next ``command`` (e.g. "+QMTOPEN") is refused with +CME ERROR: ``cme``."""
        self._fail[command.upper()] = cme

    def on_next_ok(self, command: str, before: Any = None, after: Any = None) -> None:
        """Around the OK of the next ``command`` (e.g. "+QMTDISC"; for +QMTPUB the OK after
        its payload): ``before`` and ``after`` are bytes the module says there, or a
        callable it runs there (``lambda: modem.drop_connection(1)``: the +QMTSTAT comes
        before the OK; ``lambda: modem.deliver(t, p)``: a message right after it)."""
        self._around_ok[command.upper()] = (before, after)

    def deliver(self, topic: str, payload: bytes, msg_id: int = 1, link_id: int = 0) -> None:
        """A message from the broker on link ``link_id``: the +QMTRECV URC, with the
        payload's length if the firmware asked for it (recv/mode), as the module sends it."""
        with self._lock:
            head = f'+QMTRECV: {link_id},{msg_id},"{topic}",'
            if self._links[link_id].recv_with_length:
                head += f"{len(payload)},"
            self._send(b"\r\n" + head.encode() + b'"' + payload + b'"\r\n')

    def send_raw(self, data: bytes) -> None:
        """Bytes on the wire as they are: a URC cut short by bytes lost on the way, noise."""
        self._send(data)

    def registered(self) -> bool:
        """Whether the module is registered on the network now."""
        return self._stat() in (1, 5)

    # ---- the UART --------------------------------------------------------------------

    def _send(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        with self._lock:
            self._last_activity = time.monotonic()
            while raw and self._fd >= 0:
                try:
                    raw = raw[os.write(self._fd, raw) :]
                except BlockingIOError:
                    time.sleep(0.001)
                except OSError:
                    return

    def _say(self, *lines: str) -> None:
        around = self._pending_ok if "OK" in lines else None
        if around is not None:
            self._pending_ok = None
            self._around(around[0])
        self._send("".join(f"\r\n{line}\r\n" for line in lines))
        if around is not None:
            self._around(around[1])

    def _around(self, what: Any) -> None:
        if callable(what):
            what()
        elif what:
            self._send(what)

    def _urc(self, line: str, after_s: float = 0.0, boot: int | None = None) -> None:
        """An unsolicited result, now or ``after_s`` later (unless the module rebooted)."""
        if after_s <= 0:
            self._say(line)
            return
        gen = self._generation if boot is None else boot

        def later() -> None:
            with self._lock:
                if gen == self._generation and self.state == "on":
                    self._say(line)

        timer = threading.Timer(after_s, later)
        timer.daemon = True
        timer.start()

    def _error(self, code: int) -> None:
        if self._cmee == 0:
            self._say("ERROR")
        elif self._cmee == 2:
            self._say(f"+CME ERROR: {CME_TEXT.get(code, 'unknown')}")
        else:
            self._say(f"+CME ERROR: {code}")

    def _read_loop(self) -> None:
        import select

        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.05)
                data = os.read(self._fd, 4096) if ready else b""
            except OSError:
                return
            if not data:
                continue
            with self._lock:
                self.last_rx = self._last_activity = time.monotonic()
                if self.state != "on":
                    continue  # asleep, hung or booting: the UART hears nothing
                self._rx += data
                self._take()

    def _take(self) -> None:
        while self._rx:
            if self._data_mode is not None:
                done, length = self._data_mode
                if length is None:  # ends at Ctrl-Z; ESC cancels
                    cut = next((i for i, b in enumerate(self._rx) if b in (0x1A, 0x1B)), -1)
                    if cut < 0:
                        return
                    payload, end = bytes(self._rx[:cut]), self._rx[cut]
                    del self._rx[: cut + 1]
                    self._data_mode = None
                    if end == 0x1A:
                        done(payload)
                    else:
                        self._say("OK")
                    continue
                if len(self._rx) < length:
                    return
                payload = bytes(self._rx[:length])
                del self._rx[:length]
                self._data_mode = None
                done(payload)
                continue
            cut = self._rx.find(b"\r")
            if cut < 0:
                if len(self._rx) > 4096:  # no command is that long: noise
                    self._rx.clear()
                return
            line = self._rx[:cut].decode(errors="replace").strip("\n\x00 ")
            del self._rx[: cut + 1]
            if self._rx[:1] == b"\n":
                del self._rx[:1]
            if not line:
                continue
            if self._echo:
                self._send(line + "\r")
            self.commands.append(line)
            try:
                cmd = parse_command(line)
            except AtSyntaxError:
                self._say("ERROR")
                continue
            code = self._fail.pop(cmd.name, None)
            if code is not None:
                self._error(code)
                continue
            self._pending_ok = self._around_ok.pop(cmd.name, None)
            try:
                self._execute(cmd)
            except (AtSyntaxError, TypeError, ValueError, IndexError):
                self._error(50)

    # ---- the network -----------------------------------------------------------------

    def _stat(self) -> int:
        if self.fun == 0:
            return 0  # the radio is off: not searching
        if not self.coverage or time.monotonic() < self._registered_at:
            return 2
        return 1

    def _cell(self, stat: int) -> str:
        # with <n> >= 2: the stat, then where (TS 27.007 <tac>,<ci>,<AcT>; 9 is NB-IoT)
        return f'{stat},"1A2B","0C0D0E0F",9' if self._cereg_n >= 2 and stat in (1, 5) else f"{stat}"

    def _clock(self) -> None:
        # URCs of registration changes, the PSM timer, the end of a boot
        while not self._stop.wait(0.02):
            with self._lock:
                now = time.monotonic()
                if self.state == "booting" and now >= self._boot_done:
                    self.state = "on"
                    self._registered_at = now + self.registration_delay_s
                    self._say("RDY")
                if self.state != "on":
                    continue
                stat = self._stat()
                if stat != self._cereg_said:
                    self._cereg_said = stat
                    if self._cereg_n:
                        self._say(f"+CEREG: {self._cell(stat)}")
                if (
                    self.psm_mode == 1
                    and self.psm_active_s is not None
                    and stat == 1
                    and not any(link.opened for link in self._links)
                    and now - self._last_activity >= self.psm_active_s
                ):
                    self.state = "psm"
                    self.events.append((now, "psm"))

    def _pwrkey(self, level: int) -> None:
        now = time.monotonic()
        if level == self._pwrkey_active:
            self._pressed_at = now
            return
        if self._pressed_at is None:
            return
        held, self._pressed_at = now - self._pressed_at, None
        with self._lock:
            self.events.append((now, f"pwrkey {held:.2f}s"))
            if self.state == "psm":  # PSM keeps the registration: awake at once
                self.state = "on"
                self._last_activity = now
                self.events.append((now, "wake"))
            elif self.state == "hung" and held >= PWRKEY_POWER_ON_S:
                self._reboot()

    def _reboot(self) -> None:
        for i in LINKS:
            self._close_link(i, graceful=False)
        self._reset_settings()
        self._rx.clear()
        self._data_mode = None
        self.state = "booting"
        self._boot_done = time.monotonic() + self.boot_s
        self._cereg_said = 2
        self.events.append((time.monotonic(), "reboot"))

    def _reset_settings(self) -> None:
        # what a power-up starts with (the PSM request is in NVM and stays)
        self._generation = getattr(self, "_generation", 0) + 1
        self._echo = True
        self._cmee = 1
        self._cereg_n = getattr(self, "cereg_n_at_power_up", 0)  # kept in its NVM
        self.fun = 1
        self._links = [_Link() for _ in LINKS]
        self._boot_done = 0.0

    # ---- commands --------------------------------------------------------------------

    def _execute(self, cmd: AtCommand) -> None:
        handler = _HANDLERS.get(cmd.name)
        if handler is None:
            self._say("ERROR")
            return
        handler(self, cmd)

    def _ok(self, *lines: str) -> None:
        self._say(*lines, "OK")

    def _basic(self, cmd: AtCommand) -> None:
        if cmd.name == "E":
            self._echo = bool(cmd.args[0]) if cmd.args else False
            self._ok()
        elif cmd.name == "I":
            self._ok("Quectel", "BC260Y-CN", "Revision: BC260YCNAAR02A01 (polekit emulated)")
        else:
            self._ok()

    def _cmee_cmd(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            self._ok(f"+CMEE: {self._cmee}")
        elif cmd.kind == "set" and cmd.args[0] in (0, 1, 2):
            self._cmee = int(cmd.args[0] or 0)
            self._ok()
        else:
            self._error(50)

    def _cereg(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            self._ok(f"+CEREG: {self._cereg_n},{self._cell(self._stat())}")
        elif cmd.kind == "set" and cmd.args[0] in (0, 1, 2, 3, 4, 5):
            self._cereg_n = int(cmd.args[0] or 0)
            self._ok()
        elif cmd.kind == "test":
            self._ok("+CEREG: (0-5)")
        else:
            self._error(50)

    def _csq(self, cmd: AtCommand) -> None:
        self._ok("+CSQ: 99,99" if not self.coverage or not self.fun else f"+CSQ: {self.csq},99")

    def _cclk(self, cmd: AtCommand) -> None:
        # TS 27.007 +CCLK: "yy/MM/dd,hh:mm:ss+zz" (zz: quarter hours from GMT): the host's UTC
        # once the network has given its time (at registration), the unset clock before
        if cmd.kind != "read":
            self._ok() if cmd.kind == "test" else self._error(4)
            return
        if self.registered():
            now = time.strftime("%y/%m/%d,%H:%M:%S", time.gmtime()) + "+00"
        else:
            now = "00/01/01,00:00:00+00"
        self._ok(f'+CCLK: "{now}"')

    def _cfun(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            self._ok(f"+CFUN: {self.fun}")
        elif cmd.kind == "test":
            self._ok("+CFUN: (0,1),(0)")
        elif cmd.kind == "set" and cmd.args and cmd.args[0] in (0, 1):
            fun = int(cmd.args[0] or 0)
            now = time.monotonic()
            if fun != self.fun:
                self.events.append((now, f"cfun {fun}"))
            if fun == 0 and self.fun:
                self._drop_all(QMTSTAT_PING_TIMEOUT)  # no radio: the links go with it
            elif fun == 1 and not self.fun:
                self._registered_at = now + self.registration_delay_s
            self.fun = fun
            self._ok()
        else:
            self._error(50)

    def _cgatt(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            self._ok(f"+CGATT: {1 if self.registered() else 0}")
        else:
            self._ok()

    def _cpsms(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            tau, active = self._psm_bits
            self._ok(f'+CPSMS: {self.psm_mode},,,"{tau}","{active}"')
            return
        if cmd.kind != "set":
            self._error(50)
            return
        args = (*cmd.args, None, None, None, None, None)
        mode = args[0] if args[0] is not None else 0
        if mode not in (0, 1, 2):
            self._error(50)
            return
        tau, active = (str(args[3] or ""), str(args[4] or ""))
        self.psm_mode = 0 if mode == 2 else int(mode)
        self._psm_bits = (tau, active)
        self.psm_tau_s = timer_s(tau, _TIMER3_UNIT_S)
        self.psm_active_s = timer_s(active, _TIMER2_UNIT_S)
        self._ok()

    _psm_bits = ("", "")

    # ---- MQTT --------------------------------------------------------------------------

    def _link_id(self, value: Any) -> int:
        if not isinstance(value, int) or value not in LINKS:
            raise AtSyntaxError(f"<tcpconnectID> {value!r}")
        return value

    def _qmtcfg(self, cmd: AtCommand) -> None:
        if cmd.kind != "set" or len(cmd.args) < 2:
            self._error(50)
            return
        what, link = str(cmd.args[0]).lower(), self._links[self._link_id(cmd.args[1])]
        values = cmd.args[2:]
        if what in self.qmtcfg_refused:  # another firmware: not a setting it has
            self._error(50)
            return
        if what == "version" and values and values[0] in (3, 4):
            link.version = int(values[0] or 4)
        elif what == "keepalive" and values and isinstance(values[0], int):
            link.keepalive_s = values[0]
        elif what == "session" and values and values[0] in (0, 1):
            link.clean_session = int(values[0] or 0)
        elif what == "will" and values:
            if values[0] == 1 and len(values) == 5:
                link.will = (
                    int(values[1] or 0),
                    int(values[2] or 0),
                    str(values[3]),
                    str(values[4]),
                )
            else:
                link.will = None
        elif what == "recv/mode" and len(values) >= 1:
            link.recv_with_length = int(values[1] or 0) if len(values) > 1 else 0
        elif what in ("timeout", "dataformat"):
            pass  # taken; the broker's own timing rules here
        else:
            self._error(50)
            return
        self._ok()

    def _qmtopen(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            lines = [
                f'+QMTOPEN: {i},"{x.host}",{x.port}' for i, x in enumerate(self._links) if x.opened
            ]
            self._ok(*lines)
            return
        i = self._link_id(cmd.args[0])
        host, port = cmd.args[1], cmd.args[2]
        if not isinstance(host, str) or not isinstance(port, int):
            raise AtSyntaxError("host and port")
        link = self._links[i]
        self._ok()
        if link.opened:
            self._urc(f"+QMTOPEN: {i},2")
            return
        if not self.registered():  # no PDP context without the network
            self._urc(f"+QMTOPEN: {i},3", self.send_latency_s)
            return
        gen = self._generation

        def open_network() -> None:
            time.sleep(self.send_latency_s)
            try:
                socket.create_connection((host, port), timeout=5).close()
                result = 0
            except socket.gaierror:
                result = 4
            except OSError:
                result = 5
            with self._lock:
                if gen != self._generation or self.state != "on":
                    return
                if result == 0:
                    link.opened, link.host, link.port = True, host, port
                self._say(f"+QMTOPEN: {i},{result}")

        threading.Thread(target=open_network, daemon=True).start()

    def _qmtclose(self, cmd: AtCommand) -> None:
        i = self._link_id(cmd.args[0])
        self._ok()
        self._close_link(i, graceful=False)
        self._urc(f"+QMTCLOSE: {i},0")

    def _qmtconn(self, cmd: AtCommand) -> None:
        if cmd.kind == "read":
            lines = [
                f"+QMTCONN: {i},{3 if x.client is not None else 1}"
                for i, x in enumerate(self._links)
                if x.opened
            ]
            self._ok(*lines)
            return
        i = self._link_id(cmd.args[0])
        link = self._links[i]
        if not link.opened or link.client is not None or not isinstance(cmd.args[1], str):
            self._error(3)
            return
        user = cmd.args[2] if len(cmd.args) > 2 else None
        password = cmd.args[3] if len(cmd.args) > 3 else None
        self._ok()
        gen = self._generation
        link.client_id = cmd.args[1]
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=link.client_id,
            clean_session=bool(link.clean_session),
            protocol=mqtt.MQTTv311 if link.version == 4 else mqtt.MQTTv31,
        )
        if link.will is not None:
            qos, retain, topic, message = link.will
            client.will_set(topic, message, qos=qos, retain=bool(retain))
        if user is not None:
            client.username_pw_set(str(user), None if password is None else str(password))

        # paho calls these in its own thread, some with its locks held: they only post to
        # the dispatcher, which takes the module's lock (no lock-order deadlock)
        def post(kind: str) -> Callable[..., None]:
            return lambda c, _u, *args: self._inbox.put((kind, i, c, gen, args))

        client.on_connect = post("connack")
        client.on_message = post("message")
        client.on_publish = post("puback")
        client.on_subscribe = post("suback")
        client.on_disconnect = post("lost")
        link.client = client

        def connect() -> None:
            time.sleep(self.send_latency_s)
            try:
                client.connect(link.host, link.port, keepalive=link.keepalive_s or 60)
            except OSError:
                with self._lock:
                    if link.client is client:
                        link.client = None
                        self._say(f"+QMTCONN: {i},2")
                return
            client.loop_start()

        threading.Thread(target=connect, daemon=True).start()

    def _dispatch(self) -> None:
        # what paho heard from the broker, in the order it heard it, as the module's URCs
        while not self._stop.is_set():
            try:
                kind, i, client, gen, args = self._inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            with self._lock:
                link = self._links[i]
                if gen != self._generation or link.client is not client:
                    if kind == "lost":
                        threading.Thread(target=client.loop_stop, daemon=True).start()
                    continue
                if kind == "connack":
                    name = str(args[1])  # paho's ReasonCode prints its name
                    code = _CONNACK.index(name) if name in _CONNACK else 3
                    self._say(f"+QMTCONN: {i},0,{code}")
                    if code:
                        self._close_link(i, graceful=False)
                elif kind == "message" and self.state == "on":
                    msg = args[0]
                    self.deliver(msg.topic, msg.payload, msg.mid, i)
                elif kind == "puback":
                    msg_id = link.pending.pop(args[0], None)
                    if msg_id:
                        self._urc(f"+QMTPUB: {i},{msg_id},0", self.send_latency_s)
                elif kind == "suback":
                    msg_id = link.pending.pop(args[0], None)
                    codes = args[1]
                    granted = ",".join(str(getattr(r, "value", r)) for r in codes)
                    failed = any(getattr(r, "is_failure", False) for r in codes)
                    if msg_id is not None:
                        self._urc(
                            f"+QMTSUB: {i},{msg_id},{2 if failed else 0},{granted}",
                            self.send_latency_s,
                        )
                elif kind == "lost":  # the broker went away: the module says so
                    link.client, link.opened = None, False
                    link.pending.clear()
                    self._say(f"+QMTSTAT: {i},{QMTSTAT_CLOSED_BY_PEER}")
                    threading.Thread(target=client.loop_stop, daemon=True).start()

    def _qmtdisc(self, cmd: AtCommand) -> None:
        i = self._link_id(cmd.args[0])
        link = self._links[i]
        if not link.opened:
            self._error(3)
            return
        self._ok()
        self._close_link(i, graceful=True)
        self._urc(f"+QMTDISC: {i},0", self.send_latency_s)

    def _qmtsub(self, cmd: AtCommand) -> None:
        i = self._link_id(cmd.args[0])
        link, msg_id = self._links[i], cmd.args[1]
        pairs = cmd.args[2:]
        if link.client is None or not isinstance(msg_id, int) or not 1 <= msg_id <= 65535:
            self._error(3 if link.client is None else 50)
            return
        if not pairs or len(pairs) % 2:
            raise AtSyntaxError("topic,qos pairs")
        topics = [(str(pairs[k]), int(pairs[k + 1] or 0)) for k in range(0, len(pairs), 2)]
        self._ok()
        _rc, mid = link.client.subscribe(topics)
        link.pending[mid] = msg_id

    def _qmtpub(self, cmd: AtCommand) -> None:
        i = self._link_id(cmd.args[0])
        link = self._links[i]
        msg_id, qos, retain, topic = cmd.args[1:5]
        rest = cmd.args[5:]
        if link.client is None:
            self._error(3)
            return
        if (
            qos not in (0, 1, 2)
            or not isinstance(msg_id, int)
            or (qos == 0) != (msg_id == 0)
            or not 0 <= msg_id <= 65535
            or retain not in (0, 1)
            or not isinstance(topic, str)
        ):
            self._error(50)
            return
        gen = self._generation

        def publish(payload: bytes) -> None:
            with self._lock:
                client = link.client
                if client is None or gen != self._generation:
                    self._error(3)
                    return
                self._say("OK")  # (a fault set with on_next_ok may end the link here)
                info = client.publish(topic, payload, qos=int(qos or 0), retain=bool(retain))
                if qos:
                    link.pending[info.mid] = msg_id
                else:
                    self._urc(f"+QMTPUB: {i},0,0", self.send_latency_s)

        if rest and isinstance(rest[0], str):  # the message given in the command
            publish(rest[0].encode())
            return
        length = rest[0] if rest else None
        if length is not None and (not isinstance(length, int) or not 1 <= length <= 1548):
            self._error(50)
            return
        self._data_mode = (publish, length)
        self._send("\r\n> ")

    def _close_link(self, i: int, graceful: bool) -> None:
        """End link ``i``: with a DISCONNECT (graceful) or by dropping its socket, so the
        broker publishes the will, as after a module that lost its radio."""
        link = self._links[i]
        client, link.client, link.opened = link.client, None, False
        link.pending.clear()
        if client is None:
            return
        if graceful:
            client.disconnect()
        else:
            sock = client.socket()
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone
        threading.Thread(target=client.loop_stop, daemon=True).start()

    def _drop_all(self, err_code: int) -> None:
        for i, link in enumerate(self._links):
            if link.opened:
                self._close_link(i, graceful=False)
                if self.state == "on":
                    self._say(f"+QMTSTAT: {i},{err_code}")


_HANDLERS: dict[str, Callable[[AtModem, AtCommand], None]] = {
    "": AtModem._basic,
    "E": AtModem._basic,
    "I": AtModem._basic,
    "V": AtModem._basic,
    "Z": AtModem._basic,
    "+CMEE": AtModem._cmee_cmd,
    "+CEREG": AtModem._cereg,
    "+CSQ": AtModem._csq,
    "+CGATT": AtModem._cgatt,
    "+CPSMS": AtModem._cpsms,
    "+CFUN": AtModem._cfun,
    "+CCLK": AtModem._cclk,
    "+QMTCFG": AtModem._qmtcfg,
    "+QMTOPEN": AtModem._qmtopen,
    "+QMTCLOSE": AtModem._qmtclose,
    "+QMTCONN": AtModem._qmtconn,
    "+QMTDISC": AtModem._qmtdisc,
    "+QMTSUB": AtModem._qmtsub,
    "+QMTPUB": AtModem._qmtpub,
}
