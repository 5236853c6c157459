/*
 * Native unicorn hooks that drive xenwb's virtual clock and its exact instruction stops.
 *
 * Guest time must come from execution, deterministically, and cheaply: unicorn's
 * instruction counting (emu_start count=) costs about half the emulation speed and
 * a Python block hook ten times more. The block hook runs in C on every translation
 * block: it adds the block's size in bytes to a counter (one "unit" per byte of
 * guest code) and stops the engine at a block boundary once a deadline is reached
 * (a timer or the end of a vcpu's scheduling quantum).
 *
 * A block is counted when it is entered. When execution leaves it part way (a stop
 * before one of its instructions, a fault), the bytes not executed are given back by
 * vclock_settle (Python calls it with the pc at which the block was left), so the
 * clock counts exactly the bytes of the instructions that completed, whatever the
 * translation cache holds and wherever a debugger stopped: stops are invisible.
 *
 * RDTSC and RDTSCP are answered here too (the guest's TSC is the clock: one tick per byte),
 * because guests read the TSC millions of times (Linux's pvclock, udelay loops) and a Python
 * hook per read would cost more than the rest of the emulation.
 *
 * The optional instruction hook counts instructions exactly and stops the engine
 * before the instruction whose number reaches insn_deadline (single steps, stops
 * right after a watched access, --max-instructions). Instructions in the hypervisor's
 * own range [skip_lo, skip_hi) (ring-transition stubs) are neither counted nor stopped at.
 * It can also stop before the first instruction that starts at or past a given clock unit
 * (time travel, xenwb/timetravel.py: a place in a vcpu's history is a point on its clock).
 */
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>

typedef int (*uc_stop_fn)(void *uc);
typedef int (*uc_reg_write_fn)(void *uc, int regid, const void *value);

struct vclock {
    uint64_t units;         /* bytes of guest code executed so far */
    uint64_t deadline;      /* stop at the first block entered with units >= deadline */
    uc_stop_fn stop;        /* uc_emu_stop, passed in from Python */
    uint64_t stops;         /* how many times the deadline stopped the engine */
    uint64_t insns;         /* instructions started, counted only while insn_hook is installed */
    uint64_t insn_deadline; /* stop before the instruction that would make insns exceed this */
    uint64_t last_addr;     /* the last block counted ... */
    uint64_t last_size;     /* ... and its size (0: nothing to give back) */
    uint64_t skip_lo;       /* hypervisor code: not counted as guest instructions */
    uint64_t skip_hi;
    uint64_t insn_stops;    /* how many times insn_deadline stopped the engine */
    uc_reg_write_fn reg_write;  /* uc_reg_write, passed in from Python */
    int64_t reg_ax, reg_dx, reg_cx; /* RAX/RDX/RCX (64-bit engine) or EAX/EDX/ECX */
    uint64_t tsc_aux;       /* MSR_TSC_AUX: what RDTSCP returns in ECX */
    uint64_t tsc_reads;     /* RDTSC/RDTSCP executed */
    uint64_t unit_target;   /* stop before the instruction that starts at or past this unit ... */
    uint64_t unit_stops;    /* how many times unit_target stopped the engine */
    uint64_t exits;         /* exceptions and invalid opcodes that reached the hypervisor */
    uint64_t exit_target;   /* ... once exits has reached this */
};

static void vclock_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vclock *c = (struct vclock *)user_data;
    /* A stop requested here happens before the block's first instruction runs. */
    if (c->units >= c->deadline) {
        c->deadline = UINT64_MAX;
        c->stops++;
        c->last_size = 0;
        c->stop(uc);
        return;
    }
    c->units += size;
    c->last_addr = address;
    c->last_size = size;
}

