# The deploy self-test, run on the board with the node stopped: the config is valid, every
# sensor of the board map answers through its driver, and the uplink is configured.
#
# `run()` is a coroutine that leaves its rows in RESULT: [[name, ok, detail], ...]. On a board
# `asyncio.run(run())` returns when it is done; the emulator runs it as a task, so the host
# polls RESULT either way.
import asyncio

import machine

from . import buses as bus
from .settings import load_json

RESULT = None


async def _sensor(s, buses):
    t = s["type"]
    p = s["params"]
    if t in ("sht3x", "bh1750", "adxl345"):
        i2c = bus.i2c(buses[s["bus"]])
        if p["address"] not in i2c.scan():
            return False, "no answer at I2C address 0x%02x" % p["address"]
        if t == "sht3x":
            from .drivers.sht3x import SHT3x

            v = await SHT3x(i2c, p["address"]).measure()
            return True, "%.1f Cel, %.0f %%RH" % v
        if t == "bh1750":
            from .drivers.bh1750 import BH1750

            return True, "%.0f lx" % await BH1750(i2c, p["address"]).measure()
        from .drivers.adxl345 import ADXL345

        return True, "tilt %.1f deg" % await ADXL345(i2c, p["address"]).measure()
    if t == "pms5003":
        from .drivers.pms5003 import PMS5003

        pms = PMS5003(bus.uart(buses[s["bus"]], 9600))
        for _ in range(30):  # it streams a frame a second
            v = pms.poll()
            if v is not None:
                return True, "PM2.5 %d ug/m3" % v[1]
            await asyncio.sleep_ms(100)
        return False, "no valid frame in 3 s (wiring, or the fan is off)"
    if t in ("contact", "button"):
        level = machine.Pin(p["pin"], machine.Pin.IN).value()
        return True, "GPIO %d reads %d" % (p["pin"], level)
    if t == "adc":
        uv = machine.ADC(machine.Pin(p["pin"])).read_uv()
        if uv < 10000:
            return False, "ADC GPIO %d reads 0 V: nothing connected?" % p["pin"]
        return True, "%.2f V at the pin" % (uv / 1e6)
    if t == "lamp":
        pwm = machine.PWM(machine.Pin(p["pwm_pin"]))
        return True, "PWM GPIO %d, duty %d" % (p["pwm_pin"], pwm.duty_u16())
    return False, "no self-test for a %s" % t


async def run():
    global RESULT
    rows = []
    board = load_json("/board.json", None)
    config = load_json("/config.json", None)
    if board is None or not isinstance(config, dict):
        RESULT = [["files", False, "/board.json or /config.json missing or not JSON"]]
        return RESULT
    from .settings import validate

    problems = validate(config, board.get("uplink"))[1]
    rows.append(["config", not problems, "; ".join(problems) or "valid"])
    buses = {b["name"]: b["params"] for b in board["buses"]}
    for s in board["sensors"]:
        try:
            ok, detail = await _sensor(s, buses)
        except Exception as e:  # noqa: BLE001 - each sensor is one row, whatever went wrong
            ok, detail = False, "%s: %s" % (type(e).__name__, e)
        rows.append([s["name"], ok, detail])
    if board.get("uplink") == "ble":
        import bluetooth

        ble = bluetooth.BLE()
        ble.active(True)
        mac = ble.config("mac")[1]
        rows.append(["uplink", True, "BLE up, MAC " + ":".join("%02X" % b for b in mac)])
    else:
        rs485 = [b for b in board["buses"] if b["params"].get("role") == "rs485"]
        unit = config.get("unit", 1)
        ok = bool(rs485)
        detail = (
            "Modbus unit %d on UART%d" % (unit, rs485[0]["params"]["id"])
            if ok
            else "no RS-485 UART in the board map"
        )
        rows.append(["uplink", ok, detail])
    RESULT = rows
    return rows
