/*
 * abicheck/layout.c - print the offset and size of every structure field
 * and the value of every constant pvdemo64 takes from the Xen ABI.
 *
 * Built twice by run.sh on the host with gcc -m64: once against Xen's public
 * headers (Debian libxen-dev, /usr/include/xen; -DUSE_XEN_HEADERS), once
 * against pvdemo64's own xen.h.  The two outputs must be identical.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef USE_XEN_HEADERS
#include <xen/xen.h>
#include <xen/callback.h>
#include <xen/elfnote.h>
#include <xen/event_channel.h>
#include <xen/features.h>
#include <xen/memory.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/version.h>
#include <xen/errno.h>
#else
#define CONFIG_HYPERCALL_PAGE 0
#include "../xen.h"
#endif

#define F(type, field) \
    printf("%-28s %-36s off %#6zx size %#5zx\n", #type, #field, offsetof(type, field), \
           sizeof(((type *)0)->field))
#define S(type) printf("%-28s %-36s size %#zx\n", #type, "(struct)", sizeof(type))
#define C(name) printf("%-28s %-36s %#llx\n", "const", #name, (unsigned long long)(name))

int main(void)
{
    S(struct start_info);
    F(struct start_info, magic);
    F(struct start_info, nr_pages);
    F(struct start_info, shared_info);
    F(struct start_info, flags);
    F(struct start_info, store_mfn);
    F(struct start_info, store_evtchn);
    F(struct start_info, console.domU.mfn);
    F(struct start_info, console.domU.evtchn);
    F(struct start_info, pt_base);
    F(struct start_info, nr_pt_frames);
    F(struct start_info, mfn_list);
    F(struct start_info, mod_start);
    F(struct start_info, mod_len);
    F(struct start_info, cmd_line);
    F(struct start_info, first_p2m_pfn);
    F(struct start_info, nr_p2m_frames);

    S(struct vcpu_time_info);
    F(struct vcpu_time_info, version);
    F(struct vcpu_time_info, tsc_timestamp);
    F(struct vcpu_time_info, system_time);
    F(struct vcpu_time_info, tsc_to_system_mul);
    F(struct vcpu_time_info, tsc_shift);
    F(struct vcpu_time_info, flags);
    S(struct vcpu_info);
    F(struct vcpu_info, evtchn_upcall_pending);
    F(struct vcpu_info, evtchn_upcall_mask);
    F(struct vcpu_info, evtchn_pending_sel);
    F(struct vcpu_info, arch.cr2);
    F(struct vcpu_info, time);
    S(struct shared_info);
    F(struct shared_info, vcpu_info);
    F(struct shared_info, evtchn_pending);
    F(struct shared_info, evtchn_mask);
    F(struct shared_info, wc_version);
    F(struct shared_info, wc_sec);
    F(struct shared_info, wc_nsec);
    F(struct shared_info, wc_sec_hi);
    F(struct shared_info, arch.max_pfn);
    F(struct shared_info, arch.pfn_to_mfn_frame_list_list);
    F(struct shared_info, arch.nmi_reason);
    F(struct shared_info, arch.p2m_cr3);
    F(struct shared_info, arch.p2m_vaddr);
    F(struct shared_info, arch.p2m_generation);

    S(struct trap_info);
    F(struct trap_info, vector);
    F(struct trap_info, flags);
    F(struct trap_info, cs);
    F(struct trap_info, address);
    S(struct mmu_update);
    F(struct mmu_update, ptr);
    F(struct mmu_update, val);
    S(struct mmuext_op);
    F(struct mmuext_op, cmd);
    F(struct mmuext_op, arg1.mfn);
    F(struct mmuext_op, arg1.linear_addr);
    F(struct mmuext_op, arg2.nr_ents);
    F(struct mmuext_op, arg2.vcpumask);
    S(struct multicall_entry);
    F(struct multicall_entry, op);
    F(struct multicall_entry, result);
    F(struct multicall_entry, args);
    S(struct callback_register);
    F(struct callback_register, type);
    F(struct callback_register, flags);
    F(struct callback_register, address);
    S(struct callback_unregister);
    S(struct sched_shutdown);
    S(struct sched_poll);
    F(struct sched_poll, ports);
    F(struct sched_poll, nr_ports);
    F(struct sched_poll, timeout);
    S(struct xen_feature_info);
    F(struct xen_feature_info, submap_idx);
    F(struct xen_feature_info, submap);
    S(struct xen_platform_parameters);
    F(struct xen_platform_parameters, virt_start);
    S(struct xen_machphys_mapping);
    F(struct xen_machphys_mapping, v_start);
    F(struct xen_machphys_mapping, v_end);
    F(struct xen_machphys_mapping, max_mfn);

    S(struct evtchn_alloc_unbound);
    F(struct evtchn_alloc_unbound, dom);
    F(struct evtchn_alloc_unbound, remote_dom);
    F(struct evtchn_alloc_unbound, port);
    S(struct evtchn_bind_interdomain);
    F(struct evtchn_bind_interdomain, remote_dom);
    F(struct evtchn_bind_interdomain, remote_port);
    F(struct evtchn_bind_interdomain, local_port);
    S(struct evtchn_bind_virq);
    F(struct evtchn_bind_virq, virq);
    F(struct evtchn_bind_virq, vcpu);
    F(struct evtchn_bind_virq, port);
    S(struct evtchn_bind_ipi);
    F(struct evtchn_bind_ipi, vcpu);
    F(struct evtchn_bind_ipi, port);
    S(struct evtchn_bind_vcpu);
    F(struct evtchn_bind_vcpu, port);
    F(struct evtchn_bind_vcpu, vcpu);
    S(struct evtchn_status);
    F(struct evtchn_status, dom);
    F(struct evtchn_status, port);
    F(struct evtchn_status, status);
    F(struct evtchn_status, vcpu);
    F(struct evtchn_status, u.unbound.dom);
    F(struct evtchn_status, u.interdomain.dom);
    F(struct evtchn_status, u.interdomain.port);
    F(struct evtchn_status, u.virq);

    S(struct vcpu_runstate_info);
    F(struct vcpu_runstate_info, state);
    F(struct vcpu_runstate_info, state_entry_time);
    F(struct vcpu_runstate_info, time);
    S(struct vcpu_register_runstate_memory_area);
    F(struct vcpu_register_runstate_memory_area, addr.v);
    S(struct vcpu_set_periodic_timer);
    S(struct vcpu_set_singleshot_timer);
    F(struct vcpu_set_singleshot_timer, timeout_abs_ns);
    F(struct vcpu_set_singleshot_timer, flags);
    S(struct vcpu_register_vcpu_info);
    F(struct vcpu_register_vcpu_info, mfn);
    F(struct vcpu_register_vcpu_info, offset);
    F(struct vcpu_register_vcpu_info, rsvd);

    S(struct cpu_user_regs);
    F(struct cpu_user_regs, r15);
    F(struct cpu_user_regs, r12);
    F(struct cpu_user_regs, rbp);
    F(struct cpu_user_regs, rbx);
    F(struct cpu_user_regs, r11);
    F(struct cpu_user_regs, r8);
    F(struct cpu_user_regs, rax);
    F(struct cpu_user_regs, rcx);
    F(struct cpu_user_regs, rdx);
    F(struct cpu_user_regs, rsi);
    F(struct cpu_user_regs, rdi);
    F(struct cpu_user_regs, error_code);
    F(struct cpu_user_regs, entry_vector);
    F(struct cpu_user_regs, rip);
    F(struct cpu_user_regs, cs);
    F(struct cpu_user_regs, saved_upcall_mask);
    F(struct cpu_user_regs, rflags);
    F(struct cpu_user_regs, rsp);
    F(struct cpu_user_regs, ss);
    F(struct cpu_user_regs, es);
    F(struct cpu_user_regs, ds);
    F(struct cpu_user_regs, fs);
    F(struct cpu_user_regs, gs);
    S(struct vcpu_guest_context);
    F(struct vcpu_guest_context, fpu_ctxt);
    F(struct vcpu_guest_context, flags);
    F(struct vcpu_guest_context, user_regs);
    F(struct vcpu_guest_context, trap_ctxt);
    F(struct vcpu_guest_context, ldt_base);
    F(struct vcpu_guest_context, ldt_ents);
    F(struct vcpu_guest_context, gdt_frames);
    F(struct vcpu_guest_context, gdt_ents);
    F(struct vcpu_guest_context, kernel_ss);
    F(struct vcpu_guest_context, kernel_sp);
    F(struct vcpu_guest_context, ctrlreg);
    F(struct vcpu_guest_context, debugreg);
    F(struct vcpu_guest_context, event_callback_eip);
    F(struct vcpu_guest_context, failsafe_callback_eip);
    F(struct vcpu_guest_context, syscall_callback_eip);
    F(struct vcpu_guest_context, vm_assist);
    F(struct vcpu_guest_context, fs_base);
    F(struct vcpu_guest_context, gs_base_kernel);
    F(struct vcpu_guest_context, gs_base_user);
    S(struct iret_context);
    F(struct iret_context, rax);
    F(struct iret_context, r11);
    F(struct iret_context, rcx);
    F(struct iret_context, flags);
    F(struct iret_context, rip);
    F(struct iret_context, cs);
    F(struct iret_context, rflags);
    F(struct iret_context, rsp);
    F(struct iret_context, ss);

    C(XEN_ELFNOTE_ENTRY); C(XEN_ELFNOTE_HYPERCALL_PAGE); C(XEN_ELFNOTE_VIRT_BASE);
    C(XEN_ELFNOTE_PADDR_OFFSET); C(XEN_ELFNOTE_XEN_VERSION); C(XEN_ELFNOTE_GUEST_OS);
    C(XEN_ELFNOTE_GUEST_VERSION); C(XEN_ELFNOTE_LOADER); C(XEN_ELFNOTE_FEATURES);
    C(XEN_ELFNOTE_SUSPEND_CANCEL);
    C(__HYPERVISOR_set_trap_table); C(__HYPERVISOR_mmu_update); C(__HYPERVISOR_set_gdt);
    C(__HYPERVISOR_stack_switch); C(__HYPERVISOR_set_callbacks); C(__HYPERVISOR_update_descriptor);
    C(__HYPERVISOR_memory_op); C(__HYPERVISOR_multicall); C(__HYPERVISOR_update_va_mapping);
    C(__HYPERVISOR_set_timer_op); C(__HYPERVISOR_xen_version); C(__HYPERVISOR_console_io);
    C(__HYPERVISOR_vm_assist); C(__HYPERVISOR_iret); C(__HYPERVISOR_vcpu_op);
    C(__HYPERVISOR_set_segment_base); C(__HYPERVISOR_mmuext_op); C(__HYPERVISOR_sched_op);
    C(__HYPERVISOR_callback_op); C(__HYPERVISOR_event_channel_op);
    C(FLAT_RING3_CS32); C(FLAT_RING3_CS64); C(FLAT_RING3_DS32); C(FLAT_RING3_SS64);
    C(FLAT_KERNEL_CS); C(FLAT_KERNEL_SS); C(FLAT_KERNEL_DS); C(FLAT_USER_CS); C(FLAT_USER_SS);
    C(HYPERVISOR_VIRT_START); C(HYPERVISOR_VIRT_END); C(MACH2PHYS_VIRT_START); C(MACH2PHYS_VIRT_END);
    C(SEGBASE_FS); C(SEGBASE_GS_USER); C(SEGBASE_GS_KERNEL); C(SEGBASE_GS_USER_SEL);
    C(VGCF_in_syscall); C(xen_pfn_to_cr3(0x12345)); C(xen_cr3_to_pfn(0x12345000));
    C(MMU_NORMAL_PT_UPDATE); C(MMU_MACHPHYS_UPDATE);
    C(MMUEXT_PIN_L1_TABLE); C(MMUEXT_PIN_L2_TABLE); C(MMUEXT_PIN_L3_TABLE); C(MMUEXT_PIN_L4_TABLE);
    C(MMUEXT_UNPIN_TABLE); C(MMUEXT_NEW_BASEPTR); C(MMUEXT_TLB_FLUSH_LOCAL); C(MMUEXT_INVLPG_LOCAL);
    C(MMUEXT_TLB_FLUSH_MULTI); C(MMUEXT_INVLPG_MULTI); C(MMUEXT_TLB_FLUSH_ALL); C(MMUEXT_INVLPG_ALL);
    C(MMUEXT_NEW_USER_BASEPTR);
    C(UVMF_NONE); C(UVMF_TLB_FLUSH); C(UVMF_INVLPG); C(UVMF_LOCAL); C(UVMF_ALL);
    C(CONSOLEIO_write);
    C(VMASST_CMD_enable); C(VMASST_CMD_disable); C(VMASST_TYPE_4gb_segments);
    C(VMASST_TYPE_writable_pagetables); C(VMASST_TYPE_pae_extended_cr3);
    C(VMASST_TYPE_runstate_update_flag); C(VMASST_TYPE_m2p_strict);
    C(DOMID_SELF); C(SIF_PRIVILEGED); C(SIF_INITDOMAIN); C(SIF_MOD_START_PFN); C(SIF_VIRT_P2M_4TOOLS);
    C(MAX_GUEST_CMDLINE); C(XEN_LEGACY_MAX_VCPUS);
    C(XENVER_version); C(XENVER_capabilities); C(XENVER_platform_parameters); C(XENVER_get_features);
    C(XENFEAT_writable_page_tables); C(XENFEAT_auto_translated_physmap);
    C(XENFEAT_supervisor_mode_kernel); C(XENFEAT_pae_pgdir_above_4gb);
    C(XENFEAT_mmu_pt_update_preserve_ad);
    C(XENMEM_machphys_mapping);
    C(CALLBACKTYPE_event); C(CALLBACKTYPE_failsafe); C(CALLBACKTYPE_syscall); C(CALLBACKTYPE_sysenter);
    C(CALLBACKTYPE_syscall32); C(CALLBACKF_mask_events); C(CALLBACKOP_register); C(CALLBACKOP_unregister);
    C(SCHEDOP_yield); C(SCHEDOP_block); C(SCHEDOP_shutdown); C(SCHEDOP_poll);
    C(SHUTDOWN_poweroff); C(SHUTDOWN_crash);
    C(EVTCHNOP_bind_interdomain); C(EVTCHNOP_bind_virq); C(EVTCHNOP_close); C(EVTCHNOP_send);
    C(EVTCHNOP_status); C(EVTCHNOP_alloc_unbound); C(EVTCHNOP_bind_ipi); C(EVTCHNOP_bind_vcpu);
    C(EVTCHNOP_unmask); C(EVTCHNSTAT_closed); C(EVTCHNSTAT_unbound); C(EVTCHNSTAT_interdomain);
    C(EVTCHNSTAT_pirq); C(EVTCHNSTAT_virq); C(EVTCHNSTAT_ipi); C(VIRQ_TIMER); C(VIRQ_CONSOLE);
    C(VCPUOP_initialise); C(VCPUOP_up); C(VCPUOP_down); C(VCPUOP_is_up); C(VCPUOP_get_runstate_info);
    C(VCPUOP_register_runstate_memory_area); C(VCPUOP_set_periodic_timer);
    C(VCPUOP_stop_periodic_timer); C(VCPUOP_set_singleshot_timer); C(VCPUOP_stop_singleshot_timer);
    C(VCPUOP_register_vcpu_info);
    C(RUNSTATE_running); C(RUNSTATE_runnable); C(RUNSTATE_blocked); C(RUNSTATE_offline);
    C(VGCF_i387_valid); C(VGCF_in_kernel); C(VGCF_failsafe_disables_events);
    C(VGCF_syscall_disables_events); C(VGCF_online);
    C(XEN_EPERM); C(XEN_ENOENT); C(XEN_EFAULT); C(XEN_EBUSY); C(XEN_EEXIST); C(XEN_EINVAL); C(XEN_ENOSYS);
    return 0;
}
