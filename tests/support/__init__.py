"""Shared helpers for the xenwb tests.

* ``probe_c`` compiles a C snippet with ``gcc -m32 -ffreestanding -S`` and reads back the
  compile-time constants it emits (the kbuild "asm-offsets" trick), so struct layouts and
  macro values of the Xen public headers can be read without a 32-bit libc or running anything.
* ``build_kernel`` assembles and links a tiny Xen PV kernel (ELF32 or ELF64) with Xen ELF notes
  placed where a test wants them: in a PT_NOTE segment, in an SHT_NOTE section outside every
  segment, or as a legacy ``__xen_guest`` string.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

XEN_INCLUDE = Path("/usr/include/xen")
PAGE = 4096

# XEN_ELFNOTE_* numbers, written out here on purpose: the tests must not take them from
# xenwb.abi.elfnotes, which they check (test_abi_layouts compares that module with elfnote.h).
NOTE_ENTRY = 1
NOTE_HYPERCALL_PAGE = 2
NOTE_VIRT_BASE = 3
NOTE_PADDR_OFFSET = 4
NOTE_XEN_VERSION = 5
NOTE_GUEST_OS = 6
NOTE_GUEST_VERSION = 7
NOTE_LOADER = 8
NOTE_PAE_MODE = 9
NOTE_FEATURES = 10
NOTE_BSD_SYMTAB = 11
NOTE_HV_START_LOW = 12
NOTE_SUSPEND_CANCEL = 14
NOTE_INIT_P2M = 15
NOTE_MOD_START_PFN = 16
NOTE_SUPPORTED_FEATURES = 17


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


def run(cmd: Sequence[str | Path], cwd: Path | None = None) -> str:
    """Run a command; on failure raise AssertionError carrying its stderr."""
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr}{p.stdout}")
    return p.stdout


# ----------------------------------------------------------------------------- C probes
PROBE_PRELUDE = r"""
#define XENWB_EMIT(tag, v) \
    __asm__ volatile("\n.ascii \"@@ " tag " %c0\"" :: "i"((long long)(v)))
"""
_PROBE_LINE = re.compile(r'\.ascii\s+"@@ (.*) (-?\d+)"')


def probe_c(source: str, workdir: Path, *, flags: Iterable[str] = (), bits: int = 32) -> list[tuple[str, int]]:
    """Compile ``source`` (which uses ``XENWB_EMIT("tag words", value)`` inside a function)
    for i386 (bits=32) or x86_64 (bits=64) and return the emitted ``(tag, value)`` pairs in order.

    Values are compile-time constants; negative results of 64-bit casts are folded back to
    unsigned 64-bit numbers (every constant the tests read is unsigned)."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "probe.c"
    src.write_text(PROBE_PRELUDE + source)
    out = workdir / "probe.s"
    run(["gcc", f"-m{bits}", "-ffreestanding", "-O0", "-S", *flags, "-o", out, src])
    pairs = []
    for line in out.read_text().splitlines():
        m = _PROBE_LINE.search(line)
        if m:
            v = int(m.group(2))
            pairs.append((m.group(1), v if v >= 0 else v + (1 << 64)))
    return pairs


# ----------------------------------------------------------------------------- ELF kernels
@dataclass
class Note:
    """One ELF note. ``desc`` is raw bytes, or assembler directives (then give ``descsz``).
    ``descsz`` may also be set larger than the real descriptor to forge a note that runs
    past the end of its section/segment."""

    type: int
    desc: bytes | str = b""
    name: bytes = b"Xen"
    descsz: int | None = None


def str_note(ntype: int, text: str) -> Note:
    return Note(ntype, text.encode() + b"\0")


def num_note(ntype: int, value: int, size: int = 4) -> Note:
    return Note(ntype, value.to_bytes(size, "little"))


def sym_note(ntype: int, symbol: str, size: int = 4) -> Note:
    """A numeric note whose value the linker fills in (e.g. the hypercall page address)."""
    return Note(ntype, f".{'long' if size == 4 else 'quad'} {symbol}", descsz=size)


def _bytes_directive(data: bytes) -> str:
    return ".byte " + ", ".join(str(b) for b in data) if data else ""


def notes_asm(notes: Iterable[Note], section: str, flags: str) -> str:
    lines = [f'.pushsection {section}, "{flags}", @note', ".balign 4"]
    for n in notes:
        name = n.name + b"\0"
        if isinstance(n.desc, str):
            assert n.descsz is not None, "an assembler-expression note needs descsz"
            desc_lines, real = [n.desc], n.descsz
        else:
            desc_lines, real = [_bytes_directive(n.desc)], len(n.desc)
        descsz = real if n.descsz is None else n.descsz
        lines += [f".long {len(name)}, {descsz}, {n.type}", _bytes_directive(name), ".balign 4",
                  *desc_lines, ".balign 4"]
    lines.append(".popsection")
    return "\n".join(lines) + "\n"


KERNEL32_ASM = """
.text
.globl _start
.type _start, @function
_start:
    cld
    movl %esi, start_info_ptr
    movl $stack_top, %esp
1:  jmp 1b
.size _start, .-_start

.globl helper
.type helper, @function
helper:
    nop
    nop
    nop
    nop
    ret
.size helper, .-helper

.balign 4096
.globl hypercall_page
.type hypercall_page, @object
hypercall_page:
    .fill 4096, 1, 0xcc
.size hypercall_page, 4096

.data
.globl start_info_ptr
.type start_info_ptr, @object
start_info_ptr:
    .long 0
.size start_info_ptr, 4

.bss
.balign 16
stack:
    .skip 8192
stack_top:
"""

