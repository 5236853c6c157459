"""The gdb stub in the test's own process, and a judge of its single steps.

``InProcessStub`` serves a Session of this process (as the shell runs it), so that a test can
look at the machine at each stop before gdb hears of it; ``Judge`` is a Controller listener
that checks every stop is one step of a vcpu to a pc tests/oracle.py allows (32-bit and 64-bit
guests alike: the pc is the registers' "pc").
"""

from __future__ import annotations

import threading

from oracle import successors

from gdbstub.server import GdbServer
from xenwb.control import StopEvent, StopKind
from xenwb.session import Session


class InProcessStub:
    """The stub on a Session of this process (as the shell runs it), so that a judge can look
    at the machine at each stop, before gdb hears of it."""

    def __init__(self, guest: str, vcpus: int = 1) -> None:
        self.console = bytearray()
        self.session = Session(guest, vcpus=vcpus, console=self.console.extend)
        self.ctl = self.session.controller
        self.server = GdbServer(self.ctl, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.close()
        self.session.close()


class Judge:
    """A Controller listener: every stop must be a step of vcpu `vid` to a pc that capstone
    allows from the state at the previous stop."""

    def __init__(self, stub: InProcessStub, vid: int) -> None:
        self.ctl = stub.ctl
        self.vid = vid
        self.v = self.ctl.vcpu(vid)
        self.pcs: list[int] = []
        self.mnemonics: list[str] = []          # the instruction each step executed
        self.errors: list[str] = []
        self.expect = successors(self.v, self.ctl.guest_regs(vid))

    def __call__(self, ev: StopEvent) -> None:
        if ev.kind is not StopKind.step or ev.vcpu != self.vid:
            self.errors.append(f"stop {ev.kind.value} on vcpu {ev.vcpu}")
            return
        pc = self.ctl.guest_regs(self.vid)["pc"]
        insn, allowed = self.expect
        if pc not in allowed:
            self.errors.append(f"step {len(self.pcs)}: {insn.address:#x} {insn.mnemonic} {insn.op_str} went to "
                               f"{pc:#x}, expected one of {sorted(hex(a) for a in allowed)}")
        self.pcs.append(pc)
        self.mnemonics.append(insn.mnemonic)
        self.expect = successors(self.v, self.ctl.guest_regs(self.vid))
