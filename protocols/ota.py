# Over-the-air updates: the Modbus transfer window and the codes a node reports.
#
# Defined once here for the node's window (firmware/node/ota/modbus_window.py) and the
# gateway's transfer client; docs/protocols.md ("OTA over Modbus") is the reference. An
# update travels as function 16 writes into a window of holding registers, status as a
# function 3 read: a function 16 answer is 8 bytes, where a function 21 one echoes the data.
# Pure values and functions on registers, no I/O; the node imports it only for an update.

WINDOW_STATUS = 0x1000  # 16 registers, read
STATUS_REGS = 16
WINDOW_COMMAND = 0x1010  # [code, arg...], write
WINDOW_DATA = 0x1020  # [file, offset high, offset low, data...], write
DATA_HEADER_REGS = 3
CHUNK_BYTES = 240  # data bytes in one write: 123 registers, the most function 16 carries
HEADER_FILE = 0xFFFF  # the "file" of the header: signature (64 bytes), then manifest.cbor
SIG_BYTES = 64
MAX_MANIFEST_BYTES = 16384
NO_FILE = 0xFFFF  # need: nothing missing

# commands (WINDOW_COMMAND)
CMD_OPEN = 1  # [1, length high, length low]: a header of that many bytes follows
CMD_BEGIN = 2  # check the header; then receive files (or resume)
CMD_COMMIT = 3  # every file's sha256, install into the other slot, reset into it
CMD_ABORT = 4  # drop the staging

# states (status +0, the ota_state point); names index by code
IDLE = 0
HEADER = 1
CHECKING = 2
RECEIVING = 3
VERIFYING = 4
INSTALLING = 5
REFUSED = 6
TRIAL = 7
ROLLED_BACK = 8
STATES = (
    "idle",
    "header",
    "checking",
    "receiving",
    "verifying",
    "installing",
    "refused",
    "trial",
    "rolled_back",
)

# refusals (status +1, ota_error): protocols.manifest's codes (ManifestError, REASONS)

# rollback reasons (status +7, ota_rollback)
RB_EXCEPTION = 1
RB_WATCHDOG = 2
RB_CRASH_LOOP = 3
RB_SELFTEST = 4
RB_UPLINK = 5
ROLLBACKS = """
1 an exception at start-up
2 a watchdog reset during the trial
3 a crash loop: boots on trial without confirming
4 the self-test failed
5 the uplink was not healthy within the trial time
"""


def _text(table, code):
    at = table.find("\n%d " % code)
    if at < 0:
        return "code %d" % code
    return table[at + 2 + len(str(code)) : table.find("\n", at + 1)]


# What a refusal code means, in words.
def error_text(code):
    from .manifest import REASONS

    return REASONS.get(code, "code %d" % code)


# What a rollback code means, in words.
def rollback_text(code):
    return _text(ROLLBACKS, code)


# "0.2" -> 0x0002 (the fw_version register: major << 8 | minor); ValueError if malformed.
def version_code(text):
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ValueError("version %r must be MAJOR.MINOR, each 0..255" % text)
    return int(parts[0]) << 8 | int(parts[1])


# 0x0002 -> "0.2"
def version_text(code):
    return "%d.%d" % (code >> 8, code & 0xFF)


# The registers of a data write: file, offset (u32), then ``chunk`` two bytes a register
# (high byte first; an odd last byte is padded with 0, which the node drops).
def data_registers(file_index, offset, chunk):
    n = len(chunk)
    regs = [file_index, offset >> 16, offset & 0xFFFF]
    for i in range(0, n - 1, 2):
        regs.append(chunk[i] << 8 | chunk[i + 1])
    if n & 1:
        regs.append(chunk[n - 1] << 8)
    return regs


# (file, offset, data bytes) of a data write's registers; ValueError when too short.
def parse_data(values):
    if len(values) < DATA_HEADER_REGS + 1:
        raise ValueError("a data write needs file, offset and at least one data register")
    data = bytearray(2 * (len(values) - DATA_HEADER_REGS))
    for i in range(DATA_HEADER_REGS, len(values)):
        v = values[i]
        j = 2 * (i - DATA_HEADER_REGS)
        data[j] = v >> 8
        data[j + 1] = v & 0xFF
    return values[0], values[1] << 16 | values[2], data


# The status block's 16 registers from a status dict (OtaSession.status()).
def encode_status(s):
    need_file, need_offset = s.get("need") or (NO_FILE, 0)
    staged = s.get("staged", 0)
    total = s.get("total", 0)
    heap = s.get("heap_low", 0)
    return [
        s.get("state_code", 0),
        s.get("error", 0),
        need_file,
        need_offset >> 16,
        need_offset & 0xFFFF,
        CHUNK_BYTES,
        s.get("files", 0),
        s.get("rollback", 0),
        s.get("running_code", 0),
        s.get("previous_code", 0),
        staged >> 16,
        staged & 0xFFFF,
        total >> 16,
        total & 0xFFFF,
        heap >> 16,
        heap & 0xFFFF,
    ]


# A status dict from the status block's registers (the gateway's side).
def decode_status(regs):
    state = regs[0]
    need = None if regs[2] == NO_FILE else (regs[2], regs[3] << 16 | regs[4])
    return {
        "state_code": state,
        "state": STATES[state] if state < len(STATES) else "state %d" % state,
        "error": regs[1],
        "need": need,
        "chunk": regs[5],
        "files": regs[6],
        "rollback": regs[7],
        "running": version_text(regs[8]),
        "previous": version_text(regs[9]) if regs[9] else None,
        "staged": regs[10] << 16 | regs[11],
        "total": regs[12] << 16 | regs[13],
        "heap_low": regs[14] << 16 | regs[15],
    }
