"""The emulated BC260Y (hil/atmodem.py) against the command lines, replies and URCs of
Quectel's MQTT application notes (BC26 V1.1, BG95 V1.1; the BC260Y's MQTT commands are the
same family) and of 3GPP TS 27.007 / 24.008: its parser on the notes' example lines, and
a conversation over a real pseudo-terminal with a real mosquitto behind it."""

from __future__ import annotations

import os
import select
import time
import tty
from collections.abc import Iterator

import paho.mqtt.publish as publish
import pytest
from nodekit_host import node_module
from uplinkkit import Subscriber, wait_for

from polekit.hil.atmodem import AtCommand, AtModem, AtSyntaxError, parse_command, timer_s
from polekit.hil.broker import LocalBroker

T3412_UNITS = (600, 3600, 36000, 2, 30, 60, 1152000, None)  # TS 24.008 table 10.5.163a
T3324_UNITS = (2, 60, 360, None, None, None, None, None)  # TS 24.008 table 10.5.163


@pytest.mark.parametrize(
    ("line", "want"),
    [
        # the notes' example lines
        ('AT+QMTCFG="version",0,4', AtCommand("+QMTCFG", "set", ("version", 0, 4))),
        (
            'AT+QMTOPEN=0,"iot.eclipse.org",1883',
            AtCommand("+QMTOPEN", "set", (0, "iot.eclipse.org", 1883)),
        ),
        ('AT+QMTCONN=0,"clientExample"', AtCommand("+QMTCONN", "set", (0, "clientExample"))),
        (
            'AT+QMTSUB=0,1,"topic/example",2,"topic/pub",0',
            AtCommand("+QMTSUB", "set", (0, 1, "topic/example", 2, "topic/pub", 0)),
        ),
        (
            'AT+QMTPUB=0,0,0,0,"topic/example"',
            AtCommand("+QMTPUB", "set", (0, 0, 0, 0, "topic/example")),
        ),
        ("AT+QMTOPEN?", AtCommand("+QMTOPEN", "read")),
        ("AT+QMTOPEN=?", AtCommand("+QMTOPEN", "test")),
        # TS 27.007: left-out parameters, the timers as bit strings
        (
            'AT+CPSMS=1,,,"00100011","00100010"',
            AtCommand("+CPSMS", "set", (1, None, None, "00100011", "00100010")),
        ),
        ("AT+CEREG?", AtCommand("+CEREG", "read")),
        ("AT+CSQ", AtCommand("+CSQ", "exec")),
        ("ATE0", AtCommand("E", "set", (0,))),
        ("AT", AtCommand("", "exec")),
        # Quectel documents no escapes in QMT strings: a backslash is taken as it is
        (
            r'AT+QMTCFG="will",0,1,1,1,"s","a\22b"',
            AtCommand("+QMTCFG", "set", ("will", 0, 1, 1, 1, "s", r"a\22b")),
        ),
    ],
)
def test_the_parser_reads_the_manuals_command_lines(line: str, want: AtCommand) -> None:
    assert parse_command(line) == want


@pytest.mark.parametrize(
    "line", ["QMTOPEN=0", 'AT+QMTOPEN=0,"host', 'AT+QMTCFG="will",0,1,1,1,"s","{"a":1}"', "ATE0x"]
)
def test_the_parser_refuses_what_the_module_answers_error_to(line: str) -> None:
    with pytest.raises(AtSyntaxError):
        parse_command(line)


@pytest.mark.parametrize(
    ("bits", "units", "seconds"),
    [
        ("00100001", T3412_UNITS, 3600),  # 1 x 1 h
        ("01000011", T3412_UNITS, 3 * 36000),  # 3 x 10 h
        ("01100101", T3412_UNITS, 10),  # 5 x 2 s
        ("11100000", T3412_UNITS, None),  # deactivated
        ("00000101", T3324_UNITS, 10),  # 5 x 2 s
        ("01000010", T3324_UNITS, 2 * 360),  # 2 x 6 min
        ("00100010", T3324_UNITS, 2 * 60),  # 2 x 1 min
        ("11100000", T3324_UNITS, None),
    ],
)
def test_psm_timers_decode_as_ts_24_008_says(
    bits: str, units: tuple[int | None, ...], seconds: int | None
) -> None:
    assert timer_s(bits, units) == seconds


