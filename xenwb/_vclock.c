/*
 * Native unicorn block hook that drives xenwb's virtual clock.
 *
 * Guest time must come from execution, deterministically, and cheaply: unicorn's
 * instruction counting (emu_start count=) costs about half the emulation speed and
 * a Python block hook ten times more. This hook runs in C on every translation
 * block: it adds the block's size in bytes to a counter (one "unit" per byte of
 * guest code executed) and stops the engine once a deadline is reached (a timer or
 * the end of a vcpu's scheduling quantum). Python reads and writes the struct
 * through ctypes.
 */
#include <Python.h>
#include <stdint.h>

typedef int (*uc_stop_fn)(void *uc);

struct vclock {
    uint64_t units;      /* bytes of guest code executed so far */
    uint64_t deadline;   /* stop the engine when units reaches this */
    uc_stop_fn stop;     /* uc_emu_stop, passed in from Python */
    uint64_t stops;      /* how many times the deadline stopped the engine */
    uint64_t insns;      /* instructions executed, counted only while insn_hook is installed */
    uint64_t insn_deadline;
};

static void vclock_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vclock *c = (struct vclock *)user_data;
    (void)address;
    c->units += size;
    if (c->units >= c->deadline) {
        c->deadline = UINT64_MAX;
        c->stops++;
        c->stop(uc);
    }
}

/* Optional exact instruction counter (a code hook: costs about half the speed). */
static void vclock_insn_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct vclock *c = (struct vclock *)user_data;
    (void)address;
    (void)size;
    /* The hook runs before the instruction; stopping here means it does not run,
     * so it is counted only when it will execute. */
    if (c->insns >= c->insn_deadline) {
        c->insn_deadline = UINT64_MAX;
        c->stop(uc);
        return;
    }
    c->insns++;
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vclock", "Native virtual-clock block hook for unicorn.", -1, methods,
};

PyMODINIT_FUNC PyInit__vclock(void)
{
    return PyModule_Create(&module);
}
