"""Every ``polekit`` command, given bad input, says what is wrong in words and exits non-zero:
never a traceback, never a silent success, never a wait for hardware that is not there.

The commands are found by walking the click tree from ``polekit.cli.main``, so a command
added later is covered without touching this file. Each parameter gets the bad values that
fit it (chosen by its name, else by its type): missing files, folders in place of files,
binary garbage, Latin-1 text, bad device codes, unknown boards, ports that do not exist, bad
URLs, negative numbers. Each case runs in a process of its own (forked from one that has
polekit imported, tests/forkrun.py: a few hundred cases in seconds), a few at a time, with
a deadline. Once without hardware, once more for the lines that reach a running emulated
board (bad input past a port that opens).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from polekit.cli import main
from polekit.gateway.platforms import adapter_class, available
from polekit.hil.broker import free_port
from polekit.hil.rom import make_app_image
from polekit.protocols import identity

from boardkit import polekit_emulate
from forkrun import TIMED_OUT, ForkServer

CODE = identity.make("371600", "PL", 1)
# an update public key for the configs' [ota] (a real Ed25519 key: the bundle is what fails)
CITY_PUB = (
    Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)
# a case still running after this waits for hardware that is not there; generous, because a
# busy machine takes seconds for what needs a fraction of one
CASE_TIMEOUT_S = 60
WORKERS = 3
NO_PORT = "/dev/polekit-no-such-port"
# values the emulated world cannot hold: not a number, not finite, beyond the part's range
BAD_PHYSICS = [
    "sht3x.temperature=1e999",
    "sht3x.temperature=nan",
    "sht3x.temperature=hot",
    "sht3x.temperature=true",
    "sht3x.temperature=-300",
    "sht3x.humidity=101",
    'sht3x.spike={"temperature": 1e999}',
    "door.active=2",
    "sht3x.noise=-1",
]


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path: leaves, and groups that do something without a subcommand."""
    for name, cmd in sorted(group.commands.items()):
        sub = (*path, name)
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:
                yield sub
            yield from commands(cmd, sub)
        else:
            yield sub


