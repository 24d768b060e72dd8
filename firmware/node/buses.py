# Buses opened on the pins the board definition wires them to. Without scl/sda or tx/rx the
# ESP32 port picks its own defaults (MicroPython 1.27: I2C0 on SCL 18 / SDA 19, UART1 on RX 9 /
# TX 10, which are the module's flash pins), so a bus opened by id alone talks to nothing on a
# real board, or worse; the emulated board wires the same way and reads nothing too.
import machine


def i2c(bus):
    """The I2C bus ``bus`` (a board.json bus's params: id, scl, sda, freq)."""
    return machine.I2C(bus["id"], scl=bus["scl"], sda=bus["sda"], freq=bus.get("freq", 400000))


def uart(bus, baudrate, timeout=0):
    """The UART ``bus`` (params: id, tx, rx) at ``baudrate``; reads wait up to ``timeout``
    ms for their first byte (a modem's answers: blocked in the driver, not spinning)."""
    return machine.UART(bus["id"], baudrate, tx=bus["tx"], rx=bus["rx"], timeout=timeout)
