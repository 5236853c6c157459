"""A PV domain: what Xen keeps for it (struct domain): memory and page types, the p2m/m2p,
event channels, grant table, virtual time, vcpus, the trace bus, and the hypercall entry
point that dispatches through the one hypercall table (hypercall_table.py).

The domain is the top of the hypervisor: its subsystems never import it (they reach it
through vcpu.domain); the toolstack (builder.py) creates it, wires the console and xenstore
ports to its backends and starts vcpu 0.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, ShutdownReason, hypercall_name
from xenwb.abi.structs import PV32, PV64
from xenwb.hypervisor.event_channel import EventChannels
from xenwb.hypervisor.grant_table import GrantTable
from xenwb.hypervisor.hypercall_table import TABLE, decode_args
from xenwb.hypervisor.memory import MachineMemory, PhysMap
from xenwb.hypervisor.mm import MM
from xenwb.hypervisor.state import DomainCrash
from xenwb.hypervisor.time import HYPERCALL_COST_NS, VirtualTime, init_wallclock
from xenwb.hypervisor.trace_args import capturers, decode_later, later_width
from xenwb.hypervisor.upcall_mask import MaskObserver
from xenwb.hypervisor.xenarea import HvGeometry, XenArea
from xenwb.hypervisor.xenarea64 import XenArea64
from xenwb.trace import TraceBus
from xenwb.trace_events import packed

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.loader import GuestImage

ENOSYS = -Errno.ENOSYS
_NO_ARGS = packed({})          # what an iret's record shows of its arguments


class DebugObserver(Protocol):
    """What a debugger (xenwb/control.py) sees of the hypervisor's work, and may hold: a
    hypercall on entry (True: do not run it now; the controller set vcpu.hold_exit) and on
    return, an exception about to be bounced (True: hold its delivery), a frame pushed."""

    def hypercall_entry(self, vcpu: Vcpu, nr: int, args: tuple[int, ...]) -> bool: ...

    def hypercall_return(self, vcpu: Vcpu, nr: int, ret: int) -> None: ...

    def exception(self, vcpu: Vcpu, vector: int, error_code: int | None, cr2: int | None) -> bool: ...

    def bounced(self, vcpu: Vcpu) -> None: ...


@dataclass
class CrashReport:
    vcpu: int
    eip: int
    symbol: str | None
    reason: str

    word: int = 4

    def __str__(self) -> str:
        where = f"{self.eip:#0{2 + 2 * self.word}x}" + (f" <{self.symbol}>" if self.symbol else "")
        return f"domain crashed: vcpu{self.vcpu} at {'rip' if self.word == 8 else 'eip'} {where}: {self.reason}"


class Domain:
    domid = 1

    def __init__(self, image: GuestImage, mem: MachineMemory, geo: HvGeometry, nr_pages: int) -> None:
        self.image = image
        self.is_64 = geo.long_mode
        self.word = 8 if self.is_64 else 4          # bytes in the guest's unsigned long
        self.pae = image.is_pae or self.is_64
        self.abi = PV64 if self.is_64 else PV32
        self.mem = mem
        self.geo = geo
        self.mode = geo.mode
        self.xen: XenArea | XenArea64 = XenArea64(mem, geo) if self.is_64 else XenArea(mem, geo)
        self.physmap = PhysMap(mem, nr_pages, self.xen.m2p_maddr, geo.m2p_entry_size)
        self.mm = MM(mem, geo, self.xen)
        self.mm.on_free = self.frame_freed
        self.nr_pages = nr_pages
        self.max_pages = nr_pages
        self.time = VirtualTime()
        self.trace = TraceBus()
        self.mask_observer = MaskObserver(self)
        self.trace.on_want("mask", self.mask_observer.set_enabled)
        self.vcpus: list[Vcpu] = []
        self.vm_assist = 0
        self.shared_info_mfn = mem.alloc_xen_frame()
        self.hypercalls = TABLE
        self._capturers = capturers(self.word)
        self.stats = {"hypercalls": 0, "multicall_entries": 0, "faults": 0}
        self.shutdown_reason: int | None = None
        self.crash_report: CrashReport | None = None
        self.console_io_input = bytearray()        # what CONSOLEIO_read hands out (Xen's serial input)
        self.console_sink: Callable[[bytes], None] = lambda b: None    # the PV console ring (xl console)
        # the hypervisor console (xl dmesg): console_io lines; None sends them to console_sink
        self.hv_console_sink: Callable[[bytes], None] | None = None
        self.console_pbuf = bytearray()            # d->pbuf: console_io's partial line (console.c)
        self.console_bytes = 0          # what the guest wrote to its console, console_io and ring alike
        self._warned: set[str] = set()
        self.hypercall_page_mfn: int | None = None
        self.cmdline = ""
        self.start_info_va = 0
        self.shutdown_code: int | None = None      # SCHEDOP_shutdown_code
        self.pirq_eoi_map_mfn = 0                  # PHYSDEVOP_pirq_eoi_gmfn: the guest's EOI bitmap page
        self.current: Vcpu | None = None
        self.observer: DebugObserver | None = None
        self.stub_cache: dict[int, bool] = {}      # pc after a hypercall instruction -> in a page stub?
        self.evtchn = EventChannels(self)
        self.gnttab = GrantTable(self)
        self.trace.formatter.bind(symbolize=self.symbolize, decode_later=functools.partial(decode_later, self.geo),
                                  later_width=later_width(self.word))
        init_wallclock(self)

    def frame_freed(self, mfn: int) -> None:
        """A frame the guest gave back (decrease_reservation) lost its last reference: it
        leaves the domain (page_alloc.c free_domheap_pages: tot_pages drops, mark_page_free
        invalidates its M2P entry); MM keeps it for populate_physmap."""
        pm = self.physmap
        pfn = pm.pfn(mfn)
        pm.set_m2p(mfn, pm.invalid)
        if pfn is not None and pfn < len(pm.p2m):
            pm.p2m[pfn] = pm.invalid
        self.nr_pages -= 1

    def code_stored_by_machine_address(self) -> None:
        """The hypervisor stored into an ordinary guest frame it knows only by machine address
        (no virtual address to drop translations by): every engine drops its translated code,
        a running one as soon as it stops (at once: the stop is invisible)."""
        for v in self.vcpus:
            v.cpu.when_stopped(v.cpu.flush_translations)

    # -- helpers --------------------------------------------------------------------
    def symbolize(self, addr: int) -> str | None:
        return self.image.symbolize(addr) if self.image.symbols else None

    MAX_WARNINGS = 32

    def unimplemented(self, what: str) -> int:
        """An unimplemented hypercall or sub-op: -ENOSYS, said once on stderr (and at most
        MAX_WARNINGS different ones, so a hostile guest cannot flood the terminal)."""
        if what not in self._warned and len(self._warned) <= self.MAX_WARNINGS:
            self._warned.add(what)
            if len(self._warned) > self.MAX_WARNINGS:
                print("xenwb: more unimplemented calls: no longer reported (see the trace)", file=sys.stderr)
            else:
                print(f"xenwb: unimplemented {what}: returning -ENOSYS", file=sys.stderr)
        return ENOSYS

    def decode_args(self, vcpu: Vcpu, nr: int, args: tuple[int, ...]) -> Any:
        return decode_args(vcpu, nr, args)

    def console_write(self, vcpu: Vcpu | None, data: bytes, *, hypervisor: bool = False) -> None:
        """Output of the guest: on its PV console ring, or (hypervisor) a console_io line
        on the hypervisor console, which goes to console_sink too unless hv_console_sink
        keeps it apart."""
        self.console_bytes += len(data)
        self.trace.emit_console(vcpu, data, "xen" if hypervisor else "pv")
        if hypervisor and self.hv_console_sink is not None:
            self.hv_console_sink(data)
        else:
            self.console_sink(data)

    # -- hypercalls ---------------------------------------------------------------------
    def hypercall(self, vcpu: Vcpu, nr: int, args: tuple[int, ...], pc: int) -> None:
        """A hypercall from the guest kernel (int $0x82 or syscall; pc is the address after
        the instruction): dispatch it, then store the result or, when it was preempted, set
        the registers up for the instruction to run again (pv/hypercall.c _pv_hypercall)."""
        obs = self.observer
        if obs is not None and obs.hypercall_entry(vcpu, nr, args):
            return                              # held by a debugger: re-issued on resume
        self.stats["hypercalls"] += 1
        if nr == C.Hypercall.iret:
            self.time.charge(vcpu, HYPERCALL_COST_NS)
            if self.trace.want_hypercall:
                self.trace.emit_hypercall(vcpu, nr, args, 0, pc - 2, _NO_ARGS)
            vcpu.do_iret()
            return
        ret = self.call(vcpu, nr, args, eip=vcpu.caller_pc(pc) if self.trace.want_hypercall else 0)
        if vcpu.continuation is not None:       # preempted: the guest re-executes the instruction
            cont = (tuple(vcpu.continuation) + (0,) * 5)[:5]
            vcpu.continuation = None
            vcpu.restart_hypercall(cont, pc - 2)
            return
        vcpu.set_hypercall_result(ret)
        if obs is not None:
            obs.hypercall_return(vcpu, nr, ret)

    def call(self, vcpu: Vcpu, nr: int, args: tuple[int, ...], *, eip: int,
             multicall: int | None = None) -> int:
        """Dispatch one call (also used for multicall entries)."""
        entry = self.hypercalls.get(nr)
        if self.is_64 and entry is not None:
            for i, mask in entry.narrow64:          # the handler's parameter types (hypercall-defs.c)
                if args[i] > mask:
                    args = tuple(map(int.__and__, args, entry.masks64))
                    break
        t0 = vcpu.clock.units
        vcpu.clock.units = t0 + HYPERCALL_COST_NS       # the hypervisor's work takes virtual time
        traced = self.trace.want_hypercall
        capture = self._capturers.get(nr) if traced else None
        decoded = None if capture is None else capture(vcpu, args)     # None: decoded when read
        handler = None if entry is None else entry.pv64 if self.is_64 else entry.pv32
        if entry is None:
            ret = self.unimplemented(f"hypercall {hypercall_name(nr)} ({nr})")
        elif handler is None:
            ret = ENOSYS                         # not in Xen's table for this guest's ABI
        else:
            try:
                ret = handler(vcpu, *args)
            except DomainCrash:
                raise
            except Exception as e:   # a workbench bug must not take the workbench down
                if os.environ.get("XENWB_DEBUG"):
                    traceback.print_exc()
                raise DomainCrash(f"xenwb internal error in {hypercall_name(nr)}: "
                                  f"{type(e).__name__}: {e} (please report; XENWB_DEBUG=1 shows the traceback)") \
                    from None
        ret = _signed(ret, self.word)
        if traced:
            self.trace.emit_hypercall(vcpu, nr, args, ret, eip, decoded, multicall, t0, vcpu.clock.units - t0)
        return ret

    def caller_eip(self, vcpu: Vcpu) -> int:
        """Where the hypercall being handled came from (see Vcpu.caller_pc)."""
        return vcpu.caller_pc(vcpu.cpu.pc)

    # -- hypercall page ---------------------------------------------------------------
    def write_hypercall_page(self, mfn: int) -> bool:
        """Fill a guest frame with the 128 stubs (pv/hypercall.c: pv_ring1_init_hypercall_page
        for 32-bit guests, pv_ring3_init_hypercall_page for 64-bit ones)."""
        if not self.mm.is_owned(mfn):
            return False
        page = bytearray(b"\xcc" * 4096)
        for n in range(128):
            nr = n.to_bytes(4, "little")
            if self.is_64:
                # push %rcx; push %r11; [push %rax;] mov $n,%eax; syscall; [pop %r11; pop %rcx; ret]
                if n == C.Hypercall.iret:
                    stub = bytes([0x51, 0x41, 0x53, 0x50, 0xB8]) + nr + bytes([0x0F, 0x05])
                else:
                    stub = bytes([0x51, 0x41, 0x53, 0xB8]) + nr + bytes([0x0F, 0x05, 0x41, 0x5B, 0x59, 0xC3])
            elif n == C.Hypercall.iret:
                stub = bytes([0x50, 0xB8]) + nr + bytes([0xCD, 0x82])
            else:
                stub = bytes([0xB8]) + nr + bytes([0xCD, 0x82, 0xC3])
            page[n * 32: n * 32 + len(stub)] = stub
        for v in self.vcpus:   # through unicorn, so translated code of that page is dropped
            v.cpu.uc.mem_write(mfn << 12, bytes(page))
        if not self.vcpus:
            self.mem.write(mfn << 12, bytes(page))
        self.hypercall_page_mfn = mfn
        self.stub_cache.clear()
        return True

    # -- end of life ----------------------------------------------------------------------
    def shutdown(self, vcpu: Vcpu | None, reason: int) -> None:
        if self.shutdown_reason is None and self.crash_report is None:
            self.shutdown_reason = reason
            try:
                name = ShutdownReason(reason).name
            except ValueError:
                name = f"reason {reason}"
            self.trace.emit_shutdown(vcpu, name)
        self.stop_all()

    def crash(self, vcpu: Vcpu, reason: str) -> None:
        if self.crash_report is None and self.shutdown_reason is None:
            eip = vcpu.cpu.pc
            self.crash_report = CrashReport(vcpu.id, eip, self.symbolize(eip), reason, self.word)
            self.trace.emit_crash(vcpu, reason, eip)
        self.stop_all()

    def stop_all(self) -> None:
        for v in self.vcpus:
            v.cpu.uc.emu_stop()

    @property
    def finished(self) -> bool:
        return self.shutdown_reason is not None or self.crash_report is not None


def _signed(v: int, word: int) -> int:
    """A hypercall's result as the guest's signed long."""
    bits = 8 * word
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v