def command_at(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


class Inputs:
    """The files and values one case may point at, in a folder of its own (a command may
    change a file it was wrongly given). ``taken_port``: a TCP port something listens on."""

    def __init__(self, tmp: Path, taken_port: int, board: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.board = board
        self.taken_port = taken_port
        tmp.mkdir(exist_ok=True)
        self.missing = tmp / "missing.txt"
        self.folder = tmp / "a-folder"
        self.folder.mkdir(exist_ok=True)
        self.garbage = tmp / "garbage.bin"
        self.garbage.write_bytes(bytes(range(256)) * 8)
        self.empty = tmp / "empty.txt"
        self.empty.write_bytes(b"")
        self.latin1 = tmp / "latin1.csv"
        self.latin1.write_bytes(
            f"port,board,device_code,site\n{NO_PORT},pole-env-esp32,{CODE},Hauptstraße 1\n".encode(
                "latin-1"
            )
        )
        self.under_file = self.garbage / "inside"  # its parent is a regular file
        self.taken_key = tmp / "taken"  # a key pair by this name exists: never overwritten
        (tmp / "taken.key").write_bytes(b"an existing signing key")
        (tmp / "city.pub").write_bytes(CITY_PUB)  # the configs' [ota] public_key
        closed = free_port()
        self.config = tmp / "gateway.toml"
        self.config.write_text(self._config(tmp / "data", closed))
        self.config_unwritable = tmp / "gateway-unwritable.toml"
        self.config_unwritable.write_text(self._config(self.under_file, closed))
        self.config_status_taken = tmp / "gateway-status-taken.toml"
        self.config_status_taken.write_text(
            self._config(tmp / "data", closed).replace("enabled = false", f"port = {taken_port}")
        )
        # bad [platform] sections, one file each: every kind's example with a key misspelt
        # (did-you-mean), and what any kind can get wrong
        self.platform_configs: list[Path] = []
        bad_entries = [_misspelt(adapter_class(k).EXAMPLE) for k in available()]
        bad_entries += [
            {"kind": "thingsbord", "access_token": "t"},  # a kind that does not exist
            {"kind": "onenet"},  # every required key missing
            {"kind": "iotda", "device_id": "gw", "secret": 5},  # a secret that is not text
            {"kind": "sparkplug", "group_id": "a/b", "edge_node_id": "e", "qos": 2},
            {"kind": "senml", "keepalive": "x", "max_connects_per_min": 0},
        ]
        base = self._config(tmp / "data", closed)
        for n, entry in enumerate(bad_entries):
            path = tmp / f"gateway-platform-{n}.toml"
            path.write_text(f"{base}\n[platform]\n{_table(entry)}")
            path.chmod(0o600)  # a config with secrets is refused as readable by others
            self.platform_configs.append(path)
        twice = tmp / f"gateway-platform-{len(bad_entries)}.toml"
        twice.write_text(f"{base}\n[[platform]]\nkind = 'senml'\n[[platform]]\nkind = 'senml'\n")
        self.platform_configs.append(twice)  # two entries with one name (one queue file)
        self.manifest = tmp / "poles.csv"
        self.manifest.write_text(f"port,board,device_code\n{NO_PORT},pole-env-esp32,{CODE}\n")
        self.manifest_bom = tmp / "poles-bom.csv"
        self.manifest_bom.write_bytes(
            b"\xef\xbb\xbfport,board,device_code\n" + b"x,pole-env-esp33,371600PL000001X\n"
        )
        self.manifest_quote = tmp / "poles-quote.csv"
        self.manifest_quote.write_text(
            f'port,board,device_code\n{NO_PORT},"pole-env-esp32,{CODE}\n{NO_PORT},x,{CODE}\n'
        )
        self.image = tmp / "ESP32_GENERIC.bin"
        make_app_image(str(self.image), b"\0" * 1024)
        self.manifest_utf16 = tmp / "poles-utf16.csv"
        self.manifest_utf16.write_bytes(self.manifest.read_text().encode("utf-16"))

    @staticmethod
    def _config(data_dir: Path, port: int) -> str:
        return f"""
[gateway]
id = "gw-bad-input"
data_dir = "{data_dir}"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
[status]
enabled = false
[ota]
public_key = "city.pub"
[[bus]]
name = "meters"
type = "tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.2
[[device]]
code = "{CODE}"
bus = "meters"
unit = 1
map = "pole-env"
"""

    def files(self) -> list[str]:
        """Bad values for any parameter that names a file."""
        paths = [self.missing, self.folder, self.garbage, self.empty, self.latin1]
        return [str(p) for p in [*paths, self.under_file]]

    def good(self, name: str) -> str | None:
        """A value that passes for parameter ``name``, so that the bad one under test is
        what the command trips on. A port or a control socket is good only with a running
        emulated board; without one, they are the best there is."""
        return {
            "config_path": str(self.config),
            "manifest": str(self.manifest),
            "board_name": "pole-env-esp32",
            "port": self.board["repl"] if self.board else NO_PORT,
            "image": str(self.image),
            "control": self.board["control"] if self.board else str(self.missing),
            "path": str(self.tmp / "air.sock"),
            "region": "371600",
            "dtype": "PL",
            "serial": "1",
            "codes": CODE,
            "name": "pole-env-esp32",
            "assignments": "sht3x.temperature=20",
            "paths": "lamp.level",
            "offset": "0x1000",
            "length": "16",
            "maps": "sdm120",
            "device": "chint-dtsu666",
            "preview_device": CODE,
            "source": str(self.folder),  # not a bundle: a push trips on it last
            "devices": CODE,
        }.get(name)

    def bad(self, path: tuple[str, ...], param: click.Parameter) -> list[str]:
        """The bad values for one parameter of command ``path``: by command and name, else
        by name, else by type."""
        files = self.files()
        not_a_socket = [str(self.garbage), str(self.folder), str(self.under_file)]
        by_command: dict[str, list[str]] = {
            "ble scan:air": [str(self.missing), *not_a_socket],
            "emulate flash-read:out": [str(self.folder), str(self.under_file)],
            # NAME of a new key pair: one that exists, in a folder that cannot be, no name
            "keys new:name": [
                str(self.taken_key),
                str(self.under_file),
                "",
                f"{self.folder}/",
                str(self.folder),
                f"{self.missing}.key",
            ],
            # preview writes nothing: a data_dir it could not use is no problem for it
            "platform preview:config_path": [*files, *map(str, self.platform_configs)],
            # a code with a bad check character, one the config does not have, not a code
            "platform preview:preview_device": [
                "371600PL000001X",
                identity.make("371600", "PL", 9),
                "é",
                "",
            ],
            "gateway run:config_path": [
                *files,
                *map(str, self.platform_configs),
                str(self.config_unwritable),
                str(self.config_status_taken),
            ],
        }
        by_name: dict[str, list[str]] = {
            "board_name": ["pole-env-esp33", *files],
            "name": ["pole-env-esp33", *files],
            "port": [
                NO_PORT,
                str(self.folder),
                str(self.garbage),
                f"rfc2217://127.0.0.1:{free_port()}",
                "rfc2217://no port here",
            ],
            "device_code": ["371600PL000001X", "371600PL00001", "é"],
            "devices": ["371600PL000001X", identity.make("371600", "PL", 9), "", "é"],
            # an update's bundle: files and folders that are not one, URLs that lead nowhere
            "source": [
                *files,
                f"http://127.0.0.1:{free_port()}/",
                "http://127.0.0.1:99999/",
                "ftp://127.0.0.1/bundle",
            ],
            "codes": ["371600PL000001X", "", "é"],
            "region": ["12", "é"],
            "dtype": ["ZZ", "é"],
            "url": [f"http://127.0.0.1:{free_port()}", "not a url", "http://127.0.0.1:99999"],
            "broker": [
                f"mqtt://127.0.0.1:{free_port()}",
                "not a url",
                "mqtt://127.0.0.1:99999",
                "ftp://127.0.0.1",
            ],
            "settings": ["unit", "=3"],
            "mpy": ["9.9", "six"],
            "maps": ["sdm12", "é", ""],
            "device": ["chint-dtsu66", "é", "", str(self.garbage)],
            "tcp": ["127.0.0.1", "127.0.0.1:99999", "no host:1", f"127.0.0.1:{self.taken_port}"],
            "unique_id": ["zz", "123", "é"],
            "adapter": ["hci99"],
            # where a command makes a socket or a folder, a missing path is fine
            "air": not_a_socket,
            "control_path": not_a_socket,
            "path": not_a_socket,
            "fs_dir": [str(self.garbage), str(self.under_file)],
            "out": [str(self.garbage), str(self.under_file)],
            "control": files,
            "assignments": [
                "nonsense",
                "nonsense.x=1",
                "sht3x.nonsense=1",
                "sht3x.temperature=abc",
                "sht3x.spike=3",
                *BAD_PHYSICS,
            ],
            "paths": ["nonsense", "sht3x.nonsense"],
            "offset": ["-1", "zz", "0xffffffff"],
            "length": ["-1", "zz", "0x10000000"],
            "config_path": [
                *files,
                str(self.config_unwritable),
                *map(str, self.platform_configs),
            ],
            "manifest": [
                *files,
                str(self.manifest_bom),
                str(self.manifest_quote),
                str(self.manifest_utf16),
            ],
        }
        key = f"{' '.join(path)}:{param.name}"
        if key in by_command:
            return by_command[key]
        if param.name in by_name:
            return by_name[param.name or ""]
        if isinstance(param.type, click.Path):
            return files
        if isinstance(param.type, click.types.IntParamType | click.types.FloatParamType):
            return ["-1"]
        if isinstance(param.type, click.Choice):
            return ["bogus"]
        if isinstance(param, click.Option) and param.is_flag:
            return []
        return ["", "é", str(self.garbage)]


def _misspelt(example: dict[str, Any]) -> dict[str, Any]:
    """``example`` with its first key of the kind's own misspelt (a letter dropped)."""
    key = next(k for k in example if k not in ("kind", "url"))
    out = {k: v for k, v in example.items() if k != key}
    out[key[:-1]] = example[key]
    return out


def _table(entry: dict[str, Any]) -> str:
    from platkit import toml_value

    return "".join(f"{k} = {toml_value(v)}\n" for k, v in entry.items())


def argv(param: click.Parameter, value: str) -> list[str]:
    if isinstance(param, click.Argument):
        return [value]
    assert isinstance(param, click.Option)
    return [param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0], value]


def cases(
    tmp: Path, taken_port: int, board: dict[str, Any] | None = None
) -> list[tuple[Path, tuple[str, ...]]]:
    """One command line per (command, parameter, bad value), each with its own folder of
    inputs; other required parameters get good values. Also an unknown option for each
    command. With ``board`` (``polekit emulate --json``'s ports), only the lines that
    reach that board: bad input past a port that opens."""
    out: list[tuple[Path, tuple[str, ...]]] = []

    def inputs() -> Inputs:
        return Inputs(tmp / f"case{len(out)}", taken_port, board)

    for path in commands():
        cmd = command_at(path)
        params = [p for p in cmd.params if p.name not in ("help", "version")]
        if board is None:
            out.append((inputs().tmp, (*path, "--no-such-option")))
        for param in params:
            for k in range(len(inputs().bad(path, param))):
                given = inputs()
                line: list[str] = list(path)
                for other in params:
                    if other is param:
                        line += argv(other, given.bad(path, param)[k])
                    elif other.required:
                        good = given.good(other.name or "")
                        assert good is not None, f"no good value for {path} {other.name}"
                        line += argv(other, good)
                if board is None or {board["repl"], board["control"]} & set(line):
                    out.append((given.tmp, tuple(line)))
    return out


def test_walk_finds_every_command() -> None:
    found = {" ".join(p) for p in commands()}
    # a sample from each area, so a broken walk cannot pass with nothing to run
    assert {"gateway check", "provision", "emulate", "emulate set", "code make"} <= found


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running ``polekit emulate`` board with the node firmware: its ports."""
    with polekit_emulate("--fs", str(tmp_path_factory.mktemp("flash"))) as ports:
        yield ports


def test_every_command_refuses_bad_input_in_words(tmp_path: Path, taken_port: int) -> None:
    check_cases(cases(tmp_path, taken_port))


def test_bad_input_past_an_open_port_is_refused_in_words(
    tmp_path: Path, taken_port: int, board: dict[str, Any]
) -> None:
    lines = cases(tmp_path, taken_port, board)
    reached = {line[:2] for _, line in lines}
    assert {("deploy", "--port"), ("emulate", "set"), ("emulate", "flash-read")} <= reached
    check_cases(lines)


def test_bad_physics_leaves_the_board_and_its_firmware_running(board: dict[str, Any]) -> None:
    from boardkit import polekit

    control = board["control"]

    def log() -> str:
        return polekit("emulate", "log", "--control", control, "--tail", "1000000").stdout

    before = log()
    for assignment in BAD_PHYSICS:
        result = polekit("emulate", "set", "--control", control, assignment, timeout=60)
        assert result.returncode == 1, (assignment, result.stdout, result.stderr)
        error = result.stderr.strip()
        assert error.startswith("Error: ") and "\n" not in error, (assignment, error)
        assert assignment.split("=")[0] in error, error
    set_ok = polekit("emulate", "set", "--control", control, "sht3x.temperature=24.5")
    assert set_ok.returncode == 0, set_ok.stderr
    got = polekit("emulate", "get", "--control", control, "sht3x.temperature")
    assert got.stdout.strip() == "24.5", got.stderr
    after = log()
    said = after[len(before) :] if after.startswith(before) else after
    assert "Traceback" not in said, said[-2000:]


def check_cases(lines: list[tuple[Path, tuple[str, ...]]]) -> None:
    """Run the cases, a few at a time; fail listing every case that showed a traceback,
    exited 0, was killed, timed out or exited without a word."""
    started = time.monotonic()
    env = {"COLUMNS": "200", "TERM": "dumb"}
    servers = [ForkServer(env) for _ in range(WORKERS)]
    todo = list(enumerate(lines))
    results: dict[int, tuple[int, str, float]] = {}

    def work(server: ForkServer) -> None:
        while todo:
            try:
                n, (cwd, line) = todo.pop()
            except IndexError:
                return
            results[n] = server.run(list(line), cwd, CASE_TIMEOUT_S)

    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            list(pool.map(work, servers))
    finally:
        for server in servers:
            server.close()
    elapsed = time.monotonic() - started
    failures = []
    for n, (_, line) in enumerate(lines):
        code, full, _ = results[n]
        out = "\n".join(full.strip().splitlines()[-6:])  # a traceback's last lines say enough
        shown = "polekit " + " ".join(repr(a) if not a or " " in a else a for a in line)
        if "Traceback" in full or "INTERNALERROR" in full:
            failures.append(f"{shown}: traceback:\n{out}")
        elif code == TIMED_OUT:
            failures.append(f"{shown}: {out}")
        elif code == 0:
            failures.append(f"{shown}: exit status 0 for bad input:\n{out}")
        elif code < 0:
            failures.append(f"{shown}: killed by signal {-code}:\n{out}")
        elif not full.strip():
            failures.append(f"{shown}: exit status {code} and not a word said")
    slowest = max(results, key=lambda n: results[n][2])
    print(
        f"{len(lines)} cases in {elapsed:.1f} s; the slowest: "
        f"polekit {' '.join(lines[slowest][1])} ({results[slowest][2]} s)"
    )
    assert not failures, f"{len(failures)} of {len(lines)} cases:\n\n" + "\n\n".join(failures)
