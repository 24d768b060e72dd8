# The node's register file: the values a Modbus master reads, laid out by a register map
# from protocols (one map, defined once, used by the gateway too).
from array import array

from protocols.errors import ModbusException
from protocols.modbus import ILLEGAL_ADDRESS


class RegisterFile:
    # ``on_write(point, value)`` is called after a master wrote a writable point
    def __init__(self, regmap, on_write=None):
        self.map = regmap
        self.on_write = on_write
        self.points = {}
        sizes = {"holding": 0, "input": 0}
        for p in regmap:
            self.points[p.name] = p
            if p.table in sizes:
                sizes[p.table] = max(sizes[p.table], p.address + p.count)
        self.tables = {t: array("H", bytes(2 * n)) for t, n in sizes.items()}
        # which registers a point covers, so reads of unmapped addresses are refused
        self.mapped = {t: bytearray(n) for t, n in sizes.items()}
        for p in regmap:
            if p.table in sizes:
                for a in range(p.address, p.address + p.count):
                    self.mapped[p.table][a] = 1

    # store a value (in the point's unit) for masters to read
    def set(self, name, value):
        p = self.points[name]
        regs = p.encode(value)
        t = self.tables[p.table]
        for i, r in enumerate(regs):
            t[p.address + i] = r

    # the value of a point as masters see it
    def get(self, name):
        p = self.points[name]
        t = self.tables[p.table]
        return p.decode([t[p.address + i] for i in range(p.count)])

    def read(self, table, address, count):
        t = self.tables[table]
        m = self.mapped[table]
        if address + count > len(t):
            raise ModbusException("read past the map", ILLEGAL_ADDRESS)
        for a in range(address, address + count):
            if not m[a]:
                raise ModbusException("unmapped register %d" % a, ILLEGAL_ADDRESS)
        return [t[a] for a in range(address, address + count)]

    # a master's write to holding registers: every register must belong to a writable
    # point and every point must accept its new value, or nothing is written
    def write(self, address, values):
        t = self.tables["holding"]
        end = address + len(values)
        if end > len(t):
            raise ModbusException("write past the map", ILLEGAL_ADDRESS)
        touched = []
        for p in self.map:
            if p.table == "holding" and p.address < end and p.address + p.count > address:
                if not p.writable or p.address < address or p.address + p.count > end:
                    raise ModbusException("%s is not writable this way" % p.name, ILLEGAL_ADDRESS)
                touched.append(p)
        covered = sum(p.count for p in touched)
        if covered != len(values):
            raise ModbusException("write covers unmapped registers", ILLEGAL_ADDRESS)
        decoded = []
        for p in touched:
            off = p.address - address
            value = p.decode(values[off : off + p.count])
            p.encode(value)  # range check (ModbusException code 3)
            decoded.append((p, value))
        for i, v in enumerate(values):
            t[address + i] = v
        if self.on_write:
            for p, value in decoded:
                self.on_write(p, value)
