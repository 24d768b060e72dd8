"""Device codes: check characters agree with python-stdnum's ISO 7064 MOD 37-36."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.iso7064 import mod_37_36

from polekit.protocols import identity
from polekit.protocols.errors import IdentityError

from conftest import load_vectors

VECTORS = load_vectors("identity")


@pytest.mark.parametrize("region,dtype,serial,code", VECTORS["make"])
def test_make_and_parse_agree_with_the_vectors(
    region: str, dtype: str, serial: int, code: str
) -> None:
    assert identity.make(region, dtype, serial) == code
    assert identity.parse(code) == (region, dtype, serial)
    assert mod_37_36.is_valid(code)


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=30))
def test_check_character_matches_stdnum(body: str) -> None:
    assert identity.check_char(body) == mod_37_36.calc_check_digit(body)


@pytest.mark.parametrize("code", VECTORS["invalid"])
def test_invalid_codes_are_refused(code: str) -> None:
    assert not identity.validate(code)
    with pytest.raises(IdentityError):
        identity.parse(code)


def test_every_single_character_error_is_caught() -> None:
    code = identity.make("371600", "PL", 1)
    for i in range(len(code)):
        for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            if c != code[i]:
                assert not identity.validate(code[:i] + c + code[i + 1 :])


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(IdentityError, match="expected 'C'"):
        identity.parse("371600PL000001D")
    with pytest.raises(IdentityError, match="device type 'XX'"):
        identity.make("371600", "XX", 1)
    with pytest.raises(IdentityError, match="serial"):
        identity.make("371600", "PL", 0)


@pytest.mark.parametrize(
    "code",
    [
        "371600PL00000²C",  # a superscript two passes str.isdigit() but not int()
        "37160²PL000001C",  # the same in the region
        "٣٧١٦٠٠PL000001C",  # Arabic-Indic digits: int() reads them, the code scheme does not
        "371600PL٠٠٠٠٠١C",
    ],
)
def test_digits_outside_ascii_are_refused_with_identity_error(code: str) -> None:
    with pytest.raises(IdentityError, match="digits|serial"):
        identity.parse(code)
    assert not identity.validate(code)
