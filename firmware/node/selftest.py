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
    if t in ("contact", "button", "rain_gauge", "flow_meter"):
        # a contact, or a pulse input: its level is all there is to read (a rain gauge or
        # a flow meter pulses only while it rains or water flows)
        level = machine.Pin(p["pin"], machine.Pin.IN).value()
        return True, "GPIO %d reads %d" % (p["pin"], level)
    if t == "loop_4_20":
        return await _loop(p)
    if t == "cover":  # the cover's reed contact, and the ADXL345 on the frame for its tilt
        i2c = bus.i2c(buses[s["bus"]])
        if p["address"] not in i2c.scan():
            return False, "no answer at I2C address 0x%02x (the tilt sensor)" % p["address"]
        from .drivers.adxl345 import ADXL345

        tilt = await ADXL345(i2c, p["address"]).measure()
        level = machine.Pin(p["pin"], machine.Pin.IN).value()
        return True, "contact GPIO %d reads %d, tilt %.1f deg" % (p["pin"], level, tilt)
    if t == "adc":
        uv = machine.ADC(machine.Pin(p["pin"])).read_uv()
        if uv < 10000:
            return False, "ADC GPIO %d reads 0 V: nothing connected?" % p["pin"]
        return True, "%.2f V at the pin" % (uv / 1e6)
    if t == "lamp":
        pwm = machine.PWM(machine.Pin(p["pwm_pin"]))
        return True, "PWM GPIO %d, duty %d" % (p["pwm_pin"], pwm.duty_u16())
    return False, "no self-test for a %s" % t


# a 4-20 mA transducer (drivers/loop_level.py): powered for its warm-up, then read; an
# open loop or an over-range current is its fault (NAMUR NE 43), never a level
async def _loop(p):
    from .drivers.loop_level import LoopLevel

    power = machine.Pin(p["power_pin"], machine.Pin.OUT) if "power_pin" in p else None
    adc = machine.ADC(machine.Pin(p["pin"]))
    level = LoopLevel(adc, p["shunt_ohm"], p["range_m"], power, p.get("warmup_ms", 0))
    try:
        metres, fault = await level.measure()
    finally:
        if power is not None:
            power.value(0)  # the loop draws mA: off again
    ma = level.current_ma
    if fault == "open_loop":
        return False, "4-20 mA loop open: %.2f mA (a cut cable or no power)" % ma
    if fault:
        return False, "4-20 mA loop over range: %.2f mA (a short, or past its range)" % ma
    return True, "%.3f m (%.2f mA)" % (metres, ma)


def _mqtt_uplink(config, buses):
    # the MQTT uplink's radio, as settings_mqtt and the transports take it
    host = "%s:%s" % (config.get("mqtt_host"), config.get("mqtt_port", 1883))
    if config.get("uplink", "wifi") == "nbiot":
        modem = [b for b in buses.values() if b.get("role") == "modem"]
        if not modem:
            return False, "NB-IoT: no modem UART in the board map"
        return True, "MQTT over NB-IoT (modem on UART%d) to %s" % (modem[0]["id"], host)
    if not config.get("wifi_ssid") or not config.get("mqtt_host"):
        return False, "Wi-Fi: wifi_ssid and mqtt_host must be set"
    return True, "MQTT over Wi-Fi %r to %s" % (config["wifi_ssid"], host)


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
    elif board.get("uplink") == "mqtt":
        rows.append(["uplink"] + list(_mqtt_uplink(config, buses)))
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
