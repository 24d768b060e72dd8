"""A real MQTT broker for tests and the demo, on loopback, owned by PID.

mosquitto when it is installed (Debian's package; ``make`` installs it as root), else the
embedded amqtt broker in a subprocess. ``stop()`` and ``start()`` again on the same port
let tests take the platform away and bring it back.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

_AMQTT = """
import asyncio, sys
from amqtt.broker import Broker
async def main():
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:%s"}},
                     "sys_interval": 0, "auth": {"allow-anonymous": True}})
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_path() -> str | None:
    """Where mosquitto is, if it is installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener (mosquitto only): the broker's certificate and key, and the CA it
    trusts for client certificates; ``require_certificate`` refuses clients without one."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True


class LocalBroker:
    """One broker process on ``127.0.0.1:port``; ``kind`` is "mosquitto" or "amqtt";
    ``tls`` makes the listener TLS (mosquitto only; clear text when None, the default);
    ``persistent`` keeps sessions and their queued messages across ``stop()`` and
    ``start()`` (mosquitto only), as a production broker does, so a subscriber with a
    persistent session misses nothing of a broker outage (the benchmarks count on it);
    ``users`` ({name: password}) refuses anonymous clients and every login but those
    (mosquitto only: its password file, hashed by mosquitto_passwd)."""

    def __init__(
        self,
        port: int | None = None,
        kind: str | None = None,
        tls: BrokerTls | None = None,
        persistent: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        exe = mosquitto_path()
        self.kind = kind or ("mosquitto" if exe else "amqtt")
        if tls is not None and self.kind != "mosquitto":
            raise RuntimeError("a TLS test broker needs mosquitto (apt-get install mosquitto)")
        if persistent and self.kind != "mosquitto":
            raise RuntimeError(
                "a persistent test broker needs mosquitto (apt-get install mosquitto)"
            )
        if users and self.kind != "mosquitto":
            raise RuntimeError(
                "a test broker with logins needs mosquitto (apt-get install mosquitto)"
            )
        self.tls = tls
        self.persistent = persistent
        self.users = dict(users or {})
        self._exe = exe
        self._dir = Path(tempfile.mkdtemp(prefix="polekit-broker-"))
        # its config, log and saved sessions go when the broker object does (or at exit):
        # a test run leaves no broker folders behind; stop() keeps them for a restart
        weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:port`` (``mqtts://`` with TLS)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        """Start the broker and wait until it accepts connections."""
        log = open(self._dir / "broker.log", "ab")  # noqa: SIM115 - the process owns it
        if self.kind == "mosquitto":
            if self._exe is None:
                raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
            conf = self._dir / "mosquitto.conf"
            persistence = (
                f"persistence true\npersistence_location {self._dir}/\n"
                if self.persistent
                else "persistence false\n"
            )
            if self.users:
                logins = self._password_file()
                access = f"allow_anonymous false\npassword_file {logins}\n"
            else:
                access = "allow_anonymous true\n"
            text = (
                f"listener {self.port} {self.host}\n{access}{persistence}"
                "max_inflight_messages 0\nmax_queued_messages 0\n"
            )
            if self.tls is not None or self.persistent or self.users:
                # mosquitto started as root drops to the user "mosquitto" before it loads the
                # certificates, its saved sessions or its logins, which a test keeps in its
                # own (private) folder: stay this user
                text += f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            if self.tls is not None:
                text += (
                    f"cafile {self.tls.ca_file}\ncertfile {self.tls.cert_file}\n"
                    f"keyfile {self.tls.key_file}\n"
                    f"require_certificate {str(self.tls.require_certificate).lower()}\n"
                )
            conf.write_text(text)
            cmd = [self._exe, "-c", str(conf)]
        else:
            cmd = [sys.executable, "-c", _AMQTT % self.port]
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start: {self._log_tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on port {self.port} within {timeout_s} s")

    def _password_file(self) -> Path:
        # mosquitto reads only hashed passwords: mosquitto_passwd writes them
        path = self._dir / "passwords"
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        path.write_text("")
        for user, password in self.users.items():
            done = subprocess.run(
                [tool, "-b", str(path), user, password], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"mosquitto_passwd failed: {done.stderr.strip()}")
        return path

    def _log_tail(self) -> str:
        try:
            text = (self._dir / "broker.log").read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text[-500:] or "(it printed nothing)"

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) if it runs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
