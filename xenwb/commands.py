"""The core commands of the registry: help, info vcpus, xen version."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.hypervisor.vcpu64 import Vcpu64
from xenwb.hypervisor.version import capabilities
from xenwb.registry import CommandError, CommandRegistry, Result, table
from xenwb.xenstore import XsError

if TYPE_CHECKING:
    from xenwb.machine import Machine


def _help(machine: Machine, args: list[str]) -> Result:
    reg = machine.commands
    if args:
        hit = reg.lookup(args)
        if hit is None:
            raise CommandError(f"no command {' '.join(args)!r}")
        c = hit[0]
        data = {"name": c.name, "usage": c.usage, "help": c.help, "plugin": c.plugin}
        more = "".join(f"\n    {line}" for line in c.details.splitlines())
        return Result(data, f"{c.name} {c.usage}".rstrip() + f"\n  {c.help}" + more)
    rows = [{"command": f"{c.name} {c.usage}".rstrip(), "help": c.help, "plugin": c.plugin or "core"}
            for c in sorted(reg.commands.values(), key=lambda c: c.name)]
    return Result(rows, table(rows, ["command", "help"]))


def _info_vcpus(machine: Machine, args: list[str]) -> Result:
    """Every vcpu: the pc it resumes at (the guest's, not a hypervisor stub's), named eip or rip
    after the guest's width, its mode, top-level tables and event state."""
    rows = []
    for v in machine.vcpus:
        r, _ = v.guest_regs()
        pc_name = "rip" if v.word == 8 else "eip"
        row = {"vcpu": v.id, "state": v.state.value, pc_name: f"{r['pc']:#0{2 + 2 * v.word}x}",
               "symbol": machine.domain.symbolize(r["pc"]), "cs": f"{r['cs']:#06x}",
               "cr3_mfn": f"{v.cr3_mfn:#x}"}
        if isinstance(v, Vcpu64):
            row["mode"] = "kernel" if v.kernel_mode else "user"
            row["user_l4_mfn"] = f"{v.user_cr3_mfn:#x}"
        row.update(upcall_mask=v.upcall_mask, upcall_pending=v.upcall_pending, time_ns=machine.domain.time.now(v))
        rows.append(row)
    return Result(rows, table(rows))


def _xen_version(machine: Machine, args: list[str]) -> Result:
    v0 = machine.vcpus[0]
    data = {"version": f"{C.XEN_MAJOR}.{C.XEN_MINOR}{C.XEN_EXTRAVERSION}", "capabilities": capabilities(v0),
            "guest_type": machine.image.guest_type, "hypervisor_virt_start": f"{machine.domain.geo.hv_start:#x}",
            "paging": machine.domain.mode.name, "vm_assist": f"{machine.domain.vm_assist:#x}"}
    return Result(data, "\n".join(f"{k:<22} {v}" for k, v in data.items()))


def _xs_path(machine: Machine, text: str) -> str:
    try:
        return machine.xenstore.canonical(text, 0)
    except XsError as e:
        raise CommandError(f"bad xenstore path {text!r} ({e})") from None


def _xenstore_write(machine: Machine, args: list[str]) -> Result:
    if len(args) != 2:
        raise CommandError("usage: xenstore write PATH VALUE")
    path = _xs_path(machine, args[0])
    if path.startswith("@"):
        raise CommandError(f"{path}: a special watch path, not a node")
    machine.xenstore_input(path, args[1])
    return Result({"path": path, "value": args[1]},
                  f"{path} = {args[1]!r}: written as domain 0 when the guest next runs (recorded with the input)")


def _xenstore_read(machine: Machine, args: list[str]) -> Result:
    if len(args) != 1:
        raise CommandError("usage: xenstore read PATH")
    path = _xs_path(machine, args[0])
    value = machine.xenstore.read(path) if not path.startswith("@") else None
    if value is None:
        raise CommandError(f"{path}: no such node")
    text = value.decode("latin-1")
    return Result({"path": path, "value": text}, f"{path} = {text!r}")


def _xenstore_ls(machine: Machine, args: list[str]) -> Result:
    path = _xs_path(machine, args[0]) if args else "/"
    if not machine.xenstore.exists(path):
        raise CommandError(f"{path}: no such node")
    return Result(machine.xenstore.dump(path), machine.xenstore.format(path))


def register_core_commands(reg: CommandRegistry) -> None:
    reg.register("help", _help, "list commands, or show one command's usage", "[COMMAND]")
    reg.register("info vcpus", _info_vcpus, "state, EIP/RIP, mode and event mask of every vcpu")
    reg.register("xen version", _xen_version, "the emulated hypervisor's version and capabilities")
    reg.register("xenstore write", _xenstore_write, "write a xenstore node as the toolstack does (domain 0; fires "
                 "the guest's watches)", "PATH VALUE")
    reg.register("xenstore read", _xenstore_read, "a xenstore node's value", "PATH")
    reg.register("xenstore ls", _xenstore_ls, "a xenstore subtree, xenstore-ls style", "[PATH]")