KERNEL64_ASM = """
.text
.globl _start
.type _start, @function
_start:
    cld
    movq %rsi, start_info_ptr(%rip)
    leaq stack_top(%rip), %rsp
1:  jmp 1b
.size _start, .-_start

.globl helper
.type helper, @function
helper:
    nop
    nop
    nop
    nop
    ret
.size helper, .-helper

.balign 4096
.globl hypercall_page
.type hypercall_page, @object
hypercall_page:
    .fill 4096, 1, 0xcc
.size hypercall_page, 4096

.data
.globl start_info_ptr
.type start_info_ptr, @object
start_info_ptr:
    .quad 0
.size start_info_ptr, 8

.bss
.balign 16
stack:
    .skip 8192
stack_top:
"""

LDSCRIPT = """
ENTRY({entry})
PHDRS {{
  text PT_LOAD FLAGS(5);
  data PT_LOAD FLAGS(6);
  {note_phdr}
}}
SECTIONS {{
  . = {vbase:#x};
  .text : AT(ADDR(.text) - {lma_delta:#x}) {{ *(.text) *(.text.*) }} :text
  {note_section}
  . = ALIGN(4096);
  .data : AT(ADDR(.data) - {lma_delta:#x}) {{ *(.data) *(.rodata) *(.rodata.*) }} :data
  .bss : AT(ADDR(.bss) - {lma_delta:#x}) {{ *(.bss) *(COMMON) }} :data
  /DISCARD/ : {{ *(.note.GNU-stack) *(.note.gnu.property) *(.comment) *(.eh_frame) }}
}}
"""


def build_kernel(
    workdir: Path,
    *,
    bits: int = 32,
    phdr_notes: Sequence[Note] = (),
    section_notes: Sequence[Note] = (),
    xen_guest: str | None = None,
    vbase: int = 0xC0000000,
    lma_delta: int = 0,
    name: str = "kernel",
    entry: str = "_start",
) -> Path:
    """Assemble and link a tiny PV kernel linked at ``vbase``; returns the ELF path.

    * ``phdr_notes`` go to an allocated ``.note.Xen`` section covered by a PT_NOTE segment;
    * ``section_notes`` go to a non-allocated ``.note.xenwb`` SHT_NOTE section that no
      segment covers;
    * ``xen_guest`` becomes a legacy ``__xen_guest`` section holding that NUL-terminated string;
    * ``lma_delta``: p_paddr = p_vaddr - lma_delta.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    asm = KERNEL32_ASM if bits == 32 else KERNEL64_ASM
    if phdr_notes:
        asm += notes_asm(phdr_notes, ".note.Xen", "a")
    if section_notes:
        asm += notes_asm(section_notes, ".note.xenwb", "")
    if xen_guest is not None:
        asm += '.pushsection __xen_guest, "", @progbits\n' + _bytes_directive(xen_guest.encode() + b"\0") + "\n"
        asm += ".popsection\n"
    src = workdir / f"{name}.s"
    obj = workdir / f"{name}.o"
    out = workdir / name
    lds = workdir / f"{name}.ld"
    src.write_text(asm)
    if phdr_notes:
        note_phdr = "note PT_NOTE FLAGS(4);"
        note_section = f".note.Xen : AT(ADDR(.note.Xen) - {lma_delta:#x}) {{ *(.note.Xen) }} :text :note"
    else:
        note_phdr = note_section = ""
    lds.write_text(LDSCRIPT.format(entry=entry, vbase=vbase, lma_delta=lma_delta,
                                   note_phdr=note_phdr, note_section=note_section))
    run(["gcc", f"-m{bits}", "-ffreestanding", "-nostdlib", "-c", "-o", obj, src])
    emul = "elf_i386" if bits == 32 else "elf_x86_64"
    run(["ld", "-m", emul, "-T", lds, "--build-id=none", "-z", "noexecstack", "-z", "max-page-size=4096",
         "--no-warn-rwx-segments", "-o", out, obj])
    return out


def readelf_segment_types(path: Path) -> list[str]:
    """Program header types as readelf prints them (LOAD, NOTE, ...)."""
    out = run(["readelf", "-lW", path])
    types = []
    in_table = False
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("Type"):
            in_table = True
            continue
        if in_table:
            if not s:
                break
            types.append(s.split()[0])
    return types


def readelf_sections(path: Path) -> dict[str, str]:
    """Section name -> type (NOTE, PROGBITS, ...), from ``readelf -SW``."""
    out = run(["readelf", "-SW", path])
    secs = {}
    for m in re.finditer(r"\[\s*\d+\]\s+(\S+)\s+(\S+)", out):
        secs[m.group(1)] = m.group(2)
    return secs


def nm_symbols(path: Path) -> dict[str, int]:
    out = run(["nm", path])
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


def elf_entry(path: Path) -> int:
    out = run(["readelf", "-hW", path])
    m = re.search(r"Entry point address:\s+(0x[0-9a-fA-F]+)", out)
    assert m, out
    return int(m.group(1), 16)


def load_extent(path: Path) -> tuple[int, int]:
    """(min p_paddr, max p_paddr + p_memsz) over PT_LOAD, from ``readelf -lW``."""
    out = run(["readelf", "-lW", path])
    lo, hi = None, None
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            paddr = int(parts[3], 16)
            memsz = int(parts[5], 16)
            lo = paddr if lo is None else min(lo, paddr)
            hi = paddr + memsz if hi is None else max(hi, paddr + memsz)
    assert lo is not None, out
    return lo, hi
