"""Drive the 64-bit PV machine's hypervisor directly: ``Hv64``, the sibling of harness.Hv.

``Hv64`` wraps a built (not running, unless ``run_to_guest`` was called) machine of a 64-bit
example guest (pvdemo64 by default) and gives the hypercall, mm and trap tests what they need:

* ``call(nr, *args)`` issues one hypercall on vcpu0 as the guest's ``syscall`` would: RAX =
  nr, RDI RSI RDX R10 R8 = the arguments as 64-bit words; the result is the signed long;
* argument structures (``put``/``alloc``) and whole RW pages (``scratch_page``) in the boot
  mapping's slack after the boot stack, owned frames outside the mapping (``free_frame``);
* the 64-bit layouts of mmu_update, mmuext_op, trap_info and multicall entries (``mmu_update``,
  ``mmuext``, ``set_trap_table``, ``multicall``), update_va_mapping's (va, pte, flags);
* 4-level helpers: the walk of a VA through either L4, the machine address of the entry of any
  level that maps it, the boot tables in the builder's order (L4, L3s, L2s, L1s);
* ``new_l4``/``new_table``: fresh page-table frames with chosen entries, ready to pin;
* ``guest_frame``: (rip, cs, rflags, rsp, ss) the vcpu resumes with.
"""

from __future__ import annotations

import struct

from support.harness import DOMID_SELF, PAGE, Hv, example_machine
from xenwb.abi import constants as C
from xenwb.abi.structs import PV64
from xenwb.hypervisor.paging import LONG, Walk, walk
from xenwb.hypervisor.vcpu64 import Vcpu64
from xenwb.machine import Machine

MASK64 = (1 << 64) - 1
# PTE bits
P, RW, US, PWT, PCD, A, D, PSE, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
GUEST_KERNEL = 1 << 52             # _PAGE_GUEST_KERNEL (x86_64/page.h)
TABLE = P | RW | US | A | D        # the builder's L4/L3/L2 entries
M2P_VA = 0xFFFF800000000000
KERNEL_CS, KERNEL_SS = 0xE033, 0xE02B      # FLAT_KERNEL_CS64 / SS64 (= FLAT_USER_*64)


def s64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def l4_index(va: int) -> int:
    return (va >> 39) & 511


