"""Device codes (identity.parse) as they come in text: any bytes, read as UTF-8, give
(region, type, serial) or IdentityError; a code it accepts is the one make() builds."""

from __future__ import annotations

from hypothesis import strategies as st

from polekit.protocols import identity
from polekit.protocols.errors import IdentityError

import fuzzkit

RAISES = (IdentityError,)
TYPES = [line.split()[0] for line in identity.DEVICE_TYPES.strip().split("\n")]
# digits of other scripts and other number characters: str.isdigit() or int() accept some
ODD_DIGITS = "²³¹⁰⁹₀₉٣٠۴०০੦૦୦௦౦೦൦๐໐༠၀០᠐０９①½ⅣⅫ〇𝟎𝟗"


def fuzz(data: bytes) -> None:
    code = data.decode("utf-8", "replace")
    region, dtype, serial = identity.parse(code)
    assert identity.make(region, dtype, serial) == code


def seeds() -> list[bytes]:
    v = fuzzkit.vectors("identity")
    return [m[3].encode() for m in v["make"]] + [c.encode() for c in v["invalid"]]


@st.composite
def _codes(draw: st.DrawFn) -> bytes:
    code = list(
        identity.make(
            str(draw(st.integers(110000, 829999))),
            draw(st.sampled_from(TYPES)),
            draw(st.integers(1, identity.SERIAL_MAX)),
        )
    )
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(code)))
        char = draw(st.sampled_from(ODD_DIGITS) | st.characters())
        op = draw(st.integers(0, 2))
        if op == 0 and at < len(code):
            code[at] = char
        elif op == 1:
            code.insert(at, char)
        elif code:
            del code[min(at, len(code) - 1)]
    return "".join(code).encode("utf-8", "surrogatepass")


INPUTS = _codes()
