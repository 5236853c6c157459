"""Issue 10: Debian's GNU Mach for Xen (package gnumach-image-1.8-xen-486, an x86_64 PV kernel
despite its name) under `xenwb run`.

The package is fetched with ``apt-get download`` into $XENWB_CACHE/linux the first time
(xenwb/linuxguest.py fetch_package_file; scripts/bootstrap does it for CI).

What Xen 4.17 does with this kernel, and so what xenwb must do:

1. GNU Mach builds its kernel map (pmap_bootstrap), extends the bootstrap map with four L1s it
   pins, makes its new L2/L3/L4 pages read-only, switches to them (MMUEXT_NEW_BASEPTR), unpins
   the bootstrap L4 and gives every bootstrap table back with decrease_reservation
   (pmap_clear_bootstrap_pagetable), the four pinned L1s included: Xen's guest_remove_page
   drops only their allocation reference, so every extent is done.
2. i386at_init then writes ``kernel_page_dir[0] = kernel_page_dir[512]`` ("Keep BIOS memory
   mapped") into its first L2 page, which it mapped read-only before NEW_BASEPTR validated it.
   A CPL-3 write to a read-only PTE faults; Xen's fixup_page_fault (arch/x86/traps.c) only
   emulates writes with VMASST_TYPE_writable_pagetables on, which GNU Mach never enables, and
   then only to L1 pages (pv/ro-page-fault.c ptwr_do_page_fault), so the #PF is reflected.
   GNU Mach's kernel_trap cannot resolve it this early (kernel_map is not set up) and panics
   before its console exists, shutting down with sched_op_compat(SCHEDOP_shutdown, &shut),
   whose low byte Xen takes as the reason. This is a GNU Mach regression: gnumach commit
   66b55623 (2021) made those two writes unconditional, d972c01c (2023) put them back under
   LINUX_DEV, which a Xen build does not have.
3. With that one store removed (what d972c01c does), the same kernel boots on to its
   request for bootstrap modules: "No bootstrap code loaded with the kernel!".
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from xenwb.hypervisor.mm import PageType
from xenwb.hypervisor.paging import walk
from xenwb.linuxguest import fetch_package_file
from xenwb.machine import Machine, StopReason

PACKAGE, MEMBER = "gnumach-image-1.8-xen-486", "boot/gnumach-1.8-xen-486.gz"
VIRT_BASE = 0x40000000
KEEP_BIOS_STORE = 0x4000524C            # i386at_init: mov %rdx,(%rax), kernel_page_dir[0] = ...[512]
KEEP_BIOS_BYTES = bytes.fromhex("488910")
NOP3 = bytes.fromhex("0f1f00")
KERNEL_PAGE_DIR = 0x400CD000            # its first L2 page: pt_base + (nr_pt_frames + 3) pages
MESSAGE = b"No bootstrap code loaded with the kernel!"
TIME_LIMIT_NS = 2 * 10**9


@pytest.fixture(scope="module")
def gnumach() -> Path:
    if not shutil.which("apt-get"):
        pytest.skip("needs Debian's apt-get")
    return fetch_package_file(PACKAGE, MEMBER)


def boot(path: Path, *, upstream_fix: bool = False) -> tuple[Machine, bytes, list[dict]]:
    m = Machine(path, memory_mib=64)
    out: list[bytes] = []
    events: list[dict] = []
    m.domain.console_sink = out.append
    m.domain.trace.subscribe(events.append)
    if upstream_fix:
        pm = m.domain.physmap
        maddr = (pm.mfn((KEEP_BIOS_STORE - VIRT_BASE) >> 12) << 12) | (KEEP_BIOS_STORE & 0xFFF)
        assert bytes(m.domain.mem.read(maddr, 3)) == KEEP_BIOS_BYTES, "not the expected GNU Mach build"
        m.domain.mem.write(maddr, NOP3)
    m.set_limits(timeout_ns=TIME_LIMIT_NS)
    r = m.run()
    assert r.reason is StopReason.shutdown, r
    return m, b"".join(out), events


def hypercalls(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["kind"] == "hypercall" and e["name"] == name]


def test_gnumach_as_on_xen(gnumach: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, console, events = boot(gnumach)
    dom = m.domain
    # 1. the bootstrap tables given back, pinned L1s included: every extent done
    mmuext = [op["cmd"] for e in hypercalls(events, "mmuext_op") for op in e["args"]["op"]]
    assert "NEW_BASEPTR" in mmuext and "UNPIN_TABLE" in mmuext
    freed = hypercalls(events, "memory_op")
    assert len(freed) == 9 and all(e["args"]["cmd"] == "decrease_reservation" and e["ret"] == 1 for e in freed)
    assert len(dom.mm.free_frames) == 5           # the 4 L1s stay while pinned
    # 2. the store into the validated, read-only L2 is a #PF reflected to the guest ...
    faults = [e for e in events if e["kind"] == "fault"]
    assert [(f["vector"], f["error_code"], f["cr2"], f["eip"]) for f in faults] == [
        (14, 3, KERNEL_PAGE_DIR, KEEP_BIOS_STORE)]
    w = walk(dom.mem, dom.mode, m.vcpus[0].cr3_mfn, KERNEL_PAGE_DIR)
    assert w.mapped and "RW" not in w.steps[-1].flags
    page = dom.mm.page(w.mfn)
    assert page.type is PageType.l2 and page.validated
    # ... which GNU Mach cannot handle yet: it panics silently, the reason is &shut's low byte
    last = hypercalls(events, "sched_op_compat")
    assert len(last) == 1 and last[0]["args"]["cmd"] == 2
    assert dom.shutdown_reason == last[0]["args"]["arg"] & 0xFF == 0xFC
    assert console == b""
    assert "unimplemented" not in capsys.readouterr().err
    m2, console2, events2 = boot(gnumach)
    assert (console2, events2) == (console, events)


def test_gnumach_with_upstream_fix_asks_for_its_bootstrap_modules(
        gnumach: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, console, events = boot(gnumach, upstream_fix=True)
    text = console.decode("latin-1")
    assert "GNU Mach 1.8+git20221224-xen-486" in text and "Running on xen-3.0-x86_64." in text
    assert re.search(r"panic \S+bootstrap\.c:\d+: bootstrap_create: " + re.escape(MESSAGE.decode()), text), text
    assert not [e for e in events if e["kind"] == "fault"]
    assert "unimplemented" not in capsys.readouterr().err
    _, console2, _ = boot(gnumach, upstream_fix=True)
    assert console2 == console
