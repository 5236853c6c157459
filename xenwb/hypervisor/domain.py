"""A PV domain: what Xen keeps for it (struct domain): memory and page types, the p2m/m2p,
event channels, grant table, virtual time, vcpus, the trace bus, and the hypercall entry
point that dispatches through the one hypercall table (hypercall_table.py).

The domain is the top of the hypervisor: its subsystems never import it (they reach it
through vcpu.domain); the toolstack (builder.py) creates it, wires the console and xenstore
ports to its backends and starts vcpu 0.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, ShutdownReason, hypercall_name
from xenwb.abi.structs import PV32
from xenwb.hypervisor.event_channel import EventChannels
from xenwb.hypervisor.grant_table import GrantTable
from xenwb.hypervisor.hypercall_table import TABLE, decode_args
from xenwb.hypervisor.memory import GuestFault, MachineMemory, PhysMap
from xenwb.hypervisor.mm import MM
from xenwb.hypervisor.state import DomainCrash
from xenwb.hypervisor.time import HYPERCALL_COST_NS, VirtualTime, init_wallclock
from xenwb.hypervisor.trace_args import LATER_WIDTH, capture_args, decode_later
from xenwb.hypervisor.traps import do_iret
from xenwb.hypervisor.upcall_mask import MaskObserver
from xenwb.hypervisor.xenarea import HvGeometry, XenArea
from xenwb.trace import TraceBus

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.loader import GuestImage

ENOSYS = -Errno.ENOSYS


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

    def __str__(self) -> str:
        where = f"{self.eip:#010x}" + (f" <{self.symbol}>" if self.symbol else "")
        return f"domain crashed: vcpu{self.vcpu} at eip {where}: {self.reason}"


class Domain:
    domid = 1

    def __init__(self, image: GuestImage, mem: MachineMemory, geo: HvGeometry, nr_pages: int) -> None:
        self.image = image
        self.pae = image.is_pae
        self.abi = PV32
        self.mem = mem
        self.geo = geo
        self.mode = geo.mode
        self.xen = XenArea(mem, geo)
        self.physmap = PhysMap(mem, nr_pages, self.xen.m2p_maddr)
        self.mm = MM(mem, geo, self.xen)
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
        self.stats = {"hypercalls": 0, "multicall_entries": 0, "faults": 0}
        self.shutdown_reason: int | None = None
        self.crash_report: CrashReport | None = None
        self.console_sink: Callable[[bytes], None] = lambda b: None
        self._warned: set[str] = set()
        self.hypercall_page_mfn: int | None = None
        self.cmdline = ""
        self.start_info_va = 0
        self.shutdown_code: int | None = None      # SCHEDOP_shutdown_code
        self.current: Vcpu | None = None
        self.observer: DebugObserver | None = None
        self._stub_cache: dict[int, bool] = {}     # return address after `int $0x82` -> in a stub?
        self.free_frames: list[int] = []
        self.evtchn = EventChannels(self)
        self.gnttab = GrantTable(self)
        self.trace.formatter.bind(symbolize=self.symbolize, decode_later=decode_later, later_width=LATER_WIDTH)
        init_wallclock(self)

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

    def console_write(self, vcpu: Vcpu | None, data: bytes) -> None:
        self.trace.emit_console(vcpu, data)
        self.console_sink(data)

    # -- hypercalls ---------------------------------------------------------------------
    def hypercall(self, vcpu: Vcpu, vals: tuple[int, ...]) -> None:
        """int $0x82 from the guest kernel: EAX = number, EBX..EDI = arguments."""
        nr = vals[0]
        args = tuple(vals[1:6])
        obs = self.observer
        if obs is not None and obs.hypercall_entry(vcpu, nr, args):
            return                              # held by a debugger: re-issued on resume
        self.stats["hypercalls"] += 1
        if nr == C.Hypercall.iret:
            self.time.charge(vcpu, HYPERCALL_COST_NS)
            if self.trace.want_hypercall:
                self.trace.emit_hypercall(vcpu, nr, args, 0, vals[7] - 2, {})
            do_iret(vcpu)
            return
        ret = self.call(vcpu, nr, args,
                        eip=self.caller_eip(vcpu, vals[7], vals[8]) if self.trace.want_hypercall else 0)
        if vcpu.continuation is not None:       # preempted: the guest re-executes int $0x82
            cont = (tuple(vcpu.continuation) + (0,) * 5)[:5]
            vcpu.continuation = None
            vcpu.cpu.continuation_out.write(*(a & 0xFFFFFFFF for a in cont), vals[7] - 2)
            return
        vcpu.cpu.set_eax(ret)
        if obs is not None:
            obs.hypercall_return(vcpu, nr, ret)

    def call(self, vcpu: Vcpu, nr: int, args: tuple[int, ...], *, eip: int,
             multicall: int | None = None) -> int:
        """Dispatch one call (also used for multicall entries)."""
        entry = self.hypercalls.get(nr)
        t0 = vcpu.clock.units
        vcpu.clock.units = t0 + HYPERCALL_COST_NS       # the hypervisor's work takes virtual time
        traced = self.trace.want_hypercall
        decoded = capture_args(vcpu, nr, args) if traced else None     # None: decoded when read
        handler = None if entry is None else entry.pv32
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
        ret = _signed32(ret)
        if traced:
            self.trace.emit_hypercall(vcpu, nr, args, ret, eip, decoded, multicall, t0, vcpu.clock.units - t0)
        return ret

    def caller_eip(self, vcpu: Vcpu, eip: int | None = None, esp: int | None = None) -> int:
        """Where a hypercall came from: the `int $0x82` itself, or, inside a hypercall-page
        stub (`mov $n,%eax; int $0x82; ret`), the return address the caller pushed."""
        if eip is None:
            eip = vcpu.cpu.eip
        stub = self._stub_cache.get(eip)
        if stub is None:
            code = vcpu.debug_read(eip - 7, 8)
            stub = len(code) == 8 and code[0] == 0xB8 and code[5:7] == b"\xcd\x82" and code[7] == 0xC3
            if len(self._stub_cache) < 4096:
                self._stub_cache[eip] = stub
        if stub:
            try:
                return vcpu.read_u32(vcpu.cpu.reg("esp") if esp is None else esp)
            except GuestFault:
                return eip - 2
        return eip - 2

    # -- hypercall page ---------------------------------------------------------------
    def write_hypercall_page(self, mfn: int) -> bool:
        """Fill a guest frame with the 128 PV32 stubs (pv/hypercall.c hypercall_page_initialise)."""
        if not self.mm.is_owned(mfn):
            return False
        page = bytearray(b"\xcc" * 4096)
        for n in range(128):
            if n == C.Hypercall.iret:
                stub = bytes([0x50, 0xB8]) + n.to_bytes(4, "little") + bytes([0xCD, 0x82])
            else:
                stub = bytes([0xB8]) + n.to_bytes(4, "little") + bytes([0xCD, 0x82, 0xC3])
            page[n * 32: n * 32 + len(stub)] = stub
        for v in self.vcpus:   # through unicorn, so translated code of that page is dropped
            v.cpu.uc.mem_write(mfn << 12, bytes(page))
        if not self.vcpus:
            self.mem.write(mfn << 12, bytes(page))
        self.hypercall_page_mfn = mfn
        self._stub_cache.clear()
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
            eip = vcpu.cpu.eip
            self.crash_report = CrashReport(vcpu.id, eip, self.symbolize(eip), reason)
            self.trace.emit_crash(vcpu, reason, eip)
        self.stop_all()

    def stop_all(self) -> None:
        for v in self.vcpus:
            v.cpu.uc.emu_stop()

    @property
    def finished(self) -> bool:
        return self.shutdown_reason is not None or self.crash_report is not None


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v