class Hv64(Hv):
    """A built 64-bit machine and its vcpu0, seen from the hypervisor side."""

    v: Vcpu64

    def __init__(self, m: Machine) -> None:
        super().__init__(m)
        assert self.dom.is_64 and isinstance(self.v, Vcpu64)
        assert self.mode is LONG

    @classmethod
    def example(cls, name: str = "pvdemo64", **kw) -> Hv64:
        return cls(example_machine(name, **kw))

    # -- hypercalls ------------------------------------------------------------------
    def call(self, nr: int, *args: int) -> int:
        regs = tuple(a & MASK64 for a in args) + (0,) * (5 - len(args))
        return self.dom.call(self.v, int(nr), regs, eip=0)

    # -- guest memory ----------------------------------------------------------------
    def put_u64(self, *vals: int) -> int:
        return self.put(struct.pack(f"<{len(vals)}Q", *(x & MASK64 for x in vals)))

    def u64(self, va: int) -> int:
        return struct.unpack("<Q", self.get(va, 8))[0]

    def u64s(self, va: int, n: int) -> list[int]:
        return list(struct.unpack(f"<{n}Q", self.get(va, 8 * n)))

    # -- page tables ------------------------------------------------------------------
    def walk(self, va: int, top: int | None = None) -> Walk:
        return walk(self.dom.mem, LONG, self.v.cr3_mfn if top is None else top, va)

    def entry_maddr(self, va: int, level: int, top: int | None = None) -> int:
        """Machine address of the level-`level` entry on va's walk (4 = the L4 entry)."""
        steps = [s for s in self.walk(va, top).steps if s.level == level]
        assert steps, f"the walk of {va:#x} does not reach level {level}"
        return steps[0].entry_maddr

    def table_of(self, va: int, level: int, top: int | None = None) -> int:
        """MFN of the level-`level` table on va's walk."""
        return self.entry_maddr(va, level, top) >> 12

    def boot_tables(self) -> dict[int, list[int]]:
        """The builder's tables by level: {4: [l4], 3: [...], 2: [...], 1: [...]}, in layout order."""
        t = self.layout.tables
        mfns = self.table_mfns()
        out, pos = {}, 0
        for level, n in ((4, t.l4), (3, t.l3), (2, t.l2), (1, t.l1)):
            out[level] = mfns[pos: pos + n]
            pos += n
        return out

    def entry(self, table: int, idx: int) -> int:
        return self.dom.mem.read_u64((table << 12) + 8 * idx)

    def new_table(self, entries: dict[int, int] | None = None) -> int:
        """A free owned frame holding these 8-byte entries (untyped: pin or reference it)."""
        page = bytearray(PAGE)
        for idx, pte in (entries or {}).items():
            struct.pack_into("<Q", page, 8 * idx, pte & MASK64)
        return self.free_frame(bytes(page))

    def copy_table(self, mfn: int, *, skip: range | None = None) -> bytearray:
        data = bytearray(self.dom.mem.read(mfn << 12, PAGE))
        for idx in skip or ():
            struct.pack_into("<Q", data, 8 * idx, 0)
        return data

    def kernel_l4_copy(self) -> int:
        """A new L4 frame with the guest slots of the current kernel L4 (Xen's slots blank)."""
        data = self.copy_table(self.v.cr3_mfn, skip=self.dom.geo.xen_l4_slots)
        return self.free_frame(bytes(data))

    # -- batched calls ---------------------------------------------------------------
    def mmu_update(self, *reqs: tuple[int, int], foreigndom: int = DOMID_SELF) -> tuple[int, int]:
        data = b"".join(bytes(PV64.mmu_update(ptr & MASK64, val & MASK64)) for ptr, val in reqs)
        va = self.put(data)
        done = self.put_u32(0xDEADBEEF)
        rc = self.call(C.Hypercall.mmu_update, va, len(reqs), done, foreigndom)
        return rc, self.u32(done)

    def mmuext(self, *ops: tuple[int, ...], foreigndom: int = DOMID_SELF) -> tuple[int, int]:
        data = b""
        for op in ops:
            cmd, arg1, arg2 = (tuple(op) + (0, 0))[:3]
            data += bytes(PV64.mmuext_op(cmd, arg1 & MASK64, arg2 & MASK64))
        va = self.put(data)
        done = self.put_u32(0xDEADBEEF)
        rc = self.call(C.Hypercall.mmuext_op, va, len(ops), done, foreigndom)
        return rc, self.u32(done)

    def uvm(self, va: int, pte: int, flags: int = 0) -> int:
        """update_va_mapping(va, u64 pte, flags): three registers on the 64-bit ABI."""
        return self.call(C.Hypercall.update_va_mapping, va, pte, flags)

    def set_trap_table(self, *entries: tuple[int, int, int, int]) -> int:
        """entries: (vector, flags, cs, address); a terminating zero entry is appended."""
        data = b"".join(bytes(PV64.trap_info(v, f, cs, a & MASK64)) for v, f, cs, a in entries)
        return self.call(C.Hypercall.set_trap_table, self.put(data + bytes(PV64.trap_info.size())))

    def multicall(self, *calls: tuple[int, ...]) -> tuple[int, int, list[int]]:
        """64-byte entries {u64 op, result, args[6]}; returns (rc, list VA, the results)."""
        E = PV64.multicall_entry
        data = b""
        for op, *args in calls:
            e = E()
            e.op = op
            e.result = 0xAAAAAAAAAAAAAAAA
            for i, a in enumerate(args):
                e.args[i] = a & MASK64
            data += bytes(e)
        va = self.put(data)
        rc = self.call(C.Hypercall.multicall, va, len(calls))
        results = [s64(self.u64(va + i * E.size() + E.offset("result"))) for i in range(len(calls))]
        return rc, va, results

    # -- vcpu state --------------------------------------------------------------------
    def guest_frame(self) -> tuple[int, int, int, int, int]:  # type: ignore[override]
        """(rip, cs, rflags, rsp, ss) the vcpu continues with (through the stub's frame when
        a transfer is on its way)."""
        r, _ = self.v.guest_regs()
        return r["rip"], r["cs"], r["rflags"], r["rsp"], r["ss"]


