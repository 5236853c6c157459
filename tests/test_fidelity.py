"""Guest-level checks of Xen 4.17 behaviours (issue 15): tiny guests of tests/guests run to their
poweroff and leave what Xen answered in a `results` array of 8-byte slots. Each guest's comment
names the Xen source that defines the expected answer."""

from __future__ import annotations

import struct

import pytest
from support.harness import run_to_guest
from support.harness64 import KERNEL_SS, Hv64

from xenwb.abi.constants import Errno
from xenwb.abi.constants import Hypercall as H
from xenwb.abi.constants import MmuextCmd as X
from xenwb.abi.structs import PV64
from xenwb.control import Controller, StopKind
from xenwb.hypervisor import traps64
from xenwb.machine import Machine, StopReason

EPERM, EFAULT, EACCES, ESRCH, ENOSYS, ENODATA = (-Errno.EPERM, -Errno.EFAULT, -Errno.EACCES, -Errno.ESRCH,
                                                  -Errno.ENOSYS, -Errno.ENODATA)


def run_guest(path, **kw) -> tuple[Machine, str]:
    """Boot a tiny guest to its poweroff; the machine and what it wrote on the console."""
    m = Machine(path, **kw)
    out: list[bytes] = []
    m.domain.console_sink = out.append
    m.set_limits(max_instructions=500_000)
    r = m.run()
    text = b"".join(out).decode("latin-1")
    assert r.reason is StopReason.shutdown and m.domain.shutdown_reason == 0, f"{r}: console {text!r}"
    return m, text


def results(m: Machine, va: int, n: int) -> list[int]:
    """n signed 64-bit slots of the guest's results array."""
    return list(struct.unpack(f"<{n}q", m.vcpus[0].read_virt(va, 8 * n)))


# ---------------------------------------------------------------- item 10: XSM's dummy policy
@pytest.mark.parametrize("name", ["privileged", "privileged64"])
def test_control_domain_interfaces_answer_as_the_dummy_xsm_policy(guests, name: str) -> None:
    g = guests[name]
    m, _ = run_guest(g.path)
    r = results(m, g.symbols["results"], 14)
    assert r[0:3] == [EPERM, EACCES, EFAULT]          # sysctl: XSM_PRIV; interface version; unreadable
    assert r[3:6] == [EPERM, ESRCH, EPERM]            # domctl on itself; on no domain; getdomaininfo of dom0
    assert r[6] == EPERM                              # platform_op
    assert r[7:10] == [EPERM, EPERM, EPERM]           # kexec_op, hypfs_op, mca: XSM before anything
    assert r[10:12] == [EPERM, ENODATA]               # dm_op on itself; without buffers
    assert r[12:14] == [ENOSYS, ENOSYS]               # xsm_op (dummy module), tmem_op (gone)


# ---------------------------------------------------------------- item 5: iret inside a multicall
@pytest.mark.parametrize("name,word", [("mc_iret", 4), ("mc_iret64", 8)])
def test_iret_entry_ends_the_multicall(guests, name: str, word: int) -> None:
    g = guests[name]
    m, text = run_guest(g.path)
    assert text == ""                                  # neither console entry ran, nor the fall-through
    restored, sp = results(m, g.symbols["results"], 2)
    assert restored & ((1 << 8 * word) - 1) == 0x1234ABCD          # the multicall returned the iret's EAX/RAX
    assert sp & ((1 << 8 * word) - 1) == g.symbols["stack_top"]      # the whole frame was consumed
    entry = 8 * word
    v = m.vcpus[0]
    calls = g.symbols["calls"]
    res = [int.from_bytes(v.read_virt(calls + i * entry + word, word), "little") for i in range(3)]
    assert res == [0x1234ABCD, 0x5555, 0x5555]          # the iret entry's result; the others untouched


# ---------------------------------------------------------------- item 11: Xen writing over guest code
@pytest.mark.parametrize("name", ["smc", "smc64"])
def test_hypervisor_write_over_code_is_executed(guests, name: str) -> None:
    g = guests[name]
    m = Machine(g.path)
    m.domain.console_io_input[:] = (b"\x31\xc0\xb0\x03\xc3\x00\x00\x00")
    m.set_limits(max_instructions=500_000)
    assert m.run().reason is StopReason.shutdown and m.domain.shutdown_reason == 0
    assert results(m, g.symbols["results"], 5) == [1, 0, 2, 8, 3]


