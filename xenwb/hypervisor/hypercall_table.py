"""The hypercall table: every hypercall of the x86 PV ABI on one screen, as
xen/include/hypercall-defs.c lists them: number, name, the handler for a 32-bit PV guest,
the handler for a 64-bit one, and the decoder that turns the arguments (and the guest
structures they point to) into plain data for the trace.

A number whose handler for the guest's width is None is -ENOSYS, as for a hypercall Xen does
not have (do_ni_hypercall: tmem_op, argo_op without CONFIG_ARGO); a number that is absent is
one Xen has and the workbench does not model (-ENOSYS too, said on stderr). The control-domain
interfaces are there and answer as XSM's dummy policy does for a domU (privileged.py). iret
is listed for its number: Xen handles it on its own path (it does not return to the caller),
and so does the domain. hvm_op (34) is absent: for a PV guest it is a subsystem of its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenwb.abi.constants import Hypercall as H
from xenwb.hypervisor import (
    callback,
    console,
    descriptors,
    event_channel,
    grant_table,
    memory_op,
    misc,
    mm,
    multicall,
    physdev,
    privileged,
    sched,
    vcpu_op,
    version,
)

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.hypervisor.xenarea import HvGeometry

Handler = Callable[..., int]
Decoder = Callable[..., Any]


@dataclass(frozen=True)
class Entry:
    nr: int
    name: str
    pv32: Handler | None
    pv64: Handler | None
    decoder: Decoder | None
    decoder64: Decoder | None = None             # when the 64-bit arguments differ
    decoder_arity: int = field(init=False)       # argument registers the decoder takes
    decoder64_arity: int = field(init=False)
    masks64: tuple[int, ...] | None = field(init=False)   # what of each register the pv64 handler sees
    narrow64: tuple[tuple[int, int], ...] = field(init=False)   # (index, mask) of its narrower parameters

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_arity", _arity(self.decoder) if self.decoder else 0)
        object.__setattr__(self, "decoder64_arity", _arity(self.decoder64) if self.decoder64 else 0)
        bits = ARG_BITS64.get(self.nr)
        masks = None if bits is None else tuple((1 << b) - 1 for b in bits + (64,) * (5 - len(bits)))
        object.__setattr__(self, "masks64", masks)
        object.__setattr__(self, "narrow64", tuple((i, m) for i, m in enumerate(masks or ()) if m >> 63 == 0))

    def decoder_for(self, word: int) -> tuple[Decoder | None, int]:
        """The decoder for a guest of this word size, and the argument registers it takes."""
        if word == 8 and self.decoder64 is not None:
            return self.decoder64, self.decoder64_arity
        return self.decoder, self.decoder_arity


# The 64-bit handlers' argument types (xen/include/hypercall-defs.c, the `do` prefix): the
# generated call_handlers_pv64 casts each register to its parameter's type, so an int or
# unsigned int argument is the register's low 32 bits, a domid_t its low 16. Hypercalls
# whose arguments are all unsigned long, pointers or 64-bit integers are not listed.
ARG_BITS64: dict[int, tuple[int, ...]] = {
    H.mmu_update: (64, 32, 64, 32),               # (ureqs, unsigned int count, pdone, unsigned int foreigndom)
    H.set_gdt: (64, 32),                          # (frame_list, unsigned int entries)
    H.fpu_taskswitch: (32,),                      # (int set)
    H.sched_op_compat: (32, 64),                  # (int cmd, unsigned long arg)
    H.set_debugreg: (32, 64),                     # (int reg, unsigned long value)
    H.get_debugreg: (32,),                        # (int reg)
    H.multicall: (64, 32),                        # (call_list, unsigned int nr_calls)
    H.xen_version: (32, 64),                      # (int cmd, arg)
    H.console_io: (32, 32, 64),                   # (unsigned int cmd, unsigned int count, buffer)
    H.grant_table_op: (32, 64, 32),               # (unsigned int cmd, uop, unsigned int count)
    H.vm_assist: (32, 32),                        # (unsigned int cmd, unsigned int type)
    H.update_va_mapping_otherdomain: (64, 64, 64, 16),   # (va, val64, flags, domid_t domid)
    H.vcpu_op: (32, 32, 64),                      # (int cmd, unsigned int vcpuid, arg)
    H.set_segment_base: (32, 64),                 # (unsigned int which, unsigned long base)
    H.mmuext_op: (64, 32, 64, 32),                # (uops, unsigned int count, pdone, unsigned int foreigndom)
    H.nmi_op: (32, 64),                           # (unsigned int cmd, arg)
    H.sched_op: (32, 64),                         # (int cmd, arg)
    H.callback_op: (32, 64),                      # (int cmd, arg)
    H.event_channel_op: (32, 64),                 # (int cmd, arg)
    H.physdev_op: (32, 64),                       # (int cmd, arg)
    H.xenpmu_op: (32, 64),                        # (unsigned int op, arg)
}


def _arity(fn: Callable[..., Any]) -> int:
    params = list(inspect.signature(fn).parameters.values())[1:]   # after the vcpu
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 5
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _e(nr: H, pv32: Handler | None, pv64: Handler | None, decoder: Decoder | None = None,
       decoder64: Decoder | None = None) -> Entry:
    return Entry(int(nr), nr.name, pv32, pv64, decoder, decoder64)


# Where the two ABIs pass the same arguments the handler serves both widths (it reads guest
# structures through the domain's layouts); a 64-bit handler of its own exists where the
# registers differ (one 64-bit register for a 32-bit pair, callbacks without selectors).
#       number                           pv32 handler                      pv64 handler / decoders
TABLE: dict[int, Entry] = {e.nr: e for e in (
    _e(H.set_trap_table,                  callback.do_set_trap_table,       callback.do_set_trap_table,
       callback.decode_set_trap_table),
    _e(H.mmu_update,                      mm.do_mmu_update,                 mm.do_mmu_update, mm.decode_mmu_update),
    _e(H.set_gdt,                         descriptors.do_set_gdt,           descriptors.do_set_gdt,
       descriptors.decode_set_gdt),
    _e(H.stack_switch,                    misc.do_stack_switch,             misc.do_stack_switch,
       misc.decode_stack_switch),
    _e(H.set_callbacks,                   callback.do_set_callbacks,        callback.do_set_callbacks64,
       callback.decode_set_callbacks, callback.decode_set_callbacks64),
    _e(H.fpu_taskswitch,                  misc.do_fpu_taskswitch,           misc.do_fpu_taskswitch,
       misc.decode_fpu_taskswitch),
    _e(H.sched_op_compat,                 sched.do_sched_op_compat,         sched.do_sched_op_compat,
       sched.decode_sched_op_compat),
    _e(H.platform_op,                     privileged.do_platform_op,        privileged.do_platform_op,
       privileged.decode_header),
    _e(H.set_debugreg,                    misc.do_set_debugreg,             misc.do_set_debugreg,
       misc.decode_set_debugreg),
    _e(H.get_debugreg,                    misc.do_get_debugreg,             misc.do_get_debugreg,
       misc.decode_get_debugreg),
    _e(H.update_descriptor,               descriptors.do_update_descriptor, descriptors.do_update_descriptor64,
       descriptors.decode_update_descriptor),
    _e(H.memory_op,                       memory_op.do_memory_op,           memory_op.do_memory_op,
       memory_op.decode_memory_op),
    _e(H.multicall,                       multicall.do_multicall,           multicall.do_multicall,
       multicall.decode_multicall),
    _e(H.update_va_mapping,               mm.do_update_va_mapping,          mm.do_update_va_mapping64,
       mm.decode_update_va_mapping),
    _e(H.set_timer_op,                    sched.do_set_timer_op,            sched.do_set_timer_op64,
       sched.decode_set_timer_op),
    _e(H.event_channel_op_compat,         event_channel.do_event_channel_op_compat,
       event_channel.do_event_channel_op_compat, event_channel.decode_event_channel_op_compat),
    _e(H.xen_version,                     version.do_xen_version,           version.do_xen_version,
       version.decode_xen_version),
    _e(H.console_io,                      console.do_console_io,            console.do_console_io,
       console.decode_console_io),
    _e(H.physdev_op_compat,               physdev.do_physdev_op_compat,     physdev.do_physdev_op_compat,
       physdev.decode_physdev_op_compat),
    _e(H.grant_table_op,                  grant_table.do_grant_table_op,    grant_table.do_grant_table_op,
       grant_table.decode_grant_table_op),
    _e(H.vm_assist,                       version.do_vm_assist,             version.do_vm_assist,
       version.decode_vm_assist),
    _e(H.update_va_mapping_otherdomain,   mm.do_update_va_mapping_otherdomain, mm.do_update_va_mapping_otherdomain64,
       mm.decode_update_va_mapping_otherdomain),
    _e(H.iret,                            None,                             None),
    _e(H.vcpu_op,                         vcpu_op.do_vcpu_op,               vcpu_op.do_vcpu_op, vcpu_op.decode_vcpu_op),
    _e(H.set_segment_base,                None,                             misc.do_set_segment_base,
       misc.decode_set_segment_base),
    _e(H.mmuext_op,                       mm.do_mmuext_op,                  mm.do_mmuext_op, mm.decode_mmuext_op),
    _e(H.xsm_op,                          misc.do_xsm_op,                   misc.do_xsm_op),
    _e(H.nmi_op,                          callback.do_nmi_op,               callback.do_nmi_op),
    _e(H.sched_op,                        sched.do_sched_op,                sched.do_sched_op, sched.decode_sched_op),
    _e(H.callback_op,                     callback.do_callback_op,          callback.do_callback_op64,
       callback.decode_callback_op),
    _e(H.xenoprof_op,                     privileged.do_xenoprof_op,        privileged.do_xenoprof_op),
    _e(H.event_channel_op,                event_channel.do_event_channel_op, event_channel.do_event_channel_op,
       event_channel.decode_event_channel_op),
    _e(H.physdev_op,                      physdev.do_physdev_op,            physdev.do_physdev_op,
       physdev.decode_physdev_op),
    _e(H.sysctl,                          privileged.do_sysctl,             privileged.do_sysctl,
       privileged.decode_header),
    _e(H.domctl,                          privileged.do_domctl,             privileged.do_domctl,
       privileged.decode_header),
    _e(H.kexec_op,                        privileged.do_kexec_op,           privileged.do_kexec_op),
    _e(H.tmem_op,                         None,                             None),
    _e(H.argo_op,                         None,                             None),
    _e(H.xenpmu_op,                       misc.do_xenpmu_op,                misc.do_xenpmu_op),
    _e(H.dm_op,                           privileged.do_dm_op,              privileged.do_dm_op),
    _e(H.hypfs_op,                        privileged.do_hypfs_op,           privileged.do_hypfs_op),
    _e(H.mca,                             privileged.do_mca,                privileged.do_mca),
    _e(H.paging_domctl_cont,              privileged.do_paging_domctl_cont, privileged.do_paging_domctl_cont),
)}


def takes_geometry(decoder: Decoder) -> bool:
    """Does this decoder take the guest's geometry (xenarea.HvGeometry: frozen, so it reads
    nothing that changes) instead of a vcpu? Its first parameter says: `geo`."""
    code = getattr(decoder, "__code__", None)
    return code is not None and code.co_argcount > 0 and code.co_varnames[0] == "geo"


def decode_args(vcpu: Vcpu | None, nr: int, args: tuple[int, ...], geo: HvGeometry | None = None) -> Any:
    """Decoded arguments of a call, or the raw registers when no decoder exists. Without a vcpu
    (trace_args.decode_later) only decoders of the registers and the geometry can run."""
    if geo is None:
        assert vcpu is not None
        geo = vcpu.domain.geo
    e = TABLE.get(nr)
    decoder, arity = (None, 0) if e is None else e.decoder_for(geo.word)
    if decoder is None:
        return {"args": [f"{a:#x}" for a in args]}
    try:
        return decoder(geo if decoder in _GEOMETRY_DECODERS else vcpu, *args[:arity])
    except Exception as ex:  # a decoder must never take the machine down
        return undecodable(ex, args)


# the decoders that take the geometry instead of a vcpu
_GEOMETRY_DECODERS: frozenset[Decoder] = frozenset(
    d for e in TABLE.values() for d in (e.decoder, e.decoder64) if d is not None and takes_geometry(d))


def undecodable(ex: Exception, args: tuple[int, ...]) -> dict[str, Any]:
    """What the trace shows of a call whose decoder failed: why, and the raw registers."""
    return {"undecodable": str(ex), "args": [f"{a:#x}" for a in args]}
