"""The emulated board's hardware: virtual peripherals read at the bus level by MicroPython
code, faults as on the chip, the watchdog, and a UART bridged to the host at its baud rate."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import serial

from polekit.hil.emulator import ControlError, EmulatedBoard
from polekit.hil.line import RX_BURST_CHARS, VirtualLine

from boardkit import MPREMOTE, board_exec, board_exec_until


@pytest.fixture(scope="module")
def board():  # type: ignore[no-untyped-def]
    with EmulatedBoard("pole-env-esp32") as b:
        yield b


SHT3X_READ = """
import machine
i2c = machine.I2C(0, scl=22, sda=21)
i2c.writeto(0x44, b"\\x24\\x00")
d = i2c.readfrom(0x44, 6)
def crc8(data):
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc
assert crc8(d[0:2]) == d[2] and crc8(d[3:5]) == d[5], "CRC"
print(round(-45 + 175 * (d[0] << 8 | d[1]) / 65535, 1), round(100 * (d[3] << 8 | d[4]) / 65535, 1))
"""


def test_sht3x_values_set_on_the_host_are_read_over_i2c_with_crc(board: EmulatedBoard) -> None:
    board.set("sht3x.temperature", -7.5)
    board.set("sht3x.humidity", 81.25)
    assert board_exec(board, SHT3X_READ) == "-7.5 81.2"
    board.set("sht3x.temperature", 31.5)
    assert board_exec(board, SHT3X_READ).split()[0] == "31.5"


def test_bh1750_adxl345_and_scan(board: EmulatedBoard) -> None:
    board.set("bh1750.illuminance", 4321)
    board.set("adxl345.tilt", 12)
    out = board_exec(
        board,
        """
import machine, math
i2c = machine.I2C(0, scl=22, sda=21)
print(i2c.scan())
i2c.writeto(0x23, b"\\x01"); i2c.writeto(0x23, b"\\x10")
raw = i2c.readfrom(0x23, 2)
print(round((raw[0] << 8 | raw[1]) / 1.2))
print(i2c.readfrom_mem(0x53, 0x00, 1)[0] == 0xE5)
d = i2c.readfrom_mem(0x53, 0x32, 6)
def s16(lo, hi):
    v = lo | hi << 8
    return v - 65536 if v & 0x8000 else v
x, z = s16(d[0], d[1]), s16(d[4], d[5])
print(round(math.degrees(math.atan2(x, z))))
""",
    )
    assert out.splitlines() == ["[35, 68, 83]", "4321", "True", "12"]


def test_absent_sensor_raises_enodev_like_the_chip_and_others_keep_working(
    board: EmulatedBoard,
) -> None:
    board.set("bh1750.absent", 1)
    try:
        out = board_exec(
            board,
            """
import machine
i2c = machine.I2C(0, scl=22, sda=21)
try:
    i2c.readfrom(0x23, 2)
except OSError as e:
    print("OSError", e.args[0])
print(i2c.scan())
""",
        )
        assert out.splitlines() == ["OSError 19", "[68, 83]"]
        assert board_exec(board, SHT3X_READ)  # the SHT3x still answers
    finally:
        board.set("bh1750.absent", 0)


def test_pms5003_streams_frames_on_its_uart(board: EmulatedBoard) -> None:
    board.set("pms5003.pm2_5", 37)
    board.set("pms5003.pm10", 55)
    # the sensor streams a frame a second: read what came until a frame has the new values
    out = board_exec_until(
        board,
        """
import machine
u = machine.UART(1, 9600, tx=27, rx=14)
buf = u.read() or b""
i = buf.rfind(b"\\x42\\x4d")  # the newest frame
f = buf[i:i + 32] if i >= 0 else b""
if len(f) == 32:
    assert sum(f[:30]) == (f[30] << 8 | f[31]), "frame checksum"
    print(f[12] << 8 | f[13], f[14] << 8 | f[15])
else:
    print("no whole frame yet")
""",
        "37 55",
    )
    assert out == "37 55"  # the atmospheric PM2.5 and PM10 words


def test_contacts_drive_pins_and_the_lamp_reads_back_pwm(board: EmulatedBoard) -> None:
    board.set("door.active", 1)
    board.set("water.active", 0)
    out = board_exec(
        board,
        """
