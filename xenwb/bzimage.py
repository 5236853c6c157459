"""Packed kernels: a gzip'ed kernel file and the Linux bzImage, unpacked to the ELF inside, as Xen's toolstack does.

Sources: tools/libs/guest/xg_dom_core.c (a gzip'ed kernel file is inflated before any loader looks at it),
tools/libs/guest/xg_dom_bzimageloader.c and xg_dom_decompress_lz4.c (the bzImage loader: the setup header, the
payload, its compressor told by magic), Linux Documentation/arch/x86/boot.rst (boot protocol 2.08+),
Linux lib/decompress_unlz4.c and lib/decompress_unlzo.c (the LZ4 legacy and lzop containers the kernel's own
boot stub reads), Linux scripts/Makefile.lib (every compressor but gzip appends the decompressed size, le32).

Every failure is a one-line GuestImageError; the decompressed size is capped (MAX_UNPACKED) whatever the
payload claims, so a decompression bomb costs at most that much memory.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass

from xenwb.errors import GuestImageError

MAX_UNPACKED = 512 << 20           # no real kernel comes near: Debian's 6.1 vmlinux is 66 MB
SETUP_HEADER_END = 0x250           # sizeof(struct setup_header) in xg_dom_bzimageloader.c
HDRS_OFFSET = 0x202
MIN_PROTOCOL = 0x208               # payload_offset/payload_length exist from boot protocol 2.08 on

# Payload magics, in the order xg_dom_bzimageloader.c tries them.
COMPRESSOR_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x5d\x00", "lzma"),
    (b"\x89LZO\x00", "lzo"),
    (b"\x02\x21", "lz4"),
)
GZIP_MAGIC = b"\x1f\x8b"
LZMA_MEMLIMIT = 128 << 20          # xg_dom_bzimageloader.c LZMA_BLOCK_SIZE, the decoder's memory limit
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20         # every block but the last decompresses to exactly this (lz4 -l)
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
LZOP_MAX_BLOCK = 256 << 10         # lib/decompress_unlzo.c LZO_BLOCK_SIZE
LZOP_HAS_FILTER = 0x800
ZSTD_INPUT_STEP = 1024             # input fed per step: a zstd byte expands to at most 32 KiB


@dataclass(frozen=True)
class Packing:
    """One layer unpacked on the way to the ELF: a gzip'ed file or a bzImage payload."""

    container: str                 # "gzip file" or "bzImage"
    compressor: str                # gzip, bzip2, xz, lzma, lzo, lz4, zstd
    offset: int                    # where the compressed data starts in that layer
    compressed_size: int
    size: int                      # bytes after decompression
    protocol: int | None = None    # boot protocol version (bzImage only), e.g. 0x20f

    def describe(self) -> str:
        what = self.container
        if self.protocol is not None:
            what += f" (boot protocol {self.protocol >> 8}.{self.protocol & 0xFF:02d})"
        return (f"{what}, {self.compressor} at {self.offset:#x}: "
                f"{self.compressed_size:,} -> {self.size:,} bytes")


@dataclass(frozen=True)
class SetupHeader:
    """The fields of a bzImage's setup header the toolstack reads."""

    protocol: int
    setup_sects: int               # as stored; 0 means 4 (boot protocol)
    payload_start: int             # file offset: (setup sectors + 1) * 512 + payload_offset
    payload_length: int


def is_bzimage(blob: bytes) -> bool:
    return blob[HDRS_OFFSET:HDRS_OFFSET + 4] == b"HdrS"


def parse_setup_header(blob: bytes) -> SetupHeader:
    """The payload's place and size (xc_dom_probe_bzimage_kernel); refuses what that function refuses."""
    if len(blob) < SETUP_HEADER_END:
        raise GuestImageError(f"truncated bzImage: {len(blob)} bytes, the setup header needs {SETUP_HEADER_END}")
    protocol = struct.unpack_from("<H", blob, 0x206)[0]
    if protocol < MIN_PROTOCOL:
        raise GuestImageError(f"bzImage boot protocol {protocol >> 8}.{protocol & 0xFF:02d} is too old "
                              "(2.08 or later has the payload fields)")
    setup_sects = blob[0x1F1]
    payload_offset, payload_length = struct.unpack_from("<II", blob, 0x248)
    # Boot protocol: setup_sects 0 means 4. Xen's loader multiplies the raw byte; no 2.08+ kernel stores 0.
    start = ((setup_sects or 4) + 1) * 512 + payload_offset
    if start >= len(blob):
        raise GuestImageError(f"bzImage payload offset {start:#x} is past the end of the file ({len(blob):#x} bytes)")
    if start + payload_length > len(blob):
        raise GuestImageError(f"truncated bzImage: the payload ({payload_length:,} bytes at {start:#x}) "
                              f"runs past the end of the file ({len(blob):,} bytes)")
    return SetupHeader(protocol, setup_sects, start, payload_length)