def test_the_nodes_psm_request_encodes_what_it_asks_for() -> None:
    nbiot = node_module("uplinks.nbiot")
    for asked in (2, 10, 60, 600, 3600, 7200, 86400):
        got = timer_s(nbiot.timer3_bits(asked), T3412_UNITS)
        assert got is not None and asked <= got < asked * 1.25 + 2
    for asked in (2, 10, 30, 120, 600):
        got = timer_s(nbiot.timer2_bits(asked), T3324_UNITS)
        assert got is not None and asked <= got < asked * 1.25 + 2


class Host:
    """The MCU's end of the modem UART: a pseudo-terminal, the modem on its other end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.heard = b""

    def send(self, line: str | bytes) -> None:
        os.write(self.fd, line.encode() + b"\r" if isinstance(line, str) else line)

    def until(self, text: str, timeout_s: float = 5.0) -> str:
        """What the module said up to and including ``text``."""
        want = text.encode()
        deadline = time.monotonic() + timeout_s
        while want not in self.heard:
            assert time.monotonic() < deadline, f"no {text!r}; heard {self.heard!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                self.heard += os.read(self.fd, 4096)
        cut = self.heard.index(want) + len(want)
        said, self.heard = self.heard[:cut], self.heard[cut:]
        return said.decode(errors="replace")


@pytest.fixture
def session() -> Iterator[tuple[Host, AtModem, LocalBroker]]:
    master, slave = os.openpty()
    tty.setraw(master)
    with (
        LocalBroker() as broker,
        AtModem(os.ttyname(slave), registration_delay_s=0.2, send_latency_s=0.05) as modem,
    ):
        host = Host(master)
        host.send("ATE0")
        host.until("OK\r\n")
        wait_for(modem.registered, 5, "registration")
        yield host, modem, broker
    os.close(master)
    os.close(slave)


def test_the_manuals_mqtt_session_gets_the_manuals_answers(
    session: tuple[Host, AtModem, LocalBroker],
) -> None:
    host, _, broker = session
    with Subscriber(broker.host, broker.port, "topic/#") as sub:
        host.send('AT+QMTCFG="version",0,4')
        assert host.until("OK\r\n") == "\r\nOK\r\n"
        host.send(f'AT+QMTOPEN=0,"{broker.host}",{broker.port}')
        assert host.until("+QMTOPEN: 0,0\r\n") == "\r\nOK\r\n\r\n+QMTOPEN: 0,0\r\n"
        host.send('AT+QMTCONN=0,"clientExample"')
        assert host.until("+QMTCONN: 0,0,0\r\n").endswith("\r\nOK\r\n\r\n+QMTCONN: 0,0,0\r\n")
        host.send('AT+QMTSUB=0,1,"topic/example",2,"topic/pub",0')
        assert host.until("+QMTSUB: 0,1,0,2,0\r\n").startswith("\r\nOK\r\n")
        # the Ctrl-Z-ended form of the notes' example, QoS 0
        host.send('AT+QMTPUB=0,0,0,0,"topic/pub"')
        host.until("\r\n> ")
        host.send(b"This is publish data from client\x1a")
        assert host.until("+QMTPUB: 0,0,0\r\n").startswith("\r\nOK\r\n")
        # the fixed-length form, QoS 1, binary: acknowledged once the broker's PUBACK is in
        host.send('AT+QMTPUB=0,7,1,0,"topic/pub",4')
        host.until("\r\n> ")
        host.send(b"\x1a\r\n\x00")
        assert host.until("+QMTPUB: 0,7,0\r\n").startswith("\r\nOK\r\n")
        wait_for(lambda: len(sub.on("topic/pub")) == 2, 5, "both messages at the broker")
        assert [m.payload for m in sub.on("topic/pub")] == [
            b"This is publish data from client",
            b"\x1a\r\n\x00",
        ]
        host.send("AT+QMTDISC=0")
        assert host.until("+QMTDISC: 0,0\r\n").startswith("\r\nOK\r\n")


def test_received_messages_carry_their_length_so_any_payload_survives(
    session: tuple[Host, AtModem, LocalBroker],
) -> None:
    host, _, broker = session
    host.send('AT+QMTCFG="recv/mode",0,0,1')
    host.until("OK\r\n")
    host.send(f'AT+QMTOPEN=0,"{broker.host}",{broker.port}')
    host.until("+QMTOPEN: 0,0\r\n")
    host.send('AT+QMTCONN=0,"n1"')
    host.until("+QMTCONN: 0,0,0\r\n")
    host.send('AT+QMTSUB=0,1,"n/cmd/+",1')
    host.until("+QMTSUB: 0,1,0,1\r\n")
    body = b'{"id": 1, "set": {"a": "x,\\"y\\"\r\n"}}'
    publish.single("n/cmd/c1", body, qos=1, hostname=broker.host, port=broker.port)
    said = host.until(f'"{body.decode()}"\r\n')
    assert f'+QMTRECV: 0,1,"n/cmd/c1",{len(body)},"' in said


def test_errors_come_as_the_module_gives_them(session: tuple[Host, AtModem, LocalBroker]) -> None:
    host, modem, _ = session
    host.send('AT+QMTPUB=0,1,1,0,"t",3')  # no MQTT connection: operation not allowed
    assert host.until("\r\n") + host.until("\r\n") == "\r\n+CME ERROR: 3\r\n"
    host.send('AT+QMTOPEN=9,"h",1')  # no such <tcpconnectID>: incorrect parameters
    assert host.until("+CME ERROR: 50\r\n")
    host.send("AT+NOSUCH")
    assert host.until("\r\nERROR\r\n")
    modem.fail_next("+CSQ", 100)
    host.send("AT+CSQ")
    assert host.until("+CME ERROR: 100\r\n")
    host.send("AT+CMEE=0")
    host.until("OK\r\n")
    host.send('AT+QMTPUB=0,1,1,0,"t",3')
    assert host.until("ERROR\r\n") == "\r\nERROR\r\n"
    host.send("AT+CMEE=2")
    host.until("OK\r\n")
    host.send('AT+QMTPUB=0,1,1,0,"t",3')
    assert host.until("\r\n+CME ERROR: operation not allowed\r\n")


def test_faults_show_in_registration_signal_and_urcs(
    session: tuple[Host, AtModem, LocalBroker],
) -> None:
    host, modem, broker = session
    host.send("AT+CEREG=1")
    host.until("OK\r\n")
    host.send(f'AT+QMTOPEN=0,"{broker.host}",{broker.port}')
    host.until("+QMTOPEN: 0,0\r\n")
    host.send('AT+QMTCONN=0,"n2"')
    host.until("+QMTCONN: 0,0,0\r\n")
    modem.set_coverage(False)
    assert "+QMTSTAT: 0,2\r\n" in host.until("+CEREG: 2\r\n")
    host.send("AT+CSQ")
    assert host.until("OK\r\n") == "\r\n+CSQ: 99,99\r\n\r\nOK\r\n"
    host.send(f'AT+QMTOPEN=0,"{broker.host}",{broker.port}')
    assert host.until("+QMTOPEN: 0,3\r\n")  # no network, no PDP context
    modem.set_coverage(True)
    host.until("+CEREG: 1\r\n")
    modem.hang()
    host.send("AT")
    time.sleep(0.5)
    assert modem.state == "hung" and b"OK" not in host.heard
