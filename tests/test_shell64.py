"""The debugger's commands and the shell on the 64-bit machine (pvdemo64): `regs`, `info registers`,
`x`, `disas`, `vcpu`, `why`, `info vcpus`, breakpoints, watchpoints and memory writes at 64-bit
kernel addresses, the user task seen from user mode, and the shell's register pane.

Values are checked against the vcpu itself (Controller.guest_regs, the engine's bases, Xen's
per-vcpu state), addresses and words at 64-bit width.
"""

from __future__ import annotations

import asyncio
import re
import struct

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs
from prompt_toolkit.formatted_text import fragment_list_to_text
from prompt_toolkit.input import create_pipe_input
from test_tui import SizedOutput, _said, _until

from xenwb.control import StopKind
from xenwb.hypervisor.memory import GuestFault
from xenwb.registry import CommandError
from xenwb.session import Session
from xenwb.tui import Shell

USER_CODE_VA, USER_DATA_VA = 0x400000, 0x410000
M2P_VA = 0xFFFF_8000_0000_0000


@pytest.fixture
def s():
    with Session("pvdemo64", vcpus=2, plugins=()) as sess:
        yield sess


def addr(s: Session, name: str) -> int:
    sym = s.image.lookup(name)
    assert sym is not None, name
    return sym.address


def run_to(s: Session, where: int, kind: StopKind = StopKind.swbreak) -> None:
    ctl = s.controller
    ctl.insert_breakpoint(where)
    ctl.resume("continue")
    ev = ctl.wait(60)
    ctl.take_stop()
    ctl.remove_breakpoint(where)
    assert ev is not None and ev.kind is kind, ev
    assert ctl.guest_regs(ev.vcpu)["pc"] == where


def text(s: Session, line: str) -> str:
    return s.command(line).text


def test_regs_and_info_registers_in_kernel_mode(s: Session) -> None:
    run_to(s, addr(s, "printk"))
    v = s.machine.vcpus[0]
    r = s.controller.guest_regs(0)
    out = text(s, "regs")
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
                 "r14", "r15", "rip", "rflags", "cs", "ss", "fs_base", "gs_base", "k_gs_base", "cr0", "cr3", "cr4"):
        assert re.search(rf"^{name}\s+{r[name]:#018x}$", out, re.M), (name, out)
    assert re.search(rf"^cr2\s+{v.cr2:#018x}$", out, re.M)
    assert f"mode      kernel (L4 mfn {v.cr3_mfn:#x})" in out
    assert r["gs_base"] == addr(s, "vcpus")                   # the entry's WRMSR(MSR_GS_BASE)
    info = text(s, "info registers")
    assert f"RAX={r['rax']:016x}" in info and f"R15={r['r15']:016x}" in info
    assert f"RIP={r['rip']:016x} RFL={r['rflags']:08x}" in info and "CPL=3 kernel mode" in info
    assert re.search(rf"^GS =0000 {r['gs_base']:016x}", info, re.M), info
    assert re.search(r"^CS =e033 .* 64-bit", info, re.M), info
    assert f"KernelGSbase={r['k_gs_base']:016x}" in info
    assert f"CR3={v.cpu.reg('cr3'):016x}" in info and f"L4 kernel mfn {v.cr3_mfn:#x} user mfn 0x0" in info
    data = s.command("info registers").data
    assert data["kernel_mode"] is True and data["regs"]["rip"] == r["rip"]


def test_info_registers_shows_the_trap_table_and_callbacks(s: Session) -> None:
    run_to(s, addr(s, "step_pagetables"))                      # after set_trap_table and the callbacks
    v = s.machine.vcpus[0]
    info = text(s, "info registers")
    pf = v.trap_ctxt[14]
    assert re.search(rf"^\s+14 #PF\s+0x[0-9a-f]+:{pf.address:#018x}", info, re.M), info
    assert f"event {v.event_eip:#x}" in info and f"syscall {v.syscall_eip:#x}" in info and v.syscall_eip


