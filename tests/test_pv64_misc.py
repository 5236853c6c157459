"""The other hypercall families on the 64-bit ABI, success and error paths with Xen 4.17's
errnos: xen_version (#17), console_io (#18), memory_op (#12), multicall (#13, 64-byte entries),
sched_op (#29), set_timer_op (#15, one u64), vcpu_op (#24: initialise with the native
vcpu_guest_context, up/down/is_up, register_vcpu_info), event_channel_op (#32, 64-bit pending
words and selectors), grant_table_op (#20), unknown numbers and garbage pointers.

Argument structures are packed here with the -m64 offsets of the public headers (not with
xenwb's layouts, which they check). Sources: xen/common/kernel.c, xen/drivers/char/console.c,
xen/common/memory.c + xen/arch/x86/x86_64/mm.c (XENMEM_machphys_mapping: MACH2PHYS_NR_ENTRIES
- 1), xen/common/multicall.c + xen/arch/x86/pv/hypercall.c (pv_do_multicall_call),
xen/common/sched/core.c, xen/common/domain.c (common_vcpu_op, default_initialise_vcpu: -EFAULT,
then -EEXIST), xen/arch/x86/domain.c arch_set_info_guest (non-canonical addresses -> -EINVAL,
selectors RPL 3, IOPL virtualised, IF forced, no user L4 outside kernel mode -> -EINVAL, CR3 and
ctrlreg[1] must be roots), xen/common/event_channel.c + event_2l.c, xen/common/grant_table.c.
"""

from __future__ import annotations

import struct

import pytest
from support.harness64 import GUEST_KERNEL, NX, RW, US, A, Hv64, P, s64

from xenwb.abi import constants as C
from xenwb.abi.constants import Hypercall as H
from xenwb.abi.structs import PV64
from xenwb.hypervisor.state import VcpuState

EPERM, ENOENT, ESRCH, EFAULT, EBUSY, EEXIST, ENXIO, EINVAL, ENOSYS = -1, -2, -3, -14, -16, -17, -6, -22, -38
DOMID_SELF = 0x7FF0
NONCANON = 0x0000_8000_0000_0000
SI_PENDING, SI_MASK = 0x800, 0xA00        # shared_info.evtchn_pending / evtchn_mask (64 x u64)
VI_SEL = 8                                # vcpu_info.evtchn_pending_sel (u64)
EVTCHNOP = {"bind_virq": 1, "close": 3, "send": 4, "status": 5, "alloc_unbound": 6, "bind_ipi": 7,
            "unmask": 9}


@pytest.fixture
def hv() -> Hv64:
    return Hv64.example("pvdemo64")


@pytest.fixture
def hv2() -> Hv64:
    return Hv64.example("pvdemo64", vcpus=2)


# ================================================================ xen_version, console_io
def test_xen_version_64(hv: Hv64) -> None:
    """platform_parameters: an 8-byte virt_start = HYPERVISOR_VIRT_START; capabilities name
    xen-3.0-x86_64; get_features for a PV64 domU (kernel.c)."""
    assert hv.call(H.xen_version, 0, 0) == (C.XEN_MAJOR << 16) | C.XEN_MINOR
    arg = hv.put_u64(0)
    assert hv.call(H.xen_version, 5, arg) == 0 and hv.u64(arg) == 0xFFFF_8000_0000_0000
    caps = hv.alloc(1024)
    assert hv.call(H.xen_version, 3, caps) == 0
    assert b"xen-3.0-x86_64" in hv.get(caps, 1024).split(b"\0")[0]
    feat = hv.put_u32(0, 0xFFFFFFFF)
    assert hv.call(H.xen_version, 6, feat) == 0
    bits = hv.u32(feat + 4)
    assert bits & (1 << 5) and bits & (1 << 17) and not bits & (1 << 0) and not bits & (1 << 3)
    assert hv.call(H.xen_version, 7, 0) == 4096
    assert hv.call(H.xen_version, 5, NONCANON) == EFAULT


