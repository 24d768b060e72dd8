# The field device library: register maps (and DL/T 645 data sets) of devices a pole
# deployment buys by the box, each written from its maker's public manual and cited next
# to it, so an integrator names a device (``map = "chint-dtsu666"``) instead of typing a
# register table by hand.
#
# Gateway-side: the node never imports this module (tests/test_micropython.py), so its
# tables are not counted in the node's heap budget; the node's own map (pole-env) stays
# in modbus.py. Same row format as modbus.py's maps: name address table type [word_order
# scale unit access low high]. Names and units are the reference model's (model.py);
# values a meter gives in a secondary unit (kWh) are converted when a pack is built.
# Addresses are the protocol addresses on the wire (0-based), as the manuals' hex columns.

from . import dlt645, modbus

# name: (title, protocol, default line settings, source, rows). Line settings are what the
# device ships with: baud, parity and stop bits, then its default unit id or address.
LIBRARY = {
    "sdm120": (
        "Eastron SDM120-Modbus single-phase energy meter",
        "modbus",
        "2400 N 1, unit 1",
        "Eastron single-phase input register layout (function 04, float, high word first; "
        "30001 = address 0): V 0x00, A 0x06, W 0x0C, PF 0x1E, Hz 0x46, import kWh 0x48, "
        "export kWh 0x4A, total kWh 0x156, as published for the SDM230 at "
        "http://lamaplc.com/doku.php?do=export_xhtml&id=com%3Aeastron_sdm_230 and "
        "https://www.aggsoft.com/serial-data-logger/tutorials/modbus-data-logging/eastron-"
        "sdm230.htm, which the SDM120-Modbus shares (check its protocol sheet)",
        "",  # the map is modbus.py's "sdm120", which the node's tests also use
    ),
    "sdm630": (
        "Eastron SDM630-Modbus three-phase energy meter",
        "modbus",
        "9600 E 1, unit 1",
        "Eastron three-phase input register table (function 04, float, high word first; "
        "30001 = address 0), as in the SDM72D-M manual V1.1 part 3 "
        "(https://manualshive.com/en/manual/eastron/sdm72dm/522602?page=13) and the SDM630 "
        "table at https://ob121.com/doku.php?do=export_raw&id=de:hw:eastron_modbus "
        "(30053 total W, 30063 total PF, 30071 Hz, 30073/30075 import/export kWh)",
        """
voltage_l1 0 input f32 big 1 V
voltage_l2 2 input f32 big 1 V
voltage_l3 4 input f32 big 1 V
current_l1 6 input f32 big 1 A
current_l2 8 input f32 big 1 A
current_l3 10 input f32 big 1 A
power_l1 12 input f32 big 1 W
power_l2 14 input f32 big 1 W
power_l3 16 input f32 big 1 W
power_factor_l1 30 input f32 big 1 /
power_factor_l2 32 input f32 big 1 /
power_factor_l3 34 input f32 big 1 /
power 52 input f32 big 1 W
power_factor 62 input f32 big 1 /
frequency 70 input f32 big 1 Hz
energy 72 input f32 big 1 kWh
energy_export 74 input f32 big 1 kWh
""",
    ),
    "chint-dtsu666": (
        "Chint DTSU666 three-phase energy meter (Modbus mode)",
        "modbus",
        "9600 N 1, unit 1",
        "Chint DTSU666/DSSU666 user manual ZTY0.464.1448, section 5.3, table 11 'ModBus "
        "protocol address table' (function 03H; floats, high word first; voltages in 0.1 "
        "V, currents in 0.001 A, power in 0.1 W, power factor in 0.001, frequency in 0.01 "
        "Hz, energy in kWh): https://www.easymanua.ls/chint/dtsu666-ct/manual?p=13; "
        "addresses as listed at https://www.aggsoft.com/serial-data-logger/tutorials/"
        "modbus-data-logging/chint-instrument-dsu666-dtsu666.htm",
        """
voltage_l1 8198 holding f32 big 0.1 V
voltage_l2 8200 holding f32 big 0.1 V
voltage_l3 8202 holding f32 big 0.1 V
current_l1 8204 holding f32 big 0.001 A
current_l2 8206 holding f32 big 0.001 A
current_l3 8208 holding f32 big 0.001 A
power 8210 holding f32 big 0.1 W
power_l1 8212 holding f32 big 0.1 W
power_l2 8214 holding f32 big 0.1 W
power_l3 8216 holding f32 big 0.1 W
power_factor 8234 holding f32 big 0.001 /
frequency 8260 holding f32 big 0.01 Hz
energy 16414 holding f32 big 1 kWh
energy_export 16424 holding f32 big 1 kWh
""",
    ),
    "acrel-adl400": (
        "Acrel ADL400 three-phase DIN-rail energy meter",
        "modbus",
        "9600 N 1, unit 1",
        "Acrel ADL-series Modbus address list, as the ADL3000-E manual V1.1 section 9.1 "
        "'ADDR list' gives it (function 03H; energy 0000H.., 4 bytes, E = data x 0.01 kWh): "
        "https://www.easymanua.ls/acrel/adl3000-e/manual?p=14; measurement words at "
        "0061H.. as listed at https://www.aggsoft.com/serial-data-logger/tutorials/modbus-"
        "data-logging/acrel-adl3000.htm. The ADL400 manual's own table was not found in "
        "public text: check scales against your meter's manual",
        """
energy 0 holding u32 big 0.01 kWh
energy_t1 2 holding u32 big 0.01 kWh
energy_t2 4 holding u32 big 0.01 kWh
energy_t3 6 holding u32 big 0.01 kWh
energy_t4 8 holding u32 big 0.01 kWh
voltage_l1 97 holding u16 big 0.1 V
voltage_l2 98 holding u16 big 0.1 V
voltage_l3 99 holding u16 big 0.1 V
current_l1 100 holding u16 big 0.01 A
current_l2 101 holding u16 big 0.01 A
current_l3 102 holding u16 big 0.01 A
power 106 holding i16 big 0.001 kW
power_factor 118 holding i16 big 0.001 /
frequency 119 holding u16 big 0.01 Hz
""",
    ),
    "dfrobot-sen0483": (
        "RS-485 cup anemometer (wind speed), DFRobot SEN0483",
        "modbus",
        "9600 N 1, unit 2",
        "DFRobot SEN0483 wiki, 'Modbus Protocol' (register 0x0000, function 03, value / "
        "10 = m/s): https://wiki.dfrobot.com/sen0483/docs/20112",
        """
wind_speed 0 holding u16 big 0.1 m/s
""",
    ),
    "dfrobot-sen0482": (
        "RS-485 wind vane (wind direction), DFRobot SEN0482 V2",
        "modbus",
        "9600 N 1, unit 2",
        "DFRobot SEN0482 wiki, 'Modbus Register' (0x0000: 360-degree direction x 10; "
        "0x0001: 16-point direction, 0 = north, clockwise): "
        "https://wiki.dfrobot.com/sen0482/docs/19708",
        """
wind_direction 0 holding u16 big 0.1 deg
wind_sector 1 holding u16
""",
    ),
    "sonbest-sm7901b": (
        "RS-485 noise meter, SONBEST SM7901B (30-130 dB)",
        "modbus",
        "9600 N 1, unit 1",
        "SONBEST SM7901M/SM7901B product page, 'Communication Protocol' (register 0x0000, "
        "function 03, noise x 10 dB): http://www.sonbest.com/english/products/SM7901M.html",
        """
noise 0 holding u16 big 0.1 dB
""",
    ),
    "scion-thp": (
        "Temperature, humidity and pressure probe, Scion Research temp-humid-press-probe",
        "modbus",
        "500000 N 1, unit 1 (set your probe's speed)",
        "ScionResearch temp-humid-press-probe README, 'Modbus based access' (float32 at "
        "0x000A temperature degC, 0x000C humidity %RH, 0x0010 pressure hPa; the function "
        "code is not stated, holding registers assumed): "
        "https://github.com/ScionResearch/temp-humid-press-probe",
        """
temperature 10 holding f32 big 1 Cel
humidity 12 holding f32 big 1 %RH
pressure 16 holding f32 big 1 hPa
""",
    ),
    "deltaohm-pmsense": (
        "PM1/PM2.5/PM10 particulate sensor, Delta OHM PMsense / PM[B]sense",
        "modbus",
        "19200 E 1, unit 1",
        "Delta OHM PM[B]sense manual V1.3, chapter 6 'MODBUS-RTU protocol', input "
        "registers 3-5 (ug/m3 x 10): https://manualshive.com/en/manual/delta-ohm/pmbsense-"
        "a/2478338?page=15",
        """
pm1 3 input u16 big 0.1 ug/m3
pm2_5 4 input u16 big 0.1 ug/m3
pm10 5 input u16 big 0.1 ug/m3
""",
    ),
    "dlt645-1p": (
        "Any DL/T 645-2007 single-phase meter (e.g. Chint DDSU666 in DL/T 645 mode)",
        "dlt645",
        "2400 E 1, meter address on its nameplate (or found by broadcast query)",
        "DL/T 645-2007 annex A, table A.1 (energy) and table A.3 (variables); see "
        "protocols/dlt645.py",
        "energy voltage_l1 current_l1 power power_factor frequency",
    ),
    "dlt645-3p": (
        "Any DL/T 645-2007 three-phase meter (e.g. Chint DTSU666 in DL/T 645 mode)",
        "dlt645",
        "2400 E 1, meter address on its nameplate (or found by broadcast query)",
        "DL/T 645-2007 annex A, table A.1 (energy) and table A.3 (variables); see "
        "protocols/dlt645.py",
        "energy energy_t1 energy_t2 energy_t3 energy_t4 voltage_l1 voltage_l2 voltage_l3 "
        "current_l1 current_l2 current_l3 power power_l1 power_l2 power_l3 power_factor "
        "frequency",
    ),
}


