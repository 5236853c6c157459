"""Drive xenwb's hypervisor directly: a built (not running) PV machine plus helpers.

``Hv`` wraps a ``xenwb.machine.Machine`` built from a bundled example guest (or any guest ELF)
and offers what the hypercall, builder and trap tests need:

* ``call(nr, *args)`` issues one hypercall on vcpu0 exactly as the guest's ``int $0x82`` would
  (the five PV32 argument registers, the result as a signed int);
* ``put``/``alloc`` place argument structures in the free RW pages that follow the boot stack
  (the domain builder leaves at least 512 KiB of mapped slack there, ABI sheet section 1.3);
* ``scratch_page`` hands out whole RW-mapped pages from the same slack, ``free_frame`` an owned
  frame outside the boot mapping (untyped, unreferenced: material for new page tables);
* pagetable helpers: the L1 entry mapping a VA, its machine address, the MFN behind a VA;
* ``mmu_update``/``mmuext`` return ``(rc, done)``.

Tiny test guests (tests/guests/*.S) are built by ``build_guest``.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from unicorn import UC_HOOK_CODE

from xenwb.abi import constants as C
from xenwb.abi.structs import PV32
from xenwb.examples import resolve_guest
from xenwb.hypervisor.paging import walk
from xenwb.hypervisor.xenarea import PERDOMAIN_VA
from xenwb.machine import Machine

PAGE = 4096
GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"

# PTE bits (x86)
P, RW, US, PWT, PCD, A, D, PSE, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100

DOMID_SELF = 0x7FF0
ARG_AREA = 64 * 1024          # first 64 KiB after the stack: argument structures


def example_machine(name: str, **kw) -> Machine:
    return Machine(resolve_guest(name), **kw)


class Hv:
    """A built machine and its vcpu0, seen from the hypervisor side."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.dom = m.domain
        self.v = m.vcpus[0]
        self.layout = m.layout
        self.mode = self.dom.mode
        self.pae = self.dom.pae
        self.pte_size = self.mode.pte_size
        self._arg = self.layout.stack.end
        self._arg_end = self._arg + ARG_AREA
        self._page = self._arg_end
        self._free_pfn = self.layout.mapped_pages
        assert self._arg_end + 16 * PAGE <= self.layout.virt_end

    @classmethod
    def example(cls, name: str = "pvdemo-pae", **kw) -> Hv:
        return cls(example_machine(name, **kw))

    # -- hypercalls ------------------------------------------------------------------
    def call(self, nr: int, *args: int) -> int:
        regs = tuple(a & 0xFFFFFFFF for a in args) + (0,) * (5 - len(args))
        return self.dom.call(self.v, int(nr), regs, eip=0)

    # -- guest memory ----------------------------------------------------------------
    def alloc(self, size: int, align: int = 8) -> int:
        va = (self._arg + align - 1) & ~(align - 1)
        assert va + size <= self._arg_end, "argument area exhausted"
        self._arg = va + size
        self.v.write_virt(va, bytes(size))
        return va

    def put(self, data: bytes, align: int = 8) -> int:
        va = self.alloc(len(data), align)
        self.v.write_virt(va, bytes(data))
        return va

    def put_u32(self, *vals: int) -> int:
        return self.put(struct.pack(f"<{len(vals)}I", *(x & 0xFFFFFFFF for x in vals)))

    def get(self, va: int, n: int) -> bytes:
        return self.v.read_virt(va, n)

    def u32(self, va: int) -> int:
        return struct.unpack("<I", self.get(va, 4))[0]

    def scratch_page(self) -> int:
        """VA of a fresh page of the boot mapping (RW, owned, only mapped there)."""
        va = self._page
        assert va + PAGE <= self.layout.virt_end
        self._page += PAGE
        return va

    def free_frame(self, data: bytes = b"") -> int:
        """MFN of an owned frame outside the boot mapping, zeroed (then filled with data)."""
        pfn = self._free_pfn
        assert pfn < self.dom.nr_pages
        self._free_pfn += 1
        mfn = self.dom.physmap.mfn(pfn)
        self.dom.mem.zero_frame(mfn)
        if data:
            self.dom.mem.write(mfn << 12, data)
        return mfn

    def free_pfn_of(self, mfn: int) -> int:
        return self.dom.physmap.pfn(mfn)

    # -- page tables ----------------------------------------------------------------
    def walk(self, va: int):
        return walk(self.dom.mem, self.mode, self.v.cr3_mfn, va)

    def mfn_of(self, va: int) -> int:
        w = self.walk(va)
        assert w.mapped, f"{va:#x} is not mapped"
        return w.mfn

    def pte_maddr(self, va: int) -> int:
        """Machine address of the L1 entry that maps va."""
        w = self.walk(va)
        l1 = [s for s in w.steps if s.level == 1]
        assert l1, f"no L1 table maps {va:#x}"
        return l1[0].entry_maddr

    def read_pte(self, va: int) -> int:
        return self.read_entry(self.pte_maddr(va))

    def read_entry(self, maddr: int) -> int:
        mem = self.dom.mem
        return mem.read_u64(maddr) if self.pte_size == 8 else mem.read_u32(maddr)

    def top_mfn(self) -> int:
        return self.v.cr3_mfn

    def table_mfns(self) -> list[int]:
        """MFNs of the boot page-table frames, in layout order (top level first)."""
        pt = self.layout.pagetables
        return [self.dom.physmap.mfn(self.layout.pfn(pt.va + i * PAGE)) for i in range(pt.pages)]

    def pte(self, mfn: int, flags: int) -> int:
        return (mfn << 12) | flags

    # -- batched calls --------------------------------------------------------------------
    def mmu_update(self, *reqs: tuple[int, int], foreigndom: int = DOMID_SELF) -> tuple[int, int]:
        data = b"".join(bytes(PV32.mmu_update(ptr, val)) for ptr, val in reqs)
        va = self.put(data)
        done = self.put_u32(0xDEADBEEF)
        rc = self.call(C.Hypercall.mmu_update, va, len(reqs), done, foreigndom)
        return rc, self.u32(done)

    def mmuext(self, *ops: tuple[int, ...], foreigndom: int = DOMID_SELF) -> tuple[int, int]:
        data = b""
        for op in ops:
            cmd, arg1, arg2 = (tuple(op) + (0, 0))[:3]
            data += bytes(PV32.mmuext_op(cmd, arg1, arg2))
        va = self.put(data)
        done = self.put_u32(0xDEADBEEF)
        rc = self.call(C.Hypercall.mmuext_op, va, len(ops), done, foreigndom)
        return rc, self.u32(done)

    def uvm(self, va: int, pte: int, flags: int = 0) -> int:
        return self.call(C.Hypercall.update_va_mapping, va, pte & 0xFFFFFFFF, pte >> 32, flags)

    def set_trap_table(self, *entries: tuple[int, int, int, int]) -> int:
        """entries: (vector, flags, cs, address); a terminating zero entry is appended."""
        data = b"".join(bytes(PV32.trap_info(*e)) for e in entries) + bytes(PV32.trap_info.size())
        return self.call(C.Hypercall.set_trap_table, self.put(data))

    def multicall(self, *calls: tuple[int, ...]) -> tuple[int, int, list[int]]:
        E = PV32.multicall_entry
        data = b""
        for op, *args in calls:
            e = E()
            e.op = op
            e.result = 0xAAAAAAAA
            for i, a in enumerate(args):
                e.args[i] = a & 0xFFFFFFFF
            data += bytes(e)
        va = self.put(data)
        rc = self.call(C.Hypercall.multicall, va, len(calls))
        results = [_s32(self.u32(va + i * E.size() + E.offset("result"))) for i in range(len(calls))]
        return rc, va, results

    # -- vcpu state -----------------------------------------------------------------
    def guest_frame(self) -> tuple[int, int, int, int, int]:
        """(eip, cs, eflags, esp, ss) the vcpu continues with.

        A transfer that changes ring (or starts from ring 0: before the first run, or from a
        hook) goes through the trampoline, whose iret frame holds the target; a transfer within
        the same ring is in the registers."""
        r = self.v.cpu.regs()
        if r["cs"] & 3 == 0 or r["eip"] >= PERDOMAIN_VA:
            return struct.unpack("<5I", self.dom.mem.read(self.dom.xen.frame_maddr(self.v.id), 20))
        return r["eip"], r["cs"], r["eflags"], r["esp"], r["ss"]

    def shared_info_maddr(self) -> int:
        return self.dom.shared_info_mfn << 12


