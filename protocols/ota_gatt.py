# OTA over the polekit GATT service (protocols.bthome.GATT): the frames both sides use.
# docs/protocols.md ("OTA over BLE") is the reference; the node imports this only while an
# update runs.
#
# CONTROL (GATT % 4: write, notify). A central writes one request; the node answers
# with a notification on CONTROL, a CBOR map {"op": letter, "ok": bool, ...}; ok false
# carries "code" (ManifestError codes; 9: out of order) and "error" (text).
#   b"H" + manifest length (u16 LE) + signature (64 bytes)   a manifest follows
#   b"M" + offset (u16 LE) + bytes                           a piece of the manifest
#   b"B"   begin: check the manifest and signature; the answer's "need" is [file, offset]
#          of the first byte missing (resumed from flash), or None when all is staged
#   b"C"   commit: hashes, install, reset (the answer comes first; the link then drops)
#   b"A"   abort: staging forgotten
#   b"S"   status: the answer's "status" is the session's status map
# DATA (GATT % 5: write, notify). A write is file index (u8), offset (u32 LE), then bytes;
# every write is answered by one notification on DATA: status (u8), file (u8), offset (u32
# LE): the byte the node expects next. Status ACK_GAP says the write was not at that point
# and was dropped (the central goes back to it); ACK_DONE that every file is staged.
from .bthome import OTA_CONTROL, OTA_DATA, OTA_WRITE
from .errors import FrameError

CONTROL = OTA_CONTROL  # GATT % CONTROL
DATA = OTA_DATA
MAX_WRITE = OTA_WRITE

# an ATT write carries MTU - 3 bytes; the virtual air and an ESP32's NimBLE (preferred MTU
# 256, BlueZ asks for 517) settle on at least 247, so writes stay within MAX_WRITE = 244
DATA_HEAD = 5
SIG_BYTES = 64
MANIFEST_MAX = 8192  # the node keeps the manifest in RAM while it checks it
WINDOW = 4  # data writes a central keeps unanswered (the node queues OTA_QUEUE, 8)

OP_HEADER = 0x48  # "H"
OP_MANIFEST = 0x4D  # "M"
OP_BEGIN = 0x42  # "B"
OP_COMMIT = 0x43  # "C"
OP_ABORT = 0x41  # "A"
OP_STATUS = 0x53  # "S"

ACK_OK = 0
ACK_DONE = 1
ACK_GAP = 2  # not the expected offset: dropped
ACK_IDLE = 3  # no update begun (after a reset: begin again)
ACK_FULL = 4  # the node was busy and dropped it: resend from the offset given
ACK_ERROR = 5  # the session refused the bytes (see CONTROL's status)

CODE_ORDER = 9  # a request out of order (a manifest piece past its length, begin without one)
CODE_BUSY = 10  # the node is checking a manifest or installing: ask again later


def data_frame(file, offset, chunk):
    if not 0 <= file <= 255 or offset < 0 or len(chunk) > MAX_WRITE - DATA_HEAD:
        raise FrameError("data frame: file %r offset %r size %d" % (file, offset, len(chunk)))
    return bytes((file,)) + offset.to_bytes(4, "little") + bytes(chunk)


# (file, offset, the bytes as a memoryview of frame)
def parse_data(frame):
    if len(frame) < DATA_HEAD:
        raise FrameError("data frame of %d bytes: at least %d" % (len(frame), DATA_HEAD))
    return frame[0], int.from_bytes(frame[1:5], "little"), memoryview(frame)[DATA_HEAD:]


def ack(status, file, offset):
    return bytes((status, file)) + offset.to_bytes(4, "little")


# (status, file, offset)
def parse_ack(frame):
    if len(frame) != 6:
        raise FrameError("data ack of %d bytes: 6 expected" % len(frame))
    return frame[0], frame[1], int.from_bytes(frame[2:6], "little")


def header(manifest_len, sig):
    if len(sig) != SIG_BYTES or not 0 < manifest_len <= MANIFEST_MAX:
        raise FrameError("manifest of %d bytes (at most %d)" % (manifest_len, MANIFEST_MAX))
    return bytes((OP_HEADER,)) + manifest_len.to_bytes(2, "little") + bytes(sig)


# the manifest in pieces that fit a write
def manifest_pieces(manifest):
    step = MAX_WRITE - 3
    for at in range(0, len(manifest), step):
        yield bytes((OP_MANIFEST,)) + at.to_bytes(2, "little") + manifest[at : at + step]
