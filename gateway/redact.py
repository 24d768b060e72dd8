"""What the gateway may show of a secret: a broker URL without its password, a bind key
problem without the key.

Every place that prints, logs or serves a broker URL (``/health``, the log, ``gateway
check``, config errors) goes through ``redact_url``; every bind key problem is worded by
``bindkey_problem``. A log line or a status page is read by more people than the config
file, and a key that is one digit off is nearly the key.
"""

from __future__ import annotations

HIDDEN = "***"

_HEX = "0123456789abcdefABCDEF"


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``.

    Works on text, not on a parsed URL, so a URL that does not parse (a ``/`` or ``@`` in
    an unencoded password, a bad port) is still redacted: everything between the first
    ``:`` after ``//`` and the last ``@`` is the password."""
    start = url.find("//")
    if start < 0:
        return url
    start += 2
    at = url.rfind("@")
    if at < start:
        return url
    colon = url.find(":", start, at)
    if colon < 0:
        return url  # a user name alone: nothing secret
    return url[: colon + 1] + HIDDEN + url[at:]


def bindkey_problem(text: str) -> str | None:
    """What is wrong with a BTHome bind key given as text (None when it is 32 hex digits),
    saying where, never echoing any of its digits."""
    if len(text) != 32:
        return f"a bind key is 32 hex digits; this one has {len(text)} characters"
    for i, c in enumerate(text, 1):
        if c not in _HEX:
            return f"a bind key is 32 hex digits; character {i} is not a hex digit"
    return None
