"""Run MicroPython code in the official WebAssembly port, from the host.

This is the smallest piece of the emulated board: one script, one VM, host folders
copied into its filesystem, stdout/stderr and exit status back. The HIL suite and the
protocols tests use it to prove that code meant for the board runs on the real VM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "@micropython/micropython-webassembly-pyscript"
_RUNNER = Path(__file__).with_name("js") / "run_script.mjs"
VMLIB = Path(__file__).with_name("vmlib")  # modules the ESP32 port has and the VM lacks


class MicroPythonNotFoundError(RuntimeError):
    """Node or the MicroPython WebAssembly package is missing; the message says how to fix it."""


@dataclass
class VMResult:
    """What a script run produced. ``returncode`` 0: finished; 1: raised (see ``stderr``)."""

    returncode: int
    stdout: str
    stderr: str


def find_micropython() -> Path:
    """Path of the port's micropython.mjs: $POLEKIT_MICROPYTHON_MJS, else node_modules above
    this package or the working directory."""
    env = os.environ.get("POLEKIT_MICROPYTHON_MJS")
    if env:
        return Path(env)
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "node_modules" / PACKAGE / "micropython.mjs"
            if candidate.is_file():
                return candidate
    raise MicroPythonNotFoundError(
        f"the MicroPython WebAssembly port ({PACKAGE}) is not installed: run `make setup` "
        "(or `npm ci`) in the polekit source folder, or set POLEKIT_MICROPYTHON_MJS"
    )


def run_script(
    script: str,
    mounts: dict[Path, str] | None = None,
    heap_bytes: int = 1024 * 1024,
    timeout_s: float = 120.0,
) -> VMResult:
    """Run ``script`` (MicroPython source) with each host folder in ``mounts`` copied to its
    VM path (e.g. ``{Path("protocols"): "/lib/protocols"}``). Raises MicroPythonNotFoundError,
    and subprocess.TimeoutExpired if the VM runs past ``timeout_s``."""
    node = shutil.which("node")
    if node is None:
        raise MicroPythonNotFoundError(
            "Node.js is needed to run the MicroPython VM: install `nodejs`"
        )
    mjs = find_micropython()
    args = [node, str(_RUNNER), "--heap", str(heap_bytes)]
    for host, vm in (mounts or {}).items():
        args += ["--mount", f"{Path(host).resolve()}:{vm}"]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    try:
        proc = subprocess.run(
            [*args, f.name],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "POLEKIT_MICROPYTHON_MJS": str(mjs)},
        )
    finally:
        os.unlink(f.name)
    return VMResult(proc.returncode, proc.stdout, proc.stderr)