def test_console_io_64(hv: Hv64) -> None:
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    assert hv.call(H.console_io, 0, 6, hv.put(b"hello\n")) == 0
    assert b"".join(out) == b"hello\n"
    assert hv.call(H.console_io, 0, 4, 0xFFFF_8000_0000_0000) == EFAULT
    assert hv.call(H.console_io, 9, 0, 0) == ENOSYS


# ================================================================ memory_op
def test_memory_op_machphys_mapping_64(hv: Hv64) -> None:
    arg = hv.alloc(24)
    assert hv.call(H.memory_op, 12, arg) == 0
    assert hv.u64s(arg, 3) == [0xFFFF_8000_0000_0000, 0xFFFF_8040_0000_0000, (1 << 35) - 1]


def reservation64(hv: Hv64, extents: list[int], order: int = 0, domid: int = DOMID_SELF) -> tuple[int, int]:
    """xen_memory_reservation, -m64: extent_start@0 (8), nr_extents@8 (8), extent_order@16,
    mem_flags@20, domid@24; 32 bytes."""
    arr = hv.put_u64(*extents) if extents else 0
    return hv.put(struct.pack("<QQIIH6x", arr, len(extents), order, 0, domid)), arr


def test_memory_op_reservations_64(hv: Hv64) -> None:
    dom = hv.dom
    self_ = hv.put(struct.pack("<H", DOMID_SELF))
    n = dom.nr_pages
    assert hv.call(H.memory_op, 3, self_) == n
    mfn = hv.free_frame()
    pfn = dom.physmap.pfn(mfn)
    arg, _ = reservation64(hv, [mfn])
    assert hv.call(H.memory_op, 1, arg) == 1                 # decrease_reservation
    assert hv.call(H.memory_op, 3, self_) == n - 1 and not dom.mm.is_owned(mfn)
    assert hv.v.debug_read(0xFFFF_8000_0000_0000 + 8 * mfn, 8) == b"\xff" * 8     # M2P: INVALID
    arg, arr = reservation64(hv, [pfn])
    assert hv.call(H.memory_op, 6, arg) == 1                 # populate_physmap
    new = hv.u64(arr)
    assert dom.mm.is_owned(new) and dom.physmap.m2p(new) == pfn
    assert hv.v.debug_read(0xFFFF_8000_0000_0000 + 8 * new, 8) == struct.pack("<Q", pfn)
    # common/memory.c: another domain, or an unreadable argument, gives start_extent (0)
    arg, _ = reservation64(hv, [pfn], domid=7)
    assert hv.call(H.memory_op, 6, arg) == 0 and dom.physmap.m2p(new) == pfn
    assert hv.call(H.memory_op, 1, NONCANON) == 0
    assert hv.call(H.memory_op, 63, hv.alloc(32)) == ENOSYS


def test_memory_op_memory_map_64(hv: Hv64) -> None:
    """xen_memory_map {u32 nr_entries; handle buffer@8}: packed 20-byte e820 entries."""
    buf = hv.alloc(20 * 4)
    arg = hv.put(struct.pack("<I4xQ", 4, buf))
    assert hv.call(H.memory_op, 9, arg) == 0
    count = hv.u32(arg)
    entries = [struct.unpack("<QQI", hv.get(buf + 20 * i, 20)) for i in range(count)]
    assert (0, hv.dom.nr_pages * 4096, 1) in entries


