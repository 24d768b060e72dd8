"""The ESP32-family ROM serial bootloader (download mode), emulated: what esptool talks to.

SLIP-framed packets (0xC0 delimited, 0xDB escapes): a request is ``00 cmd size(2) checksum(4)
data``, a reply ``01 cmd size(2) value(4) data status``. The ROM's status is four bytes
(failed, error, 0, 0); once esptool uploads its flasher stub (MEM_BEGIN/DATA/END) the
emulation answers as the stub does (two status bytes, raw MD5, erase commands, "OHAI").

Commands: SYNC, READ_REG/WRITE_REG (chip detection by the magic register or
GET_SECURITY_INFO, the eFuse MAC, the UART divider for the crystal, the SPI peripheral for
the flash id), SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE, FLASH_BEGIN/DATA/END,
FLASH_DEFL_BEGIN/DATA/END (zlib), SPI_FLASH_MD5, MEM_BEGIN/DATA/END, and the stub's
ERASE_FLASH/ERASE_REGION. Errors are the ROM's codes: 0x05 invalid message, 0x06 failed to
act, 0x07 bad checksum, 0x0B deflate error. The flash is a bytearray the caller keeps
(and saves); a reboot request calls ``on_boot``.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

SLIP_END, SLIP_ESC = 0xC0, 0xDB
INVALID_MESSAGE, FAILED_TO_ACT, BAD_CHECKSUM, DEFLATE_ERROR = 0x05, 0x06, 0x07, 0x0B
CHECKSUM_SEED = 0xEF
SECTOR = 0x1000


@dataclass(frozen=True)
class Chip:
    name: str
    image_chip_id: int
    magic: int | None  # the CHIP_DETECT_MAGIC register (chips without GET_SECURITY_INFO)
    efuse_base: int
    uart_clkdiv: int
    spi_base: int
    spi_usr2: int
    spi_w0: int


CHIPS = {
    "esp32": Chip("ESP32", 0, 0x00F01D83, 0x3FF5A000, 0x3FF40014, 0x3FF42000, 0x24, 0x80),
    "esp32c3": Chip("ESP32-C3", 5, None, 0x60008830, 0x60000014, 0x60002000, 0x20, 0x58),
    "esp32s3": Chip("ESP32-S3", 9, None, 0x60007044, 0x60000014, 0x60002000, 0x20, 0x58),
}
MAGIC_REG = 0x40001000
FLASH_IDS = {2: 0x15, 4: 0x16, 8: 0x17, 16: 0x18}  # capacity byte of a JEDEC id per MB


def slip(packet: bytes) -> bytes:
    body = packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


def checksum(data: bytes) -> int:
    c = CHECKSUM_SEED
    for b in data:
        c ^= b
    return c


class RomBootloader:
    """One chip in download mode. ``feed(bytes)`` with what the host sent; replies go to
    ``send``. ``flash`` is the SPI flash's contents (written in place)."""

    def __init__(
        self,
        chip: str,
        flash: bytearray,
        mac: bytes,
        send: Callable[[bytes], None],
        on_boot: Callable[[], None] = lambda: None,
        on_erase: Callable[[], None] = lambda: None,
    ) -> None:
        if chip not in CHIPS:
            raise ValueError(f"no ROM emulation for {chip}; known: {', '.join(CHIPS)}")
        self.chip = CHIPS[chip]
        self.flash = flash
        self.mac = mac
        self.send = send
        self.on_boot = on_boot
        self.on_erase = on_erase  # the whole chip erased: MicroPython's filesystem too
        self.stub = False
        self.baud = 115200  # the UART's rate: the emulation paces what it receives to it
        self.regs: dict[int, int] = {}
        self._frame: bytearray | None = None
        self._escaped = False
        self._write: dict[str, int] | None = None  # the transfer in progress
        self._inflate: zlib._Decompress | None = None
        self.counters = {"packets": 0, "errors": 0, "bad_checksums": 0, "bytes_written": 0}
        # test faults: {"corrupt_block": n} garbles block n on the line every time it is sent
        # ("corrupt_block_once": the first time; the checksum catches it and esptool resends);
        # {"bad_flash_block": n} stores block n with a bit flipped (MD5 catches it)
        self.faults: dict[str, int] = {}

    # ---- framing ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        for b in data:
            if b == SLIP_END:
                if self._frame:
                    self._packet(bytes(self._frame))
                self._frame = bytearray()
                self._escaped = False
            elif self._frame is None:
                continue  # noise outside a frame (a terminal, a reset glitch)
            elif self._escaped:
                self._frame.append({0xDC: SLIP_END, 0xDD: SLIP_ESC}.get(b, b))
                self._escaped = False
            elif b == SLIP_ESC:
                self._escaped = True
            else:
                self._frame.append(b)

    def _reply(self, cmd: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        status = bytes((1 if error else 0, error))
        if not self.stub:
            status += b"\x00\x00"  # the ROM's two reserved status bytes
        body = data + status
        self.send(slip(struct.pack("<BBHI", 1, cmd, len(body), value) + body))
        if error:
            self.counters["errors"] += 1

    # ---- commands ---------------------------------------------------------------------

    def _packet(self, pkt: bytes) -> None:
        if len(pkt) < 8 or pkt[0] != 0:
            return  # not a request: the ROM ignores it
        _d, cmd, size, chk = struct.unpack("<BBHI", pkt[:8])
        data = pkt[8:]
        self.counters["packets"] += 1
        if len(data) != size:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        handler = self._handlers().get(cmd)
        if handler is None or (cmd >= 0xD0 and not self.stub):
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        handler(cmd, data, chk)

    def _handlers(self) -> dict[int, Callable[[int, bytes, int], None]]:
        return {
            0x08: self._sync,
            0x0A: self._read_reg,
            0x09: self._write_reg,
            0x0B: self._ok,  # SPI_SET_PARAMS
            0x0D: self._ok,  # SPI_ATTACH
            0x0F: self._change_baud,
            0x02: self._flash_begin,
            0x03: self._flash_data,
            0x04: self._flash_end,
            0x10: self._flash_begin,
            0x11: self._flash_data,
            0x12: self._flash_end,
            0x13: self._md5,
            0x14: self._security_info,
            0x05: self._ok,  # MEM_BEGIN: RAM uploads are accepted (the stub)
            0x07: self._ok,  # MEM_DATA
            0x06: self._mem_end,
            0xD0: self._erase_flash,
            0xD1: self._erase_region,
            0xD3: self._run_user_code,
        }

    def _ok(self, cmd: int, data: bytes, chk: int) -> None:
        self._reply(cmd)

    def _change_baud(self, cmd: int, data: bytes, chk: int) -> None:
        if len(data) != 8:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        baud = struct.unpack("<I", data[:4])[0]
        if not 300 <= baud <= 5000000:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        self._reply(cmd)  # at the old rate, then the UART switches
        self.baud = baud

    def _sync(self, cmd: int, data: bytes, chk: int) -> None:
        if data != b"\x07\x07\x12\x20" + b"\x55" * 32:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        # the ROM answers a SYNC eight times with a non-zero value; the stub once with 0
        # (which is how esptool tells them apart)
        for _ in range(1 if self.stub else 8):
            self._reply(cmd, value=0 if self.stub else 0x20120707)

    def _register(self, addr: int) -> int:
        c = self.chip
        if addr == MAGIC_REG and c.magic is not None:
            return c.magic
        if addr == c.uart_clkdiv:
            return 347  # 40 MHz crystal / 115200 baud
        mac = self.mac
        # the ESP32 ROM's own crystal estimate (RTC calibration x the 8 MHz clock eFuse),
        # which esptool reads to correct the baud rate it asks for: 40 MHz exactly
        if c.name == "ESP32" and addr == 0x3FF5F06C:
            return 800 << 7
        if c.name == "ESP32" and addr == c.efuse_base + 16:
            return 128
        if c.name == "ESP32" and addr == c.efuse_base + 4:  # BLK0 word 1: MAC low
            return int.from_bytes(mac[2:6], "big")
        if c.name == "ESP32" and addr == c.efuse_base + 8:  # BLK0 word 2: MAC high
            return int.from_bytes(mac[0:2], "big")
        if c.name != "ESP32" and addr == c.efuse_base + 0x14:  # MAC_SPI_SYS_0 on C3/S3
            return int.from_bytes(mac[2:6], "big")
        if c.name != "ESP32" and addr == c.efuse_base + 0x18:  # MAC_SPI_SYS_1
            return int.from_bytes(mac[0:2], "big")
        return self.regs.get(addr, 0)

    def _read_reg(self, cmd: int, data: bytes, chk: int) -> None:
        if len(data) != 4:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        self._reply(cmd, value=self._register(struct.unpack("<I", data)[0]))

    def _write_reg(self, cmd: int, data: bytes, chk: int) -> None:
        if len(data) % 16:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        for i in range(0, len(data), 16):
            addr, value, mask, _delay = struct.unpack("<IIII", data[i : i + 16])
            old = self.regs.get(addr, 0)
            self.regs[addr] = (old & ~mask) | (value & mask)
            self._spi_command(addr)
        self._reply(cmd)

    def _spi_command(self, addr: int) -> None:
        # esptool reads the flash id by driving the SPI peripheral: a USR command (bit 18
        # of SPI_CMD) runs the opcode in USR2; the answer is read back from W0.
        c = self.chip
        if addr != c.spi_base or not self.regs.get(addr, 0) & (1 << 18):
            return
        opcode = self.regs.get(c.spi_base + c.spi_usr2, 0) & 0xFFFF
        size_mb = max(1, len(self.flash) // (1024 * 1024))
        answer = 0
        if opcode == 0x9F:  # RDID: manufacturer, memory type, capacity
            answer = FLASH_IDS.get(size_mb, 0x16) << 16 | 0x40 << 8 | 0x20
        self.regs[c.spi_base + c.spi_w0] = answer
        self.regs[addr] &= ~(1 << 18)  # done at once

    def _security_info(self, cmd: int, data: bytes, chk: int) -> None:
        if self.chip.magic is not None:  # the ESP32's ROM predates this command
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        info = struct.pack("<IB7sII", 0, 0, bytes(7), self.chip.image_chip_id, 0)
        self._reply(cmd, data=info)

    def _flash_begin(self, cmd: int, data: bytes, chk: int) -> None:
        if len(data) not in (16, 20):
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if offset + size > len(self.flash) or block_size == 0:
            self._reply(cmd, error=FAILED_TO_ACT)
            return
        compressed = cmd == 0x10
        if size:  # erased whole sectors first, as the flash must be
            end = min(len(self.flash), -(-(offset + size) // SECTOR) * SECTOR)
            start = offset - offset % SECTOR
            self.flash[start:end] = b"\xff" * (end - start)
        self._write = {
            "offset": offset,
            "size": size,
            "blocks": blocks,
            "block_size": block_size,
            "seq": 0,
            "written": 0,
            "compressed": int(compressed),
        }
        self._inflate = zlib.decompressobj() if compressed else None
        self._reply(cmd)

    def _flash_data(self, cmd: int, data: bytes, chk: int) -> None:
        w = self._write
        if w is None or len(data) < 16 or bool(w["compressed"]) != (cmd == 0x11):
            self._reply(cmd, error=FAILED_TO_ACT)
            return
        length, seq, _a, _b = struct.unpack("<IIII", data[:16])
        block = data[16:]
        if length != len(block) or seq != w["seq"]:
            # a lost or repeated block: the transfer cannot go on from here
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        if seq == self.faults.get("corrupt_block_once"):
            self.faults.pop("corrupt_block_once")
            block = bytes([block[0] ^ 0x40]) + block[1:]
        elif seq == self.faults.get("corrupt_block"):
            block = bytes([block[0] ^ 0x40]) + block[1:]
        if checksum(block) != chk & 0xFF:
            self.counters["bad_checksums"] += 1
            self._reply(cmd, error=BAD_CHECKSUM)
            return
        if self._inflate is not None:
            try:
                block = self._inflate.decompress(block)
            except zlib.error:
                self._reply(cmd, error=DEFLATE_ERROR)
                return
        start = w["offset"] + w["written"]
        if start + len(block) > len(self.flash):
            self._reply(cmd, error=FAILED_TO_ACT)
            return
        self.flash[start : start + len(block)] = block
        if self.faults.get("bad_flash_block") == seq and block:
            self.faults.pop("bad_flash_block")
            self.flash[start] ^= 0x01
        w["written"] += len(block)
        w["seq"] += 1
        self.counters["bytes_written"] += len(block)
        self._reply(cmd)

    def _flash_end(self, cmd: int, data: bytes, chk: int) -> None:
        self._write = None
        self._inflate = None
        self._reply(cmd)
        # The ROM: 1 runs the user code, 0 reboots (BOOT released: the application starts
        # too). The stub: 1 only ends the transfer, 0 goes back to the ROM's loader.
        flag = struct.unpack("<I", data[:4])[0] if len(data) >= 4 else 0
        if not self.stub:
            self.on_boot()
        elif flag == 0:
            self.stub = False

    def _md5(self, cmd: int, data: bytes, chk: int) -> None:
        if len(data) != 16:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        addr, size, _a, _b = struct.unpack("<IIII", data)
        if addr + size > len(self.flash):
            self._reply(cmd, error=FAILED_TO_ACT)
            return
        digest = hashlib.md5(self.flash[addr : addr + size]).digest()  # noqa: S324 - the ROM's
        self._reply(cmd, data=digest if self.stub else digest.hex().encode())

    def _mem_end(self, cmd: int, data: bytes, chk: int) -> None:
        self._reply(cmd)
        entry = struct.unpack("<II", data[:8])[1] if len(data) >= 8 else 0
        if entry:  # esptool's flasher stub starts and says hello
            self.stub = True
            self.send(slip(b"OHAI"))

    def _erase_flash(self, cmd: int, data: bytes, chk: int) -> None:
        self.flash[:] = b"\xff" * len(self.flash)
        self.on_erase()
        self._reply(cmd)

    def _erase_region(self, cmd: int, data: bytes, chk: int) -> None:
        if len(data) != 8:
            self._reply(cmd, error=INVALID_MESSAGE)
            return
        offset, size = struct.unpack("<II", data[:8])
        if offset % SECTOR or size % SECTOR or offset + size > len(self.flash):
            self._reply(cmd, error=FAILED_TO_ACT)
            return
        self.flash[offset : offset + size] = b"\xff" * size
        self._reply(cmd)

    def _run_user_code(self, cmd: int, data: bytes, chk: int) -> None:
        self.on_boot()


def image_problem(flash: bytes, offset: int, chip: str) -> str | None:
    """Why the image at ``offset`` would not boot on ``chip`` (as the ROM would print it),
    or None when its header is a bootable ESP image for that chip."""
    head = flash[offset : offset + 24]
    if len(head) < 24 or head[0] != 0xE9:
        word = int.from_bytes(head[:4].ljust(4, b"\xff"), "little")
        return f"invalid header: 0x{word:08x}"
    chip_id = int.from_bytes(head[12:14], "little")
    if chip_id != CHIPS[chip].image_chip_id:
        return f"image is for chip id {chip_id}, this is an {CHIPS[chip].name}"
    return None


def make_app_image(path: str, payload: bytes, chip: str = "esp32", flash_mb: int = 4) -> int:
    """Write a bootable-looking ESP application image for ``chip`` (esptool's own image
    writer) around ``payload``: what tests and benches flash in place of MicroPython.
    Its header carries the board's flash size, so esptool leaves it as it is; the size."""
    from esptool import targets
    from esptool.bin_image import ELFSection, ESP32FirmwareImage

    rom = {"esp32": targets.ESP32ROM, "esp32c3": targets.ESP32C3ROM, "esp32s3": targets.ESP32S3ROM}
    img = ESP32FirmwareImage()
    img.ROM_LOADER = rom[chip]
    img.chip_id = CHIPS[chip].image_chip_id
    img.entrypoint = 0x40080000
    img.flash_size_freq = {2: 0x10, 4: 0x20, 8: 0x30, 16: 0x40}[flash_mb]
    half = len(payload) // 2
    img.segments = [
        ELFSection(b".flash.rodata", 0x3F400020, payload[:half], 0),
        ELFSection(b".flash.text", 0x400D0020, payload[half:], 0),
    ]
    img.save(path)
    with open(path, "rb") as f:
        return len(f.read())