def names():
    return sorted(LIBRARY)


# (title, protocol, line settings, source) of a library device; KeyError if unknown.
def about(name):
    if name not in LIBRARY:
        raise KeyError("no device %r in the library; known: %s" % (name, ", ".join(names())))
    return LIBRARY[name][:4]


def protocol(name):
    return about(name)[1]


# Every Modbus register map the gateway knows by name: the node's own (modbus.py) and the
# library's Modbus devices.
def map_names():
    node = modbus.map_names()
    return sorted(node + [n for n in LIBRARY if LIBRARY[n][1] == "modbus" and n not in node])


# The register map called ``name`` (a node map or a library device); KeyError naming the
# known maps.
def register_map(name):
    if name in modbus.map_names():
        return modbus.register_map(name)
    entry = LIBRARY.get(name)
    if entry is None or entry[1] != "modbus":
        raise KeyError("no register map %r; known: %s" % (name, ", ".join(map_names())))
    rows = entry[4].strip().split("\n")
    return modbus.RegisterMap(name, [modbus._point(row) for row in rows])


# The DL/T 645 items a library data set reads.
def data_set(name):
    entry = LIBRARY.get(name)
    if entry is None or entry[1] != "dlt645":
        raise KeyError("%r is not a DL/T 645 data set in the library" % name)
    return [dlt645.item(n) for n in entry[4].split()]
