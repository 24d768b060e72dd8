"""Unix socket paths for the servers a user starts (the virtual air, a board's control).

A socket left behind by a process that died is in the way and is removed. Anything else at
the path is refused, never deleted: a user's file given by mistake (``--socket poles.csv``),
or a socket another air or board is still serving (taking it over would split the boards
between two airs without a word).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path


def serving(path: Path | str) -> bool:
    """Whether a process accepts connections on the Unix socket at ``path``: False when
    nothing is there or the socket is stale. Raises OSError (with ``filename``) when the
    path holds something else, or cannot be looked at."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a file"
        raise FileExistsError(errno.EEXIST, f"is {what}, not a socket", str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # nobody serves it: left over from a process that died
        return False
    finally:
        probe.close()
    return True


def claim(path: Path | str) -> None:
    """Make ``path`` free for ``bind()``, removing a stale socket. Raises OSError when
    something that must be kept is there (see ``serving``)."""
    if serving(path):
        raise FileExistsError(errno.EADDRINUSE, "another process serves this socket", str(path))
    if os.path.lexists(path):
        os.unlink(path)