def test_x_and_disas_at_64bit_addresses(s: Session) -> None:
    run_to(s, addr(s, "printk"))
    v = s.machine.vcpus[0]
    base = addr(s, "data_canary")
    out = text(s, "x data_canary 2")
    words = [int.from_bytes(v.debug_read(base + 8 * i, 8), "little") for i in range(2)]
    assert out == f"{base:016x}: {words[0]:016x} {words[1]:016x}"
    assert words[0] == 0x600DCAFE600DCAFE
    m2p = text(s, f"x {M2P_VA:#x} 2")                            # the read-only M2P: readable
    assert m2p.startswith("ffff800000000000: ")
    assert text(s, "x 0x1000 1") == "0000000000001000: (not mapped)"
    dis = text(s, "disas printk 6").splitlines()
    assert len(dis) == 6 and dis[0].startswith(f"{addr(s, 'printk'):016x} <printk>")
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.syntax = CS_OPT_SYNTAX_ATT
    code = v.debug_read(addr(s, "printk"), 64)
    want = [f"{i.mnemonic} {i.op_str}".rstrip() for i in md.disasm(code, addr(s, "printk"))][:6]
    assert [re.split(r"\s{2,}|> ", ln, maxsplit=1)[-1].strip() for ln in dis] == want
    assert any("%rsp" in ln or "%rbp" in ln for ln in dis)
    here = text(s, "disas").splitlines()[0]
    assert here.startswith(f"{addr(s, 'printk'):016x}")


def test_vcpu_list_select_and_info_vcpus(s: Session) -> None:
    run_to(s, addr(s, "secondary_start"))
    rows = s.command("vcpu").data
    assert [r["vcpu"] for r in rows] == [0, 1]
    assert rows[1]["selected"] == "*" and rows[1]["pc"] == f"{addr(s, 'secondary_start'):#018x}"
    assert rows[1]["mode"] == "kernel" and rows[1]["symbol"] == "secondary_start"
    assert "vcpu0 selected" in text(s, "vcpu 0")
    assert s.command("vcpu").data[0]["selected"] == "*"
    with pytest.raises(CommandError, match="no vcpu 5"):
        s.command("vcpu 5")
    info = s.command("info vcpus").data
    assert info[1]["rip"] == f"{addr(s, 'secondary_start'):#018x}" and info[1]["mode"] == "kernel"
    assert "rip" in text(s, "info vcpus")


def test_why_decodes_64bit_hypercall_arguments(s: Session) -> None:
    """A hypercall catchpoint: the arguments come from RDI, RSI, RDX, R10, R8; the return value
    is the signed RAX."""
    ctl = s.controller
    s.command("catch hypercall set_segment_base")
    ctl.resume("continue")
    ev = ctl.wait(30)
    ctl.take_stop()
    assert ev.kind is StopKind.syscall_entry and ev.nr == 25
    r = ctl.guest_regs(0)
    why = s.command("why")
    assert why.data["hypercall"]["name"] == "set_segment_base"
    assert why.data["args"]["which"] in ("FS", "GS_USER", "GS_KERNEL", "GS_USER_SEL")
    assert why.data["args"]["base"] == f"{r['rsi']:#x}"
    assert why.data["rip"].startswith("0xffffffff8")
    ctl.resume("continue")
    ev = ctl.wait(30)
    ctl.take_stop()
    assert ev.kind is StopKind.syscall_return
    assert s.command("why").data["ret"] == 0
    s.command("delete all")
    s.command("catch hypercall vm_assist --failed")        # pvdemo64 asks for type 31 on purpose
    ctl.resume("continue")
    ev = ctl.wait(30)
    ctl.take_stop()
    why = s.command("why").data
    assert why["ret"] == -22 and why["errno"] == "EINVAL"


