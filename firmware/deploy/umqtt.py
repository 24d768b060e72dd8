"""micropython-lib's MQTT client, ``umqtt.simple``, for the node bundle (``/lib/umqtt``).

The Wi-Fi uplink uses it rather than a client of our own. It comes from its published
package, ``micropython-umqtt.simple`` 1.3.4 on PyPI (an sdist pip cannot install: it has no
setup.py), downloaded once (``make setup``, or the first bundle built) into a cache, checked
against the sha256 pinned here, and shipped byte for byte with its MIT license. Later builds
read the cache and need no network.

On a chip: ``import usocket``/``ustruct``/``ubinascii`` (what 1.3.4 imports) work on
MicroPython 1.27, which lets ``ufoo`` name any extensible built-in ``foo``
(py/objmodule.c); its ``ssl=True`` path imports ``ussl``, which 1.27 no longer has (ssl is a
frozen Python module there), so TLS needs the ESP32 firmware's own frozen umqtt.simple
(1.7.0 in v1.27.0, found first on sys.path: '.frozen' comes before '/lib'). See docs/hil.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "micropython-umqtt.simple"
VERSION = "1.3.4"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
# PyPI's file for that release, and its sha256 as PyPI lists it (the simple index's
# #sha256= and the JSON API's digests.sha256 agree): a different file is refused
URL = (
    "https://files.pythonhosted.org/packages/bd/cf/"
    "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/" + SDIST
)
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = f"{PACKAGE}-{VERSION}/umqtt/simple.py"
BOARD_DIR = "lib/umqtt"
# The sdist carries no license file; its PKG-INFO says "License: MIT", and micropython-lib's
# LICENSE gives the text (MIT for every module without a license of its own)
LICENSE = f"""\
umqtt/simple.py is {PACKAGE} {VERSION} from PyPI, unmodified (sha256 of the sdist:
{SHA256}), part of micropython-lib: https://github.com/micropython/micropython-lib
Its package metadata says "License: MIT"; micropython-lib's license text follows.

The MIT License (MIT)

Copyright (c) 2013, 2014 micropython-lib contributors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
"""
_SOURCE_TREE = Path(__file__).resolve().parents[2]


class UmqttUnavailableError(RuntimeError):
    """umqtt.simple is neither cached nor downloadable; the message says what to do."""


def cache_dirs() -> list[Path]:
    """Where the sdist is kept, first choice first: $POLEKIT_CACHE_DIR; else a source
    checkout's build/ folder (what `make setup` fills), then the user's cache folder."""
    env = os.environ.get("POLEKIT_CACHE_DIR")
    if env:
        return [Path(env)]
    out = []
    if (_SOURCE_TREE / "pyproject.toml").is_file():
        out.append(_SOURCE_TREE / "build" / "vendor")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(Path(xdg) / "polekit")
    return out


def _checked(data: bytes) -> bytes | None:
    return data if hashlib.sha256(data).hexdigest() == SHA256 else None


def sdist(fetch: bool = True) -> bytes:
    """The package's sdist, from a cache or (``fetch``) downloaded and cached; raises
    UmqttUnavailableError when neither works."""
    for folder in cache_dirs():
        try:
            data = _checked((folder / SDIST).read_bytes())
        except OSError:
            continue
        if data is not None:
            return data
    if not fetch:
        raise UmqttUnavailableError(f"{SDIST} is not cached: run `make setup` with network")
    try:
        with urllib.request.urlopen(URL, timeout=60) as resp:  # noqa: S310 - a pinned https URL
            data = resp.read()
    except OSError as exc:
        raise UmqttUnavailableError(
            f"cannot download {PACKAGE} {VERSION} from PyPI ({exc}): connect to the network "
            f"and run `make setup`, or put {SDIST} (sha256 {SHA256}) in "
            f"{cache_dirs()[0]}"
        ) from None
    if _checked(data) is None:
        raise UmqttUnavailableError(
            f"PyPI served a {SDIST} whose sha256 is not the pinned {SHA256}: not used; "
            "check the network path (a proxy rewriting files?) and run `make setup` again"
        )
    for folder in cache_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / (SDIST + ".part")
            tmp.write_bytes(data)
            tmp.replace(folder / SDIST)
            break
        except OSError:
            continue  # not writable here: the next place
    return data


def files(fetch: bool = True) -> dict[str, bytes]:
    """Board path -> bytes: ``lib/umqtt/simple.py`` as published, and its LICENSE."""
    with tarfile.open(fileobj=io.BytesIO(sdist(fetch)), mode="r:gz") as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise UmqttUnavailableError(f"{SDIST} has no {MEMBER}")
        source = member.read()
    return {f"{BOARD_DIR}/simple.py": source, f"{BOARD_DIR}/LICENSE": LICENSE.encode()}


def main() -> int:
    """`python -m polekit.firmware.deploy.umqtt`: make sure the sdist is cached."""
    try:
        sdist()
    except UmqttUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{PACKAGE} {VERSION}: cached (sha256 {SHA256[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
