"""Issue 13 items 5, 6, 7, 11: secrets, TLS, file modes and the status endpoint, tried on
the real ``polekit gateway`` commands, a real mosquitto and real files."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from polekit.hil.broker import BrokerTls, LocalBroker
from polekit.protocols import identity

from boardkit import polekit

BLE_NODE = identity.make("371600", "TH", 1)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait until ``predicate()`` holds; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class GatewayProcess:
    """``polekit gateway run`` in a subprocess; its log lines as they come, its status port."""

    def __init__(self, config: Path, *extra: str, max_fds: int | None = None) -> None:
        self.lines: list[str] = []

        def limit_fds() -> None:  # in the child, before exec
            if max_fds is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_fds, max_fds))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polekit", "gateway", "run", "-c", str(config), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            umask=0o022,  # a login shell's: what the gateway writes must not rely on it
            preexec_fn=limit_fds,  # noqa: PLW1509 - the child runs no threads before exec
            # a gateway that does not stop is sent SIGABRT: its threads' stacks go to the log
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def status_port(self) -> int:
        """The status port the gateway logged (config port 0: any free port)."""
        found: list[int] = []

        def logged() -> bool:
            found[:] = [int(m) for m in re.findall(r"http://[^:/]+:(\d+)/health", self.log)]
            return bool(found) or self.proc.poll() is not None

        wait_for(logged, 30, "the status endpoint's log line")
        assert found, self.log
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a stop that hangs: show where it hangs
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=10)
            self._reader.join(timeout=5)
            raise AssertionError(
                "the gateway did not stop within 20 s of SIGTERM; its log and stacks:\n"
                + self.log[-8000:]
            ) from None
        self._reader.join(timeout=5)
        return code


@contextlib.contextmanager
def gateway_process(
    config: Path, *extra: str, max_fds: int | None = None
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(config, *extra, max_fds=max_fds)
    try:
        yield gw
    finally:
        gw.stop()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def runs_of(secret: str, n: int) -> list[str]:
    """Every ``n``-character run of ``secret``, both cases (a key may be shown either way)."""
    runs = [secret[i : i + n] for i in range(len(secret) - n + 1)]
    return runs + [r.upper() for r in runs] + [r.lower() for r in runs]


def leaks(text: str, password: str, key: str) -> list[str]:
    found = [password] if password in text else []
    return found + [r for r in runs_of(key, 8) if r in text]


# ---- item 5: secrets are never shown --------------------------------------------------


def _secret_config(tmp: Path, url: str, bindkey: str, status_port: int = 0) -> Path:
    config = tmp / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-secret"
data_dir = "{tmp / "data"}"
[mqtt]
url = "{url}"
[ble]
air = "{tmp / "no-air.sock"}"
[[device]]
code = "{BLE_NODE}"
transport = "ble"
address = "AA:BB:CC:DD:EE:01"
bindkey = "{bindkey}"
[status]
port = {status_port}
""")
    config.chmod(0o600)
    return config