def compressor_of(payload: bytes) -> str:
    for magic, name in COMPRESSOR_MAGICS:
        if payload.startswith(magic):
            return name
    raise GuestImageError(f"bzImage payload in an unknown compression format (starts {payload[:6].hex(' ')})")


def unpack_kernel(blob: bytes, limit: int = MAX_UNPACKED) -> tuple[bytes, list[Packing]]:
    """The kernel ELF inside blob, and the layers unpacked to reach it (none for a plain ELF).

    A gzip'ed file is inflated first, as xc_dom_kernel_file does for any kernel; then a bzImage
    gives its payload. Whatever is left is for the ELF loader to judge."""
    layers: list[Packing] = []
    if blob.startswith(GZIP_MAGIC):
        out = decompress("gzip", blob, limit)
        layers.append(Packing("gzip file", "gzip", 0, len(blob), len(out)))
        blob = out
    if is_bzimage(blob):
        hdr = parse_setup_header(blob)
        payload = blob[hdr.payload_start: hdr.payload_start + hdr.payload_length]
        compressor = compressor_of(payload)
        out = decompress(compressor, payload, limit)
        layers.append(Packing("bzImage", compressor, hdr.payload_start, len(payload), len(out), hdr.protocol))
        blob = out
    return blob, layers


def decompress(compressor: str, data: bytes, limit: int = MAX_UNPACKED) -> bytes:
    """Decompress a kernel payload, at most limit bytes of output.

    Every format but gzip ends with the decompressed size (le32, Linux's size_append): it is not part
    of the stream, and the output must match it, as the toolstack checks."""
    if compressor == "gzip":
        return _gunzip(data, limit)
    if len(data) <= 8:
        raise GuestImageError(f"{compressor} payload too short ({len(data)} bytes)")
    stream, declared = data[:-4], struct.unpack_from("<I", data, len(data) - 4)[0]
    if declared > limit:
        raise GuestImageError(f"{compressor} payload declares {declared:,} bytes, more than the "
                              f"{limit:,} a kernel may unpack to")
    out = _DECODERS[compressor](stream, limit)
    if len(out) != declared:
        raise GuestImageError(f"{compressor} payload decompresses to {len(out):,} bytes but its size trailer "
                              f"says {declared:,}")
    return out


def _too_big(compressor: str, limit: int) -> GuestImageError:
    return GuestImageError(f"{compressor} data decompresses to more than {limit:,} bytes (a decompression bomb?)")


def _truncated(compressor: str) -> GuestImageError:
    return GuestImageError(f"{compressor} data is truncated: the stream ends before its end marker")


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise GuestImageError(f"corrupt gzip data ({e})") from None
    if len(out) > limit:
        raise _too_big("gzip", limit)
    if not d.eof:
        raise _truncated("gzip")
    return out


def _bunzip2(stream: bytes, limit: int) -> bytes:
    d = bz2.BZ2Decompressor()
    try:
        out = d.decompress(stream, limit + 1)
    except OSError as e:
        raise GuestImageError(f"corrupt bzip2 data ({e})") from None
    if len(out) > limit:
        raise _too_big("bzip2", limit)
    if not d.eof:
        raise _truncated("bzip2")
    return out


def _unlzma(stream: bytes, limit: int, fmt: int, name: str) -> bytes:
    d = lzma.LZMADecompressor(format=fmt, memlimit=LZMA_MEMLIMIT)
    try:
        out = d.decompress(stream, limit + 1)
    except lzma.LZMAError as e:
        raise GuestImageError(f"corrupt {name} data ({e})") from None
    if len(out) > limit:
        raise _too_big(name, limit)
    if not d.eof:
        raise _truncated(name)
    return out


def _unzstd(stream: bytes, limit: int) -> bytes:
    import zstandard

    d = zstandard.ZstdDecompressor().decompressobj()
    parts, size = [], 0
    try:
        for pos in range(0, len(stream), ZSTD_INPUT_STEP):
            piece = d.decompress(stream[pos: pos + ZSTD_INPUT_STEP])
            size += len(piece)
            if size > limit:
                raise _too_big("zstd", limit)
            parts.append(piece)
            if d.eof:
                break
    except zstandard.ZstdError as e:
        raise GuestImageError(f"corrupt zstd data ({e})") from None
    if not d.eof:
        raise _truncated("zstd")
    return b"".join(parts)


