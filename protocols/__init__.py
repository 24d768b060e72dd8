"""polekit wire formats, shared by the firmware (MicroPython) and the gateway (CPython).

Every module here is pure: bytes in, values out, values in, bytes out. No I/O, no clock,
no globals that change, relative imports only, so that the same source runs unchanged on
the board and on the host. Submodules are not imported here: a battery node imports only
what it uses.
"""