# ---------------------------------------------------------------------------- the engine's view
PROBE_READ = b"\x48\x8b\x07"         # mov (%rdi),%rax
PROBE_WRITE = b"\x48\x89\x07"        # mov %rax,(%rdi)
PROBE_FETCH = b"\xff\xe7"            # jmp *%rdi
PROBE_SYSCALL = b"\x0f\x05"          # syscall


class Access:
    """What one probe instruction did on the engine: ok (and RAX after it), or a #PF bounced
    through the trap table (the error code Xen pushed and the CR2 it recorded)."""

    def __init__(self, ok: bool, value: int = 0, error_code: int | None = None, cr2: int | None = None) -> None:
        self.ok, self.value, self.error_code, self.cr2 = ok, value, error_code, cr2

    def __repr__(self) -> str:
        return f"Access(ok={self.ok}, value={self.value:#x}, ec={self.error_code}, cr2={self.cr2})"


class Probe:
    """Runs single instructions on vcpu0's own engine (its MMU walking the live 4-level tables,
    its TLB) in the vcpu's current mode. Needs the vcpu at CPL 3 (harness.run_to_guest). A #PF
    goes through the real hook and Xen's bounce: the trap table's #PF entry points at the
    address emu_start stops at, the frame lands on a stack of the probe's own."""

    def __init__(self, hv: Hv64) -> None:
        self.hv = hv
        assert hv.v.cpu.at_cpl3, "run_to_guest first"
        self.code = hv.scratch_page()
        self.handler = self.code + 0x800
        hv.v.write_virt(self.code, PROBE_READ + b"\x90" * 13 + PROBE_WRITE + b"\x90" * 13 + PROBE_FETCH
                        + b"\x90" * 14 + PROBE_SYSCALL)
        self.stack = hv.scratch_page() + PAGE
        assert hv.set_trap_table((14, 0, KERNEL_CS, self.handler)) == 0
        assert hv.call(C.Hypercall.stack_switch, KERNEL_SS, self.stack) == 0

    def _run(self, offset: int, va: int, rax: int = 0, count: int = 1) -> Access:
        v = self.hv.v
        cpu = v.cpu
        if v.kernel_mode:
            cpu.set_reg("rsp", self.stack)
        cpu.set_reg("rdi", va)
        cpu.set_reg("rax", rax)
        cpu.pc = self.code + offset
        bounces = v.bounces
        cpu.uc.emu_start(self.code + offset, self.handler, count=count)
        if v.bounces == bounces:
            return Access(True, cpu.reg("rax"))
        assert cpu.pc == self.handler, f"bounced to {cpu.pc:#x}, not to the probe's #PF handler"
        frame = self.hv.u64s(cpu.reg("rsp"), 8)
        return Access(False, error_code=frame[2], cr2=v.cr2)

    def read(self, va: int) -> Access:
        return self._run(0, va)

    def write(self, va: int, value: int) -> Access:
        return self._run(0x10, va, value)

    def fetch(self, va: int) -> Access:
        """`jmp *%rdi`, then one instruction at va: ok when it ran (a `nop` put there through
        the walker's translation for the time of the probe; RAX = the pc after it)."""
        mem = self.hv.dom.mem
        maddr = self.hv.walk(va, self.hv.v.active_top_mfn).maddr
        saved = mem.read(maddr, 1) if maddr is not None else b""
        if maddr is not None:
            mem.write(maddr, b"\x90")
        try:
            a = self._run(0x20, va, count=2)
        finally:
            if maddr is not None:
                mem.write(maddr, saved)
        if a.ok:
            a.value = self.hv.v.cpu.pc
        return a