# ================================================================ multicall
def test_multicall_64bit_entries(hv: Hv64) -> None:
    """64-byte entries {op, result, args[6]} of unsigned longs: a u64 PTE travels whole in one
    argument; results are 64-bit signed longs; a failing entry does not stop the batch; a
    nested multicall -> -EINVAL; an unknown op -> -ENOSYS."""
    assert PV64.multicall_entry.size() == 64
    va = hv.scratch_page()
    frame = hv.free_frame()
    pte = (frame << 12) | P | RW | A | NX
    rc, _, results = hv.multicall(
        (H.xen_version, 0, 0),
        (H.update_va_mapping, va, pte, C.UVMF_INVLPG),
        (H.update_va_mapping, 0xFFFF_8000_0000_0000, pte, 0),
        (H.set_segment_base, 0, 0x5555_0000),
        (H.multicall, 0, 0),
        (77, 0),
        (H.stack_switch, 0xE02B, 0xFFFF_FFFF_8001_0000),
    )
    assert rc == 0
    assert results == [(C.XEN_MAJOR << 16) | C.XEN_MINOR, 0, EINVAL, 0, EINVAL, ENOSYS, 0]
    assert hv.read_pte(va) == pte | US | GUEST_KERNEL
    assert hv.v.cpu.fs_base == 0x5555_0000 and hv.v.kernel_sp == 0xFFFF_FFFF_8001_0000


def test_multicall_result_is_a_full_word(hv: Hv64) -> None:
    """get_debugreg of a 64-bit DR0 comes back in all 8 bytes of `result`."""
    rc, _, results = hv.multicall((H.set_debugreg, 0, 0xFFFF_FFFF_8000_1234), (H.get_debugreg, 0))
    assert rc == 0 and results[0] == 0 and results[1] & ((1 << 64) - 1) == 0xFFFF_FFFF_8000_1234


def test_multicall_bad_list(hv: Hv64) -> None:
    assert hv.call(H.multicall, 0x1000, 1) == EFAULT
    assert hv.call(H.multicall, NONCANON, 1) == EFAULT
    assert hv.call(H.multicall, 0x1000, 0) == 0


# ================================================================ sched_op, set_timer_op
def test_sched_op_64(hv: Hv64) -> None:
    """sched_poll -m64 {handle ports@0; u32 nr_ports@8; u64 timeout@16}: nr_ports > 128 ->
    -EINVAL; shutdown {u32 reason}; unknown -> -ENOSYS."""
    ports = hv.put_u32(*range(1, 130))
    assert hv.call(H.sched_op, 3, hv.put(struct.pack("<QI4xQ", ports, 129, 0))) == EINVAL
    assert hv.call(H.sched_op, 99, 0) == ENOSYS
    assert hv.call(H.sched_op, 2, NONCANON) == EFAULT
    assert hv.call(H.sched_op, 2, hv.put_u32(1)) == 0 and hv.dom.shutdown_reason == 1


def test_set_timer_op_one_u64(hv: Hv64) -> None:
    """set_timer_op(u64 timeout) on 64-bit: one argument register (compat: two halves)."""
    t = 0x1_2345_6789
    assert hv.call(H.set_timer_op, t) == 0
    assert hv.v.singleshot_deadline == t
    assert hv.call(H.set_timer_op, 0) == 0 and hv.v.singleshot_deadline is None


# ================================================================ vcpu_op
def vgc(hv: Hv64, **kw) -> PV64.vcpu_guest_context:
    """A native vcpu_guest_context as Linux's cpu_initialize_context fills it (kernel mode,
    the current kernel L4, Xen's flat selectors)."""
    c = PV64.vcpu_guest_context()
    c.flags = C.VGCF_in_kernel | C.VGCF_failsafe_disables_events | C.VGCF_syscall_disables_events
    r = c.user_regs
    r.rip, r.rsp, r.rdi, r.rflags = 0xFFFF_FFFF_8000_0100, 0xFFFF_FFFF_8004_0000, 1, 0x3202
    r.cs, r.ss = 0xE030, 0xE028
    r.r15 = 0x1515
    c.kernel_ss, c.kernel_sp = 0xE028, 0xFFFF_FFFF_8004_0000
    c.ctrlreg[3] = hv.v.cr3_mfn << 12
    c.event_callback_eip = 0xFFFF_FFFF_8000_0200
    c.failsafe_callback_eip = 0xFFFF_FFFF_8000_0300
    c.syscall_callback_eip = 0xFFFF_FFFF_8000_0400
    c.gs_base_kernel, c.gs_base_user, c.fs_base = 0xFFFF_FFFF_8001_9000, 0x6000, 0x7000
    c.trap_ctxt[14].vector, c.trap_ctxt[14].flags, c.trap_ctxt[14].cs = 14, 4, 0xE030
    c.trap_ctxt[14].address = 0xFFFF_FFFF_8000_0140
    for k, val in kw.items():
        obj, _, field = k.rpartition("__")
        setattr(getattr(c, obj) if obj else c, field, val)
    return c


