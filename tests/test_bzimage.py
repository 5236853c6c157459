"""xenwb.bzimage and load_guest on bzImages: Debian's real kernels, synthetic bzImages around a small
ELF for every compressor Xen's toolstack accepts (xg_dom_bzimageloader.c), and malformed ones.

A synthetic payload is made the way Linux's scripts/Makefile.lib makes vmlinux.bin.<compressor>: the
compressed ELF, then (every compressor but gzip) its size as le32. The Python libraries make the
streams; where Debian's command-line compressor is installed, the same test runs on its output, with
the exact options of Linux's Makefile.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import lz4.block
import pytest
import zstandard
from lzallright import LZOCompressor
from support import (
    NOTE_GUEST_OS,
    NOTE_LOADER,
    NOTE_PADDR_OFFSET,
    NOTE_VIRT_BASE,
    NOTE_XEN_VERSION,
    build_kernel,
    have_tool,
    num_note,
    str_note,
)

from xenwb.bzimage import MAX_UNPACKED, decompress, parse_setup_header, unpack_kernel
from xenwb.errors import GuestImageError
from xenwb.linuxguest import FLAVOURS, fetch_linux, read_kernel_config
from xenwb.loader import load_guest

BASE64 = 0xFFFFFFFF80000000
COMPRESSORS = ("gzip", "bzip2", "xz", "lzma", "lzo", "lz4", "zstd")
STUB = 0x4000                      # bytes of "decompressor code" before the payload, as in a real bzImage


# ------------------------------------------------------------------------------ payload makers
def size_append(stream: bytes, size: int) -> bytes:
    return stream + struct.pack("<I", size & 0xFFFFFFFF)


def lz4_legacy(data: bytes, block: int = 8 << 20) -> bytes:
    """lz4 -l: the legacy magic, then le32 size + LZ4 block for each 8 MiB of input."""
    out = bytearray(struct.pack("<I", 0x184C2102))
    for pos in range(0, len(data), block):
        c = lz4.block.compress(data[pos: pos + block], mode="high_compression", store_size=False)
        out += struct.pack("<I", len(c)) + c
    return bytes(out)


def lzop(data: bytes, block: int = 256 << 10) -> bytes:
    """An lzop file as `lzop -9` writes it (version 0x1030, F_ADLER32_D: one checksum per block);
    a block that does not shrink is stored."""
    header = struct.pack(">HHHBBIIII", 0x1030, 0x2080, 0x0940, 3, 9, 0x1, 0o100644, 0, 0) + b"\0"
    out = bytearray(b"\x89LZO\x00\r\n\x1a\n" + header + struct.pack(">I", zlib.adler32(header)))
    for pos in range(0, len(data), block):
        chunk = data[pos: pos + block]
        c = LZOCompressor().compress(chunk)
        if len(c) >= len(chunk):
            c = chunk
        out += struct.pack(">III", len(chunk), len(c), zlib.adler32(chunk)) + c
    return bytes(out + b"\0\0\0\0")


def zstd_stream(data: bytes) -> bytes:
    """As `zstd -22 --ultra` from a pipe: no content size in the frame header, a checksum."""
    c = zstandard.ZstdCompressor(level=22, write_checksum=True, write_content_size=False)
    return c.compress(data)


LIBRARY: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, 9, mtime=0),
    "bzip2": lambda d: size_append(bz2.compress(d, 9), len(d)),
    "xz": lambda d: size_append(lzma.compress(d, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=[
        {"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 32 << 20}]), len(d)),
    "lzma": lambda d: size_append(lzma.compress(d, lzma.FORMAT_ALONE, preset=9), len(d)),
    "lzo": lambda d: size_append(lzop(d), len(d)),
    "lz4": lambda d: size_append(lz4_legacy(d), len(d)),
    "zstd": lambda d: size_append(zstd_stream(d), len(d)),
}

# scripts/Makefile.lib: cmd_gzip, cmd_bzip2, cmd_xzkern (scripts/xz_wrap.sh), cmd_lzma, cmd_lzo, cmd_lz4, cmd_zstd22
COMMANDS = {
    "gzip": ["gzip", "-n", "-f", "-9"],
    "bzip2": ["bzip2", "-9"],
    "xz": ["xz", "--check=crc32", "--x86", "--lzma2=,dict=32MiB"],
    "lzma": ["lzma", "-9"],
    "lzo": ["lzop", "-9"],
    "lz4": ["lz4", "-l", "-9"],
    "zstd": ["zstd", "-22", "--ultra"],
}


def by_command(compressor: str, data: bytes) -> bytes:
    out = subprocess.run(COMMANDS[compressor], input=data, capture_output=True, check=True).stdout
    return out if compressor == "gzip" else size_append(out, len(data))


def bzimage(payload: bytes, *, setup_sects: int = 27, protocol: int = 0x20F, length: int | None = None) -> bytes:
    """A bzImage: boot sector and setup (setup_sects + 1 sectors) with the setup header, then the
    protected-mode part: STUB bytes of code, the payload, a little padding."""
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    struct.pack_into("<II", setup, 0x248, STUB, len(payload) if length is None else length)
    return bytes(setup) + b"\x90" * STUB + payload + b"\0" * 64


@pytest.fixture(scope="module")
def elf64(tmp_path_factory) -> Path:
    if not (have_tool("gcc") and have_tool("ld")):
        pytest.skip("gcc/binutils not available")
    notes = [str_note(NOTE_XEN_VERSION, "xen-3.0"), str_note(NOTE_GUEST_OS, "bztest"), str_note(NOTE_LOADER, "generic"),
             num_note(NOTE_VIRT_BASE, BASE64, 8), num_note(NOTE_PADDR_OFFSET, 0, 8)]
    return build_kernel(tmp_path_factory.mktemp("bz"), bits=64, vbase=BASE64 + 0x1000000, lma_delta=BASE64,
                        phdr_notes=notes)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def refused(path: Path) -> str:
    with pytest.raises(GuestImageError) as ei:
        load_guest(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, repr(msg)
    return msg


# ------------------------------------------------------------------------------ synthetic bzImages
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_bzimage_each_compressor(tmp_path: Path, elf64: Path, compressor: str) -> None:
    elf = elf64.read_bytes()
    payload = LIBRARY[compressor](elf)
    k = write(tmp_path, f"vmlinuz-{compressor}", bzimage(payload))
    img, plain = load_guest(k), load_guest(elf64)
    (layer,) = img.packing
    assert (layer.container, layer.compressor, layer.protocol) == ("bzImage", compressor, 0x20F)
    assert layer.offset == 28 * 512 + STUB and layer.compressed_size == len(payload) and layer.size == len(elf)
    assert [(s.paddr, s.data, s.memsz) for s in img.segments] == [(s.paddr, s.data, s.memsz) for s in plain.segments]
    assert (img.entry, img.virt_base, img.guest_os, img.kernel_start) == (
        plain.entry, plain.virt_base, plain.guest_os, plain.kernel_start)
    assert img.symbols == plain.symbols and img.lookup("helper") is not None


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_bzimage_from_debian_compressor_command(tmp_path: Path, elf64: Path, compressor: str) -> None:
    if not shutil.which(COMMANDS[compressor][0]):
        pytest.skip(f"{COMMANDS[compressor][0]} is not installed")
    elf = elf64.read_bytes()
    img = load_guest(write(tmp_path, "vmlinuz", bzimage(by_command(compressor, elf))))
    assert img.packing[0].compressor == compressor and img.packing[0].size == len(elf)


def test_setup_sects_zero_means_four(tmp_path: Path, elf64: Path) -> None:
    img = load_guest(write(tmp_path, "vmlinuz", bzimage(LIBRARY["gzip"](elf64.read_bytes()), setup_sects=0)))
    assert img.packing[0].offset == 5 * 512 + STUB


def test_gzipped_elf_file(tmp_path: Path, elf64: Path) -> None:
    """The toolstack inflates a gzip'ed kernel file before looking at it (xc_dom_kernel_file)."""
    elf = elf64.read_bytes()
    img = load_guest(write(tmp_path, "kernel.gz", gzip.compress(elf)))
    assert [(p.container, p.size) for p in img.packing] == [("gzip file", len(elf))]
    assert img.guest_os == "bztest"


