# NB-IoT uplink: MQTT through the MQTT client inside a Quectel BC260Y-class module.
#
# Why MQTT AT commands (AT+QMT*) and not LwM2M (AT+QLW*, CTWing/OceanConnect): the node
# then speaks the same platform contract as the gateway and the Wi-Fi node (one broker,
# one topic layout, SenML-CBOR, QoS 1 with the node forgetting a pack only after the
# broker's PUBACK, seen here as "+QMTPUB: 0,<msgID>,0"; commands on cmd/{code}), and
# MqttLink drives this transport exactly as it drives WifiMqtt. LwM2M would need an
# object model and a platform-side bridge of its own for the same data.
#
# Followed (Quectel's own documents; the BC260Y's MQTT note uses the same command family):
# BC26 MQTT Application Note V1.1 and BG95&BG77&BG600L Series MQTT Application Note V1.1
# for AT+QMTCFG "version"/"keepalive"/"session"/"will"/"recv/mode", AT+QMTOPEN (URC within
# 75 s; 0 opened, 2 identifier occupied, 3 no PDP, 4 DNS, 5 connection error),
# AT+QMTCONN/QMTSUB/QMTPUB (URC within <pkt_timeout> x (<retry_times> + 1), 10 s x 4 by
# default; result 0 acked, 1 retransmitting, 2 failed), the fixed-length publish
# ("...,<msglen>" then ">" then exactly msglen bytes, so binary CBOR needs no escaping),
# +QMTRECV with its length (recv/mode 0,0,1) or without it (the BC26's form, and what a
# module that refuses or ignores recv/mode sends) and +QMTSTAT; 3GPP TS 27.007 for +CEREG
# (the read answer is <n>,<stat>[,...], the URC <stat>[,...]: stat 1 home, 5 roaming),
# +CFUN (0: radio off), +CSQ (rssi 0..31 -> -113..-51 dBm, 99 unknown), +CPSMS
# (timers as TS 24.008 GPRS Timer 3 and Timer 2 bit strings), +CME ERROR; the BC260Y
# hardware design for PWRKEY (low >= 500 ms powers the module up; low wakes it from PSM;
# driven through a transistor, so the MCU pin is active high by default). Plain commands
# answer within 300 ms. Strings go between quotes as they are: Quectel documents no
# escapes for the QMT commands' strings, so one with a quote or a control character in it
# cannot be sent (ValueError), and the will is the quote-free word `offline` (the Wi-Fi
# node's is JSON). "will" and "recv/mode" are optional settings: a module that refuses
# them is used without a will, and its +QMTRECV without a length is read all the same.
#
# Power: the node wakes, attaches (PSM kept the registration), sends its backlog, reads
# the commands the broker queued for it (a persistent session, clean_session 0, and a
# QoS 1 subscription: the broker holds them while the node sleeps), disconnects and asks
# for PSM (sleep()); the module then powers its radio down after the active time. A
# module that stops answering AT is pressed on its PWRKEY: that wakes one in PSM and
# powers a hung one up again. Out of coverage an unregistered module cannot enter PSM (it
# would search the whole gap): when the attach gives up, its radio is switched off
# (AT+CFUN=0), and the next connect() switches it on again (AT+CFUN=1).
#
# The UART should have a read timeout (UART(1, 9600, tx=17, rx=16, timeout=50)): reads
# then block in the UART driver instead of spinning.
import errno
import time

_LINK = 0  # the module's MQTT client index (<tcpconnectID>)
_AT_MS = 300
_OPEN_MS = 75000
_MQTT_MS = 40000
_PROBES = 3
_WAKE_PRESS_MS = 100
_POWER_PRESS_MS = 650  # >= 500 ms: powers the module up
_BOOT_MS = 10000  # a powered-up module answers within this
_MAX_PAYLOAD = 1548  # AT+QMTPUB <msglen> range
_CFUN_MS = 15000  # AT+CFUN: the radio on or off takes seconds on a real module
_RECV_MAX = 4608  # a +QMTRECV payload longer than this is dropped (commands are < 4 KiB)
_TOPIC_MAX = 256
_FRAME_GAP_MS = 500  # a URC comes in one go: a +QMTRECV unfinished through this is cut