def expected_hypercall_page() -> bytes:
    """ABI sheet section 1.8 (xen/arch/x86/pv/hypercall.c, ring-1 kernel): the page is filled
    with 0xCC, then stub n at n*32 is B8 <n:le32> CD 82 C3; entry 23 (iret) is
    50 B8 17 00 00 00 CD 82."""
    page = bytearray(b"\xcc" * PAGE)
    for n in range(128):
        stub = bytes([0xB8]) + struct.pack("<I", n) + bytes([0xCD, 0x82, 0xC3])
        if n == 23:
            stub = bytes([0x50, 0xB8, 0x17, 0, 0, 0, 0xCD, 0x82])
        page[32 * n: 32 * n + len(stub)] = stub
    return bytes(page)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def run_to_guest(m: Machine) -> None:
    """Run until vcpu0 is about to execute its first guest instruction (the ELF entry).

    A code hook on the entry point asks the machine to stop (Machine.stop), so the vcpu is
    left at the entry with the registers the domain builder gave it."""
    v = m.vcpus[0]
    entry = m.image.entry
    h = v.cpu.uc.hook_add(UC_HOOK_CODE, lambda uc, addr, size, ud: m.stop(), None, entry, entry)
    try:
        m.run()
    finally:
        v.cpu.uc.hook_del(h)
    assert v.cpu.pc == entry, f"stopped at {v.cpu.pc:#x}, not at the entry {entry:#x}"