def test_user_mode_seen_from_the_commands(s: Session) -> None:
    run_to(s, USER_CODE_VA)
    v = s.machine.vcpus[0]
    assert not v.kernel_mode
    out = text(s, "regs")
    assert f"mode      user (L4 mfn {v.user_cr3_mfn:#x})" in out and re.search(r"^cs\s+0x0+33$", out, re.M)
    info = text(s, "info registers")
    assert "CPL=3 user mode" in info and f"user mfn {v.user_cr3_mfn:#x}" in info
    assert f"CR3={v.user_cr3_mfn << 12:016x}" in info
    x = text(s, f"x {USER_DATA_VA:#x} 1")
    assert x == f"{USER_DATA_VA:016x}: {int.from_bytes(v.debug_read(USER_DATA_VA, 8), 'little'):016x}"
    assert text(s, "x data_canary 1").endswith("(not mapped)")          # the user L4 maps no kernel
    assert text(s, "disas").startswith(f"{USER_CODE_VA:016x}")
    assert s.command("info vcpus").data[0]["mode"] == "user"


def test_breakpoint_on_kernel_code_set_in_user_mode(s: Session) -> None:
    """The kernel's syscall handler, translated on the kernel L4 at the task's first syscall,
    still stops when its breakpoint is set while the vcpu runs on its user L4 (the engine drops
    the translations of one address only in its current address space)."""
    handler = addr(s, "do_syscall")
    run_to(s, handler)                                   # the first syscall: the code is translated
    run_to(s, USER_CODE_VA + 0x76)                       # back in the task, after that syscall
    assert not s.machine.vcpus[0].kernel_mode
    run_to(s, handler)                                   # set in user mode: the next syscall stops
    assert s.machine.vcpus[0].kernel_mode


def test_write_and_watch_64bit_kernel_memory(s: Session) -> None:
    """Controller.write_memory into the kernel image (above HYPERVISOR_VIRT_END) and a write
    watchpoint on a kernel counter; Xen's own range stays unwritable."""
    run_to(s, addr(s, "printk"))
    ctl = s.controller
    canary = addr(s, "data_canary")
    ctl.write_memory(0, canary, struct.pack("<Q", 0x600DCAFE600DCAFE))
    assert ctl.read_memory(0, canary, 8) == struct.pack("<Q", 0x600DCAFE600DCAFE)
    with pytest.raises(GuestFault):
        ctl.write_memory(0, M2P_VA, b"\0" * 8)
    s.command("watch checks_run")
    ctl.resume("continue")
    ev = ctl.wait(60)
    ctl.take_stop()
    assert ev.kind is StopKind.watch and ev.addr == addr(s, "checks_run"), ev
    s.command("delete all")
    ctl.resume("continue")
    ev = ctl.wait(120)
    ctl.take_stop()
    assert s.machine.domain.shutdown_reason == 0, ev
    assert b"all " in s.console and b"checks passed" in s.console


def test_shell_register_pane_and_regs_on_64bit() -> None:
    async def main() -> None:
        with create_pipe_input() as inp:
            session = Session("pvdemo64", plugins=())
            shell = Shell(session, input=inp, output=SizedOutput(40, 160))
            task = asyncio.ensure_future(shell.app.run_async())
            await asyncio.sleep(0.2)

            def type_line(t: str) -> None:
                inp.send_text(t + "\r")

            try:
                target = session.image.lookup("printk").address
                type_line("break printk")
                await _until(lambda: _said(shell, "breakpoint at"))
                type_line("run")
                await _until(lambda: not shell.ctl.running and session.controller.guest_regs(0)["pc"] == target)
                _, lines = shell.panes["vcpu"].source()
                pane = [ln if isinstance(ln, str) else fragment_list_to_text(ln) for ln in lines]
                assert pane[0].startswith("vcpu0 ") and pane[0].endswith("kernel mode"), pane
                assert any(ln.startswith(f"rip {target:016x}") for ln in pane), pane
                assert any("gs_base" in ln and "k_gs_base" in ln for ln in pane)
                assert "<printk>" in pane
                type_line("regs")
                await _until(lambda: _said(shell, f"rip       {target:#018x}"))
                _, dis = shell.panes["disassembly"].source()
                assert any(fragment_list_to_text(d).startswith(f"{target:016x} <printk>") for d in dis)
            finally:
                if shell.app.is_running:
                    type_line("quit")
                await asyncio.wait_for(task, 30)
                shell.shutdown()
    asyncio.run(main())