def test_password_and_bind_key_appear_in_no_output(tmp_path: Path) -> None:
    password = "Pw-" + secrets.token_hex(8)
    key = secrets.token_hex(16)
    outputs: dict[str, str] = {}
    with LocalBroker() as broker:
        url = f"mqtt://gw:{password}@127.0.0.1:{broker.port}"
        # a mistyped bind key (a digit left out, a letter that is no hex digit): check and run
        for name, bad in [("short", key[:31]), ("non-hex", key[:9] + "g" + key[10:])]:
            config = _secret_config(tmp_path, url, bad)
            for command in ("check", "run"):
                result = polekit("gateway", command, "-c", str(config))
                out = result.stdout + result.stderr
                assert result.returncode == 2, out
                outputs[f"{command} {name} key"] = out
        assert "has 31 characters" in outputs["check short key"]
        assert "character 10 is not a hex digit" in outputs["check non-hex key"]
        # a URL that does not parse (a '/' in the unencoded password) is refused, redacted
        broken = _secret_config(tmp_path, f"mqtt://gw:{password}/x@127.0.0.1:1883", key)
        result = polekit("gateway", "check", "-c", str(broken))
        assert result.returncode == 2
        outputs["check broken url"] = result.stdout + result.stderr
        assert "mqtt://gw:***@127.0.0.1:1883" in outputs["check broken url"]
        # the good config: check, then run with its log, /health and /metrics
        config = _secret_config(tmp_path, url, key)
        result = polekit("gateway", "check", "-c", str(config))
        outputs["check"] = result.stdout + result.stderr
        assert result.returncode == 0, outputs["check"]
        assert f"mqtt://gw:***@127.0.0.1:{broker.port}" in outputs["check"]
        with gateway_process(config, "--log-level", "debug", "--log-format", "text") as gw:
            port = gw.status_port()
            wait_for(lambda: "connected to" in gw.log, 30, "the broker connection")
            code, outputs["/health"] = http_get(port, "/health")
            assert code == 200 and '"connected": true' in outputs["/health"]
            assert f"mqtt://gw:***@127.0.0.1:{broker.port}" in outputs["/health"]
            code, outputs["/metrics"] = http_get(port, "/metrics")
            assert code == 200
            status = polekit("gateway", "status", "--url", f"http://127.0.0.1:{port}")
            outputs["status"] = status.stdout + status.stderr
            assert status.returncode == 0, outputs["status"]
        outputs["run log"] = gw.log
        assert f"connected to mqtt://gw:***@127.0.0.1:{broker.port}" in gw.log
    for name, text in outputs.items():
        assert "Traceback" not in text, (name, text)
        assert leaks(text, password, key) == [], (name, text)


# ---- item 7: what the gateway writes is for its user alone ------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _plain_config(tmp: Path, data_dir: Path, broker_url: str, **status: object) -> Path:
    config = tmp / "gateway.toml"
    lines = [f'[gateway]\nid = "gw-sec"\ndata_dir = "{data_dir}"', f'[mqtt]\nurl = "{broker_url}"']
    lines.append("[status]\n" + "\n".join(f"{k} = {v!r}" for k, v in {"port": 0, **status}.items()))
    config.write_text("\n".join(lines).replace("'", '"') + "\n")
    config.chmod(0o600)
    return config


def test_data_folder_and_queue_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "polekit"
    old = tmp_path / "old"  # a queue an older version left world-readable
    old.mkdir()
    (old / "queue.sqlite3").touch(mode=0o644)
    (old / "queue.sqlite3").chmod(0o644)
    with LocalBroker() as broker:
        for folder in (data_dir, old):
            config = _plain_config(tmp_path, folder, broker.url)
            gw = GatewayProcess(config, "--log-format", "text")  # umask 022, as a shell's
            try:
                gw.status_port()
                files = [folder / f"queue.sqlite3{s}" for s in ("", "-wal", "-shm")]
                wait_for(lambda fs=files: all(f.exists() for f in fs), 20, "the queue and its WAL")
                modes = {f.name: _mode(f) for f in [folder, *files]}
            finally:
                assert gw.stop() == 0, gw.log
            expected = {f.name: 0o600 for f in files}
            if folder == data_dir:
                expected[folder.name] = 0o700
            else:
                expected[folder.name] = _mode(folder)  # a folder it did not make is left alone
            assert modes == expected, {k: oct(v) for k, v in modes.items()}


def test_check_warns_about_a_config_others_can_read(tmp_path: Path) -> None:
    config = _plain_config(tmp_path, tmp_path / "data", "mqtt://gw:pw@127.0.0.1:1883")
    said = {}
    for mode in (0o644, 0o604, 0o640, 0o600):
        config.chmod(mode)
        result = polekit("gateway", "check", "-c", str(config))
        assert result.returncode == 0, result.stderr  # a warning, not a refusal
        said[mode] = result.stderr.strip()
    assert said[0o644] == (
        f"warning: {config} is readable by every local user (mode 0644) and holds the broker "
        f"password and bind keys: `chmod 600 {config}` (or `chmod 640` with the service's group)"
    )
    assert "readable by every local user (mode 0604)" in said[0o604]
    # group-readable by this user's own group (the documented install): fine; 0600: fine
    assert said[0o640] == "" and said[0o600] == ""