# ---------------------------------------------------------------- item 11: GDT accessed bit and limits
def desc(base: int, limit: int, dpl: int, accessed: bool = False) -> int:
    """A present, granular, 32-bit read/write data descriptor."""
    a = ((base & 0xFFFF) << 16) | (limit & 0xFFFF)
    b = (base & 0xFF000000) | ((base >> 16) & 0xFF) | (limit & 0xF0000) | 0x00C09200 | (dpl << 13)
    return (a | (b << 32)) | ((1 << 40) if accessed else 0)


@pytest.mark.parametrize("name,dpl", [("gdt_access", 1), ("gdt_access64", 3)])
def test_gdt_accessed_bit_and_limits(guests, name: str, dpl: int) -> None:
    g = guests[name]
    m, _ = run_guest(g.path)
    set_gdt, e1, e2, e3, e4, e1_loaded, uvm = (x & (1 << 64) - 1 for x in results(m, g.symbols["results"], 7))
    assert (uvm, set_gdt) == (0, 0)
    assert e1 == desc(0, 0xFFFFF, dpl)                            # validation leaves A clear
    # compat guests: base 0 past HYPERVISOR_COMPAT_VIRT_START is extended, nothing trimmed
    assert e2 == desc(0, 0xFFFFF if dpl == 1 else 0xF67FF, dpl)
    assert e3 == desc(0, 0xF57FF, dpl)
    assert e4 == desc(0x1000, 0xFFFFF, dpl)
    assert e1_loaded == desc(0, 0xFFFFF, dpl, accessed=True)      # the CPU set it on the load


# ---------------------------------------------------------------- item 6: SYSENTER/SYSCALL from 32-bit user mode
def test_sysenter_and_syscall_from_compat_user_mode(guests) -> None:
    g = guests["sysenter"]
    m, _ = run_guest(g.path)
    v = m.vcpus[0]
    words = list(struct.unpack("<32I", v.read_virt(g.symbols["frames"], 128)))
    frames = [words[i * 8: i * 8 + 8] for i in range(4)]
    assert struct.unpack("<i", v.read_virt(g.symbols["uvm_rc"], 4))[0] == 0
    assert struct.unpack("<2i", v.read_virt(g.symbols["cb_rc"], 8)) == (0, 0)
    ucs, uds, user_esp = 0xE02B, 0xE033, g.symbols["user_stack_top"]
    gp, se, sc = 1, 2, 3
    # 0: no sysenter callback: one #GP(0), from the null frame
    kind, _, ec, eip, cs, eflags, esp, ss = frames[0]
    assert (kind, ec, eip, cs & 0xFFFF, esp, ss) == (gp, 0, 0, 3, 0, uds)
    assert eflags & 0x200                                      # IF = events were unmasked
    # 1: NT set: the sysenter callback, NT kept in the saved EFLAGS
    kind, _, eip, cs, eflags, esp, ss, _ = frames[1]
    assert (kind, eip, cs & 0xFFFF, esp, ss) == (se, 0, 3, 0, uds)
    assert eflags & 0x4000
    # 2: no syscall32 callback: #GP(0) on the syscall itself, ECX = the next EIP
    kind, ecx, ec, eip, cs, eflags, esp, ss = frames[2]
    syscall_at = g.symbols["user_syscall"] + 5
    assert (kind, ec, eip, cs & 0xFFFF, esp, ss) == (gp, 0, syscall_at, ucs, user_esp, uds)
    assert ecx == syscall_at + 2
    # 3: the syscall32 callback with events masked: the frame's CS word has the old mask 0
    kind, ecx, eip, cs, eflags, esp, ss, _ = frames[3]
    assert (kind, eip, cs, esp, ss, ecx) == (sc, syscall_at + 2, ucs, user_esp, uds, syscall_at + 2)
    assert m.domain.stats["faults"] == 2                        # exactly the two #GPs


