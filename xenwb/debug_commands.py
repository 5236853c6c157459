"""The debugger's commands, in the one command registry: the same from the shell, gdb's
`monitor`, `--exec` and Python's Session.command.

They act on the Controller (xenwb/control.py) and on its selected vcpu (the one of the
last stop, or the one `vcpu N` chose). Running commands (stepi, step) resume the machine
and wait for the stop, so they work from any front end.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.abi.constants import errno_name, hypercall_name
from xenwb.control import Controller, DebugError, StopEvent, StopKind
from xenwb.disasm import disassemble
from xenwb.hypervisor.hypercall_table import decode_args
from xenwb.hypervisor.traps import descriptor_of
from xenwb.hypervisor.vcpu64 import Vcpu64
from xenwb.registry import CommandError, CommandRegistry, Result, parse_int, table
from xenwb.timetravel import TimeTravel, describe_checkpoint

if TYPE_CHECKING:
    from xenwb.machine import Machine

STEP_WAIT_S = 30.0


def hypercall_number(text: str) -> int:
    """A hypercall by name (mmu_update, HYPERVISOR_mmu_update) or number."""
    name = text.removeprefix("HYPERVISOR_").removeprefix("__HYPERVISOR_")
    try:
        return int(C.Hypercall[name])
    except KeyError:
        pass
    try:
        return int(text, 0)
    except ValueError:
        names = ", ".join(h.name for h in C.Hypercall)
        raise CommandError(f"no hypercall {text!r} (known: {names})") from None


def exception_vector(text: str) -> int:
    """An exception by vector number or name (#PF, PF, page_fault)."""
    t = text.upper().lstrip("#")
    for vec, name in C.TRAP_NAMES.items():
        if name.lstrip("#").upper() == t:
            return vec
    try:
        v = int(text, 0)
    except ValueError:
        raise CommandError(f"no exception {text!r} (a vector 0-31 or a name like #PF, #GP)") from None
    if not 0 <= v < 256:
        raise CommandError(f"vector {v} out of range")
    return v


class _Options:
    """`--flag` and `--key value` arguments, and the rest in order."""

    def __init__(self, args: list[str], flags: set[str], keys: set[str]) -> None:
        self.flags: set[str] = set()
        self.values: dict[str, str] = {}
        self.positional: list[str] = []
        it = iter(args)
        for a in it:
            if not a.startswith("--"):
                self.positional.append(a)
                continue
            k = a[2:]
            if k in flags:
                self.flags.add(k)
            elif k in keys:
                v = next(it, None)
                if v is None:
                    raise CommandError(f"{a} needs a value")
                self.values[k] = v
            else:
                known = " ".join(f"--{x}" for x in sorted(flags | keys)) or "none"
                raise CommandError(f"unknown option {a} (known: {known})")


class DebuggerCommands:
    """The commands, bound to one controller."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.selected = 0
        ctl.add_listener(self._on_stop)

    def _on_stop(self, ev: StopEvent) -> None:
        if ev.vcpu is not None and 0 <= ev.vcpu < len(self.ctl.vcpus):
            self.selected = ev.vcpu

    def register(self, reg: CommandRegistry) -> None:
        r = reg.register
        r("why", self.why, "why the machine stopped (a hypercall or exception catchpoint: decoded)")
        r("break", self.break_, "breakpoint at a symbol or address", "SYMBOL|ADDR")
        r("watch", self.watch, "watchpoint on guest memory (default: write; LEN default: the symbol's size or 4)",
          "ADDR|SYMBOL [LEN] [--read|--access]")
        r("catch hypercall", self.catch_hypercall,
          "stop on entry to and return from these hypercalls (--failed: only on a failed return)",
          "NAME[,NAME...]|all [--failed]")
        r("catch fault", self.catch_fault, "stop on a guest exception before Xen bounces it to the guest",
          "[VECTOR|NAME]")
        r("catch evtchn", self.catch_evtchn, "stop where an event channel port becomes pending (set_pending) or is "
          "delivered by an upcall (to vcpu V)", "PORT [--vcpu V]")
        r("catch mask", self.catch_mask, "stop where a vcpu's upcall mask changes, by a guest store or by Xen",
          "VCPU [--set|--clear]")
        r("catch pte", self.catch_pte, "stop where the L1 entry (--any-level: any entry) of the current tables that "
          "maps VA changes: mmu_update, update_va_mapping, a ptwr-emulated write, a baseptr switch",
          "VA|SYMBOL [--l1|--any-level]")
        r("catch multicall", self.catch_multicall, "stop on return from a multicall (--failed: one with a failed "
          "entry)", "[--failed]")
        r("delete", self.delete, "remove a breakpoint/watchpoint at ADDR, a catchpoint by number, or all",
          "[SYMBOL|ADDR|catch N|all]")
        r("info breakpoints", self.points, "breakpoints, watchpoints and catchpoints in place")
        r("stepi", self.stepi, "execute N guest instructions on the selected vcpu", "[N]")
        r("step", self.step, "run the selected vcpu to the next source line, N times", "[N]")
        r("regs", self.regs, "registers of the selected vcpu")
        r("info registers", self.info_registers,
          "the selected vcpu as Xen sees it: registers, segments (decoded), GDT/LDT, trap table, callbacks")
        r("vcpu", self.vcpu, "select a vcpu (without N: list them)", "[N]")
        r("x", self.x, "examine COUNT words (4 or 8 bytes: the guest's width) of guest memory at a virtual "
          "address (the selected vcpu's tables, in its current mode)", "ADDR|SYMBOL [COUNT]")
        r("xp", self.xp, "examine guest-physical memory (pfn << 12 | offset)", "ADDR [COUNT]")
        r("xm", self.xm, "examine machine memory (mfn << 12 | offset)", "ADDR [COUNT]")
        r("disas", self.disas, "disassemble (AT&T syntax, as gdb)", "[ADDR|SYMBOL] [COUNT]")
        # time travel (xenwb/timetravel.py)
        r("checkpoint", self.checkpoint, "save the whole machine now under NAME (default: cp<N>)", "[NAME]")
        r("restore", self.restore, "put the machine back as it was at a checkpoint", "NAME")
        r("checkpoints", self.checkpoints, "the checkpoints kept: where, when, what they cost")
        r("checkpoint delete", self.checkpoint_delete, "drop a checkpoint", "NAME")
        r("restart", self.restart, "back to the guest's first instruction, without a new process")
        r("rstepi", self.rstepi, "undo N stepi on the selected vcpu (reverse-stepi)", "[N]")
        r("rcontinue", self.rcontinue, "back to the last breakpoint/watchpoint/catchpoint hit before now "
          "(reverse-continue)")

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def machine(self) -> Machine:
        return self.ctl.machine

    def _stopped(self) -> None:
        if self.ctl.running:
            raise CommandError("the guest is running: stop it first")

    def _addr(self, text: str) -> int:
        sym = self.machine.image.lookup(text)
        return sym.address if sym is not None else parse_int(text, "address")

    def _where(self, vid: int) -> str:
        m = self.machine
        pc = self.ctl.guest_regs(vid)["pc"]
        sym = m.domain.symbolize(pc)
        line = m.image.line_at(pc) if m.image.symbols else None
        src = f" at {line[0]}:{line[1]}" if line else ""
        return f"vcpu{vid} pc {pc:#010x}" + (f" <{sym}>" if sym else "") + src

    def _run(self, mode: str, **kw: int) -> StopEvent:
        try:
            self.ctl.resume(mode, self.selected, **kw)
        except DebugError as e:
            raise CommandError(str(e)) from None
        ev = self.ctl.wait(STEP_WAIT_S)
        if ev is None:
            raise CommandError(f"vcpu{self.selected} did not execute an instruction within {STEP_WAIT_S:.0f} s "
                               "of host time (blocked?): the machine keeps running; stop it to look")
        self.ctl.take_stop()
        return ev

    # -- stops -----------------------------------------------------------------------------------
    def why(self, m: Machine, args: list[str]) -> Result:
        ctl = self.ctl
        ev = ctl.last_stop
        data: dict[str, object] = {"kind": ev.kind.value, "vcpu": ev.vcpu, "running": ctl.running}
        if ctl.running:
            return Result(data, "running")
        if ev.vcpu is not None and ev.vcpu < len(m.vcpus):
            v = m.vcpus[ev.vcpu]
            r = ctl.guest_regs(ev.vcpu)
            data["rip" if v.word == 8 else "eip"] = data["pc"] = f"{r['pc']:#0{2 + 2 * v.word}x}"
            data["symbol"] = m.domain.symbolize(r["pc"])
            if ev.kind is StopKind.syscall_entry and ev.nr is not None:
                data["hypercall"] = {"nr": ev.nr, "name": hypercall_name(ev.nr)}
                data["args"] = decode_args(v, ev.nr, tuple(r[n] for n in HYPERCALL_ARGS[v.word]))
            elif ev.kind is StopKind.syscall_return and ev.nr is not None:
                bits = 8 * v.word
                ret = r["rax" if v.word == 8 else "eax"] & ((1 << bits) - 1)
                ret -= (1 << bits) if ret >> (bits - 1) else 0
                data["hypercall"] = {"nr": ev.nr, "name": hypercall_name(ev.nr)}
                data["ret"], data["errno"] = ret, errno_name(ret)
        if ev.kind is StopKind.xen and ev.nr is not None:
            c = next((c for c in ctl.catchpoints() if c.ident == ev.nr), None)
            data["catchpoint"] = {"number": ev.nr, "what": c.describe() if c is not None else "(deleted)"}
        if ev.addr is not None:
            data["address"] = f"{ev.addr:#x}"
        if ev.detail:
            data["detail"] = ev.detail
        text = ev.describe(m)
        if ctl.refusal is not None:
            data["refusal"] = ctl.refusal
            text += f"\n{ctl.refusal}"
        if "args" in data:
            text += ": " + json.dumps(data["args"], default=str)
        elif "ret" in data:
            text += f": {data['ret']}" + (f" {data['errno']}" if data.get("errno") else "")
        return Result(data, text)

    # -- breakpoints, watchpoints, catchpoints ---------------------------------------------------
    def break_(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        if not args:
            raise CommandError("usage: break SYMBOL|ADDR")
        addr = self._addr(args[0])
        try:
            self.ctl.insert_breakpoint(addr)
        except DebugError as e:
            raise CommandError(str(e)) from None
        sym = m.domain.symbolize(addr)
        return Result({"breakpoint": addr}, f"breakpoint at {addr:#010x}" + (f" <{sym}>" if sym else ""))

    def watch(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        if not args:
            raise CommandError("usage: watch ADDR|SYMBOL [LEN] [--read|--access]")
        addr = self._addr(args[0])
        rest = args[1:]
        kind = "read" if "--read" in rest else "access" if "--access" in rest else "write"
        nums = [a for a in rest if not a.startswith("--")]
        length = parse_int(nums[0], "LEN") if nums else 4
        sym = m.image.lookup(args[0])
        if sym is not None and sym.size and not nums:
            length = sym.size
        try:
            self.ctl.insert_watchpoint(addr, length, kind)
        except (DebugError, ValueError) as e:
            raise CommandError(str(e)) from None
        return Result({"watchpoint": addr, "length": length, "kind": kind},
                      f"{kind} watchpoint on {addr:#010x}+{length}")

    def catch_hypercall(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        names = [a for a in args if not a.startswith("--")]
        failed = "--failed" in args
        if not names:
            raise CommandError("usage: catch hypercall NAME[,NAME...]|all [--failed]")
        nums = None if names == ["all"] else [hypercall_number(n) for a in names for n in a.split(",") if n]
        c = self.ctl.add_catchpoint("hypercall", nums, failed_only=failed)
        return Result({"catchpoint": c.ident, "what": c.describe()}, f"catchpoint {c.ident}: {c.describe()}")

    def catch_fault(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        nums = [exception_vector(a) for a in args] or None
        c = self.ctl.add_catchpoint("exception", nums)
        return Result({"catchpoint": c.ident, "what": c.describe()}, f"catchpoint {c.ident}: {c.describe()}")

    def _catch(self, kind: str, **kw: object) -> Result:
        try:
            c = self.ctl.add_catchpoint(kind, **kw)          # type: ignore[arg-type]
        except (ValueError, DebugError) as e:
            raise CommandError(str(e)) from None
        return Result({"catchpoint": c.ident, "what": c.describe()}, f"catchpoint {c.ident}: {c.describe()}")

    def catch_evtchn(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        opts = _Options(args, set(), {"vcpu"})
        if len(opts.positional) != 1:
            raise CommandError("usage: catch evtchn PORT [--vcpu V]")
        vcpu = parse_int(opts.values["vcpu"], "vcpu") if "vcpu" in opts.values else None
        return self._catch("evtchn", port=parse_int(opts.positional[0], "port"), vcpu=vcpu)

    def catch_mask(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        opts = _Options(args, {"set", "clear"}, set())
        if len(opts.positional) != 1 or opts.flags >= {"set", "clear"}:
            raise CommandError("usage: catch mask VCPU [--set|--clear]")
        value = 1 if "set" in opts.flags else 0 if "clear" in opts.flags else None
        return self._catch("mask", vcpu=parse_int(opts.positional[0], "vcpu"), value=value)

    def catch_pte(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        opts = _Options(args, {"l1", "any-level"}, set())
        if len(opts.positional) != 1 or opts.flags >= {"l1", "any-level"}:
            raise CommandError("usage: catch pte VA|SYMBOL [--l1|--any-level]")
        return self._catch("pte", va=self._addr(opts.positional[0]), any_level="any-level" in opts.flags)

    def catch_multicall(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        opts = _Options(args, {"failed"}, set())
        if opts.positional:
            raise CommandError("usage: catch multicall [--failed]")
        return self._catch("multicall", failed_only="failed" in opts.flags)

    def delete(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        ctl = self.ctl
        if not args or args[0] == "all":
            ctl.clear_all()
            return Result({"deleted": "all"}, "all breakpoints, watchpoints and catchpoints deleted")
        if args[0] == "catch":
            if len(args) != 2:
                raise CommandError("usage: delete catch N")
            n = parse_int(args[1], "catchpoint")
            if not ctl.remove_catchpoint(n):
                raise CommandError(f"no catchpoint {n}")
            return Result({"deleted": f"catch {n}"}, f"catchpoint {n} deleted")
        addr = self._addr(args[0])
        gone = ctl.remove_breakpoint(addr) | ctl.remove_breakpoint(addr, hardware=True)
        for w in ctl.watchpoints():
            if w.va == addr:
                gone = ctl.remove_watchpoint(w.va, w.length, w.kind) or gone
        if not gone:
            raise CommandError(f"nothing set at {addr:#x}")
        return Result({"deleted": addr}, f"deleted at {addr:#010x}")

    def points(self, m: Machine, args: list[str]) -> Result:
        ctl = self.ctl
        rows: list[dict[str, object]] = []
        for addr, kinds in sorted(ctl.breakpoints().items()):
            for k in sorted(kinds):
                rows.append({"type": "breakpoint" if k == "sw" else "hw-breakpoint", "what": f"{addr:#010x}",
                             "symbol": m.domain.symbolize(addr)})
        for w in ctl.watchpoints():
            rows.append({"type": f"watchpoint ({w.kind})", "what": f"{w.va:#010x}+{w.length}",
                         "symbol": m.domain.symbolize(w.va)})
        for c in ctl.catchpoints():
            rows.append({"type": f"catchpoint {c.ident}", "what": c.describe(),
                         "symbol": None if c.owner == "user" else f"(set by {c.owner})"})
        return Result(rows, table(rows, ["type", "what", "symbol"]) if rows
                      else "no breakpoints, watchpoints or catchpoints")

    # -- running ---------------------------------------------------------------------------------
    def stepi(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        n = parse_int(args[0], "N") if args else 1
        ev = self.ctl.last_stop
        for _ in range(n):
            if self.ctl.finished:
                break
            ev = self._run("step")
            if ev.kind is not StopKind.step:
                break
        where = self._where(self.selected)
        text = where if ev.kind is StopKind.step else f"{ev.describe(m)}"
        return Result({"where": where, "stop": ev.kind.value}, text)

    def step(self, m: Machine, args: list[str]) -> Result:
        """Source-line step: run the vcpu while its pc stays in the current line's code."""
        self._stopped()
        n = parse_int(args[0], "N") if args else 1
        ev = self.ctl.last_stop
        for _ in range(n):
            if self.ctl.finished:
                break
            pc = self.ctl.guest_regs(self.selected)["pc"]
            line = m.image.line_at(pc)
            ev = self._run("step") if line is None else self._run("range", start=line[2], end=line[3])
            if ev.kind is not StopKind.step:
                break
        where = self._where(self.selected)
        text = where if ev.kind is StopKind.step else f"{ev.describe(m)}"
        return Result({"where": where, "stop": ev.kind.value}, text)

    # -- time travel -----------------------------------------------------------------------------
    @property
    def tt(self) -> TimeTravel:
        tt = self.ctl.timetravel
        if tt is None:
            raise CommandError("no time travel on this machine")
        return tt

    def _history(self, op) -> StopEvent:
        self._stopped()
        try:
            ev = op()
        except DebugError as e:
            raise CommandError(str(e)) from None
        self.ctl.take_stop()
        if ev.kind is StopKind.error:
            raise CommandError(ev.detail.splitlines()[0] if ev.detail else "time travel failed")
        return ev

    def checkpoint(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        if len(args) > 1:
            raise CommandError("usage: checkpoint [NAME]")
        try:
            cp = self.tt.checkpoint(args[0] if args else None)
        except DebugError as e:
            raise CommandError(str(e)) from None
        row = describe_checkpoint(cp)
        return Result(row, f"checkpoint {cp.name!r}: {self._where(self.selected)}, virtual time "
                           f"{cp.time_ns / 1e9:.6f} s, {cp.snap.size / 1024:.0f} KiB, {cp.host_s * 1e3:.1f} ms")

    def restore(self, m: Machine, args: list[str]) -> Result:
        if len(args) != 1:
            raise CommandError("usage: restore NAME (`checkpoints` lists them)")
        try:
            self.tt.find(args[0])
        except DebugError as e:
            raise CommandError(str(e)) from None
        ev = self._history(lambda: self.tt.restore(args[0]))
        return Result({"restored": args[0], "stop": ev.kind.value},
                      f"restored {args[0]!r}: {self._where(self.selected)} (gdb: `maint flush register-cache`)")

    def checkpoints(self, m: Machine, args: list[str]) -> Result:
        tt = self.tt
        rows = [describe_checkpoint(c) for c in tt.checkpoints]
        for r in rows:
            r["time"] = f"{r['time_ns'] / 1e9:.6f} s"
            r["KiB"] = round(r["size"] / 1024)
        text = table(rows, ["name", "time", "where", "stop", "KiB", "auto"]) if rows else "no checkpoints"
        text += (f"\n{len(rows)} checkpoints, {tt.memory_used() / 2**20:.1f} MiB of {tt.memory / 2**20:.0f} MiB"
                 + (f", one every {tt.every_ns / 1e6:g} ms of virtual time" if tt.every_ns else ""))
        return Result({"checkpoints": rows, "memory": tt.memory_used(), "limit": tt.memory}, text)

    def checkpoint_delete(self, m: Machine, args: list[str]) -> Result:
        if len(args) != 1:
            raise CommandError("usage: checkpoint delete NAME")
        try:
            self.tt.delete(args[0])
        except DebugError as e:
            raise CommandError(str(e)) from None
        return Result({"deleted": args[0]}, f"checkpoint {args[0]!r} deleted")

    def restart(self, m: Machine, args: list[str]) -> Result:
        try:
            ev = self._history(self.tt.restart)
        except DebugError as e:
            raise CommandError(str(e)) from None
        return Result({"stop": ev.kind.value}, f"restarted: {self._where(self.selected)}")

    def rstepi(self, m: Machine, args: list[str]) -> Result:
        n = parse_int(args[0], "N") if args else 1
        ev = self.ctl.last_stop
        for _ in range(n):
            ev = self._history(lambda: self.tt.reverse_step(self.selected))
            if ev.kind is not StopKind.step:
                break
        where = self._where(self.selected)
        return Result({"where": where, "stop": ev.kind.value},
                      where if ev.kind is StopKind.step else f"{ev.describe(m)}")

    def rcontinue(self, m: Machine, args: list[str]) -> Result:
        ev = self._history(self.tt.reverse_continue)
        return Result({"stop": ev.kind.value, "vcpu": ev.vcpu}, ev.describe(m))

    # -- registers and memory --------------------------------------------------------------------
    def regs(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        v = m.vcpus[self.selected]
        r = self.ctl.guest_regs(self.selected)
        if not isinstance(v, Vcpu64):
            return Result(r, "\n".join(f"{k:<7}{x:#010x}" for k, x in r.items()))
        r = dict(r, cr2=v.cr2)                        # the virtual CR2 Xen keeps for the guest
        lines = [f"{k:<10}{r[k]:#018x}" for k in REGS64]
        lines.append(f"{'mode':<10}{'kernel' if v.kernel_mode else 'user'} (L4 mfn {v.active_top_mfn:#x})")
        return Result(r, "\n".join(lines))

    def info_registers(self, m: Machine, args: list[str]) -> Result:
        """A QEMU `info registers`-style view, from the state Xen keeps for the vcpu."""
        self._stopped()
        v = m.vcpus[self.selected]
        r = self.ctl.guest_regs(self.selected)
        segs = {}
        for name in ("cs", "ss", "ds", "es", "fs", "gs"):
            sel = r[name]
            d = descriptor_of(v, sel) if sel & ~3 else None
            segs[name] = _segment(sel, d)
        traps = [{"vector": i, "name": C.TRAP_NAMES.get(i, ""), "cs": f"{t.cs:#06x}",
                  "address": f"{t.address:#0{2 + 2 * v.word}x}",
                  "symbol": m.domain.symbolize(t.address), "dpl": t.flags & 3, "mask_events": bool(t.flags & 4)}
                 for i, t in enumerate(v.trap_ctxt) if t is not None]
        data = {
            "vcpu": v.id, "state": v.state.value, "regs": r, "segments": segs,
            "gdt": {"frames": [f"{f:#x}" for f in v.gdt_frames], "entries": v.gdt_ents},
            "ldt": {"base": f"{v.ldt_base:#x}", "entries": v.ldt_ents},
            "cr3_mfn": f"{v.cr3_mfn:#x}", "kernel_ss": f"{v.kernel_ss:#x}", "kernel_sp": f"{v.kernel_sp:#x}",
            "event_callback": f"{v.event_eip:#x}" if v.word == 8 else f"{v.event_cs:#x}:{v.event_eip:#x}",
            "failsafe_callback": f"{v.failsafe_eip:#x}" if v.word == 8 else f"{v.failsafe_cs:#x}:{v.failsafe_eip:#x}",
            "upcall_mask": v.upcall_mask, "upcall_pending": v.upcall_pending, "iopl": v.iopl,
            "debugreg": [f"{x:#x}" for x in v.debugreg], "traps": traps,
        }
        if isinstance(v, Vcpu64):
            lines = _info_registers64(v, r, segs, data)
        else:
            lines = [" ".join(f"{k.upper()}={r[k]:08x}" for k in ("eax", "ebx", "ecx", "edx")),
                     " ".join(f"{k.upper()}={r[k]:08x}" for k in ("esi", "edi", "ebp", "esp")),
                     f"EIP={r['eip']:08x} EFL={r['eflags']:08x} [vcpu{v.id} {v.state.value}]"]
            for name, s in segs.items():
                lines.append(f"{name.upper():<3}={s['selector']} {s['base']} {s['limit']} {s['flags']}")
            lines.append(f"GDT= frames {','.join(data['gdt']['frames']) or '-'} entries {v.gdt_ents}")
            lines.append(f"LDT= base {v.ldt_base:#x} entries {v.ldt_ents}")
            lines.append(f"CR0={r['cr0']:08x} CR2={v.cr2:08x} CR3(mfn)={v.cr3_mfn:x} CR4={r['cr4']:08x}")
            lines.append(f"kernel stack {v.kernel_ss:#x}:{v.kernel_sp:#x}  event {data['event_callback']}  "
                         f"failsafe {data['failsafe_callback']}  upcall mask {v.upcall_mask} "
                         f"pending {v.upcall_pending}")
        lines.append("DR0-3,6,7=" + " ".join(f"{v.debugreg[i]:x}" for i in (0, 1, 2, 3, 6, 7)))
        if traps:
            lines.append("trap table:")
            lines += [f"  {t['vector']:3} {t['name']:<5} {t['cs']}:{t['address']} dpl {t['dpl']}"
                      + (" masked" if t["mask_events"] else "") + (f" <{t['symbol']}>" if t["symbol"] else "")
                      for t in traps]
        return Result(data, "\n".join(lines))

    def vcpu(self, m: Machine, args: list[str]) -> Result:
        if not args:
            rows = vcpu_rows(m, self.ctl)
            for row in rows:
                row["selected"] = "*" if row["vcpu"] == self.selected else ""
            return Result(rows, table(rows, ["selected", "vcpu", "state", "pc", "symbol", "mode", "cs"]))
        if len(args) != 1:
            raise CommandError("usage: vcpu [N]")
        n = parse_int(args[0], "vcpu")
        if not 0 <= n < len(m.vcpus):
            raise CommandError(f"no vcpu {n}")
        self.selected = n
        return Result({"vcpu": n}, f"vcpu{n} selected")

    def _dump(self, addr: int, data: bytes, wanted: int, what: str) -> Result:
        """Rows of 16 bytes as words of the guest's width (4 or 8 bytes), like gdb's x/xw, x/xg."""
        word = self.machine.domain.word
        aw = 2 * word
        rows = []
        for off in range(0, len(data), 16):
            chunk = data[off: off + 16]
            words = " ".join(f"{int.from_bytes(chunk[i:i + word], 'little'):0{2 * word}x}"
                             for i in range(0, len(chunk), word))
            rows.append(f"{addr + off:0{aw}x}: {words}")
        if len(data) < wanted:
            rows.append(f"{addr + len(data):0{aw}x}: (not {what})")
        return Result({"address": addr, "bytes": data.hex()}, "\n".join(rows))

    def x(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        if not args:
            raise CommandError("usage: x ADDR [COUNT]")
        addr = self._addr(args[0])
        count = parse_int(args[1], "count") if len(args) > 1 else 16
        n = count * m.domain.word                      # COUNT words of the guest's width
        data = self.ctl.read_memory(self.selected, addr, n)
        return self._dump(addr, data, n, "mapped")

    def _machine_read(self, maddr: int, n: int) -> bytes:
        mem = self.machine.domain.mem
        out = bytearray()
        while len(out) < n:
            cur = maddr + len(out)
            chunk = min(n - len(out), 4096 - (cur & 0xFFF))
            if not mem.valid(cur, chunk):
                break
            out += mem.read(cur, chunk)
        return bytes(out)

    def xp(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        if not args:
            raise CommandError("usage: xp ADDR [COUNT]")
        addr = parse_int(args[0], "address")
        count = parse_int(args[1], "count") if len(args) > 1 else 16
        pm = m.domain.physmap
        out = bytearray()
        while len(out) < count * 4:
            cur = addr + len(out)
            pfn = cur >> 12
            if not 0 <= pfn < pm.nr_pages:
                break
            chunk = min(count * 4 - len(out), 4096 - (cur & 0xFFF))
            out += self._machine_read((pm.mfn(pfn) << 12) | (cur & 0xFFF), chunk)
        return self._dump(addr, bytes(out), count * 4, "guest RAM")

    def xm(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        if not args:
            raise CommandError("usage: xm ADDR [COUNT]")
        addr = parse_int(args[0], "address")
        count = parse_int(args[1], "count") if len(args) > 1 else 16
        return self._dump(addr, self._machine_read(addr, count * 4), count * 4, "machine RAM")

    def disas(self, m: Machine, args: list[str]) -> Result:
        self._stopped()
        v = m.vcpus[self.selected]
        addr = self._addr(args[0]) if args else self.ctl.guest_regs(self.selected)["pc"]
        count = parse_int(args[1], "count") if len(args) > 1 else 12
        lines = disassemble(m, v, addr, count)
        return Result([{"address": a, "text": t} for a, t in lines], "\n".join(t for _, t in lines))


# the hypercall argument registers of each width (pv/hypercall.c)
HYPERCALL_ARGS = {4: ("ebx", "ecx", "edx", "esi", "edi"), 8: ("rdi", "rsi", "rdx", "r10", "r8")}
REGS64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
          "r15", "rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "k_gs_base",
          "cr0", "cr2", "cr3", "cr4")


def vcpu_rows(m: Machine, ctl: Controller) -> list[dict[str, object]]:
    """One row per vcpu: state, the pc it resumes at, mode, CS (width-aware)."""
    rows: list[dict[str, object]] = []
    for v in m.vcpus:
        r = ctl.guest_regs(v.id)
        mode = ("kernel" if v.kernel_mode else "user") if isinstance(v, Vcpu64) else \
            ("kernel" if r["cs"] & 3 == 1 else f"ring {r['cs'] & 3}")
        rows.append({"vcpu": v.id, "state": v.state.value, "pc": f"{r['pc']:#0{2 + 2 * v.word}x}",
                     "symbol": m.domain.symbolize(r["pc"]), "mode": mode, "cs": f"{r['cs']:#06x}"})
    return rows


def _info_registers64(v: Vcpu64, r: dict[str, int], segs: dict[str, dict[str, str]],
                      data: dict[str, object]) -> list[str]:
    """QEMU's `info registers` layout for a 64-bit CPU, with what Xen keeps for a PV64 vcpu:
    the FS/GS bases (the kernel's and the user's GS base, whichever mode is active), both
    L4s, the kernel stack, the three callbacks."""
    q = [("rax", "rbx", "rcx", "rdx"), ("rsi", "rdi", "rbp", "rsp"), ("r8", "r9", "r10", "r11"),
         ("r12", "r13", "r14", "r15")]
    lines = [" ".join(f"{k.upper():<3}={r[k]:016x}" for k in row) for row in q]
    mode = "kernel" if v.kernel_mode else "user"
    lines.append(f"RIP={r['rip']:016x} RFL={r['rflags']:08x} [vcpu{v.id} {v.state.value}] CPL=3 {mode} mode")
    bases = {"fs": r["fs_base"], "gs": r["gs_base"]}
    for name, seg in segs.items():
        base = f"{bases[name]:016x}" if name in bases else seg["base"]
        lines.append(f"{name.upper():<3}={seg['selector']} {base} {seg['limit']} {seg['flags']}")
    kernel_gs, user_gs = (r["gs_base"], r["k_gs_base"]) if v.kernel_mode else (r["k_gs_base"], r["gs_base"])
    lines.append(f"KernelGSbase={r['k_gs_base']:016x} (GS base kernel {kernel_gs:#x}, user {user_gs:#x})")
    lines.append(f"GDT= frames {','.join(data['gdt']['frames']) or '-'} entries {v.gdt_ents}")
    lines.append(f"LDT= base {v.ldt_base:#x} entries {v.ldt_ents}")
    lines.append(f"CR0={r['cr0']:08x} CR2={v.cr2:016x} CR3={r['cr3']:016x} CR4={r['cr4']:08x}")
    lines.append(f"L4 kernel mfn {v.cr3_mfn:#x} user mfn {v.user_cr3_mfn:#x}")
    lines.append(f"kernel stack {v.kernel_ss:#x}:{v.kernel_sp:#x}  event {v.event_eip:#x}  "
                 f"failsafe {v.failsafe_eip:#x}  syscall {v.syscall_eip:#x}  "
                 f"upcall mask {v.upcall_mask} pending {v.upcall_pending}")
    data.update(user_l4_mfn=f"{v.user_cr3_mfn:#x}", kernel_mode=v.kernel_mode,
                syscall_callback=f"{v.syscall_eip:#x}")
    return lines


def _segment(sel: int, d: int | None) -> dict[str, str]:
    """A selector and the descriptor it names, decoded (base, limit, type and DPL)."""
    if d is None:
        return {"selector": f"{sel:04x}", "base": "-", "limit": "-", "flags": "null" if not sel & ~3 else "invalid"}
    base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
    limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16)
    if (d >> 55) & 1:
        limit = (limit << 12) | 0xFFF
    typ = (d >> 40) & 0xF
    kind = ("code" + (" conforming" if typ & 4 else "") + (" readable" if typ & 2 else "")) if typ & 8 \
        else ("data" + (" expand-down" if typ & 4 else "") + (" writable" if typ & 2 else ""))
    if not (d >> 44) & 1:
        kind = f"system type {typ:#x}"
    flags = f"dpl {(d >> 45) & 3} {kind}" + ("" if (d >> 47) & 1 else " not-present") + \
        (" 64-bit" if (d >> 53) & 1 else " 32-bit" if (d >> 54) & 1 else " 16-bit")
    return {"selector": f"{sel:04x}", "base": f"{base:08x}", "limit": f"{limit:08x}", "flags": flags}


def register_debugger_commands(reg: CommandRegistry, ctl: Controller) -> DebuggerCommands:
    cmds = DebuggerCommands(ctl)
    cmds.register(reg)
    return cmds
