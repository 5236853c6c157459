"""The target description gdb reads through qXfer:features:read, and the register file.

Registers follow gdb's own i386 features, in gdb's numbering (the order of the 'g'
packet):

* ``org.gnu.gdb.i386.core`` (0-31): eax ecx edx ebx esp ebp esi edi, eip, eflags,
  cs ss ds es fs gs, st0-st7 (80-bit), fctrl fstat ftag fiseg fioff foseg fooff fop;
* ``org.gnu.gdb.i386.sse`` (32-40): xmm0-xmm7, mxcsr (gdb refuses an i386 description
  without it);
* ``org.gnu.gdb.i386.linux`` (41): orig_eax. With the GNU/Linux OS ABI it is what lets
  gdb accept ``catch syscall``; the stub reports the hypercall number in it at a
  hypercall stop, -1 elsewhere;
* ``org.gnu.gdb.i386.sys`` (42-45): cr0, cr2, cr3, cr4 as the PV guest sees them
  (cr2 is the virtual CR2 Xen keeps for the guest, cr3 the machine address of the
  current top-level table). Read-only: the guest's pagetable base changes only through
  the hypervisor.

Reading every register costs one ``uc_reg_read_batch`` call into preallocated buffers
(the Python binding's batch read costs about 40 µs for 16 registers; this about 3 µs for 45).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from xenwb.hypervisor.traps import guest_regs, set_guest_regs

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

FRAMED = ("eip", "eflags", "cs", "ss", "esp")   # in the trampoline's frame during a ring transition


@dataclass(frozen=True)
class Reg:
    name: str
    size: int                 # bytes in the 'g' packet
    uc_id: int | None         # unicorn register, None for virtual ones
    gdb_type: str
    group: str | None = None
    kind: str = "int"         # int, seg, fp80, vec128, virtual, cr


def _core() -> list[Reg]:
    regs = [
        Reg("eax", 4, X.UC_X86_REG_EAX, "int32"), Reg("ecx", 4, X.UC_X86_REG_ECX, "int32"),
        Reg("edx", 4, X.UC_X86_REG_EDX, "int32"), Reg("ebx", 4, X.UC_X86_REG_EBX, "int32"),
        Reg("esp", 4, X.UC_X86_REG_ESP, "data_ptr"), Reg("ebp", 4, X.UC_X86_REG_EBP, "data_ptr"),
        Reg("esi", 4, X.UC_X86_REG_ESI, "int32"), Reg("edi", 4, X.UC_X86_REG_EDI, "int32"),
        Reg("eip", 4, X.UC_X86_REG_EIP, "code_ptr"), Reg("eflags", 4, X.UC_X86_REG_EFLAGS, "i386_eflags"),
    ]
    for name in ("cs", "ss", "ds", "es", "fs", "gs"):
        regs.append(Reg(name, 4, getattr(X, f"UC_X86_REG_{name.upper()}"), "int32", kind="seg"))
    for i in range(8):
        regs.append(Reg(f"st{i}", 10, X.UC_X86_REG_FP0 + i, "i387_ext", kind="fp80"))
    for name, uc_id in (("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW), ("ftag", X.UC_X86_REG_FPTAG),
                        ("fiseg", X.UC_X86_REG_FCS), ("fioff", X.UC_X86_REG_FIP), ("foseg", X.UC_X86_REG_FDS),
                        ("fooff", X.UC_X86_REG_FDP), ("fop", X.UC_X86_REG_FOP)):
        regs.append(Reg(name, 4, uc_id, "int", "float"))
    return regs


CORE = _core()
SSE = [Reg(f"xmm{i}", 16, X.UC_X86_REG_XMM0 + i, "vec128", kind="vec128") for i in range(8)] + \
      [Reg("mxcsr", 4, X.UC_X86_REG_MXCSR, "i386_mxcsr", "vector")]
LINUX = [Reg("orig_eax", 4, None, "int", "system", kind="virtual")]
SYS = [Reg("cr0", 4, X.UC_X86_REG_CR0, "int32", "system", kind="cr"),
       Reg("cr2", 4, None, "data_ptr", "system", kind="cr"),
       Reg("cr3", 4, X.UC_X86_REG_CR3, "int32", "system", kind="cr"),
       Reg("cr4", 4, X.UC_X86_REG_CR4, "int32", "system", kind="cr")]
REGISTERS: list[Reg] = CORE + SSE + LINUX + SYS
REGNUM = {r.name: i for i, r in enumerate(REGISTERS)}
EIP, ESP, EBP = REGNUM["eip"], REGNUM["esp"], REGNUM["ebp"]
ORIG_EAX = REGNUM["orig_eax"]
G_SIZE = sum(r.size for r in REGISTERS)

_EFLAGS_BITS = [(0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
                (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"),
                (20, "VIP"), (21, "ID")]
_MXCSR_BITS = [(0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"), (7, "IM"),
               (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ")]


def _reg_xml(r: Reg, regnum: int) -> str:
    group = f' group="{r.group}"' if r.group else ""
    return f'    <reg name="{r.name}" bitsize="{r.size * 8}" type="{r.gdb_type}" regnum="{regnum}"{group}/>\n'


def _flags_xml(ident: str, bits: list[tuple[int, str]]) -> str:
    out = f'    <flags id="{ident}" size="4">\n'
    for bit, name in bits:
        out += f'      <field name="{name}" start="{bit}" end="{bit}"/>\n'
    return out + "    </flags>\n"


def target_xml() -> str:
    """The whole description as one document (no xi:include, so one qXfer annex)."""
    n = 0
    parts = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n',
             "  <architecture>i386</architecture>\n  <osabi>GNU/Linux</osabi>\n"]
    parts.append('  <feature name="org.gnu.gdb.i386.core">\n')
    parts.append(_flags_xml("i386_eflags", _EFLAGS_BITS))
    for r in CORE:
        parts.append(_reg_xml(r, n))
        n += 1
    parts.append("  </feature>\n")
    parts.append('  <feature name="org.gnu.gdb.i386.sse">\n'
                 '    <vector id="v4f" type="ieee_single" count="4"/>\n'
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
    parts.append(_flags_xml("i386_mxcsr", _MXCSR_BITS))
    for r in SSE:
        parts.append(_reg_xml(r, n))
        n += 1
    parts.append("  </feature>\n")
    parts.append('  <feature name="org.gnu.gdb.i386.linux">\n')
    for r in LINUX:
        parts.append(_reg_xml(r, n))
        n += 1
    parts.append("  </feature>\n")
    parts.append('  <feature name="org.gnu.gdb.i386.sys">\n')
    for r in SYS:
        parts.append(_reg_xml(r, n))
        n += 1
    parts.append("  </feature>\n</target>\n")
    return "".join(parts)


TARGET_XML = target_xml().encode()


class RegisterError(Exception):
    pass


class RegisterFile:
    """Reads and writes one vcpu's registers in gdb's layout."""

    SLOT = 16

    def __init__(self) -> None:
        self._hw = [(i, r) for i, r in enumerate(REGISTERS) if r.uc_id is not None]
        n = len(self._hw)
        self._ids = (ctypes.c_int32 * n)(*[r.uc_id for _, r in self._hw])
        self._buf = ctypes.create_string_buffer(self.SLOT * n)
        base = ctypes.addressof(self._buf)
        self._ptrs = (ctypes.c_void_p * n)(*[base + self.SLOT * k for k in range(n)])
        self._n = n

    def read_all(self, vcpu: Vcpu, orig_eax: int = 0xFFFFFFFF) -> list[bytes]:
        """Every register as its raw little-endian bytes, in gdb's numbering."""
        ctypes.memset(self._buf, 0, self.SLOT * self._n)
        err = uclib.uc_reg_read_batch(vcpu.cpu.uc._uch, self._ids, self._ptrs, self._n)
        if err:
            raise RegisterError(f"uc_reg_read_batch failed ({err})")
        raw = self._buf.raw
        out: list[bytes] = [b""] * len(REGISTERS)
        for k, (i, r) in enumerate(self._hw):
            out[i] = raw[self.SLOT * k: self.SLOT * k + r.size]
        out[ORIG_EAX] = struct.pack("<I", orig_eax & 0xFFFFFFFF)
        out[REGNUM["cr2"]] = struct.pack("<I", getattr(vcpu, "cr2", 0) & 0xFFFFFFFF)
        guest, pending = guest_regs(vcpu)
        if pending:          # inside a ring transition: show the state the guest resumes with
            for name in FRAMED:
                out[REGNUM[name]] = struct.pack("<I", guest[name] & 0xFFFFFFFF)
        return out

    def write(self, vcpu: Vcpu, regnum: int, data: bytes, current: bytes | None = None) -> None:
        """Write one register from gdb's raw bytes; raises RegisterError when refused."""
        if not 0 <= regnum < len(REGISTERS):
            raise RegisterError(f"no register {regnum}")
        r = REGISTERS[regnum]
        if len(data) != r.size:
            raise RegisterError(f"{r.name} takes {r.size} bytes, got {len(data)}")
        if current is not None and data == current:
            return
        uc = vcpu.cpu.uc
        try:
            if r.kind in ("int", "seg"):
                v = int.from_bytes(data, "little")
                if r.kind == "seg":
                    if v > 0xFFFF:
                        raise RegisterError(f"{r.name}: selector {v:#x} out of range")
                    if r.name in ("cs", "ss"):
                        raise RegisterError(f"{r.name} cannot be changed by the debugger (privilege level)")
                if r.name in FRAMED:
                    set_guest_regs(vcpu, **{r.name: v})
                else:
                    uc.reg_write(r.uc_id, v)
            elif r.kind == "fp80":
                uc.reg_write(r.uc_id, (int.from_bytes(data[:8], "little"), int.from_bytes(data[8:10], "little")))
            elif r.kind == "vec128":
                uc.reg_write(r.uc_id, int.from_bytes(data, "little"))
            elif r.kind == "virtual":
                return                      # orig_eax: informational
            else:
                raise RegisterError(f"{r.name} is read-only here (the hypervisor owns it)")
        except RegisterError:
            raise
        except Exception as e:              # unicorn refuses, e.g. a selector it cannot load
            raise RegisterError(f"{r.name}: {e}") from None