def initialise(hv: Hv64, ctx: PV64.vcpu_guest_context, vcpu: int = 1) -> int:
    assert PV64.vcpu_guest_context.size() == 0x1430
    return hv.call(H.vcpu_op, 0, vcpu, hv.put(bytes(ctx)))


def test_vcpu_op_initialise_native_context(hv2: Hv64) -> None:
    hv = hv2
    v1 = hv.dom.vcpus[1]
    assert initialise(hv, vgc(hv)) == 0
    assert v1.initialised and v1.state is VcpuState.down and v1.kernel_mode
    r, _ = v1.guest_regs()
    assert (r["rip"], r["rsp"], r["rdi"], r["r15"]) == (0xFFFF_FFFF_8000_0100, 0xFFFF_FFFF_8004_0000, 1, 0x1515)
    assert (r["cs"], r["ss"]) == (0xE033, 0xE02B)                 # RPL raised to 3
    assert r["rflags"] & 0x200 and not r["rflags"] & 0x3000 and v1.iopl == 3   # IOPL virtualised
    assert v1.cr3_mfn == hv.v.cr3_mfn and v1.cpu.reg("cr3") == hv.v.cr3_mfn << 12
    assert (v1.kernel_ss, v1.kernel_sp) == (0xE02B, 0xFFFF_FFFF_8004_0000)
    assert (v1.event_eip, v1.failsafe_eip, v1.syscall_eip) == (
        0xFFFF_FFFF_8000_0200, 0xFFFF_FFFF_8000_0300, 0xFFFF_FFFF_8000_0400)
    assert v1.failsafe_mask and v1.syscall_mask
    assert (v1.cpu.gs_base, v1.cpu.shadow_gs_base, v1.cpu.fs_base) == (0xFFFF_FFFF_8001_9000, 0x6000, 0x7000)
    t = v1.trap_ctxt[14]
    assert (t.address, t.cs, t.flags) == (0xFFFF_FFFF_8000_0140, 0xE033, 4)
    assert hv.call(H.vcpu_op, 3, 1, 0) == 0
    assert initialise(hv, vgc(hv)) == EEXIST
    assert hv.call(H.vcpu_op, 1, 1, 0) == 0 and hv.call(H.vcpu_op, 3, 1, 0) == 1
    assert hv.call(H.vcpu_op, 2, 1, 0) == 0 and hv.call(H.vcpu_op, 3, 1, 0) == 0


@pytest.mark.parametrize("field", ["user_regs__rip", "user_regs__rsp", "kernel_sp", "fs_base", "gs_base_kernel",
                                   "gs_base_user", "event_callback_eip", "failsafe_callback_eip",
                                   "syscall_callback_eip"])
def test_vcpu_op_initialise_non_canonical(hv2: Hv64, field: str) -> None:
    assert initialise(hv2, vgc(hv2, **{field: NONCANON})) == EINVAL
    assert not hv2.dom.vcpus[1].initialised


