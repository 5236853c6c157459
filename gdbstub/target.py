"""Target descriptions (qXfer:features:read) and register files, one per guest width.

gdb numbers registers in the order of the description, which is also the order of the
``g`` packet. Both descriptions use gdb's own x86 features, so gdb knows every register:

* i386 (32-bit PV guests), 46 registers: ``org.gnu.gdb.i386.core`` (eax ecx edx ebx esp
  ebp esi edi, eip, eflags, cs ss ds es fs gs, st0-st7, fctrl fstat ftag fiseg fioff foseg
  fooff fop), ``org.gnu.gdb.i386.sse`` (xmm0-xmm7, mxcsr: gdb refuses an i386 description
  without it), ``org.gnu.gdb.i386.linux`` (orig_eax) and ``org.gnu.gdb.i386.sys`` (cr0, cr2,
  cr3, cr4).
* amd64 (64-bit PV guests), 67 registers: the core in gdb's amd64 order (rax rbx rcx rdx rsi
  rdi rbp rsp r8-r15, rip, eflags, the six selectors, the x87 registers), sse with
  xmm0-xmm15 and mxcsr, ``org.gnu.gdb.i386.linux`` (orig_rax), ``org.gnu.gdb.i386.segments``
  (fs_base, gs_base: the feature gdb's amd64 code takes them from) and
  ``org.gnu.gdb.i386.sys`` with k_gs_base and the control registers cr0 cr2 cr3 cr4 cr8 and
  efer, as QEMU's x86_64 description lists them.

With the GNU/Linux OS ABI declared, orig_eax/orig_rax is what lets gdb accept ``catch
syscall``: the stub reports the hypercall number there at a hypercall stop, -1 elsewhere.
cr2 is the virtual CR2 Xen keeps for the guest, cr3 the machine address of the current
top-level table; the control registers are read-only (the hypervisor owns them).

Reading every register is one ``uc_reg_read_batch`` into preallocated 16-byte slots
(unicorn writes 8 bytes for fioff/fooff even in 32-bit mode), then one join of slices.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

MSR_EFER, MSR_SHADOW_GS_BASE = 0xC0000080, 0xC0000102


@dataclass(frozen=True)
class Reg:
    name: str
    size: int                 # bytes in the 'g' packet
    uc_id: int | None         # unicorn register (None: virtual, or an MSR)
    gdb_type: str
    group: str | None = None
    kind: str = "int"         # int, seg, fp80, vec128, virtual (orig_eax, cr2), cr, msr
    frame: str | None = None  # name in guest_regs() when the register can sit in Xen's iret frame
    msr: int = 0


@dataclass(frozen=True)
class Feature:
    name: str
    regs: tuple[Reg, ...]
    types: str = ""           # XML type definitions the registers use


class RegisterError(Exception):
    pass


_EFLAGS_BITS = [(0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
                (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"),
                (20, "VIP"), (21, "ID")]
_MXCSR_BITS = [(0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"), (7, "IM"),
               (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ")]
_VEC128 = ('    <vector id="v4f" type="ieee_single" count="4"/>\n'
           '    <vector id="v2d" type="ieee_double" count="2"/>\n'
           '    <vector id="v16i8" type="int8" count="16"/>\n'
           '    <vector id="v8i16" type="int16" count="8"/>\n'
           '    <vector id="v4i32" type="int32" count="4"/>\n'
           '    <vector id="v2i64" type="int64" count="2"/>\n'
           '    <union id="vec128">\n'
           '      <field name="v4_float" type="v4f"/>\n'
           '      <field name="v2_double" type="v2d"/>\n'
           '      <field name="v16_int8" type="v16i8"/>\n'
           '      <field name="v8_int16" type="v8i16"/>\n'
           '      <field name="v4_int32" type="v4i32"/>\n'
           '      <field name="v2_int64" type="v2i64"/>\n'
           '      <field name="uint128" type="uint128"/>\n'
           '    </union>\n')


def _flags_xml(ident: str, bits: list[tuple[int, str]]) -> str:
    fields = "".join(f'      <field name="{name}" start="{bit}" end="{bit}"/>\n' for bit, name in bits)
    return f'    <flags id="{ident}" size="4">\n{fields}    </flags>\n'


def _x87(word: int) -> list[Reg]:
    regs = [Reg(f"st{i}", 10, X.UC_X86_REG_FP0 + i, "i387_ext", kind="fp80") for i in range(8)]
    for name, uc_id in (("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW), ("ftag", X.UC_X86_REG_FPTAG),
                        ("fiseg", X.UC_X86_REG_FCS), ("fioff", X.UC_X86_REG_FIP), ("foseg", X.UC_X86_REG_FDS),
                        ("fooff", X.UC_X86_REG_FDP), ("fop", X.UC_X86_REG_FOP)):
        regs.append(Reg(name, 4, uc_id, "int", "float"))
    return regs


def _selectors(frame: bool) -> list[Reg]:
    return [Reg(n, 4, getattr(X, f"UC_X86_REG_{n.upper()}"), "int32", kind="seg",
                frame=n if frame and n in ("cs", "ss") else None) for n in ("cs", "ss", "ds", "es", "fs", "gs")]


def _sse(count: int) -> Feature:
    regs = tuple([Reg(f"xmm{i}", 16, X.UC_X86_REG_XMM0 + i, "vec128", kind="vec128") for i in range(count)]
                 + [Reg("mxcsr", 4, X.UC_X86_REG_MXCSR, "i386_mxcsr", "vector")])
    return Feature("org.gnu.gdb.i386.sse", regs, _VEC128 + _flags_xml("i386_mxcsr", _MXCSR_BITS))


def _i386_features() -> tuple[Feature, ...]:
    gprs = [Reg(n, 4, getattr(X, f"UC_X86_REG_{n.upper()}"), t, frame=n if n == "esp" else None)
            for n, t in (("eax", "int32"), ("ecx", "int32"), ("edx", "int32"), ("ebx", "int32"), ("esp", "data_ptr"),
                         ("ebp", "data_ptr"), ("esi", "int32"), ("edi", "int32"))]
    core = gprs + [Reg("eip", 4, X.UC_X86_REG_EIP, "code_ptr", frame="eip"),
                   Reg("eflags", 4, X.UC_X86_REG_EFLAGS, "i386_eflags", frame="eflags")] + _selectors(True) + _x87(4)
    return (Feature("org.gnu.gdb.i386.core", tuple(core), _flags_xml("i386_eflags", _EFLAGS_BITS)),
            _sse(8),
            Feature("org.gnu.gdb.i386.linux", (Reg("orig_eax", 4, None, "int", "system", kind="virtual"),)),
            Feature("org.gnu.gdb.i386.sys", (
                Reg("cr0", 4, X.UC_X86_REG_CR0, "int32", "system", kind="cr"),
                Reg("cr2", 4, None, "data_ptr", "system", kind="virtual"),
                Reg("cr3", 4, X.UC_X86_REG_CR3, "int32", "system", kind="cr"),
                Reg("cr4", 4, X.UC_X86_REG_CR4, "int32", "system", kind="cr"))))


def _amd64_features() -> tuple[Feature, ...]:
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)]
    gprs = [Reg(n, 8, getattr(X, f"UC_X86_REG_{n.upper()}"), "data_ptr" if n in ("rbp", "rsp") else "int64",
                frame=n if n == "rsp" else None) for n in names]
    core = gprs + [Reg("rip", 8, X.UC_X86_REG_RIP, "code_ptr", frame="rip"),
                   Reg("eflags", 4, X.UC_X86_REG_EFLAGS, "i386_eflags", frame="rflags")] + _selectors(True) + _x87(8)
    return (Feature("org.gnu.gdb.i386.core", tuple(core), _flags_xml("i386_eflags", _EFLAGS_BITS)),
            _sse(16),
            Feature("org.gnu.gdb.i386.linux", (Reg("orig_rax", 8, None, "int", "system", kind="virtual"),)),
            Feature("org.gnu.gdb.i386.segments", (
                Reg("fs_base", 8, X.UC_X86_REG_FS_BASE, "int", "system"),
                Reg("gs_base", 8, X.UC_X86_REG_GS_BASE, "int", "system"))),
            Feature("org.gnu.gdb.i386.sys", (
                Reg("k_gs_base", 8, None, "int", "system", kind="msr", msr=MSR_SHADOW_GS_BASE),
                Reg("cr0", 8, X.UC_X86_REG_CR0, "int64", "system", kind="cr"),
                Reg("cr2", 8, None, "data_ptr", "system", kind="virtual"),
                Reg("cr3", 8, X.UC_X86_REG_CR3, "int64", "system", kind="cr"),
                Reg("cr4", 8, X.UC_X86_REG_CR4, "int64", "system", kind="cr"),
                Reg("cr8", 8, X.UC_X86_REG_CR8, "int64", "system", kind="cr"),
                Reg("efer", 8, None, "int64", "system", kind="msr", msr=MSR_EFER))))


class Arch:
    """One guest width: its registers in gdb's numbering, the 'g' layout and the description."""

    def __init__(self, name: str, word: int, features: tuple[Feature, ...], pc: str, sp: str, fp: str,
                 orig_ax: str) -> None:
        self.name = name
        self.word = word
        self.features = features
        self.registers: tuple[Reg, ...] = tuple(r for f in features for r in f.regs)
        self.regnum = {r.name: i for i, r in enumerate(self.registers)}
        self.pc, self.sp, self.fp = self.regnum[pc], self.regnum[sp], self.regnum[fp]
        self.orig_ax = self.regnum[orig_ax]
        self.cr2 = self.regnum["cr2"]
        self.offsets: tuple[int, ...] = tuple(sum(r.size for r in self.registers[:i])
                                              for i in range(len(self.registers) + 1))
        self.g_size = self.offsets[-1]
        self.addr_mask = (1 << (8 * word)) - 1
        self.xml = self._xml().encode()

    def _xml(self) -> str:
        """The whole description as one document (no xi:include: one qXfer annex)."""
        out = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n',
               f"  <architecture>{self.name}</architecture>\n  <osabi>GNU/Linux</osabi>\n"]
        n = 0
        for f in self.features:
            out.append(f'  <feature name="{f.name}">\n{f.types}')
            for r in f.regs:
                group = f' group="{r.group}"' if r.group else ""
                out.append(f'    <reg name="{r.name}" bitsize="{r.size * 8}" type="{r.gdb_type}" '
                           f'regnum="{n}"{group}/>\n')
                n += 1
            out.append("  </feature>\n")
        out.append("</target>\n")
        return "".join(out)