static void vclock_insn_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vclock *c = (struct vclock *)user_data;
    (void)size;
    if (address - c->skip_lo < c->skip_hi - c->skip_lo)
        return;
    /* The hook runs before the instruction: stopping here means it does not run. */
    if (c->insns >= c->insn_deadline) {
        c->insn_deadline = UINT64_MAX;
        c->insn_stops++;
        c->stop(uc);
        return;
    }
    /* Where this instruction starts on the clock: the block was counted whole on entry. */
    if (c->unit_target != UINT64_MAX && c->exits >= c->exit_target
            && c->units - c->last_size + (address - c->last_addr) >= c->unit_target) {
        c->unit_target = UINT64_MAX;
        c->unit_stops++;
        c->stop(uc);
        return;
    }
    c->insns++;
}

/* Every exception and every invalid opcode the hypervisor sees, counted: an
 * instruction Xen emulates (a privileged one, a pagetable write) adds nothing to the clock,
 * so the count tells the boundaries before and after it apart (time travel). The invalid
 * opcode hook says it did not handle the opcode: the hypervisor's own hook, after it, does. */
static void vclock_intr_hook(void *uc, uint32_t intno, void *user_data)
{
    (void)uc;
    if (intno < 32)         /* exceptions; `int n` (hypercalls) moves the clock already */
        ((struct vclock *)user_data)->exits++;
}

static bool vclock_invalid_hook(void *uc, void *user_data)
{
    (void)uc;
    ((struct vclock *)user_data)->exits++;
    return false;
}

static PyObject *intr_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)vclock_intr_hook);
}

static PyObject *invalid_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)vclock_invalid_hook);
}

/* RDTSC: EDX:EAX = the clock (the bytes of the block being executed are already counted,
 * as the Python hook counted them). Returning 1 tells unicorn the instruction is handled. */
static int vclock_rdtsc_hook(void *uc, void *user_data)
{
    struct vclock *c = (struct vclock *)user_data;
    uint64_t lo = c->units & 0xffffffffu, hi = c->units >> 32;
    c->reg_write(uc, (int)c->reg_ax, &lo);
    c->reg_write(uc, (int)c->reg_dx, &hi);
    c->tsc_reads++;
    return 1;
}

static int vclock_rdtscp_hook(void *uc, void *user_data)
{
    struct vclock *c = (struct vclock *)user_data;
    uint64_t aux = c->tsc_aux & 0xffffffffu;
    vclock_rdtsc_hook(uc, user_data);
    c->reg_write(uc, (int)c->reg_cx, &aux);
    return 1;
}

static PyObject *rdtsc_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)vclock_rdtsc_hook);
}

static PyObject *rdtscp_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)vclock_rdtscp_hook);
}

/* A code hook that does nothing: unicorn brings the guest pc up to date before every
 * instruction a code hook covers, which memory hooks otherwise do not reliably see. */
static void pc_sync_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    (void)uc;
    (void)address;
    (void)size;
    (void)user_data;
}

static PyObject *pc_sync_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)pc_sync_hook);
}

static PyObject *insn_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)vclock_insn_hook);
}

static PyObject *hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)vclock_block_hook);
}

static PyMethodDef methods[] = {
    {"hook_address", hook_address, METH_NOARGS, "Address of the C block hook."},
    {"insn_hook_address", insn_hook_address, METH_NOARGS, "Address of the C instruction hook."},
    {"pc_sync_hook_address", pc_sync_hook_address, METH_NOARGS, "Address of the no-op pc-sync code hook."},
    {"intr_hook_address", intr_hook_address, METH_NOARGS, "Address of the C interrupt-counting hook."},
    {"invalid_hook_address", invalid_hook_address, METH_NOARGS, "Address of the C invalid-opcode-counting hook."},
    {"rdtsc_hook_address", rdtsc_hook_address, METH_NOARGS, "Address of the C RDTSC instruction hook."},
    {"rdtscp_hook_address", rdtscp_hook_address, METH_NOARGS, "Address of the C RDTSCP instruction hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vclock", "Native virtual-clock hooks for unicorn.", -1, methods,
};

PyMODINIT_FUNC PyInit__vclock(void)
{
    return PyModule_Create(&module);
}
