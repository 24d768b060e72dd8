# Runs INSIDE the MicroPython VM (tests/test_ota_signing.py writes /cases/manifest.json):
# each case through protocols.manifest's check, sync and async (the node's way), printing
# "case NAME SYNC_CODE ASYNC_CODE" (0: accepted), then the canonical re-encoding of each
# accepted manifest ("bytes NAME 1" when this interpreter rebuilds the signed bytes).
import json

from protocols import cbor
from protocols.manifest import ManifestError, check_manifest, check_manifest_async

with open("/cases/manifest.json") as f:
    cases = json.load(f)


def code_of(fn, *args):
    try:
        fn(*args)
    except ManifestError as e:
        return e.code
    return 0


async def async_code(*args):
    try:
        await check_manifest_async(*args)
    except ManifestError as e:
        return e.code
    return 0


async def main():
    for c in cases:
        args = (
            bytes.fromhex(c["manifest"]),
            bytes.fromhex(c["sig"]),
            bytes.fromhex(c["key"]),
            c["board"],
            c["running"],
        )
        sync = code_of(check_manifest, *args)
        later = await async_code(*args)
        print("case", c["name"], sync, later)
        if not sync:
            m = cbor.loads(args[0])
            print("bytes", c["name"], int(cbor.dumps(m, True) == args[0]))


await main()  # noqa: F704, PLE1142 - the WebAssembly port runs the script as a coroutine