def _unlz4_legacy(stream: bytes, limit: int) -> bytes:
    """The LZ4 legacy container (`lz4 -l`): the magic, then blocks, each a le32 compressed size and an
    LZ4 block of at most 8 MiB; the magic may recur between concatenated streams (unlz4)."""
    import lz4.block

    if len(stream) < 4 or struct.unpack_from("<I", stream)[0] != LZ4_LEGACY_MAGIC:
        raise GuestImageError("lz4 data is not in the legacy format (no 0x184c2102 magic)")
    parts, size, pos = [], 0, 4
    while pos < len(stream):
        if len(stream) - pos < 4:
            raise _truncated("lz4")
        chunk = struct.unpack_from("<I", stream, pos)[0]
        pos += 4
        if chunk == LZ4_LEGACY_MAGIC:
            continue
        if chunk > len(stream) - pos:
            raise GuestImageError(f"lz4 data is truncated: a {chunk:,}-byte block at {pos - 4:#x} runs past the end")
        try:
            piece = lz4.block.decompress(stream[pos: pos + chunk], uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError:
            raise GuestImageError(f"corrupt lz4 block at {pos - 4:#x}") from None
        size += len(piece)
        if size > limit:
            raise _too_big("lz4", limit)
        parts.append(piece)
        pos += chunk
    if not parts:
        raise _truncated("lz4")
    return b"".join(parts)


def _lzop_data_start(stream: bytes) -> int:
    """Offset of the first block after an lzop header (lib/decompress_unlzo.c parse_header)."""
    if len(stream) < 9 + 7 + 4 + 8 + 1 + 4 or not stream.startswith(LZOP_MAGIC):
        raise GuestImageError("lzo data has no valid lzop header")
    version = struct.unpack_from(">H", stream, 9)[0]
    pos = 9 + 7                                    # version, library version, version needed, method
    if version >= 0x0940:
        pos += 1                                   # level
    flags = struct.unpack_from(">I", stream, pos)[0]
    pos += 8 if flags & LZOP_HAS_FILTER else 4
    pos += 8 + (4 if version >= 0x0940 else 0)     # mode, mtime (low, high)
    if pos >= len(stream):
        raise GuestImageError("lzo data has a truncated lzop header")
    pos += 1 + stream[pos] + 4                     # file name, header checksum
    if pos > len(stream):
        raise GuestImageError("lzo data has a truncated lzop header")
    return pos


def _unlzo(stream: bytes, limit: int) -> bytes:
    """lzop blocks: be32 decompressed size (0 ends), be32 compressed size, one 4-byte checksum, data;
    a block no smaller than its output is stored as is (unlzo)."""
    from lzallright import LZOCompressor, LZOError

    pos = _lzop_data_start(stream)
    parts, size = [], 0
    while True:
        if len(stream) - pos < 4:
            raise _truncated("lzo")
        dst_len = struct.unpack_from(">I", stream, pos)[0]
        if dst_len == 0:
            return b"".join(parts)
        if dst_len > LZOP_MAX_BLOCK:
            raise GuestImageError(f"lzo block at {pos:#x} claims {dst_len:,} bytes, more than lzop's "
                                  f"{LZOP_MAX_BLOCK:,}-byte blocks")
        if len(stream) - pos < 12:
            raise _truncated("lzo")
        src_len = struct.unpack_from(">I", stream, pos + 4)[0]
        block_at, pos = pos, pos + 12
        if not 0 < src_len <= dst_len:
            raise GuestImageError(f"corrupt lzo block at {block_at:#x}: {src_len} compressed bytes for {dst_len}")
        if src_len > len(stream) - pos:
            raise GuestImageError(f"lzo data is truncated: the block at {block_at:#x} runs past the end")
        block = stream[pos: pos + src_len]
        if src_len == dst_len:
            piece = block
        else:
            try:
                piece = LZOCompressor.decompress(block, output_size_hint=dst_len)
            except LZOError:
                raise GuestImageError(f"corrupt lzo block at {block_at:#x}") from None
            if len(piece) != dst_len:
                raise GuestImageError(f"corrupt lzo block at {block_at:#x}: {len(piece)} bytes out, "
                                      f"{dst_len} announced")
        size += dst_len
        if size > limit:
            raise _too_big("lzo", limit)
        parts.append(piece)
        pos += src_len


_DECODERS = {
    "bzip2": _bunzip2,
    "xz": lambda s, limit: _unlzma(s, limit, lzma.FORMAT_XZ, "xz"),
    "lzma": lambda s, limit: _unlzma(s, limit, lzma.FORMAT_ALONE, "lzma"),
    "zstd": _unzstd,
    "lz4": _unlz4_legacy,
    "lzo": _unlzo,
}