def test_vcpu_op_initialise_errors(hv2: Hv64) -> None:
    """A non-canonical trap address, a misaligned LDT, more than 8192 LDT entries, a user-mode
    start without a user L4, a CR3 that is no L4 root -> -EINVAL; an unreadable context
    -> -EFAULT; a vcpu that does not exist -> -ENOENT; VCPUOP_up before initialise -> -EINVAL."""
    hv = hv2
    bad_trap = vgc(hv)
    bad_trap.trap_ctxt[3].address = NONCANON
    assert initialise(hv, bad_trap) == EINVAL
    assert initialise(hv, vgc(hv, ldt_base=0x1008, ldt_ents=1)) == EINVAL
    assert initialise(hv, vgc(hv, ldt_base=0x1000, ldt_ents=8193)) == EINVAL
    assert initialise(hv, vgc(hv, flags=0)) == EINVAL
    assert initialise(hv, _with_cr3(hv, hv.boot_tables()[1][0])) == EINVAL
    assert initialise(hv, _with_cr3(hv, hv.mfn_of(hv.scratch_page()))) == EINVAL
    assert hv.call(H.vcpu_op, 0, 1, 0x1000) == EFAULT
    assert hv.call(H.vcpu_op, 0, 5, hv.put(bytes(vgc(hv)))) == ENOENT
    assert hv.call(H.vcpu_op, 1, 1, 0) == EINVAL
    assert not hv.dom.vcpus[1].initialised


def _with_cr3(hv: Hv64, mfn: int) -> PV64.vcpu_guest_context:
    c = vgc(hv)
    c.ctrlreg[3] = mfn << 12
    return c


def test_vcpu_op_initialise_user_mode_with_user_l4(hv2: Hv64) -> None:
    """VGCF_in_kernel clear with ctrlreg[1] = a user L4: the vcpu starts in user mode on that
    L4, with the user GS base active."""
    hv = hv2
    user = hv.kernel_l4_copy()
    c = vgc(hv, flags=0)
    c.ctrlreg[1] = user << 12
    assert initialise(hv, c) == 0
    v1 = hv.dom.vcpus[1]
    assert not v1.kernel_mode and v1.user_cr3_mfn == user and v1.active_top_mfn == user
    assert v1.cpu.reg("cr3") == user << 12
    assert v1.cpu.gs_base == 0x6000 and v1.cpu.shadow_gs_base == 0xFFFF_FFFF_8001_9000


def test_vcpu_op_register_vcpu_info_64(hv: Hv64) -> None:
    """{u64 mfn; u32 offset; u32 rsvd}: the old contents are copied, all 64 selector bits and
    upcall_pending set; the offset must leave room for the 64-byte struct and be 8-byte
    aligned (alignof(vcpu_info_t) on x86_64) -> -ENXIO otherwise."""
    dom = hv.dom
    dom.mem.write_u64(hv.v.vcpu_info_maddr + 0x10, 0xCAFE_B000_0000_1234)    # arch.cr2
    mfn = hv.free_frame()
    assert hv.call(H.vcpu_op, 10, 0, hv.put(struct.pack("<QII", mfn, 4096 - 56, 0))) == ENXIO
    assert hv.call(H.vcpu_op, 10, 0, hv.put(struct.pack("<QII", mfn, 4, 0))) == ENXIO
    assert hv.call(H.vcpu_op, 10, 0, hv.put(struct.pack("<QII", mfn, 128, 0))) == 0
    new = (mfn << 12) + 128
    assert hv.v.vcpu_info_maddr == new
    data = dom.mem.read(new, 64)
    assert data[0] == 1 and data[1] == 1
    assert data[8:16] == b"\xff" * 8
    assert struct.unpack_from("<Q", data, 0x10)[0] == 0xCAFE_B000_0000_1234
    assert hv.call(H.vcpu_op, 10, 0, hv.put(struct.pack("<QII", hv.free_frame(), 0, 0))) == EINVAL
    assert hv.v.vcpu_info_maddr == new


