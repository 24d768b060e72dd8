"""The emulated board behind a pseudo-terminal: the real mpremote drives it as a USB board."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polekit.hil.emulator import EmulatedBoard

from boardkit import polekit_emulate

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))


def mpremote(
    board: EmulatedBoard, *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MPREMOTE, "connect", board.repl, *args], capture_output=True, text=True, timeout=timeout_s
    )


@pytest.fixture
def board(tmp_path: Path):  # type: ignore[no-untyped-def]
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as b:
        yield b


def test_mpremote_runs_code(board: EmulatedBoard) -> None:
    result = mpremote(board, "exec", "import sys; print(sys.implementation.name, 6 * 7)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "micropython 42"
    error = mpremote(board, "exec", "raise ValueError('boom')")
    assert error.returncode == 1 and "ValueError: boom" in error.stdout + error.stderr


def test_files_copy_in_and_out_and_survive_soft_reset(board: EmulatedBoard, tmp_path: Path) -> None:
    payload = os.urandom(20_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    (tmp_path / "greet.py").write_text("WORD = 'hello from flash'\n")
    assert mpremote(board, "fs", "mkdir", ":lib").returncode == 0
    for args in (
        ("fs", "cp", str(src), ":blob.bin"),
        ("fs", "cp", str(tmp_path / "greet.py"), ":lib/greet.py"),
    ):
        result = mpremote(board, *args)
        assert result.returncode == 0, result.stderr
    assert mpremote(board, "soft-reset").returncode == 0
    listing = mpremote(board, "fs", "ls", ":")
    assert "blob.bin" in listing.stdout and "lib/" in listing.stdout
    result = mpremote(board, "exec", "import greet; print(greet.WORD)")
    assert result.stdout.strip() == "hello from flash"
    back = tmp_path / "back.bin"
    assert mpremote(board, "fs", "cp", ":blob.bin", str(back)).returncode == 0
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()
    missing = mpremote(board, "fs", "cat", ":nope.py")
    assert missing.returncode == 1 and "No such file" in missing.stdout + missing.stderr
    # the flash is mirrored on the host
    assert (board.fs_dir / "blob.bin").read_bytes() == payload
    assert (board.fs_dir / "lib" / "greet.py").is_file()


def test_flash_outlives_a_power_cycle(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        (tmp_path / "main.py").write_text("print('main.py ran')\n")
        assert mpremote(board, "fs", "cp", str(tmp_path / "main.py"), ":main.py").returncode == 0
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        board.wait_output("main.py ran")  # main.py runs at boot
        assert "main.py" in mpremote(board, "fs", "ls").stdout


def test_polekit_emulate_prints_its_ports_and_stops_on_sigterm(tmp_path: Path) -> None:

    with polekit_emulate("--board", "pole-env-esp32", "--fs", str(tmp_path / "flash")) as ports:
        result = subprocess.run(
            [MPREMOTE, "connect", ports["repl"], "exec", "print('alive')"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout.strip() == "alive"
        assert set(ports) >= {"repl", "uarts", "control"} and "rs485" in ports["uarts"]
        polekit = [sys.executable, "-m", "polekit", "emulate"]
        ctl = ["--control", ports["control"]]

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*polekit, *args], capture_output=True, text=True, timeout=30)

        done = cli("set", *ctl, "sht3x.temperature=31.5", "door.active=1")
        assert done.returncode == 0, done.stderr
        assert cli("get", *ctl, "sht3x.temperature").stdout.strip() == "31.5"
        bad = cli("set", *ctl, "sht3x.temp=1")
        assert bad.returncode == 1 and "sht3x has no 'temp'" in bad.stderr
        assert float(cli("get", *ctl, "lamp.level").stdout) == 0.0
        assert "alive" in cli("log", *ctl).stdout


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_polekit_emulate_leaves_no_temporary_files_behind(tmp_path: Path, stop: str) -> None:
    scratch = tmp_path / "tmp"  # the system's temporary folder, for this run alone
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "polekit", "emulate", "--bare", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        made = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*"))
        assert Path(ports["fs"]).is_relative_to(scratch), made  # its flash, its control socket
        assert Path(ports["control"]).is_relative_to(scratch), made
        proc.send_signal(getattr(signal, stop))
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*"))
    assert left == [], f"made {made}, left {left}"


def test_polekit_emulate_that_cannot_start_leaves_no_temporary_files(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "polekit", "emulate", "--bare"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(scratch), "PATH": str(tmp_path)},  # no Node.js
    )
    assert result.returncode == 1 and "Node.js is needed" in result.stderr, result.stderr
    assert list(scratch.iterdir()) == []


def test_pytest_embedded_drives_the_emulated_board(board: EmulatedBoard, tmp_path: Path) -> None:
    (tmp_path / "test_on_board.py").write_text(
        "def test_board_answers(dut):\n"
        "    dut.write('\\x02')  # friendly REPL\n"
        "    dut.write('print(6 * 7)\\r')  # Enter is a carriage return, as on a UART\n"
        "    dut.expect('42', timeout=10)\n"
        "    dut.write('import sys; print(sys.implementation.name)\\r')\n"
        "    dut.expect('micropython', timeout=10)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_on_board.py"),
            "--embedded-services",
            "serial",
            "--port",
            board.repl,
            "--baud",
            "115200",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_the_rom_modules_fit_their_allowance(board: EmulatedBoard) -> None:
    # the VM's heap is the budget plus ROM_ALLOWANCE_BYTES for the ROM modules (on the chip
    # they are in flash): a ROM larger than its allowance takes heap from the firmware
    from polekit.hil.emulator import ROM_ALLOWANCE_BYTES

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rom = [e["bytes"] for e in board.events if e.get("event") == "rom-bytes"]
        if rom:
            break
        time.sleep(0.05)
    assert rom, "the board did not report its ROM's heap"
    print(f"ROM modules: {rom[-1]} bytes of heap, allowance {ROM_ALLOWANCE_BYTES}")
    assert rom[-1] <= ROM_ALLOWANCE_BYTES


def test_heap_budget_gives_memory_error_like_the_chip(board: EmulatedBoard) -> None:
    script = (
        "import gc\n"
        "gc.collect()\n"
        "print('total', gc.mem_free() + gc.mem_alloc())\n"
        "blocks = []\n"
        "try:\n"
        "    while True:\n"
        "        blocks.append(bytearray(4096))\n"
        "except MemoryError:\n"
        "    print('MemoryError after', len(blocks) * 4096)\n"
    )
    result = mpremote(board, "exec", script)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.rsplit(" ", 1) for line in result.stdout.strip().splitlines())
    budget = board.board.heap_bytes
    assert int(lines["total"]) <= budget
    assert budget * 0.6 < int(lines["MemoryError after"]) < budget
    # the board is still usable after running out of memory, and the memory comes back
    after = mpremote(board, "exec", "import gc; gc.collect(); print(gc.mem_free())")
    assert 0.8 * budget < int(after.stdout) <= budget


def test_asyncio_firmware_that_yields_gets_its_garbage_collected_like_on_the_chip(
    board: EmulatedBoard,
) -> None:
    # 2 MB of garbage (18 heaps' worth) in 1 KB pieces, yielding with sleep_ms(0) every 30:
    # the chip collects as it goes; the WebAssembly VM collects only back in JavaScript,
    # which the port's asyncio never reached on a zero wait (MemoryError after ~100 KB)
    script = (
        "import asyncio, gc\n"
        "out = []\n"
        "async def churn(collect):\n"
        "    n = 0\n"
        "    try:\n"
        "        for i in range(2000):\n"
        "            x = bytearray(1000)\n"
        "            n += 1\n"
        "            if i % 30 == 0:\n"
        "                if collect:\n"
        "                    gc.collect()\n"
        "                await asyncio.sleep_ms(0)\n"
        "    except MemoryError:\n"
        "        pass\n"
        "    out.append(n)\n"
        "async def both():\n"
        "    await churn(False)\n"
        "    await churn(True)\n"
        "asyncio.create_task(both())\n"
    )
    assert mpremote(board, "exec", script).returncode == 0
    deadline = time.monotonic() + 20
    while True:
        done = mpremote(board, "resume", "exec", "print(out)").stdout.strip()
        if done.count(",") == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert done == "[2000, 2000]"


def test_a_heap_reading_after_a_collection_holds_no_other_tasks_garbage(
    board: EmulatedBoard,
) -> None:
    # On the chip `gc.collect(); gc.mem_free()` reads the heap as the collection left it:
    # nothing runs in between. Here the collection waits for the task's yield, so the reading
    # comes after one, and two tasks that are due make 4 KB of garbage each step: the loop
    # resumes the task that asked for the collection before them, so its reading is the
    # chip's (else about 8 KB short: 54 KB against a 55 KB floor at chip speed)
    script = (
        "import asyncio, gc\n"
        "out = []\n"
        "left = [2]\n"
        "async def churn():\n"
        "    for i in range(300):\n"
        "        len(bytearray(4000))\n"
        "        await asyncio.sleep_ms(0)\n"
        "    left[0] -= 1\n"
        "async def reading():\n"
        "    gc.collect()\n"
        "    await asyncio.sleep_ms(0)\n"
        "    return gc.mem_free()\n"
        "async def health():\n"
        "    await asyncio.sleep_ms(20)\n"
        "    busy = []\n"
        "    for i in range(5):\n"
        "        busy.append(await reading())\n"
        "        await asyncio.sleep_ms(5)  # the others run between two readings\n"
        "    while left[0]:\n"
        "        await asyncio.sleep_ms(20)\n"
        "    out.append((min(busy), await reading()))\n"
        "asyncio.create_task(churn())\n"
        "asyncio.create_task(churn())\n"
        "asyncio.create_task(health())\n"
    )
    assert mpremote(board, "exec", script).returncode == 0
    deadline = time.monotonic() + 20
    while True:
        done = mpremote(board, "resume", "exec", "print(out)").stdout.strip()
        if done != "[]" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    busy, quiet = (int(v) for v in done.strip("[()]").split(","))
    assert quiet - busy < 1000, (busy, quiet)


def test_asyncio_firmware_runs_in_the_background_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import asyncio\n"
        "import machine\n"
        "async def blink():\n"
        "    led = machine.Pin(2, machine.Pin.OUT)\n"
        "    n = 0\n"
        "    while True:\n"
        "        n += 1\n"
        "        led.value(n % 2)\n"
        "        print('tick', n)\n"
        "        await asyncio.sleep_ms(50)\n"
        "asyncio.run(blink())\n"
    )
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        board.wait_output("tick 5")  # main.py's asyncio loop runs after boot
        # mpremote interrupts it with Ctrl-C, as on a board, and the REPL answers
        result = mpremote(board, "resume", "exec", "print('repl ok')")
        assert result.stdout.strip() == "repl ok", result.stdout + result.stderr
        assert b"KeyboardInterrupt" in board.serial_log
        count = board.serial_log.count(b"tick")
        time.sleep(0.5)
        assert board.serial_log.count(b"tick") == count  # stopped