def test_lz4_several_blocks_and_streams() -> None:
    data = os.urandom(100_000) + bytes(20 << 20)
    one = lz4_legacy(data)
    two = lz4_legacy(data[:9 << 20]) + lz4_legacy(data[9 << 20:])     # the magic recurs mid-stream
    assert decompress("lz4", size_append(one, len(data))) == data
    assert decompress("lz4", size_append(two, len(data))) == data


def test_lzo_stored_and_compressed_blocks() -> None:
    data = os.urandom(300_000) + bytes(600_000)       # incompressible blocks are stored, then zeros
    assert decompress("lzo", size_append(lzop(data), len(data))) == data


# ------------------------------------------------------------------------------ malformed
def test_truncated_setup_header(tmp_path: Path) -> None:
    blob = bytearray(0x240)
    blob[0x202:0x206] = b"HdrS"
    assert "truncated bzImage" in refused(write(tmp_path, "k", bytes(blob)))


def test_old_boot_protocol(tmp_path: Path, elf64: Path) -> None:
    msg = refused(write(tmp_path, "k", bzimage(LIBRARY["gzip"](elf64.read_bytes()), protocol=0x207)))
    assert "boot protocol 2.07 is too old" in msg


def test_payload_past_end_of_file(tmp_path: Path, elf64: Path) -> None:
    payload = LIBRARY["xz"](elf64.read_bytes())
    assert "runs past the end" in refused(write(tmp_path, "k", bzimage(payload, length=len(payload) + 1000)))
    whole = bzimage(payload)
    assert "runs past the end" in refused(write(tmp_path, "cut", whole[: 28 * 512 + STUB + len(payload) // 2]))
    assert "past the end of the file" in refused(write(tmp_path, "stub", whole[: 28 * 512 + STUB]))


def test_unknown_payload_format(tmp_path: Path) -> None:
    assert "unknown compression format" in refused(write(tmp_path, "k", bzimage(b"\x7fELF" + bytes(100))))


def test_payload_that_is_not_an_elf(tmp_path: Path) -> None:
    msg = refused(write(tmp_path, "k", bzimage(LIBRARY["zstd"](b"#!/bin/sh\necho not a kernel\n" * 50))))
    assert "the bzImage does not hold an ELF" in msg


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_truncated_payload_stream(tmp_path: Path, elf64: Path, compressor: str) -> None:
    """The bzImage is consistent but its compressed stream stops half-way (trailer kept)."""
    elf = elf64.read_bytes()
    payload = LIBRARY[compressor](elf)
    stream = payload if compressor == "gzip" else payload[:-4]
    cut = stream[: len(stream) // 2]
    cut = cut if compressor == "gzip" else size_append(cut, len(elf))
    refused(write(tmp_path, "k", bzimage(cut)))


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_corrupt_payload_stream(tmp_path: Path, elf64: Path, compressor: str) -> None:
    payload = bytearray(LIBRARY[compressor](elf64.read_bytes()))
    for i in range(len(payload) // 3, len(payload) // 3 + 16):
        payload[i] ^= 0x5A
    refused(write(tmp_path, "k", bzimage(bytes(payload))))


@pytest.mark.parametrize("compressor", [c for c in COMPRESSORS if c != "gzip"])
def test_size_trailer_must_match(compressor: str) -> None:
    data = b"kernel" * 1000
    payload = LIBRARY[compressor](data)
    with pytest.raises(GuestImageError, match="size trailer says 6,001"):
        decompress(compressor, payload[:-4] + struct.pack("<I", len(data) + 1))


@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_decompression_bomb_capped(compressor: str) -> None:
    """The cap holds whatever the trailer says: the trailer here claims a small size."""
    zeros = bytes(3 << 20)
    payload = LIBRARY[compressor](zeros)
    if compressor != "gzip":
        payload = payload[:-4] + struct.pack("<I", 1000)
    with pytest.raises(GuestImageError, match=r"more than 2,097,152 bytes"):
        decompress(compressor, payload, limit=2 << 20)


def test_declared_size_over_the_cap_refused_before_decompressing() -> None:
    with pytest.raises(GuestImageError, match="declares 4,294,967,295 bytes"):
        decompress("xz", LIBRARY["xz"](b"x" * 100)[:-4] + b"\xff\xff\xff\xff")
    assert MAX_UNPACKED == 512 << 20


# ------------------------------------------------------------------------------ Debian's kernels
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_debian_vmlinuz(tmp_path: Path, flavour: str) -> None:
    """Debian's bzImage unpacks to the kernel ELF; readelf on that ELF agrees with the loader."""
    g = fetch_linux(flavour)
    blob = g.vmlinuz.read_bytes()
    hdr = parse_setup_header(blob)
    elf, (layer,) = unpack_kernel(blob)
    assert elf[:4] == b"\x7fELF"
    assert layer.compressor == read_kernel_config(g.config).compressor
    assert layer.size == struct.unpack_from("<I", blob, hdr.payload_start + hdr.payload_length - 4)[0]
    assert hdr.protocol >= 0x20F
    plain = write(tmp_path, "vmlinux", elf)
    readelf = subprocess.run(["readelf", "-lnW", str(plain)], capture_output=True, text=True, check=True).stdout
    img = load_guest(g.vmlinuz)
    loads = [line.split() for line in readelf.splitlines() if line.split()[:1] == ["LOAD"]]
    assert [(int(f[3], 16), int(f[5], 16)) for f in loads] == [(s.paddr, s.memsz) for s in img.segments]
    assert img.packing == [layer]
    assert img.machine == "EM_X86_64" and img.guest_os == "linux" and img.notes_source == "PT_NOTE"
    assert img.virt_base == BASE64 and img.paddr_offset == 0
    assert img.kernel_start == BASE64 + 0x1000000
    assert img.hypercall_page is None                  # Linux 6.1 issues syscall itself
    assert img.init_p2m == 0x8000000000 and img.mod_start_pfn
    assert img.kernel_start <= img.entry < img.kernel_end and img.entry_source == "ENTRY note"
