# The reference model: what poles and community devices measure, named once.
#
# Names are the SenML record names the platform sees. Units follow the SenML units
# registry strictly: each quantity has a primary unit (RFC 8428 section 12.1, plus the
# primary units RFC 8798 adds), which is all SenML version 10 allows, and optionally a
# secondary unit (RFC 8798) for platforms that prefer human-scale numbers, sent only in
# packs that declare the secondary-units feature (bver 26, RFC 9100).
# Booleans (kind "vb") carry no unit. docs/protocols.md describes each quantity.

from .errors import SenMLError

# name kind primary-unit secondary-unit ("-" = none). Text, not a dict: one constant
# string on the node instead of a heap of tuples.
QUANTITIES = """
temperature v Cel -
humidity v %RH -
pressure v Pa hPa
illuminance v lx -
pm1 v kg/m3 ug/m3
pm2_5 v kg/m3 ug/m3
pm10 v kg/m3 ug/m3
co2 v / ppm
noise v dB -
tilt v deg -
voltage v V -
current v A -
power v W -
energy v J kWh
frequency v Hz -
battery v %EL -
lamp_level v / /100
lamp_on vb - -
door_open vb - -
water vb - -
smoke vb - -
sos vb - -
water_level v m cm
level_fault vs - -
rain v m mm
rain_rate v m/s mm/h
flow v m3/s -
volume v m3 -
cover_open vb - -
awake_time v s ms
alarm vs - -
alarm_on vb - -
rssi v dBW dBm
uptime v s -
free_heap v B -
seq v - -
"""

# secondary-unit primary-unit factor offset: primary = value * factor + offset
SECONDARY_UNITS = """
hPa Pa 100 0
ug/m3 kg/m3 1e-9 0
ppm / 1e-6 0
/100 / 0.01 0
/1000 / 0.001 0
kWh J 3600000 0
Wh J 3600 0
kW W 1000 0
mV V 0.001 0
mA A 0.001 0
dBm dBW 1 -30
cm m 0.01 0
mm m 0.001 0
mm/h m/s 2.777777777777778e-07 0
ms s 0.001 0
min s 60 0
h s 3600 0
"""

# How a person writes a unit (dashboards, summaries): SenML unit, symbol, and "k" when
# large values read better with a kilo prefix (24900 lx: 24.9 klx). Others print as they are.
SYMBOLS = """
Cel °C -
/100 % -
%EL % -
lx lx k
W W k
"""


def _line(table, key):
    at = table.find("\n" + key + " ")
    return None if at < 0 else table[at + 1 : table.find("\n", at + 1)].split()


# (kind, primary unit, secondary unit) of a quantity, units None where there is none;
# None if the name is not in the reference model.
def quantity(name):
    f = _line(QUANTITIES, name)
    if f is None:
        return None
    return f[1], None if f[2] == "-" else f[2], None if f[3] == "-" else f[3]


# The primary unit ``unit`` converts to (itself when it is not a secondary unit).
def primary_unit(unit):
    f = _line(SECONDARY_UNITS, unit)
    return unit if f is None else f[1]


# Convert ``value`` between units of one primary unit (e.g. "ug/m3" -> "kg/m3").
def convert(value, from_unit, to_unit):
    if from_unit == to_unit:
        return value
    f = _line(SECONDARY_UNITS, from_unit) or (from_unit, from_unit, 1, 0)
    t = _line(SECONDARY_UNITS, to_unit) or (to_unit, to_unit, 1, 0)
    if f[1] != t[1]:
        raise SenMLError("cannot convert %s to %s" % (from_unit, to_unit))
    value = (value * float(f[2]) + float(f[3]) - float(t[3])) / float(t[2])
    # factors like 1e-9 leave float noise in the last bits; 15 digits keep every real one
    return float("%.15g" % value)


# (symbol, kilo) of ``unit`` for a person: how it is written, and whether thousands of it
# read as k<symbol>.
def symbol(unit):
    f = _line(SYMBOLS, unit)
    return (unit, False) if f is None else (f[1], f[2] == "k")
