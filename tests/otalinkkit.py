"""Helpers for the OTA transport tests (BLE and HTTP): real signed bundles of the node
firmware for a board (bundle.build with a version, signing.sign_bundle with a fresh key),
and a node flashed as `polekit deploy --key` leaves it (compiled libraries in slot a, the
update key at /ota.pub), so the transports run on the node's real OtaSession."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polekit.firmware.deploy import signing
from polekit.firmware.deploy.bundle import DEFAULT_MPY, build, compile_module
from polekit.firmware.install import install

COMMUNITY = "community-sos-esp32c3"
_NODE = Path(__file__).resolve().parent.parent / "firmware" / "node"


@dataclass
class Signed:
    """A signed update: manifest bytes, signature, files {board path: bytes} in order."""

    manifest: bytes
    sig: bytes
    files: dict[str, bytes]
    pub: bytes  # the raw 32-byte public key (/ota.pub on the node)
    folder: Path | None = None  # the bundle as `polekit build --sign` writes it

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


def signed_bundle(
    tmp: Path,
    board: str,
    version: str = "0.2",
    key: Path | None = None,
    change: Callable[[dict[str, bytes]], None] | None = None,
    extra: dict[str, bytes] | None = None,
) -> Signed:
    """The node bundle for ``board`` at ``version`` (compiled), signed with ``key`` (a new
    one in ``tmp`` by default); ``extra`` are files the new version adds (signed with it);
    ``change`` edits the files after signing (tampering)."""
    folder = tmp / f"bundle-{version}"
    if key is None:
        key, _pub = signing.new_key(tmp / "update")
    built = build(board, DEFAULT_MPY, version=version)
    built.files.update(extra or {})
    built.write(folder)
    signing.sign_bundle(folder, key, board, version, "0.1")
    raw, sig, files = signing.load_signed(folder)
    if change is not None:
        change(files)
    pub = signing.public_key_raw(key.with_suffix(".pub"))
    return Signed(raw, sig, files, pub, folder)


# a version that raises as it starts: the boot selector rolls it back at once (reason 1)
RAISES = ("class CommunityNode:", 'raise RuntimeError("broken")\n\n\nclass CommunityNode:')
# its loop hangs once it advertises: the watchdog it armed on trial resets it (reason 2)
HANGS = (
    "            await asyncio.sleep_ms(10)\n",
    "            while True:\n                pass\n",
)


def community_update(
    tmp: Path, new_bytes: int, key: Path | None = None, broken: tuple[str, str] | None = None
) -> Signed:
    """Version 0.2 of the community node's own bundle, which also brings a new module of
    ``new_bytes`` (incompressible): the files the node runs already are copied from its
    slot a, the rest goes over the air. ``broken``: (text in community.py, what replaces
    it): a version that fails (RAISES, HANGS), signed as a good one is."""
    extra = {"lib/node/assets.bin": os.urandom(new_bytes)}
    if broken is not None:
        source = (_NODE / "community.py").read_text()
        assert broken[0] in source, f"community.py no longer has {broken[0]!r}"
        extra["lib/node/community.mpy"] = compile_module(
            source.replace(broken[0], broken[1], 1).encode(), "lib/node/community.py", DEFAULT_MPY
        )
    return signed_bundle(tmp, COMMUNITY, "0.2", key, extra=extra)


def over_the_link(update: Signed, flash: Path) -> int:
    """The bytes of ``update``'s files that slot a of ``flash`` does not hold as they are:
    what the link must carry (the node copies the rest on its flash)."""
    return sum(
        len(data)
        for path, data in update.files.items()
        if not (flash / path).exists() or (flash / path).read_bytes() != data
    )


def flashed_node(flash: Path, board: str, pub: bytes, config: dict[str, Any] | None = None) -> Path:
    """A node's flash as `polekit deploy --key` leaves it: version 0.1's compiled libraries
    in slot a, ``config`` over the board's settings, the raw update key at /ota.pub."""
    install(flash, board, config, compiled=True)
    (flash / "ota.pub").write_bytes(pub)
    return flash


def staged(flash: Path, path: str) -> Path:
    """Where the session staged a bundle path: the inactive slot (b: /slot_b) of a node
    that ran slot a."""
    return flash / "slot_b" / path