def test_vcpu_op_runstate_area_and_timers_64(hv: Hv64) -> None:
    area = hv.alloc(48)
    assert hv.call(H.vcpu_op, 5, 0, hv.put_u64(area)) == 0
    assert struct.unpack("<i", hv.get(area, 4))[0] == 0                  # RUNSTATE_running
    assert hv.call(H.vcpu_op, 5, 0, hv.put_u64(0xFFFF_8000_0000_0000)) == EFAULT
    assert hv.call(H.vcpu_op, 8, 0, hv.put(struct.pack("<QI4x", 1 << 40, 0))) == 0
    assert hv.v.singleshot_deadline == 1 << 40
    assert hv.call(H.vcpu_op, 9, 0, 0) == 0 and hv.v.singleshot_deadline is None
    assert hv.call(H.vcpu_op, 6, 0, hv.put_u64(999_999)) == EINVAL            # < 1 ms
    assert hv.call(H.vcpu_op, 3, 4, 0) == ENOENT


# ================================================================ event channels
def evtchn(hv: Hv64, cmd: str, fmt: str, *vals: int) -> tuple[int, tuple]:
    arg = hv.put(struct.pack(fmt, *vals))
    rc = hv.call(H.event_channel_op, EVTCHNOP[cmd], arg)
    return rc, struct.unpack(fmt, hv.get(arg, struct.calcsize(fmt)))