def test_service_unit_keeps_what_the_gateway_writes_private() -> None:
    unit = (Path(__file__).parent.parent / "docs" / "polekit-gateway.service").read_text()
    service = unit.split("[Service]", 1)[1].split("[Install]", 1)[0].splitlines()
    assert "UMask=0077" in service and "StateDirectoryMode=0700" in service
    assert "install -m 0640 -o root -g polekit gateway.toml /etc/polekit/" in unit


# ---- item 6: TLS settings are never ignored; a refused certificate says why -------------


def _issue(
    folder: Path,
    name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
    ca: bool = False,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    """A key and certificate (``name``.key, ``name``.crt in ``folder``), signed by
    ``issuer`` (self-signed when None); valid for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_name = issuer or (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(signer_key, hashes.SHA256())
    )
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, subject


def _tls_config(tmp: Path, url: str, client: str) -> Path:
    config = tmp / f"gateway-{client}.toml"
    config.write_text(f"""
[gateway]
id = "gw-tls"
data_dir = "{tmp / client}"
[mqtt]
url = "{url}"
username = "gw"
password = "not-in-clear"
ca_file = "certs/ca.crt"
cert_file = "certs/{client}.crt"
key_file = "certs/{client}.key"
[status]
port = 0
""")
    config.chmod(0o600)
    return config


def test_tls_files_with_a_clear_text_url_are_a_config_error(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = _issue(certs, "ca", None, ca=True)
    _issue(certs, "client", ca)
    config = _tls_config(tmp_path, "mqtt://gw:pw@127.0.0.1:1883", "client")
    result = polekit("gateway", "check", "-c", str(config))
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, out
    for key, value in [
        ("ca_file", "ca.crt"),
        ("cert_file", "client.crt"),
        ("key_file", "client.key"),
    ]:
        assert (
            f"mqtt.{key} = 'certs/{value}': TLS is set up but mqtt.url = "
            "'mqtt://gw:***@127.0.0.1:1883' is clear text (the password would travel "
            "unencrypted): use mqtts://host:8883"
        ) in out, out
    config.write_text(config.read_text().replace("mqtt://", "mqtts://"))
    assert polekit("gateway", "check", "-c", str(config)).returncode == 0


def test_refused_client_certificate_shows_the_tls_reason_on_health(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = _issue(certs, "ca", None, ca=True)
    _issue(certs, "server", ca)
    _issue(certs, "client", ca)
    _issue(certs, "stranger", _issue(certs, "other-ca", None, ca=True))  # another CA's
    tls = BrokerTls(certs / "ca.crt", certs / "server.crt", certs / "server.key")
    health = {}
    with LocalBroker(tls=tls) as broker:
        for client in ("client", "stranger"):
            with gateway_process(_tls_config(tmp_path, broker.url, client)) as gw:
                port = gw.status_port()

                def settled(port: int = port, client: str = client) -> bool:
                    health[client] = json.loads(http_get(port, "/health")[1])["mqtt"]
                    return bool(health[client]["connected"] or health[client]["last_error"])

                wait_for(settled, 30, f"the {client} certificate's session or its error")
    assert health["client"]["connected"] is True, health  # the broker takes our CA's client
    refused = health["stranger"]
    assert refused["connected"] is False
    assert "alert unknown ca" in refused["last_error"].lower(), refused
    assert "timed out" not in refused["last_error"], refused


# ---- item 11: the status endpoint is bounded ----------------------------------------


def _raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_requests_get_4xx_and_no_traceback(tmp_path: Path) -> None:
    with LocalBroker() as broker:
        config = _plain_config(tmp_path, tmp_path / "data", broker.url)
        with gateway_process(config, "--log-format", "text") as gw:
            port = gw.status_port()
            line = _raw_request(port, b"GET /" + b"a" * 100_000 + b" HTTP/1.0\r\n\r\n")
            headers = _raw_request(
                port,
                b"GET /health HTTP/1.0\r\n"
                + b"X-Pad: "
                + b"b" * 4000
                + b"\r\n" * 1
                + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 1000) for i in range(10))
                + b"\r\n",
            )
            garbage = _raw_request(port, b"\x16\x03\x01\x00\xff" + b"\xff" * 50 + b"\r\n\r\n")
            code, body = http_get(port, "/health")
    assert line.startswith(b"HTTP/1.0 414 "), line[:100]
    assert headers.startswith(b"HTTP/1.0 431 "), headers[:100]
    assert garbage.startswith(b"HTTP/1.0 400 "), garbage[:100]
    assert code == 200 and '"gateway": "gw-sec"' in body
    assert "Traceback" not in gw.log and "ERROR" not in gw.log, gw.log


def _flood(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send nothing (non-blocking: a full backlog does not stall)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


def _answered_503(socks: list[socket.socket]) -> int:
    count = 0
    for s in socks:
        try:
            count += s.recv(64).startswith(b"HTTP/1.0 503 ")
        except OSError:
            pass  # not answered (yet): held open, or still in the backlog
    return count


def test_connection_flood_is_bounded_and_logged_in_a_few_lines(tmp_path: Path) -> None:
    with LocalBroker() as broker:
        # at the connection cap (fds to spare), then out of file descriptors (fds scarce)
        for max_fds, sign in [(256, "most it serves"), (40, "cannot accept")]:
            config = _plain_config(tmp_path, tmp_path / f"data-{max_fds}", broker.url)
            with gateway_process(config, "--log-format", "text", max_fds=max_fds) as gw:
                port = gw.status_port()
                wait_for(lambda: "connected to" in gw.log, 30, "the broker connection")
                before = len(gw.lines)
                socks = _flood(port, 400)
                try:
                    wait_for(lambda s=sign: s in gw.log, 30, f"the log line {sign!r}")
                    if max_fds == 256:
                        wait_for(lambda s=socks: _answered_503(s) > 0, 30, "a 503 answer")
                        # while the 400 stay open: the cap's 32 held, the rest closed (an
                        # accept burst may hold more for a moment)
                        fds = Path(f"/proc/{gw.proc.pid}/fd")
                        wait_for(lambda f=fds: len(list(f.iterdir())) < 62, 4, "excess closed")
                finally:
                    for s in socks:
                        s.close()
                # the flood gone, it answers as soon as it has closed the flood's connections
                answer: list[tuple[int, str]] = []

                def answers(port: int = port, answer: list[tuple[int, str]] = answer) -> bool:
                    answer[:] = [http_get(port, "/health")]
                    return answer[0][0] == 200

                wait_for(answers, 10, "/health after the flood")
                assert '"connected": true' in answer[0][1]
                flood_log = gw.lines[before:]
            assert "Traceback" not in gw.log, gw.log
            assert len(flood_log) <= 4, "\n".join(flood_log)


def test_check_warns_when_the_status_endpoint_is_not_on_loopback(tmp_path: Path) -> None:
    said = {}
    for host in ("0.0.0.0", "192.0.2.7", "gateway.example", "127.0.0.1", "::1", "localhost"):
        config = _plain_config(tmp_path, tmp_path / "data", "mqtt://127.0.0.1:1883", listen=host)
        result = polekit("gateway", "check", "-c", str(config))
        assert result.returncode == 0, result.stderr
        said[host] = result.stderr.strip()
    assert said["0.0.0.0"] == (
        "warning: [status] listen = '0.0.0.0' is reachable from other machines, and /health "
        "and /metrics have no authentication (they show devices, queue and broker): keep "
        "127.0.0.1, or let only the monitoring host reach the port (firewall)"
    )
    assert "listen = '192.0.2.7' is reachable" in said["192.0.2.7"]
    assert "listen = 'gateway.example' is reachable" in said["gateway.example"]
    assert said["127.0.0.1"] == said["::1"] == said["localhost"] == ""
