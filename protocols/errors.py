# One error family for everything that can go wrong on the wire.

# Callers catch ProtocolError; the subclass tells them what was wrong. Every message names
# the offending value so a log line is enough to diagnose a bad frame or a bad record.
# Docstrings cost heap on MicroPython: the subclasses are described in comments.


# Base class: the bytes or values given do not follow the format.
class ProtocolError(ValueError):
    pass


# A frame is malformed: wrong length, bad header, unknown function.
class FrameError(ProtocolError):
    pass


# A frame arrived whole but its checksum does not match.
class CRCError(FrameError):
    pass


# Bytes are not well-formed CBOR, are truncated, or nest too deep.
class CBORDecodeError(ProtocolError):
    pass


# A SenML pack or record breaks RFC 8428 (or our stricter rules for what we send).
class SenMLError(ProtocolError):
    pass


# A Modbus exception response (``code`` is the exception code, 0 when there is none),
# or a value that does not fit its register.
class ModbusException(ProtocolError):  # noqa: N818 - the Modbus spec's own term
    def __init__(self, message, code=0):
        super().__init__(message)
        self.code = code


# A BTHome advert is malformed, of another version, or has an unknown object.
class BTHomeError(ProtocolError):
    pass


# An encrypted BTHome advert fails its message integrity check (wrong key, tampered).
class DecryptionError(BTHomeError):
    pass


# A device code is malformed or its check character is wrong.
class IdentityError(ProtocolError):
    pass


# A value as an error message shows it: its repr, cut short. Hostile input makes huge
# values, and CPython refuses to print an integer of more than 4300 digits at all.
def shown(value):
    try:
        return repr(value)[:60]
    except ValueError:
        return "(too large to show)"


# A DL/T 645 frame is malformed (preamble, header, length, checksum, end byte, BCD digits).
class DLT645Error(FrameError):
    pass


# An HJ 212 packet is malformed (header, length, CRC, end, data segment fields).
class HJ212Error(FrameError):
    pass