def timer3_bits(seconds):
    # T3412 extended (periodic TAU) as TS 24.008 GPRS Timer 3: 3 unit bits, 5 value bits
    for code, unit in ((3, 2), (4, 30), (5, 60), (0, 600), (1, 3600), (2, 36000)):
        if seconds <= 31 * unit:
            return _bits(code, (seconds + unit - 1) // unit)
    return _bits(6, min(31, (seconds + 1151999) // 1152000))


def timer2_bits(seconds):
    # T3324 (active time) as TS 24.008 GPRS Timer 2
    for code, unit in ((0, 2), (1, 60), (2, 360)):
        if seconds <= 31 * unit:
            return _bits(code, (seconds + unit - 1) // unit)
    return _bits(2, 31)


def _bits(code, count):
    value = code << 5 | count
    return "".join("1" if value >> (7 - i) & 1 else "0" for i in range(8))


def _ms():
    return time.ticks_ms()


def _left(deadline):
    return time.ticks_diff(deadline, time.ticks_ms())


def _plain(text, what="string"):
    # a string for between the quotes of an AT command: sent as it is (Quectel documents
    # no escapes for the QMT commands), so a quote or a control character cannot be in it
    for ch in text:
        if ch == '"' or ord(ch) < 0x20:
            raise ValueError(
                "%s %r: a quote or a control character cannot cross the modem's AT commands"
                % (what, text)
            )
    return text


class NbIot:
    # the module's MQTT client pings on its own keepalive and acknowledges a message before
    # it reaches the UART: MqttLink keeps the link between flushes and reads commands from
    # poll() (its `handler` is not used here)
    keeps_alive = True
    handler = None

    def __init__(
        self,
        uart,
        pwrkey_pin,
        host,
        port,
        user=None,
        password=None,
        keepalive=300,
        attach_timeout_ms=120000,
        psm_tau_s=7200,
        psm_active_s=10,
        pwrkey_active=1,
        asleep=False,
    ):
        self._uart = uart
        self._key = pwrkey_pin
        self._key_on = pwrkey_active
        self._key.value(1 - pwrkey_active)  # released
        self.host = _plain(host, "host")
        if user is not None:
            _plain(user, "user")
        if password is not None:
            _plain(password, "password")
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.attach_timeout_ms = attach_timeout_ms
        self.psm = (timer3_bits(psm_tau_s), timer2_bits(psm_active_s))
        self._rx = b""
        self._inbox = []
        self._mid = 0
        self._connected = False
        self._lost = False  # +QMTSTAT ended the link since connect()
        # sleep() asked for PSM: the module will not answer at first. `asleep`: a previous
        # boot left it in PSM (a node that deep-sleeps between reports), so the first
        # connect presses PWRKEY to wake it instead of taking its silence for a hang
        self._asleep = asleep
        self._psm_asked = asleep  # AT+CPSMS sent since the module powered up
        self.csq = 99
        self.ber = 99
        self.cereg = 0
        self.wakes = 0
        self.recoveries = 0  # PWRKEY presses that brought a silent module back
        self.link_losses = 0  # +QMTSTAT
        self.last_error = None
        self.bad_frames = 0  # +QMTRECV frames or lines that could not be read, dropped
        self._radio_off = False  # AT+CFUN=0 after an attach that gave up
        self._rx_at = _ms()  # when the last byte came
        self.refused = []  # optional AT+QMTCFG settings the module refused ("will", ...)

    # ---- Transport -------------------------------------------------------------------

    def connect(self, client_id, will_topic, will_payload):
        # wake, attach, open and CONNECT with a persistent session and the will; OSError
        # (ETIMEDOUT, EHOSTUNREACH: no network, ECONNREFUSED: the broker said no) if not
        if self._connected:
            self.close()
        _plain(client_id, "client id")
        _plain(will_topic, "topic")
        will = bytes(will_payload).decode()
        if '"' in will or any(ord(ch) < 0x20 for ch in will):
            will = "offline"  # JSON cannot cross without escapes the module does not have
        self._rx = b""  # what a link left half-said (a cut +QMTRECV) would wedge the reader
        self._wake()
        self._lost = False
        self._cmd("ATE0")
        self._cmd("AT+CMEE=1")
        self._radio_on()
        self._attach()
        for setting, optional in (
            ('"version",0,4', False),
            ('"keepalive",0,%d' % self.keepalive, False),
            # the broker keeps our subscription and queues QoS 1 for us
            ('"session",0,0', False),
            ('"will",0,1,1,1,"%s","%s"' % (will_topic, will), True),
            ('"recv/mode",0,0,1', True),  # +QMTRECV with the payload's length
        ):
            try:
                self._cmd("AT+QMTCFG=" + setting)
            except OSError as exc:
                if not optional or exc.args[0] != errno.EIO:
                    raise  # refused, or silence: a fault either way
                name = setting.split(",")[0].strip('"')
                if name not in self.refused:
                    self.refused.append(name)  # in status(): this module has no such setting
        result = self._open()
        if result == 2:  # a link left open from before (we reset, the module did not)
            self._cmd("AT+QMTCLOSE=0")
            self._wait_urc("+QMTCLOSE: 0,", _AT_MS * 10)
            result = self._open()
        if result != 0:
            code = errno.EHOSTUNREACH if result in (3, 4) else errno.ECONNREFUSED
            self._fail(code, "AT+QMTOPEN: result %d" % result)
        self._lost = False  # a +QMTSTAT of the link closed above is not this one's
        login = '"%s"' % client_id
        if self.user is not None:
            login += ',"%s"' % self.user
            if self.password is not None:
                login += ',"%s"' % self.password
        self._cmd("AT+QMTCONN=0," + login)
        fields = self._fields(self._wait_urc("+QMTCONN: 0,", _MQTT_MS))
        if fields[1] != 0 or (len(fields) > 2 and fields[2] != 0):
            self._cmd("AT+QMTCLOSE=0")
            self._fail(errno.ECONNREFUSED, "AT+QMTCONN: %s" % fields)
        self._connected = True

    def publish(self, topic, payload, retain=False):
        # QoS 1: returns once the broker's PUBACK came back, else OSError
        self._need_link()
        payload = bytes(payload)
        if not 0 < len(payload) <= _MAX_PAYLOAD:
            raise ValueError("payload of %d bytes: the module takes 1..1548" % len(payload))
        mid = self._next_mid()
        self._send(
            'AT+QMTPUB=0,%d,1,%d,"%s",%d'
            % (mid, 1 if retain else 0, _plain(topic, "topic"), len(payload))
        )
        self._expect_prompt()
        self._uart.write(payload)
        # the payload crosses the UART (10 bits a byte) before the module answers OK
        self._result(_AT_MS + len(payload) * 10000 // self._baud() + 100)
        while True:
            fields = self._fields(self._wait_urc("+QMTPUB: 0,%d," % mid, _MQTT_MS))
            if fields[2] == 0:
                return
            if fields[2] != 1:  # 1: the module is retransmitting; 2: it gave up
                self._fail(errno.ETIMEDOUT, "AT+QMTPUB: no PUBACK (result %d)" % fields[2])

    def subscribe(self, topic):
        self._need_link()
        mid = self._next_mid()
        self._cmd('AT+QMTSUB=0,%d,"%s",1' % (mid, _plain(topic, "topic")))
        fields = self._fields(self._wait_urc("+QMTSUB: 0,%d," % mid, _MQTT_MS))
        if fields[2] != 0:
            self._fail(errno.EIO, "AT+QMTSUB: result %d" % fields[2])

    def poll(self, wait_ms=0):
        # the messages the module handed over; OSError once the link is gone and they are
        if self._connected or self._lost:
            self._pump(_ms() + max(0, wait_ms), stop_on_message=True)
        got, self._inbox = self._inbox, []
        if not got and not self._connected:
            self._fail(errno.ECONNRESET if self._lost else errno.ENOTCONN, "MQTT link down")
        return got

    def close(self):
        # DISCONNECT (the session stays on the broker); never raises. A message the module
        # hands over meanwhile stays in the inbox: poll() or sleep() returns it
        was, self._connected = self._connected, False
        if not was:
            return
        try:
            self._cmd("AT+QMTDISC=0")
            self._wait_urc("+QMTDISC: 0,", _MQTT_MS)
        except OSError:
            pass  # the module or the network is gone; the broker will time the link out

    def status(self):
        # signal and registration: asked afresh while the module is awake
        if not self._asleep:
            try:
                for line in self._cmd("AT+CSQ", "+CSQ:"):
                    self.csq, self.ber = self._fields(line)[:2]
                self._read_cereg()
            except OSError:
                pass  # a silent module: the last values stand, last_error says why
        return {
            "csq": self.csq,
            "rssi": None if self.csq == 99 else -113 + 2 * self.csq,
            "ber": self.ber,
            "cereg": self.cereg,
            "registered": self.cereg in (1, 5),
            "psm": self._asleep,
            "wakes": self.wakes,
            "recoveries": self.recoveries,
            "link_losses": self.link_losses,
            "last_error": self.last_error,
            "bad_frames": self.bad_frames,
            "radio_off": self._radio_off,
            "refused": self.refused,
        }

    def clock(self):
        # the network's time as Unix seconds (AT+CCLK?: "yy/MM/dd,hh:mm:ss+zz", local time
        # and its offset in quarter hours, TS 27.007; the network gives it at registration),
        # or None: asleep, not registered, or a clock the network has not set yet
        if self._asleep or self.cereg not in (1, 5):
            return None
        try:
            lines = self._cmd("AT+CCLK?", "+CCLK:")
        except OSError:
            return None
        return _cclk_unix(lines[0]) if lines else None

    def sleep(self):
        # disconnect and let the module go to PSM after its active time; the UART is quiet
        # from here until the next connect() wakes it. Returns the messages the module
        # handed over and nobody has read (one that came during the DISCONNECT: the module
        # acknowledged it, the broker will not send it again), for the caller to handle
        # before the node sleeps. A module with its radio off (no coverage) is not in PSM:
        # its UART stays awake, the radio draws nothing
        self.close()
        got, self._inbox = self._inbox, []
        if self._radio_off:
            return got
        if not self._psm_asked:
            try:
                self._cmd('AT+CPSMS=1,,,"%s","%s"' % self.psm)
                self._psm_asked = True
            except OSError:
                return got  # not asleep: the next connect() will find out why
        self._asleep = True
        return got

    # ---- the module ------------------------------------------------------------------

    def _wake(self):
        if self._asleep:
            self._press(_WAKE_PRESS_MS)  # PSM: its UART is off until PWRKEY
        if self._probe(_PROBES):
            if self._asleep:
                self.wakes += 1
            self._asleep = False
            return
        self._asleep = False
        for press in (_POWER_PRESS_MS, _POWER_PRESS_MS):
            self._press(press)
            if self._probe(_BOOT_MS // _AT_MS):
                self.recoveries += 1
                self._psm_asked = False
                return
        self._fail(errno.ETIMEDOUT, "the modem does not answer AT, even after PWRKEY")

    def _probe(self, tries):
        for _ in range(tries):
            try:
                self._cmd("AT")
                return True
            except OSError:
                pass
        return False

    def _press(self, ms):
        self._key.value(self._key_on)
        self._pump(_ms() + ms)
        self._key.value(1 - self._key_on)

    def _attach(self):
        deadline = _ms() + self.attach_timeout_ms
        while True:
            self._read_cereg()
            if self.cereg in (1, 5):
                return
            if _left(deadline) <= 0:
                stat = self.cereg
                try:  # out of coverage: no PSM, it would search the whole gap; radio off
                    self._cmd("AT+CFUN=0", timeout_ms=_CFUN_MS)
                    self._radio_off = True
                except OSError:
                    pass  # it searches on; the fault below is the one to report
                self._fail(errno.EHOSTUNREACH, "not registered (+CEREG stat %s)" % stat)
            self._pump(min(_ms() + 1000, deadline))

    def _radio_on(self):
        # a module that a previous wake (or boot) left with its radio off searches again
        fun = 1
        for line in self._cmd("AT+CFUN?", "+CFUN:"):
            fun = self._fields(line)[0]
        if fun != 1:
            self._cmd("AT+CFUN=1", timeout_ms=_CFUN_MS)
        self._radio_off = False

    def _read_cereg(self):
        # the read answer is +CEREG: <n>,<stat>[,<tac>,<ci>,<AcT>...]: the stat by position
        for line in self._cmd("AT+CEREG?", "+CEREG:"):
            fields = self._fields(line)
            if len(fields) > 1 and isinstance(fields[1], int):
                self.cereg = fields[1]

    def _open(self):
        self._cmd('AT+QMTOPEN=0,"%s",%d' % (self.host, self.port))
        return self._fields(self._wait_urc("+QMTOPEN: 0,", _OPEN_MS))[1]

    def _need_link(self):
        if not self._connected:
            self._fail(errno.ECONNRESET if self._lost else errno.ENOTCONN, "MQTT link down")

    def _next_mid(self):
        self._mid = self._mid % 65535 + 1
        return self._mid

    def _baud(self):
        return getattr(self._uart, "baudrate", 9600) or 9600

    def _fail(self, code, why):
        self.last_error = why
        raise OSError(code, why)

    # ---- the AT conversation -----------------------------------------------------------

    def _send(self, line):
        self._uart.write(line.encode() + b"\r")

    def _cmd(self, line, want=None, timeout_ms=_AT_MS):
        # send one command; its information lines starting with `want`; OSError on ERROR
        # or silence
        self._send(line)
        return self._result(timeout_ms + len(line) * 10000 // self._baud(), want, line)

    def _result(self, timeout_ms, want=None, line="AT"):
        deadline = _ms() + timeout_ms
        info = []
        while True:
            item = self._next(deadline)
            if item is None:
                self._fail(errno.ETIMEDOUT, "%s: no answer" % line.split("=")[0])
            if item == "OK":
                return info
            if item == "ERROR" or item.startswith("+CME ERROR:"):
                self._fail(errno.EIO, "%s: %s" % (line.split("=")[0], item))
            if want and item.startswith(want):
                info.append(item)
            else:
                self._urc(item)

    def _expect_prompt(self):
        deadline = _ms() + _AT_MS + 200
        while True:
            item = self._next(deadline)
            if item is None:
                self._fail(errno.ETIMEDOUT, "AT+QMTPUB: no prompt")
            if item == ">":
                return
            if item == "ERROR" or item.startswith("+CME ERROR:"):
                self._fail(errno.EIO, "AT+QMTPUB: " + item)
            self._urc(item)

    def _wait_urc(self, prefix, timeout_ms):
        # the result URC of a command; other URCs are taken as they come; a +QMTSTAT on
        # the way (or before it: with the command's OK or its ">") means the link is gone
        # and the URC will not come
        deadline = _ms() + timeout_ms
        while True:
            if self._lost and not prefix.startswith("+QMTOPEN"):
                self._fail(errno.ECONNRESET, "MQTT link lost (+QMTSTAT)")
            item = self._next(deadline)
            if item is None:
                self._fail(errno.ETIMEDOUT, "no %s within %d ms" % (prefix.strip(", "), timeout_ms))
            if item.startswith(prefix):
                return item
            self._urc(item)

    def _urc(self, item):
        if item.startswith("+QMTSTAT:"):
            self._connected = False
            self._lost = True
            self.link_losses += 1
        elif item.startswith("+CEREG:"):  # the URC: +CEREG: <stat>[,<tac>,<ci>,<AcT>...]
            stat = self._fields(item)[0]
            if isinstance(stat, int):
                self.cereg = stat
        elif item == "RDY":  # the module powered up again: its settings are gone
            self._connected = False
            self._psm_asked = False

    def _pump(self, deadline, stop_on_message=False):
        # take what the module says until `deadline` (at least what is there now); a
        # received message ends it early if asked
        self._fill(False)
        while True:
            item = self._frame()
            if item is None:
                if _left(deadline) <= 0:
                    return
                if not self._fill():
                    self._cut_frame()
            elif item is not True:
                self._urc(item)
            if stop_on_message and self._inbox:
                return

    def _next(self, deadline):
        # the next thing the module said: a line, ">" (publish prompt), or None by the
        # deadline; a +QMTRECV goes to the inbox and the search goes on
        while True:
            item = self._frame()
            if item is not None:
                if item is not True:
                    return item
                continue
            if _left(deadline) <= 0:
                return None
            if not self._fill():
                self._cut_frame()

    def _fill(self, block=True):
        # what the UART has (waiting up to its timeout for a first byte if `block`): True
        # if bytes came
        n = self._uart.any()
        came = False
        if not n and block:
            data = self._uart.read(1)  # waits up to the UART's timeout
            if not data:
                return False
            self._rx += data
            came = True
            n = self._uart.any()
        if n:
            data = self._uart.read(n)
            if data:
                self._rx += data
                came = True
        if came:
            self._rx_at = _ms()
        return came

    def _cut_frame(self):
        # a +QMTRECV the module never finished (bytes lost on the way: a UART overflow)
        # would hold every answer after it as its payload: after a silence it is cut
        rx = self._rx
        i = 0
        while i < len(rx) and (rx[i] == 13 or rx[i] == 10):
            i += 1
        if rx.startswith(b"+QMTRECV:", i) and time.ticks_diff(_ms(), self._rx_at) >= _FRAME_GAP_MS:
            self._bad(i)

    def _frame(self):
        # one item off the front of the receive buffer: a line, ">", True for a message
        # put in the inbox, None if more bytes are needed (indexes, not copies: the buffer
        # is looked at often)
        rx = self._rx
        n = len(rx)
        i = 0
        while i < n and (rx[i] == 13 or rx[i] == 10):
            i += 1
        if i == n:
            if n:
                self._rx = b""
            return None
        if rx[i] == 62 and i + 1 < n and rx[i + 1] == 32:  # "> "
            self._rx = rx[i + 2 :]
            return ">"
        if rx[i] == 43 and rx.startswith(b"+QMTRECV:", i):
            return self._message(i)
        end = rx.find(b"\r", i)
        if end < 0:
            return None
        self._rx = rx[end + 1 :]
        if rx[i] == 65 and rx[i + 1 : i + 2] == b"T":  # our own command echoed (before ATE0)
            return True
        try:
            return rx[i:end].decode()
        except UnicodeError:  # noise on the wire (a module booting, a baud rate mismatch)
            self.bad_frames += 1
            return True

    def _message(self, i):
        # +QMTRECV: <id>,<msgID>,"<topic>",<len>,"<payload>"<CR><LF> (recv/mode 0,0,1: the
        # payload may hold anything), or +QMTRECV: <id>,<msgID>,"<topic>","<payload>"<CR><LF>
        # (no length: the BC26's form, and a module's that refused recv/mode; the payload
        # ends at a quote before CR LF). Every position is checked before it is used; a
        # frame that cannot be one is counted and dropped to its first line end. Returns
        # True (taken or dropped), None (more bytes needed).
        rx = self._rx
        n = len(rx)
        start = rx.find(b'"', i, min(n, i + 32))  # "+QMTRECV: 5,65535," then the topic
        if start < 0:
            return None if n - i < 32 and rx.find(b"\r", i) < 0 else self._bad(i)
        for b in rx[i + 9 : start]:
            if not (48 <= b <= 57 or b == 44 or b == 32):  # digits, commas, spaces
                return self._bad(i)
        end = rx.find(b'"', start + 1, min(n, start + 2 + _TOPIC_MAX))
        if end < 0:
            return None if n - start < _TOPIC_MAX + 2 else self._bad(i)
        if n < end + 3:
            return None
        if rx[end + 1] != 44:  # ","
            return self._bad(i)
        if rx[end + 2] == 34:  # '"': no length
            body = end + 3
            stop = rx.find(b'"\r\n', body)
            if stop < 0:
                return None if n - body < _RECV_MAX + 3 else self._bad(i)
        else:
            comma = rx.find(b",", end + 2, min(n, end + 9))
            if comma < 0:
                return None if n < end + 9 else self._bad(i)
            digits = rx[end + 2 : comma]
            if not digits or any(not 48 <= b <= 57 for b in digits):
                return self._bad(i)
            length = int(digits)
            body = comma + 2
            if length > _RECV_MAX:
                return self._bad(i)
            if n < body + length + 1:
                return None
            stop = body + length
            if rx[comma + 1] != 34 or rx[stop] != 34:  # the payload's quotes
                return self._bad(i)
        try:
            topic = rx[start + 1 : end].decode()
        except UnicodeError:
            return self._bad(i)
        self._inbox.append((topic, rx[body:stop]))
        self._rx = rx[stop + 1 :]
        return True

    def _bad(self, i):
        # a frame that is not one: counted, dropped up to its first line end
        self.bad_frames += 1
        cut = self._rx.find(b"\r", i)
        self._rx = self._rx[len(self._rx) if cut < 0 else cut + 1 :]
        return True

    def _fields(self, line):
        # "+QMTPUB: 0,3,0" -> [0, 3, 0]; strings stay strings
        out = []
        for part in line.split(":", 1)[1].split(","):
            part = part.strip().strip('"')
            try:
                out.append(int(part))
            except ValueError:
                out.append(part)
        return out


def _cclk_unix(line):
    # '+CCLK: "26/01/01,08:00:00+32"' (a 4-digit year taken too) -> Unix seconds, or None
    text = line.split(":", 1)[1].strip().strip('"')
    try:
        date, clock = text.split(",")
        y, mo, d = (int(x) for x in date.split("/"))
        cut = max(clock.rfind("+"), clock.rfind("-"))
        zone = int(clock[cut:]) if cut > 0 else 0
        h, mi, sec = (int(x) for x in (clock[:cut] if cut > 0 else clock).split(":"))
    except ValueError:
        return None
    if y < 100:
        y += 2000 if y < 70 else 1900
    if y < 2020 or not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 61):
        return None  # the module's own clock, never set by the network
    # days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + h * 3600 + mi * 60 + sec - zone * 900


def from_settings(s, uart, pwrkey_pin, **options):
    # the transport from the node's settings (the MQTT uplink's broker keys, as the Wi-Fi
    # transport takes them); `options`: NbIot keywords the node decides itself, over those
    # (the water node's attach budget, PSM active time, `asleep`). ValueError says what to set
    if not s.get("mqtt_host"):
        raise ValueError(
            "config: mqtt_host needed for the NB-IoT uplink; set it with `polekit deploy --set`"
        )
    if s.get("mqtt_tls"):  # never fall back to clear text when TLS was asked for
        raise ValueError(
            "config: mqtt_tls = 1 is not available on the NB-IoT uplink (this driver has no "
            "TLS); set mqtt_tls = 0 or use the Wi-Fi uplink"
        )
    kw = {
        "user": s.get("mqtt_user"),
        "password": s.get("mqtt_password"),
        "keepalive": s.get("mqtt_keepalive_s", 300),
        "attach_timeout_ms": s.get("nbiot_attach_s", 120) * 1000,
        "psm_tau_s": s.get("nbiot_psm_tau_s", 7200),
        "psm_active_s": s.get("nbiot_psm_active_s", 10),
    }
    kw.update(options)
    return NbIot(uart, pwrkey_pin, s["mqtt_host"], s.get("mqtt_port", 1883), **kw)