I386 = Arch("i386", 4, _i386_features(), "eip", "esp", "ebp", "orig_eax")
AMD64 = Arch("i386:x86-64", 8, _amd64_features(), "rip", "rsp", "rbp", "orig_rax")


def arch_for(word: int) -> Arch:
    """The description for a guest whose machine word is `word` bytes (domain.abi.abi.word)."""
    if word == 4:
        return I386
    if word == 8:
        return AMD64
    raise ValueError(f"no target description for {word}-byte guests")


class RegisterFile:
    """Reads and writes one vcpu's registers in gdb's layout for one Arch."""

    SLOT = 16

    def __init__(self, arch: Arch) -> None:
        self.arch = arch
        hw = [(i, r) for i, r in enumerate(arch.registers) if r.uc_id is not None]
        n = len(hw)
        self._n = n
        self._ids = (ctypes.c_int32 * n)(*[r.uc_id for _, r in hw])
        self._buf = ctypes.create_string_buffer(self.SLOT * n)
        base = ctypes.addressof(self._buf)
        self._ptrs = (ctypes.c_void_p * n)(*[base + self.SLOT * k for k in range(n)])
        slot = {i: k for k, (i, _) in enumerate(hw)}
        # the 'g' payload as slices of the slot buffer; None marks a register filled in afterwards
        self._spans = [(self.SLOT * slot[i], self.SLOT * slot[i] + r.size) if i in slot else None
                       for i, r in enumerate(arch.registers)]
        self._late = [i for i, r in enumerate(arch.registers) if r.uc_id is None]
        self._framed = [(i, r.frame) for i, r in enumerate(arch.registers) if r.frame]
        self._pc = arch.pc
        # the registers a stop reply carries (pc, stack, frame), in a batch of their own
        self._exp = (arch.pc, arch.sp, arch.fp)
        self._exp_ids = (ctypes.c_int32 * 3)(*[arch.registers[i].uc_id for i in self._exp])
        self._exp_buf = ctypes.create_string_buffer(self.SLOT * 3)
        eb = ctypes.addressof(self._exp_buf)
        self._exp_ptrs = (ctypes.c_void_p * 3)(*[eb + self.SLOT * k for k in range(3)])

    def read(self, vcpu: Vcpu, orig_ax: int = -1) -> bytes:
        """Every register as raw little-endian bytes, in gdb's numbering (the 'g' payload)."""
        ctypes.memset(self._buf, 0, self.SLOT * self._n)
        err = uclib.uc_reg_read_batch(vcpu.cpu.uc._uch, self._ids, self._ptrs, self._n)
        if err:
            raise RegisterError(f"uc_reg_read_batch failed ({err})")
        raw = self._buf.raw
        regs = self.arch.registers
        parts = [raw[s[0]:s[1]] if s is not None else b"" for s in self._spans]
        for i in self._late:
            r = regs[i]
            if r.kind == "msr":
                value = vcpu.cpu.uc.msr_read(r.msr)
            elif r.name.startswith("orig_"):
                value = orig_ax
            else:                                   # cr2: the virtual CR2 Xen keeps
                value = getattr(vcpu, "cr2", 0)
            parts[i] = (value & ((1 << (8 * r.size)) - 1)).to_bytes(r.size, "little")
        pc = int.from_bytes(parts[self._pc], "little")
        geo = vcpu.domain.geo
        if geo.hv_start <= pc < geo.hv_end:
            # in a ring transition (the engine sits in Xen's trampoline or stub): show the
            # state the guest resumes with, from Xen's iret frame
            guest, pending = vcpu.guest_regs()
            if pending:
                for i, name in self._framed:
                    if name in guest:
                        parts[i] = (guest[name] & ((1 << (8 * regs[i].size)) - 1)).to_bytes(regs[i].size, "little")
        return b"".join(parts)

    def expedite(self, vcpu: Vcpu) -> tuple[bytes, bytes, bytes]:
        """The pc, stack and frame pointers as raw bytes (a stop reply's registers), without
        reading the whole file."""
        ctypes.memset(self._exp_buf, 0, self.SLOT * 3)
        if uclib.uc_reg_read_batch(vcpu.cpu.uc._uch, self._exp_ids, self._exp_ptrs, 3):
            raise RegisterError("uc_reg_read_batch failed")
        raw = self._exp_buf.raw
        w = self.arch.word
        pc, sp, fp = raw[0:w], raw[self.SLOT:self.SLOT + w], raw[2 * self.SLOT:2 * self.SLOT + w]
        geo = vcpu.domain.geo
        if geo.hv_start <= int.from_bytes(pc, "little") < geo.hv_end:
            g = self.read(vcpu)                    # in a ring transition: the whole, framed view
            off = self.arch.offsets
            pc, sp, fp = (g[off[i]:off[i + 1]] for i in self._exp)
        return pc, sp, fp

    def write(self, vcpu: Vcpu, regnum: int, data: bytes, current: bytes | None = None) -> None:
        """Write one register from gdb's raw bytes; raises RegisterError when refused."""
        regs = self.arch.registers
        if not 0 <= regnum < len(regs):
            raise RegisterError(f"no register {regnum}")
        r = regs[regnum]
        if len(data) != r.size:
            raise RegisterError(f"{r.name} takes {r.size} bytes, got {len(data)}")
        if current is not None and data == current:
            return
        uc = vcpu.cpu.uc
        v = int.from_bytes(data, "little")
        try:
            if r.kind in ("int", "seg"):
                if r.kind == "seg":
                    if v > 0xFFFF:
                        raise RegisterError(f"{r.name}: selector {v:#x} out of range")
                    if r.name in ("cs", "ss"):
                        raise RegisterError(f"{r.name} cannot be changed by the debugger (privilege level)")
                if r.frame:
                    vcpu.set_guest_regs(**{r.frame: v})
                else:
                    uc.reg_write(r.uc_id, v)
            elif r.kind == "fp80":
                uc.reg_write(r.uc_id, (int.from_bytes(data[:8], "little"), int.from_bytes(data[8:10], "little")))
            elif r.kind == "vec128":
                uc.reg_write(r.uc_id, v)
            elif r.name.startswith("orig_"):
                return                      # informational
            else:
                raise RegisterError(f"{r.name} is read-only here (the hypervisor owns it)")
        except RegisterError:
            raise
        except Exception as e:              # unicorn refuses, e.g. a selector it cannot load
            raise RegisterError(f"{r.name}: {e}") from None