import machine
door = machine.Pin(25, machine.Pin.IN, machine.Pin.PULL_UP)
water = machine.Pin(26, machine.Pin.IN)
print(door.value(), water.value())
machine.PWM(machine.Pin(18), freq=1000, duty_u16=32768)
machine.Pin(19, machine.Pin.OUT).on()
""",
    )
    assert out == "0 0"  # the door contact is active low: open door pulls the pin down
    assert board.get("lamp.relay") == 1
    assert board.get("lamp.level") == pytest.approx(50.0, abs=0.1)


def test_unknown_devices_and_quantities_are_clear_errors(board: EmulatedBoard) -> None:
    with pytest.raises(ControlError, match="no device 'sht31'.*sht3x"):
        board.set("sht31.temperature", 1)
    with pytest.raises(ControlError, match="sht3x has no 'temp'.*temperature"):
        board.set("sht3x.temp", 1)


def test_uart_bridge_exchanges_bytes_at_the_baud_rate(board: EmulatedBoard) -> None:
    port = board.uarts["rs485"]
    board_exec(
        board,
        """
import machine
u = machine.UART(2, 9600)
def echo(t):
    data = u.read()
    if data:
        u.write(data)
machine.Timer(0).init(period=5, callback=echo)
""",
    )
    with serial.Serial(port, 9600, timeout=0.1) as host:
        host.reset_input_buffer()
        payload = bytes(range(256)) * 4  # about 1.2 s on the line: a late read is a few %
        host.write(payload)
        got = bytearray()
        first = last = 0.0
        deadline = time.monotonic() + 10
        while len(got) < len(payload) and time.monotonic() < deadline:
            chunk = host.read(64)
            if chunk:
                last = time.monotonic()
                if not got:
                    first = last
                got += chunk
    assert bytes(got) == payload
    rate = (len(got) - 1) / (last - first)
    expected = 9600 / 11
    print(f"UART bridge at 9600 baud: {rate:.1f} chars/s, line maximum {expected:.1f}")
    # paced at the line's rate (unpaced bytes would come many times faster); 10 %: a busy
    # machine may read the first or last chunk a few tens of milliseconds late
    assert abs(rate - expected) / expected < 0.10


BUTTON_UNDER_A_BUSY_HOST = """
import _board
sos = _board.devices["sos"]
_board.set("sos.press", 300)
t = _board.ticks_ms + 1000  # the host starved the VM for a second after the press
ticks = [t] + [t + 10 * i for i in range(1, 11)] + [t + 2100]  # and for 2 s more later
ticks += [t + 2100 + 10 * i for i in range(1, 30)]
held = []
for now in ticks:
    _board.tick(now)
    held.append(sos.get("active"))
