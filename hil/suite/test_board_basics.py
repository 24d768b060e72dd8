"""The board answers, has its sensors, and its RS-485 line carries bytes.

Runs on an emulated board by default and unchanged on a real one (--hil-port).
"""

from __future__ import annotations


def test_repl_runs_micropython(board):
    assert board.exec("import sys; print(sys.implementation.name)") == "micropython"


def _i2c(board):
    # the bus on the pins the board wires it to (the chip's defaults are other pins)
    p = board.definition.buses["i2c0"].params
    return f"machine.I2C({p['id']}, scl={p['scl']}, sda={p['sda']})"


def test_i2c_sensors_of_the_board_answer(board):
    expected = sorted(
        s.params["address"] for s in board.definition.sensors.values() if "address" in s.params
    )
    found = board.exec(f"import machine; print({_i2c(board)}.scan())")
    assert found == str(expected)


def test_temperature_follows_the_physical_world(board, physics):
    physics.set("sht3x.temperature", 28.5)
    raw = board.exec(
        "import machine\n"
        f"i2c = {_i2c(board)}\n"
        "i2c.writeto(0x44, b'\\x24\\x00')\n"
        "d = i2c.readfrom(0x44, 6)\n"
        "print(round(-45 + 175 * (d[0] << 8 | d[1]) / 65535, 1))\n"
    )
    assert raw == "28.5"


def test_board_writes_reach_the_rs485_line(board, line):
    import serial

    with serial.Serial(line, 9600, timeout=2) as host:
        host.reset_input_buffer()
        board.exec("import machine; machine.UART(2, 9600).write(b'polekit')")
        assert host.read(7) == b"polekit"


def test_dut_expect_works_on_the_same_port(dut):
    dut.write("\x02")
    dut.write("print('ready', 6 * 7)\r")
    dut.expect("ready 42", timeout=10)