def word_bit(hv: Hv64, base: int, port: int) -> bool:
    return bool(hv.dom.mem.read_u64((hv.dom.shared_info_mfn << 12) + base + 8 * (port // 64)) >> (port % 64) & 1)


def test_evtchn_ports_in_64bit_words(hv: Hv64) -> None:
    """bind_ipi + send: the port's bit in the 64-bit pending word, the selector bit port/64 in
    the u64 evtchn_pending_sel, upcall_pending; a masked port raises no upcall until unmask."""
    si = hv.dom.shared_info_mfn << 12
    ports = []
    for _ in range(70):                                  # past the first 64-bit word
        rc, out = evtchn(hv, "bind_ipi", "<II", 0, 0)
        assert rc == 0
        ports.append(out[1])
    port = max(ports)
    assert port >= 64
    assert evtchn(hv, "send", "<I", port)[0] == 0
    assert word_bit(hv, SI_PENDING, port)
    assert hv.dom.mem.read_u64(hv.v.vcpu_info_maddr + VI_SEL) == 1 << (port // 64)
    assert hv.v.upcall_pending == 1
    low = min(ports)
    word = hv.dom.mem.read_u64(si + SI_MASK)
    hv.dom.mem.write_u64(si + SI_MASK, word | 1 << low)
    hv.v.upcall_pending = 0
    hv.dom.mem.write_u64(hv.v.vcpu_info_maddr + VI_SEL, 0)
    assert evtchn(hv, "send", "<I", low)[0] == 0
    assert word_bit(hv, SI_PENDING, low) and hv.v.upcall_pending == 0
    assert evtchn(hv, "unmask", "<I", low)[0] == 0
    assert not word_bit(hv, SI_MASK, low) and hv.v.upcall_pending == 1
    assert hv.dom.mem.read_u64(hv.v.vcpu_info_maddr + VI_SEL) & 1


def test_evtchn_virq_status_close_errors(hv: Hv64) -> None:
    rc, out = evtchn(hv, "bind_virq", "<III", 0, 0, 0)
    assert rc == 0
    port = out[2]
    assert evtchn(hv, "bind_virq", "<III", 0, 0, 0)[0] == EEXIST
    assert evtchn(hv, "bind_virq", "<III", 1, 3, 0)[0] == ENOENT
    rc, st = evtchn(hv, "status", "<H2xIIIII", DOMID_SELF, port, 0, 0, 0, 0)
    assert rc == 0 and st[2:5] == (4, 0, 0)                  # ECS_VIRQ on vcpu 0, VIRQ_TIMER
    assert evtchn(hv, "close", "<I", port)[0] == 0
    assert evtchn(hv, "close", "<I", port)[0] == EINVAL
    assert evtchn(hv, "alloc_unbound", "<HHI", DOMID_SELF, 0, 0)[0] == 0
    assert hv.call(H.event_channel_op, EVTCHNOP["bind_ipi"], NONCANON) == EFAULT


# ================================================================ grant tables
def test_grant_table_64(hv: Hv64) -> None:
    """gnttab_setup_table -m64 {u16 dom; u32 nr_frames@4; i16 status@8; handle frame_list@16}
    gives 8-byte frame numbers the guest maps; gnttab_query_size; set_version 1."""
    frames = hv.put_u64(0)
    arg = hv.put(struct.pack("<H2xIh6xQ", DOMID_SELF, 1, 0x55, frames))
    assert hv.call(H.grant_table_op, 2, arg, 1) == 0
    assert struct.unpack("<h", hv.get(arg + 8, 2))[0] == 0
    mfn = hv.u64(frames)
    assert mfn == hv.dom.gnttab.frame_mfns[0]
    va = hv.scratch_page()
    assert hv.uvm(va, (mfn << 12) | P | RW | A, C.UVMF_INVLPG) == 0
    assert struct.unpack("<HHI", hv.get(va, 8))[0] & 1                # entry 0: the console grant
    q = hv.put(struct.pack("<H2xIIh2x", DOMID_SELF, 0, 0, 0x55))
    assert hv.call(H.grant_table_op, 6, q, 1) == 0
    nr, mx, st = struct.unpack("<IIh", hv.get(q + 4, 10))
    assert (nr, st) == (1, 0) and mx >= 1
    assert hv.call(H.grant_table_op, 2, hv.put(struct.pack("<H2xIh6xQ", DOMID_SELF, 1, 0, NONCANON)), 1) == EFAULT
    assert hv.call(H.grant_table_op, 2, arg, 2) == EINVAL


# ================================================================ unknown numbers, garbage
GARBAGE = [0x1000, NONCANON, 0xFFFF_8000_0000_0000, 0xFFFF_87FF_FFFF_F000]


@pytest.mark.parametrize("ptr", GARBAGE, ids=[hex(p) for p in GARBAGE])
def test_garbage_pointers_efault_64(hv: Hv64, ptr: int) -> None:
    """copy_from/to_guest on an unmapped, non-canonical or hypervisor-range address -> -EFAULT."""
    calls = [
        (H.set_trap_table, ptr), (H.mmu_update, ptr, 1, 0, DOMID_SELF), (H.mmuext_op, ptr, 1, 0, DOMID_SELF),
        (H.set_gdt, ptr, 1), (H.multicall, ptr, 1), (H.console_io, 0, 8, ptr),
        (H.xen_version, 5, ptr), (H.memory_op, 3, ptr), (H.callback_op, 0, ptr), (H.vcpu_op, 10, 0, ptr),
        (H.event_channel_op, EVTCHNOP["bind_ipi"], ptr), (H.physdev_op, 6, ptr), (H.grant_table_op, 6, ptr, 1),
        (H.sched_op, 2, ptr), (H.nmi_op, 0, ptr),
    ]
    for nr, *args in calls:
        assert hv.call(nr, *args) == EFAULT, f"{H(nr).name}{tuple(hex(a) for a in args)}"
    assert hv.dom.crash_report is None and hv.dom.shutdown_reason is None


def test_unknown_and_pv32_only_numbers(hv: Hv64, capsys) -> None:
    """Numbers Xen's pv64 table lacks -> -ENOSYS (the iret number is not callable this way:
    its handler is the syscall path's)."""
    assert hv.call(45, 1) == ENOSYS
    assert hv.call(23, 0) == ENOSYS
    assert s64(hv.call(H.xen_version, 0, 0)) > 0