print(held.index(0))
"""


def test_a_button_press_outlasts_a_host_that_starves_the_board() -> None:
    # a 0.3 s press runs out on the board's running time: on a busy host the firmware must
    # still see it pressed for 0.3 s of its own loop (a stall counts 20 ms, as one tick)
    with EmulatedBoard("community-sos-esp32c3") as board:
        released_at = int(board_exec(board, BUTTON_UNDER_A_BUSY_HOST))
    # ticks after the first: 10 x 10 ms, the stall (20 ms), then 10 ms each: 300 ms
    # are used up by the 18th 10-ms tick after the stall, tick index 1 + 10 + 1 + 17
    assert released_at == 29


def test_a_path_with_dots_stays_inside_the_boards_flash(tmp_path: Path) -> None:
    # the VM stops ".." at "/", as the chip's filesystem does; the host folder's write-
    # through must too, or a firmware's "../x" made (or removed) a folder beside the flash
    flash = tmp_path / "flash"
    flash.mkdir()
    (tmp_path / "beside").mkdir()
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        out = board_exec(
            board,
            "import os\n"
            "os.mkdir('../escape')\n"
            "with open('../../x.txt', 'w') as f:\n"
            "    f.write('in')\n"
            "os.mkdir('/beside')\n"
            "os.rename('/../beside', '/kept')\n"
            "print(sorted(os.listdir('/')))",
        )
    assert "'escape'" in out and "'x.txt'" in out and "'kept'" in out
    assert (flash / "escape").is_dir() and (flash / "x.txt").read_text() == "in"
    assert (flash / "kept").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside", "flash"]


def test_a_drop_nobody_reads_never_stalls_the_line() -> None:
    # An emulated board on a shared line makes a spare endpoint (its `uarts["rs485"]`) that
    # nobody opens. Its buffer fills; a blocking write into it stopped the line's pump and
    # every drop went silent at once (an OTA rollout died 40 s in, three nodes "offline")
    with VirtualLine() as line:
        line.endpoint()  # never opened, never read
        sender, receiver = line.endpoint(), line.endpoint()
        block = bytes(range(256)) * 16  # 4 KiB
        got = bytearray()
        tx = serial.Serial(sender, timeout=0, write_timeout=5)
        with tx, serial.Serial(receiver, timeout=0) as rx:
            deadline = time.monotonic() + 20
            for _ in range(64):  # 256 KiB: far more than a pseudo-terminal holds
                try:
                    tx.write(block)
                except serial.SerialTimeoutException:
                    break  # the line stopped taking bytes

                while len(got) < len(block) * (_ + 1) and time.monotonic() < deadline:
                    got += rx.read(65536)
                    time.sleep(0.001)
        assert len(got) == 64 * len(block), f"the line stalled after {len(got)} bytes"
        assert got == block * 64
        assert line.overruns > 0  # what the unread drop lost, counted


def test_the_line_hands_a_frame_over_whole_as_a_uart_fifo_does() -> None:
    # a receiver gets a short frame in one piece at its end (as the chip's UART hands its
    # FIFO over, or a USB adapter sends a packet), a long one in bursts of RX_BURST_CHARS:
    # bytes handed over one by one let a busy host put gaps into a frame that the wire never
    # had, and a Modbus slave rightly drops a frame with a gap in it
    with VirtualLine(baudrate=1200) as line:  # 9.2 ms a character: pieces would show
        sender, receiver = line.endpoint(), line.endpoint()
        with serial.Serial(sender) as tx, serial.Serial(receiver, timeout=0) as rx:
            for frame, bursts in ((bytes(range(1, 9)), 1), (bytes(100), 2)):
                started = time.monotonic()
                tx.write(frame)
                chunks: list[bytes] = []
                while sum(map(len, chunks)) < len(frame):
                    assert time.monotonic() - started < 5, chunks
                    if chunk := rx.read(4096):
                        chunks.append(chunk)
                    time.sleep(0.001)
                took = time.monotonic() - started
                assert b"".join(chunks) == frame
                assert [len(c) for c in chunks] == (
                    [len(frame)] if bursts == 1 else [RX_BURST_CHARS, len(frame) - RX_BURST_CHARS]
                )
                assert took >= len(frame) * 11 / 1200 * 0.95  # still paced at the line's rate


def test_watchdog_resets_a_hung_board_and_it_recovers(tmp_path: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as board:
        before = len(board.events)
        # a task that never yields: the VM cannot feed the watchdog, the hardware bites
        hung = subprocess.Popen(
            [
                MPREMOTE,
                "connect",
                board.repl,
                "exec",
                "import machine\nw = machine.WDT(timeout=500)\nwhile True:\n    pass\n",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            board.wait_event("wdt-start", timeout_s=10, after=before)
        finally:
            hung.kill()  # before the reset: a client that sees it may send keys of its own
            hung.wait()
        event = board.wait_event("wdt-reset", timeout_s=10, after=before)
        assert event["timeoutMs"] == 500
        board.wait_event("booted", timeout_s=10, after=before + 1)
        assert (
            board_exec(board, "import machine; print(machine.reset_cause() == machine.WDT_RESET)")
            == "True"
        )


def test_what_the_firmware_closed_survives_a_watchdog_reset_of_a_hung_board(
    tmp_path: Path,
) -> None:
    # On the chip a file is on the flash once closed (littlefs commits it there), a rename or
    # a removal once the call returns. The emulated board used to save its flash when the VM
    # went idle, which a hung VM never does: the watchdog's reset lost every write since.
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "gone.txt").write_text("old")
    (flash / "old.json").write_text("{}")
    with EmulatedBoard("pole-env-esp32", fs_dir=flash) as board:
        before = len(board.events)
        hung = subprocess.Popen(
            [
                MPREMOTE,
                "connect",
                board.repl,
                "exec",
                "import machine, os\n"
                "with open('/flag.json', 'w') as f:\n"
                "    f.write('{\"checked\": 1}')\n"
                "os.mkdir('/ota')\n"
                "with open('/ota/stage.bin', 'wb') as f:\n"
                "    f.write(b'\\x01' * 3000)\n"
                "with open('/ota/stage.bin', 'ab') as f:\n"
                "    f.write(b'\\x02' * 10)\n"
                "os.rename('/old.json', '/new.json')\n"
                "os.remove('/gone.txt')\n"
                "w = machine.WDT(timeout=500)\n"
                "while True:\n"
                "    pass\n",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            board.wait_event("wdt-start", timeout_s=10, after=before)
        finally:
            hung.kill()
            hung.wait()
        board.wait_event("wdt-reset", timeout_s=10, after=before)
        board.wait_event("booted", timeout_s=10, after=before + 1)
        seen = board_exec(
            board,
            "import os\n"
            "print(open('/flag.json').read(), os.stat('/ota/stage.bin')[6], "
            "sorted(n for n in os.listdir('/') if n.endswith(('.json', '.txt'))))",
        )
    assert seen == "{\"checked\": 1} 3010 ['flag.json', 'new.json']"
    assert (flash / "ota" / "stage.bin").read_bytes() == b"\x01" * 3000 + b"\x02" * 10
    assert not (flash / "gone.txt").exists() and not (flash / "old.json").exists()


def test_network_and_esp32_modules_firmware_expects(board: EmulatedBoard) -> None:
    out = board_exec(
        board,
        """