# ---------------------------------------------------------------------------- test guests
@dataclass
class BuiltGuest:
    path: Path
    symbols: dict[str, int]


LINKER_SCRIPT = """
ENTRY(_start)
SECTIONS
{
    . = 0xC0000000;
    .text : { *(.text) }
    .note.Xen : { *(.note.Xen) }
    .rodata : { *(.rodata) }
    .data : { *(.data) }
    .bss : { *(.bss) *(COMMON) }
    /DISCARD/ : { *(.note.GNU-stack) *(.note.gnu.property) *(.comment) }
}
"""


def build_guest(name: str, outdir: Path, *, defines: tuple[str, ...] = (), bits: int = 32) -> BuiltGuest:
    """Assemble tests/guests/<name>.S (gcc -m32 -c) and link it at 0xC0000000 (ld -m elf_i386);
    with bits=64 (gcc -m64, ld -m elf_x86_64, -DGUEST64) at 0xFFFFFFFF80000000.

    The small linker script keeps the allocated .note.Xen section inside the image (PT_NOTE),
    right after .text, instead of letting ld place the orphan at its default base."""
    outdir.mkdir(parents=True, exist_ok=True)
    tag = name + "".join("-" + d.replace("=", "_") for d in defines) + ("-64" if bits == 64 else "")
    obj = outdir / f"{tag}.o"
    elf = outdir / tag
    lds = outdir / f"guest{bits}.lds"
    lds.write_text(LINKER_SCRIPT.replace("0xC0000000", "0xFFFFFFFF80000000") if bits == 64 else LINKER_SCRIPT)
    src = GUESTS_DIR / f"{name}.S"
    extra = ["-DGUEST64=1"] if bits == 64 else []
    _run(["gcc", f"-m{bits}", "-c", "-nostdlib", "-ffreestanding", *[f"-D{d}" for d in defines], *extra,
          "-I", str(GUESTS_DIR), "-o", str(obj), str(src)])
    _run(["ld", "-m", "elf_x86_64" if bits == 64 else "elf_i386", "-N", "-T", str(lds), "--build-id=none",
          "-z", "noexecstack", "-o", str(elf), str(obj)])
    syms = {}
    for line in _run(["nm", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return BuiltGuest(elf, syms)


def _run(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stderr}{p.stdout}")
    return p.stdout
