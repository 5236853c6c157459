"""The debugger on the 64-bit machine, end to end with real gdb 13 (pygdbmi) on pvdemo64:

* the amd64 target description: the general registers, fs_base, gs_base, k_gs_base, the control
  registers and EFER read what the vcpu holds (the GS base the guest's WRMSR set, CR3 = the L4 in
  use), and register writes reach the vcpu;
* memory through the 4-level tables of the current mode: stopped in the user task (user L4),
  gdb reads the user's pages and not the kernel's; back in kernel mode, the kernel's again;
* vcpus as threads on --vcpus 2: the AP stops as thread 2 with its own RIP, RDI and GS base;
* hypercall catchpoints with the 64-bit numbering through the stub's data directory (`catch
  syscall set_segment_base`, number 25, which only 64-bit guests have), $orig_rax at the stop;
* source-level stepping: break on a C function, next, step into a callee, bt, finish;
* stepi exactness: 1000 stepi in code that already ran, and stepi from the user task's entry
  through a fault and a system call into the kernel and back, each judged by capstone (tests/oracle.py,
  64-bit) from inside the stub's process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.gdbmi import GDB, Gdb
from support.stub import InProcessStub, Judge

from gdbstub.syscalls import data_directory
from xenwb.hypervisor.paging import LONG, walk

pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian: apt-get install gdb)")

USER_CODE_VA, USER_DATA_VA = 0x400000, 0x410000      # pvdemo64's xen.h
GDB_SCRIPT = r'''
import gdb


def xenwb_steps(n):
    """n stepi, then the pc after each."""
    pcs = []
    for _ in range(n):
        gdb.execute("stepi", to_string=True)
        pcs.append(int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFFFFFFFFFF)
    print("<<<" + " ".join("%x" % p for p in pcs) + ">>>")
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gdb64") / "xenwb_test64.py"
    path.write_text(GDB_SCRIPT)
    return path


@pytest.fixture
def cleanup():
    items: list = []
    yield items
    for x in reversed(items):
        try:
            x.close()
        except Exception:
            pass


def attach(cleanup, guest: str = "pvdemo64", vcpus: int = 1, *gdb_args: str) -> tuple[InProcessStub, Gdb]:
    stub = InProcessStub(guest, vcpus)
    cleanup.append(stub)
    g = Gdb(*gdb_args)
    cleanup.append(g)
    g.run(f"file {stub.session.image.path}")
    g.run(f"target remote 127.0.0.1:{stub.server.port}")
    g.wait_stop()
    return stub, g


def sym(stub: InProcessStub, name: str) -> int:
    s = stub.session.image.lookup(name)
    assert s is not None, name
    return s.address


def val(g: Gdb, expr: str) -> int:
    return int(g.value(f"/x {expr}"), 16)


def test_amd64_registers(cleanup) -> None:
    stub, g = attach(cleanup)
    g.run("break printk")
    assert g.cont()["reason"] == "breakpoint-hit"
    v = stub.ctl.vcpu(0)
    r = stub.ctl.guest_regs(0)
    assert "i386:x86-64" in g.console("show architecture")
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r11", "r15", "rip"):
        assert val(g, f"${name}") == r[name], name
    assert val(g, "$eflags") == r["rflags"]
    assert (val(g, "$cs"), val(g, "$ss")) == (r["cs"], r["ss"]) == (0xE033, 0xE02B)
    gs = v.cpu.gs_base
    assert gs and val(g, "$gs_base") == gs == sym(stub, "vcpus")   # head.S's WRMSR
    assert val(g, "$fs_base") == v.cpu.fs_base and val(g, "$k_gs_base") == v.cpu.shadow_gs_base
    assert val(g, "$cr3") == v.active_top_mfn << 12 == v.cpu.reg("cr3")
    assert val(g, "$cr0") == v.cpu.reg("cr0") and val(g, "$cr0") & 0x80010001 == 0x80010001   # PG WP PE
    assert val(g, "$cr4") == v.cpu.reg("cr4") and val(g, "$cr4") & 0x20                      # PAE
    assert val(g, "$efer") & 0x500 == 0x500                                                  # LME LMA
    text = g.console("info registers")
    for name in ("rax", "r15", "rip", "eflags", "k_gs_base", "cr0", "cr2", "cr3", "cr4"):
        assert re.search(rf"^{name}\s+0x[0-9a-f]+", text, re.M), name
    sys = g.console("info registers fs_base gs_base")
    assert re.search(rf"^gs_base\s+{gs:#x}", sys, re.M), sys
    assert "xmm15" in g.console("info all-registers")
    monitor = g.console("monitor info registers")
    assert f"RIP={r['rip']:016x}" in monitor and f"KernelGSbase={v.cpu.shadow_gs_base:016x}" in monitor
    assert "CPL=3 kernel mode" in monitor
    # writes reach the vcpu; the control registers are the hypervisor's
    g.run("set $r12 = 0x1122334455667788")
    assert stub.ctl.guest_regs(0)["r12"] == 0x1122334455667788
    g.run("set $gs_base = 0xffffffff80001000")
    assert v.cpu.gs_base == 0xFFFF_FFFF_8000_1000
    g.run(f"set $gs_base = {gs:#x}")
    g.run("set $cr3 = 0", ok=("done", "error"))                  # refused (read-only here)
    assert v.cpu.reg("cr3") == v.active_top_mfn << 12
    assert g.cont(timeout=60)["reason"] == "breakpoint-hit"        # the guest goes on as before
    g.run("delete")
    assert g.cont(timeout=60)["reason"] == "exited-normally"
    assert re.search(rb"pvdemo64: all \d+ checks passed", bytes(stub.console))


def test_memory_through_the_l4_of_the_current_mode(cleanup) -> None:
    """Stopped at the user task's first instruction (user L4, user mode): its code and data pages
    read as the user sees them, the kernel's image does not; $cr3 is the user L4. At the kernel's
    syscall handler: the kernel image again, $cr3 the kernel L4, the GS bases swapped."""
    stub, g = attach(cleanup)
    canary = sym(stub, "data_canary")
    assert val(g, f"*(unsigned long *){canary:#x}") == 0x600DCAFE600DCAFE
    g.run(f"break *{USER_CODE_VA:#x}")
    assert g.cont()["reason"] == "breakpoint-hit"
    v = stub.ctl.vcpu(0)
    assert not v.kernel_mode and v.user_cr3_mfn
    assert val(g, "$pc") == USER_CODE_VA and val(g, "$cs") == 0x33
    assert val(g, "$cr3") == v.user_cr3_mfn << 12 != v.cr3_mfn << 12
    code = bytes(int(b, 16) for b in g.console(f"x/8xb {USER_CODE_VA:#x}").split(":")[1].split())
    dom = stub.session.machine.domain
    user_frame = walk(dom.mem, LONG, v.user_cr3_mfn, USER_CODE_VA).maddr
    assert user_frame == walk(dom.mem, LONG, v.cr3_mfn, val(g, "&user_entry")).maddr   # the RO alias
    assert code == dom.mem.read(user_frame, 8)
    m2p_va = val(g, f"*(unsigned long *){USER_DATA_VA:#x}")             # struct user_data.m2p_va
    assert m2p_va == int.from_bytes(v.debug_read(USER_DATA_VA, 8), "little") and m2p_va >> 47
    r, _ = g.run(f"x/gx {canary:#x}", ok=("error",))
    assert "Cannot access memory" in r["payload"]["msg"]
    user_gs = val(g, "$gs_base")
    assert user_gs == v.cpu.gs_base and val(g, "$k_gs_base") == sym(stub, "vcpus")
    g.run("delete")
    g.run("break do_syscall")
    stop = g.cont()
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "do_syscall"
    assert v.kernel_mode and val(g, "$cr3") == v.cr3_mfn << 12
    assert val(g, f"*(unsigned long *){canary:#x}") == 0x600DCAFE600DCAFE
    assert val(g, "$gs_base") == sym(stub, "vcpus") and val(g, "$k_gs_base") == user_gs
    g.run("delete")
    assert g.cont(timeout=60)["reason"] == "exited-normally"


def test_vcpus_are_threads(cleanup) -> None:
    stub, g = attach(cleanup, "pvdemo64", 2)
    threads = g.console("info threads")
    assert 'Thread 1 "vcpu0"' in threads and 'Thread 2 "vcpu1"' in threads and "vcpu1 down" in threads
    g.run("break secondary_start")
    stop = g.cont(timeout=60)
    assert stop["reason"] == "breakpoint-hit" and stop["thread-id"] == "2", stop
    assert stop["frame"]["func"] == "secondary_start"
    v1 = stub.ctl.vcpu(1)
    assert val(g, "$rdi") == 1 == stub.ctl.guest_regs(1)["rdi"]
    gs1 = val(g, "$gs_base")
    assert gs1 == v1.cpu.gs_base and gs1 != stub.ctl.vcpu(0).cpu.gs_base
    g.run("thread 1")
    assert val(g, "$pc") == stub.ctl.guest_regs(0)["rip"] and val(g, "$gs_base") == stub.ctl.vcpu(0).cpu.gs_base
    assert val(g, "$cr3") == stub.ctl.vcpu(0).cr3_mfn << 12
    g.run("thread 2")
    assert val(g, "$pc") == sym(stub, "secondary_start")
    g.run("delete")
    assert g.cont(timeout=60)["reason"] == "exited-normally"
    assert re.search(rb"all \d+ checks passed", bytes(stub.console))


def test_catch_syscall_with_the_64bit_numbering(cleanup) -> None:
    """`catch syscall set_segment_base` by name (hypercall 25, in the stub's amd64-linux.xml);
    entry and return stops; $orig_rax is the number, RDI/RSI the arguments."""
    stub, g = attach(cleanup, "pvdemo64", 1, "--data-directory", str(data_directory()))
    g.run("catch syscall set_segment_base")
    stop = g.cont()
    assert stop["reason"] == "syscall-entry" and stop["syscall-name"] == "set_segment_base", stop
    assert stop["syscall-number"] == "25"
    assert val(g, "$orig_rax") == 25 and val(g, "$rax") == 25
    which = val(g, "$rdi")
    assert which in (0, 1, 2, 3)
    assert "on entry to hypercall 25 (set_segment_base)" in g.console("monitor why")
    stop = g.cont()
    assert stop["reason"] == "syscall-return" and stop["syscall-name"] == "set_segment_base", stop
    assert val(g, "$rax") == 0
    g.run("delete")
    g.run("catch syscall mmuext_op")
    stop = g.cont()
    assert stop["reason"] == "syscall-entry" and stop["syscall-number"] == "26", stop
    g.run("delete")
    assert g.cont(timeout=60)["reason"] == "exited-normally"


def test_source_level_stepping(cleanup) -> None:
    """break on a C function, next, step into a callee, bt, finish, next."""
    stub, g = attach(cleanup)
    g.run("break check")
    stop = g.cont()
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "check"
    assert stop["frame"]["file"].endswith("kernel.c")
    bt = g.console("bt")
    assert re.search(r"#0 .*check", bt) and "start_kernel" in bt, bt
    line = int(stop["frame"]["line"])
    g.run("-exec-next")
    stop = g.wait_stop()
    assert stop["reason"] == "end-stepping-range" and stop["frame"]["func"] == "check", stop
    assert int(stop["frame"]["line"]) > line
    for _ in range(4):                                      # to the line calling vsnprintf
        if "vsnprintf" in g.console("list " + stop["frame"]["line"] + "," + stop["frame"]["line"]):
            break
        g.run("-exec-next")
        stop = g.wait_stop()
    g.run("-exec-step")
    stop = g.wait_stop()
    assert stop["reason"] == "end-stepping-range" and stop["frame"]["func"] == "vsnprintf", stop
    frames = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", g.console("bt"), re.M)
    assert frames[:2] == ["vsnprintf", "check"], frames
    g.run("-exec-finish")
    stop = g.wait_stop()
    assert stop["reason"] == "function-finished" and stop["frame"]["func"] == "check", stop
    assert int(stop.get("return-value", "0")) > 0                 # vsnprintf returned the length
    g.run("-exec-next")
    assert g.wait_stop()["frame"]["func"] == "check"
    g.run("delete")
    assert g.cont(timeout=60)["reason"] == "exited-normally"


def _judged_steps(stub: InProcessStub, g: Gdb, n: int) -> tuple[list[int], Judge]:
    judge = Judge(stub, stub.ctl.last_stop.vcpu)
    stub.ctl.add_listener(judge)
    try:
        text = g.python(f"xenwb_steps({n})", timeout=180)
    finally:
        stub.ctl.remove_listener(judge)
    return [int(x, 16) for x in text.split()], judge


@pytest.mark.parametrize("guest", ["pvdemo64", "pvdemo64-inline"], ids=["page", "inline"])
def test_1000_stepi_each_one_instruction_in_cached_code(cleanup, script, guest: str) -> None:
    """pvdemo64 calls the hypercall page's stubs, pvdemo64-inline issues `syscall` itself."""
    stub, g = attach(cleanup, guest)
    g.run(f"source {script}")
    g.run("break step_pagetables")          # well past the early console buffer (pvdemo64)
    assert g.cont()["reason"] == "breakpoint-hit"
    g.run("delete")
    g.run("break console_write")
    for _ in range(3):                      # console_write has run at full speed before
        assert g.cont()["reason"] == "breakpoint-hit"
    g.run("delete")
    pcs, judge = _judged_steps(stub, g, 1000)
    assert judge.errors == []
    assert len(judge.pcs) == 1000 and pcs == judge.pcs
    assert len(set(pcs)) > 30                            # real code (string formatting), not one loop
    assert any(p >> 63 for p in pcs)                     # 64-bit kernel addresses
    assert "syscall" in judge.mnemonics                  # hypercalls stepped over (console_io)
    assert g.cont(timeout=60)["reason"] == "exited-normally"
    assert re.search(rb"pvdemo64: all \d+ checks passed", bytes(stub.console))


def test_stepi_from_user_mode_through_a_fault_and_a_system_call(cleanup, script) -> None:
    """From the user task's entry: its read of the M2P faults into the kernel's #PF handler (a
    step lands there, on the kernel L4), the kernel resumes it by the iret hypercall (a step
    lands back in user code), then its `syscall` goes to the kernel's syscall callback."""
    stub, g = attach(cleanup)
    g.run(f"source {script}")
    g.run(f"break *{USER_CODE_VA:#x}")
    assert g.cont()["reason"] == "breakpoint-hit"
    g.run("delete")
    pcs, judge = _judged_steps(stub, g, 400)
    assert judge.errors == []
    assert pcs == judge.pcs
    kernel = [i for i, p in enumerate(pcs) if p >> 63]
    assert kernel and pcs[kernel[0]] == sym(stub, "page_fault")
    back = next(i for i in range(kernel[0], len(pcs)) if not pcs[i] >> 63)     # resumed in user mode
    assert pcs[back] < 1 << 47 and sym(stub, "syscall_callback") in pcs[back:]
    assert g.cont(timeout=60)["reason"] == "exited-normally"