import network, esp32, machine
w = network.WLAN(network.STA_IF)
w.active(True)
w.connect("pole-net", "secret")
print(w.isconnected(), w.ifconfig()[0])
p = esp32.Partition(esp32.Partition.RUNNING)
print(p.info()[4], p.get_next_update().info()[4])
esp32.Partition.mark_app_valid_cancel_rollback()
print(len(machine.unique_id()), machine.freq())
""",
    )
    assert out.splitlines() == ["True 127.0.0.1", "ota_0 ota_1", "6 240000000"]


def test_ctrl_c_stops_code_that_never_yields(board: EmulatedBoard) -> None:
    mark = f"spinning {time.monotonic()}"  # new each run: the board's log is shared
    hung = subprocess.Popen(
        [
            MPREMOTE,
            "connect",
            board.repl,
            "resume",
            "exec",
            f"print({mark!r})\nwhile True:\n    pass\n",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    board.wait_output(mark, timeout_s=20)  # the loop runs: a client left it spinning
    hung.kill()
    hung.wait()
    # the next client interrupts with Ctrl-C as on any board, and gets a working REPL
    assert board_exec(board, "print('back')") == "back"


def test_deepsleep_wakes_with_its_reset_cause(tmp_path: Path) -> None:
    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as board:
        before = len(board.events)
        sleeper = subprocess.Popen(
            [MPREMOTE, "connect", board.repl, "exec", "import machine\nmachine.deepsleep(300)\n"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            board.wait_event("deepsleep", timeout_s=10, after=before)
        finally:
            sleeper.kill()  # it waits for an answer the sleeping board never gives
            sleeper.wait()
        asleep = next(
            i for i, e in enumerate(board.events) if i >= before and e.get("event") == "deepsleep"
        )
        board.wait_event("booted", timeout_s=10, after=asleep)
        cause = board_exec(
            board, "import machine; print(machine.reset_cause() == machine.DEEPSLEEP_RESET)"
        )
        assert cause == "True"


def test_stuck_and_noisy_sensors(board: EmulatedBoard) -> None:
    board.set("sht3x.temperature", 20.0)
    board.set("sht3x.stuck", 1)
    board.set("sht3x.temperature", 35.0)  # the world changes, the stuck sensor does not
    try:
        assert board_exec(board, SHT3X_READ).split()[0] == "20.0"
    finally:
        board.set("sht3x.stuck", 0)
    board.set("sht3x.noise", 2.0)
    try:
        readings = {board_exec(board, SHT3X_READ).split()[0] for _ in range(4)}
        assert len(readings) > 1 and all(33.0 <= float(r) <= 37.0 for r in readings)
    finally:
        board.set("sht3x.noise", 0)


ONE_RADIO = """
import bluetooth
ble = bluetooth.BLE()
ble.active(True)
seen = []
ble.irq(lambda event, data: seen.append(event))
again = bluetooth.BLE()  # a self-test's, while the node runs
again.active(True)
print(again is ble, again._irq is not None)
"""


def test_bluetooth_ble_is_one_radio_as_on_the_chip(board: EmulatedBoard) -> None:
    # a second BLE() once replaced the first: the firmware's irq handler heard no write
    assert board_exec(board, ONE_RADIO) == "True True"
    board.set("ble.connect", 7)
    assert board_exec(board, "print(seen)") == "[1]"


def test_a_battery_reads_on_its_adc_from_power_on(tmp_path: Path) -> None:
    # main.py converts before the board's clock first ticks (a new version's self-test at
    # start-up does): the cells are on the pin from power-on, never 0 V
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import machine\nprint('battery uV', machine.ADC(machine.Pin(3)).read_uv(), 'read')\n"
    )
    with EmulatedBoard("community-sos-esp32c3", fs_dir=flash) as board:
        log = board.wait_output(" read", 30)
    uv = int(log.split("battery uV ", 1)[1].split()[0])
    assert 400000 <= uv <= 600000, uv  # 1.0 V through the board's 1:2 divider


def test_friendly_ctrl_d_soft_reset_runs_boot_and_main(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("print('boot.py here')\n")
    (flash / "main.py").write_text("print('main.py here')\n")
    with (
        EmulatedBoard("pole-env-esp32", fs_dir=flash) as board,
        serial.Serial(board.repl, 115200, timeout=0.2) as s,
    ):
        board.wait_output("main.py here")  # the first boot has printed all it will
        s.write(b"\x02\r")
        time.sleep(0.3)
        s.reset_input_buffer()
        s.write(b"\x04")  # Ctrl-D at the >>> prompt
        seen = b""
        deadline = time.monotonic() + 10
        while b"main.py here" not in seen and time.monotonic() < deadline:
            seen += s.read(256)
        assert b"MPY: soft reboot" in seen and b"boot.py here" in seen and b"main.py here" in seen


def test_mpremote_run_streams_a_host_script(board: EmulatedBoard, tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(
        "import machine\nprint('run on', len(machine.I2C(0, scl=22, sda=21).scan()), 'sensors')\n"
    )
    result = subprocess.run(
        [MPREMOTE, "connect", board.repl, "resume", "run", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "run on 3 sensors", result.stderr


def test_power_cycle_loses_ram_keeps_flash_and_line_faults_reach_the_wire(tmp_path: Path) -> None:
    from polekit.hil.control import ControlServer, call

    with EmulatedBoard("pole-env-esp32", fs_dir=tmp_path / "flash") as board:
        server = ControlServer(board, tmp_path / "control.sock")
        try:
            board_exec(  # closed: littlefs commits a file at its close, not at each write
                board,
                "import builtins\nbuiltins.marker = 42\n"
                "with open('kept.txt', 'w') as f:\n    f.write('flash')",
            )
            assert call(server.path, {"op": "power-cycle", "off_s": 0.2}) == {"ok": True}
            out = board_exec(
                board,
                "import builtins, machine\nprint(hasattr(builtins, 'marker'), "
                "open('kept.txt').read(), machine.reset_cause() == machine.PWRON_RESET)",
            )
            assert out == "False flash True"
            # a corrupted byte on the RS-485 line, as noise would do it
            with serial.Serial(board.uarts["rs485"], 9600, timeout=2) as host:
                host.reset_input_buffer()
                assert call(server.path, {"op": "line", "fault": "corrupt", "bytes": 1}) == {
                    "ok": True
                }
                board_exec(board, "import machine; machine.UART(2, 9600).write(b'AB')")
                got = host.read(2)
            assert len(got) == 2 and got[0] != ord("A") and got[1:] == b"B"
            assert "error" in call(server.path, {"op": "nope"})
        finally:
            server.close()
