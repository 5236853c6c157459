/*
 * user.h - the page the kernel shares with the user task (USER_DATA_VA):
 * what the kernel tells it (in), what it reports back (out).  Included from
 * userprog.S (offsets) and user.c (struct).
 */
#ifndef PVDEMO64_USER_H
#define PVDEMO64_USER_H

/* in: written by the kernel before the task starts */
#define UD_M2P_VA               0       /* address of one M2P entry to read */
#define UD_KERNEL_VA            8       /* a kernel address (not mapped in the user L4) */
#define UD_TSC_LIMIT            16      /* how long to wait for an event, in TSC ticks */
#define UD_GS_SEL_IN            24      /* selector for SYS_SET_GS_SEL */
/* out: written by the task */
#define UD_PROGRESS             32      /* last step reached */
#define UD_CS                   40
#define UD_SS                   48
#define UD_FS0                  56      /* %fs:0 */
#define UD_GS0                  64      /* %gs:0 */
#define UD_M2P_VAL              72
#define UD_SYS_RAX              80      /* after SYS_CHECK */
#define UD_SYS_RCX              88
#define UD_SYS_R11              96
#define UD_SYS_EXPECT_RCX       104     /* the address after its syscall */
#define UD_SYS_RFLAGS_BEFORE    112     /* pushfq just before the syscall */
#define UD_SYS_RFLAGS_AFTER     120     /* pushfq just after */
#define UD_GS0_AFTER_SET        128     /* %gs:0 after SYS_SET_GS_USER(USER_GS2_VA) */
#define UD_GS_SEL               136     /* %gs after SYS_SET_GS_SEL */
#define UD_GS0_SEL              144     /* %gs:0 then */
#define UD_GS0_RESTORED         152     /* %gs:0 after SYS_SET_GS_USER(USER_GS_VA) */
#define UD_DEMAND_VAL           160     /* read back from USER_DEMAND_VA */
#define UD_FIXUP                168     /* where the kernel resumes a fault the task expects */
#define UD_KERNEL_READ_VAL      176     /* stays untouched if the kernel read faulted */
#define UD_FAULT_RESUMED        184     /* 1 once the task ran past that fault */
#define UD_USER_UPCALLS         192     /* incremented by the kernel's event callback */
#define UD_WAITED_TSC           200
#define UD_WRITE_RET            208
#define UD_CS_AFTER_SYSRET      216     /* %cs/%ss after SYS_CHECK (iret with VGCF_in_syscall) */
#define UD_SS_AFTER_SYSRET      224
#define UD_CS_AFTER_IRET        232     /* %cs/%ss after SYS_SET_GS_USER (iret with flags 0) */
#define UD_SS_AFTER_IRET        240
#define UD_SIZE                 248

#define USER_DEMAND_MAGIC       0xd00dfeedcafe0001
#define USER_KERNEL_READ_SENTINEL 0x5e5e5e5e5e5e5e5e
#define USER_EXIT_CODE          42

#ifndef __ASSEMBLER__
#include <stdint.h>

struct user_data {
    uint64_t m2p_va, kernel_va, tsc_limit, gs_sel_in;
    uint64_t progress, cs, ss, fs0, gs0, m2p_val;
    uint64_t sys_rax, sys_rcx, sys_r11, sys_expect_rcx, sys_rflags_before, sys_rflags_after;
    uint64_t gs0_after_set, gs_sel, gs0_sel, gs0_restored;
    uint64_t demand_val, fixup, kernel_read_val, fault_resumed;
    uint64_t user_upcalls, waited_tsc, write_ret;
    uint64_t cs_after_sysret, ss_after_sysret, cs_after_iret, ss_after_iret;
};
_Static_assert(__builtin_offsetof(struct user_data, progress) == UD_PROGRESS, "UD_PROGRESS");
_Static_assert(__builtin_offsetof(struct user_data, sys_rax) == UD_SYS_RAX, "UD_SYS_RAX");
_Static_assert(__builtin_offsetof(struct user_data, gs0_after_set) == UD_GS0_AFTER_SET, "UD_GS0_AFTER_SET");
_Static_assert(__builtin_offsetof(struct user_data, demand_val) == UD_DEMAND_VAL, "UD_DEMAND_VAL");
_Static_assert(__builtin_offsetof(struct user_data, user_upcalls) == UD_USER_UPCALLS, "UD_USER_UPCALLS");
_Static_assert(__builtin_offsetof(struct user_data, cs_after_sysret) == UD_CS_AFTER_SYSRET, "UD_CS_AFTER_SYSRET");
_Static_assert(sizeof(struct user_data) == UD_SIZE, "UD_SIZE");
#endif

#endif /* PVDEMO64_USER_H */
