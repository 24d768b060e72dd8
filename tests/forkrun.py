"""Run many ``polekit`` command lines fast, each in a real process of its own.

Starting ``python -m polekit`` costs about 0.15 s of CPU in imports, which for a few
hundred command lines on a busy two-core machine is minutes. A fork server pays the imports
once: it imports ``polekit.cli`` and forks a child per command line. The child is a real
process (its own exit status, stdout and stderr on real file descriptors, stdin at
/dev/null, its own process group, killed at a deadline) that runs the command the way the
``polekit`` script does, and prints an uncaught exception as the interpreter would.

Use ``ForkServer`` as a context manager; ``run()`` may be called from one thread per server.
Run as a script, this module is the server (JSON lines in on stdin, out on stdout).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIMED_OUT = -999  # the exit status reported for a command still running at its deadline


class ForkServer:
    """One server process; ``run(argv, cwd, timeout_s)`` -> (exit status, output, seconds)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def run(self, argv: list[str], cwd: Path, timeout_s: float) -> tuple[int, str, float]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        request = {"argv": argv, "cwd": str(cwd), "timeout_s": timeout_s}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died running polekit {' '.join(argv)}")
        reply = json.loads(line)
        return reply["code"], reply["out"], reply["seconds"]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(main: Any, argv: list[str], cwd: str, out_fd: int) -> None:
    os.setpgid(0, 0)  # the command and anything it starts can be killed as one
    os.chdir(cwd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    sys.argv = ["polekit", *argv]
    code: int = 0
    try:
        main(argv, prog_name="polekit")
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints it
        import traceback

        traceback.print_exc()
        code = 1
    sys.exit(code)  # through the interpreter's own exit: atexit handlers, threads joined


def _serve() -> None:
    from polekit.cli import main  # the imports every child shares

    for line in sys.stdin:
        request = json.loads(line)
        out_fd, out_path = tempfile.mkstemp(prefix="polekit-forkrun-")
        started = time.monotonic()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(main, request["argv"], request["cwd"], out_fd)
        os.close(out_fd)
        deadline = started + request["timeout_s"]
        code = TIMED_OUT
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.01)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        out = Path(out_path).read_text(errors="replace")
        os.unlink(out_path)
        if code == TIMED_OUT:
            out += f"\n(still running after {request['timeout_s']} s)"
        reply = {"code": code, "out": out, "seconds": round(time.monotonic() - started, 2)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