# ---------------------------------------------------------------- item 1: debug registers and #DB
@pytest.mark.parametrize("name,word", [("dbreg", 4), ("dbreg64", 8)])
def test_debug_registers_and_debug_exceptions(guests, name: str, word: int) -> None:
    g = guests[name]
    m, _ = run_guest(g.path)
    mask = (1 << 8 * word) - 1
    r = [x & mask for x in results(m, g.symbols["results"], 19)]
    s = g.symbols
    neg = [x - (1 << 8 * word) if x >> (8 * word - 1) else x for x in r]
    assert r[0:4] == [0xFFFF0FF0, 0x400, 0xFFFF0FF0, 0x400]          # start values, hypercall and mov
    assert neg[4:6] == [EPERM, EPERM]                                  # GD; an I/O breakpoint without DE
    assert neg[6] == (0 if word == 4 else EPERM)                       # Xen's range: compat has none below 4G
    assert (neg[7], r[8]) == (0, 0x400)                                # reserved DR7 bits read as 0
    assert (r[9], r[10] & 0xF, r[11]) == (s["bp_target"], 0x1, 1)      # fault before it, B0; then it ran once
    assert (r[12], r[13] & 0xF) == (s["watch_next"], 0x2)              # trap after the store, B1
    assert (r[14], r[15] & 0x4000) == (s["step_next"], 0x4000)         # single step: BS
    assert r[16] == s["int3_next"]
    assert (r[17], r[18]) == (s["icebp_next"], 0xFFFF0FF0)             # icebp: #DB with no status


@pytest.mark.parametrize("name,word", [("dbreg", 4), ("dbreg64", 8)])
def test_guest_debug_registers_and_gdb_hardware_breakpoints_coexist(guests, name: str, word: int) -> None:
    """gdb's Z1/Z2 (the controller's hardware breakpoints and watchpoints) and the guest's own
    DR0-3 are separate: gdb stops only where it asked, the guest gets the same #DBs as alone."""
    g = guests[name]
    alone, _ = run_guest(g.path)
    m = Machine(g.path)
    m.domain.console_sink = lambda b: None
    ctl = Controller(m)
    ctl.insert_breakpoint(g.symbols["int3_next"], hardware=True)
    ctl.insert_watchpoint(g.symbols["phase"], 4, "write")
    stops = []
    for _ in range(20):
        ev = ctl.run("continue")
        if ev.kind is StopKind.exited:
            break
        stops.append((ev.kind, m.vcpus[0].cpu.pc))
    assert [k for k, _ in stops] == [StopKind.watch] * 4 + [StopKind.hwbreak, StopKind.watch]
    assert stops[4][1] == g.symbols["int3_next"]
    assert results(m, g.symbols["results"], 19) == results(alone, g.symbols["results"], 19)


def test_sysenter_from_64bit_user_mode() -> None:
    """x86_64/entry.S sysenter_entry for a 64-bit guest in user mode: to the sysenter callback
    on the kernel stack, frame RCX, R11, RIP 0, CS 3, RFLAGS (NT kept since 61d4a04349), RSP 0,
    SS FLAT_USER_SS; the handler starts at its first instruction."""
    hv = Hv64.example("pvdemo64")
    run_to_guest(hv.m)
    v = hv.v
    code, handler = hv.scratch_page(), hv.scratch_page()
    v.write_virt(code, b"\x0f\x34\x90\x90")                       # sysenter
    v.write_virt(handler, b"\x90" * 16)
    kstack = hv.scratch_page() + 0xFF0
    assert hv.call(H.stack_switch, KERNEL_SS, kstack) == 0
    user_l4 = hv.kernel_l4_copy()
    assert hv.mmuext((X.PIN_L4_TABLE, user_l4), (X.NEW_USER_BASEPTR, user_l4)) == (0, 2)
    assert hv.call(H.callback_op, 0, hv.put(bytes(PV64.callback_register(type=5, flags=0, address=handler)))) == 0
    traps64.toggle_guest_mode(v)
    cpu = v.cpu
    cpu.set_reg("rflags", 0x4202)                                  # NT, IF
    cpu.pc = code
    cpu.uc.emu_start(code, handler + 8, count=2)                    # sysenter, the handler's first nop
    assert cpu.pc == handler + 1 and v.kernel_mode and v.bounces == 1
    rcx, r11, rip, cs, rflags, rsp, ss = hv.u64s(kstack - 56, 7)
    assert (rip, cs & 0xFFFF, rsp, ss) == (0, 3, 0, 0xE02B)
    assert rflags & 0x4000
