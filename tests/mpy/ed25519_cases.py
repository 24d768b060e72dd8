# Runs INSIDE the MicroPython VM (tests/test_ed25519.py puts protocols/ in /lib and the
# vector files in /vectors): every case of tests/vectors/ed25519.json through verify() and
# verify_async(), one line per case ("case NAME sync async ms"), then the pure SHA-512 on
# the lengths around its padding boundary ("sha512 N HEX").
import json
import time

from protocols import ed25519
from protocols.sha512 import sha512

with open("/vectors/ed25519.json") as f:
    v = json.load(f)


async def run(case):
    pk = bytes.fromhex(case["public"])
    msg = bytes.fromhex(case["message"])
    sig = bytes.fromhex(case["signature"])
    t = time.ticks_ms()
    sync = ed25519.verify(pk, msg, sig)
    ms = time.ticks_diff(time.ticks_ms(), t)
    later = await ed25519.verify_async(pk, msg, sig)
    print("case", case["name"].replace(" ", "_"), int(sync), int(later), ms)


async def main():
    for group in ("rfc8032", "rejected", "refused_beyond_openssl"):
        for case in v[group]:
            await run(case)


# the WebAssembly port runs the script as a coroutine (no asyncio.run): top-level await
await main()  # noqa: F704, PLE1142
for n in (0, 1, 55, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 1000):
    data = bytes((i * 7 + n) & 0xFF for i in range(n))
    print("sha512", n, sha512(data).digest().hex())
