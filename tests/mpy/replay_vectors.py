# Runs INSIDE the MicroPython VM (tests/test_micropython.py puts protocols/ in /lib and the
# vector files in /vectors). Replays the shared vectors through protocols/ and prints one
# line per failure, then "vectors: N passed, M failed". Raises if anything failed.
import json

from protocols import bthome, cbor, identity, modbus, senml
from protocols.errors import ProtocolError

passed = 0
failed = 0


def load(name):
    with open("/vectors/%s.json" % name) as f:
        return json.load(f)


def tagged(v):
    if isinstance(v, list):
        return [tagged(x) for x in v]
    if isinstance(v, dict):
        if "$bytes" in v:
            return bytes.fromhex(v["$bytes"])
        if "$int" in v:
            return int(v["$int"])
        if "$float" in v:
            return float(v["$float"])
        if "$tag" in v:
            return cbor.Tag(v["$tag"][0], tagged(v["$tag"][1]))
        if "$map" in v:
            out = {}
            for k, x in v["$map"]:
                out[tagged(k)] = tagged(x)
            return out
        return {k: tagged(x) for k, x in v.items()}
    return v


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)


def raises(fn, *args):
    try:
        fn(*args)
    except ProtocolError:
        return True
    return False


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(1, abs(b))
    return a == b


def ordered(v):
    # False if ``v`` holds a map of several keys: MicroPython dicts do not keep insertion
    # order, so only the decoded value (not the byte order) can be compared for those
    if isinstance(v, dict):
        return len(v) < 2 and all(ordered(x) for x in v.values())
    if isinstance(v, list):
        return all(ordered(x) for x in v)
    if isinstance(v, cbor.Tag):
        return ordered(v.value)
    return True


v = load("cbor")
for vec in v["encode"]:
    value = tagged(vec["value"])
    if not ordered(value):
        check(cbor.loads(bytes.fromhex(vec["hex"])) == value, "cbor decode " + vec["hex"][:40])
        check(cbor.loads(cbor.dumps(value)) == value, "cbor round trip " + vec["hex"][:40])
        continue
    if isinstance(value, float) and value != value:
        check(cbor.dumps(value).hex() == vec["hex"], "cbor nan")
        continue
    check(cbor.dumps(value).hex() == vec["hex"], "cbor encode " + vec["hex"][:40])
    check(
        cbor.dumps(cbor.loads(bytes.fromhex(vec["hex"]))).hex() == vec["hex"],
        "cbor decode " + vec["hex"][:40],
    )
for vec in v["canonical"]:
    # deterministic CBOR: the same bytes whatever order this interpreter's dicts iterate in
    check(
        cbor.dumps(tagged(vec["value"]), True).hex() == vec["hex"],
        "cbor canonical " + vec["hex"][:40],
    )
for vec in v["decode_only"]:
    check(
        close(cbor.loads(bytes.fromhex(vec["hex"])), tagged(vec["value"])),
        "cbor decode " + vec["hex"],
    )
for vec in v["malformed"] + v["rejected"]:
    check(raises(cbor.loads, bytes.fromhex(vec["hex"])), "cbor malformed " + vec["hex"][:40])

v = load("senml")
for ex in v["examples"]:
    resolved = senml.resolve(senml.decode_json(ex["json"]), now=ex["now"])
    want = tagged(ex["resolved"])
    ok = len(resolved) == len(want)
    for got, exp in zip(resolved, want):
        ok = ok and sorted(got) == sorted(exp) and all(close(got[k], exp[k]) for k in exp)
    check(ok, "senml resolve " + ex["name"])
    pack = senml.decode_json(ex["json"])
    check(senml.decode_cbor(senml.encode_cbor(pack)) == pack, "senml cbor round trip " + ex["name"])
    if "cbor" in ex:
        raw = bytes.fromhex(ex["cbor"].replace(" ", ""))
        check(
            len(senml.resolve(senml.decode_cbor(raw), now=ex["now"])) == len(want), "senml rfc cbor"
        )
for text in v["invalid"]:
    check(raises(senml.decode_json, text), "senml invalid " + text[:40])
for vec in v["ignored_cbor_labels"]:
    pack = senml.decode_cbor(bytes.fromhex(vec["cbor"]))
    check(pack == senml.decode_json(vec["json"]), "senml ignored cbor labels " + vec["json"])
for h in v["invalid_cbor"]:
    check(raises(senml.decode_cbor, bytes.fromhex(h)), "senml invalid cbor " + h[:40])

v = load("modbus")
for vec in v["crc"]:
    check(modbus.crc16(bytes.fromhex(vec["hex"])) == vec["crc"], "crc " + vec["hex"])
for vec in v["responses"]:
    check(getattr(modbus, vec["fn"])(*vec["args"]).hex() == vec["hex"], "modbus " + vec["fn"])
for vec in v["requests"]:
    r = modbus.decode_request(bytes.fromhex(vec["hex"]))
    check(
        (r.unit, r.function, r.address, r.count, list(r.values), r.error)
        == (
            vec["unit"],
            vec["function"],
            vec["address"],
            vec["count"],
            vec["values"],
            vec["error"],
        ),
        "modbus request " + vec["hex"],
    )
for h in v["bad_requests"]:
    check(raises(modbus.decode_request, bytes.fromhex(h)), "modbus bad request " + h)
for vec in v["points"]:
    p = modbus.register_map(vec["map"]).point(vec["point"])
    check(p.encode(vec["value"]) == vec["registers"], "point encode " + vec["point"])
    check(close(p.decode(vec["registers"]), vec["value"]), "point decode " + vec["point"])

v = load("bthome")
for vec in v["plain"]:
    raw = bthome.encode(
        vec["values"], packet_id=vec.get("packet_id"), trigger=vec.get("trigger", False)
    )
    check(raw.hex() == vec["hex"], "bthome encode " + vec["hex"])
    got = bthome.decode(raw)
    check(all(close(got[k], x) for k, x in vec["values"].items()), "bthome decode " + vec["hex"])
for vec in v["encrypted"]:
    raw = bthome.encode(vec["values"], key=vec["key"], mac=vec["mac"], counter=vec["counter"])
    check(raw.hex() == vec["hex"], "bthome encrypt (spec vector)")
    got = bthome.decode(raw, key=vec["key"], mac=vec["mac"])
    check(all(close(got[k], x) for k, x in vec["values"].items()), "bthome decrypt (spec vector)")
for h in v["malformed"]:
    check(
        raises(bthome.decode, bytes.fromhex(h), "00" * 16, "00:00:00:00:00:00"),
        "bthome malformed " + h,
    )

v = load("identity")
for region, dtype, serial, code in v["make"]:
    check(identity.make(region, dtype, serial) == code, "identity make " + code)
    check(identity.parse(code) == (region, dtype, serial), "identity parse " + code)
for code in v["invalid"]:
    check(not identity.validate(code), "identity invalid " + code)

print("vectors: %d passed, %d failed" % (passed, failed))
if failed:
    raise SystemExit(1)
