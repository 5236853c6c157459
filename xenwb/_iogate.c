/*
 * The native IN/OUT hook of a vcpu engine: port I/O as Xen allows it, or #GP(0).
 *
 * Unicorn executes IN, OUT, INS and OUTS at any privilege level without looking at IOPL or an
 * I/O bitmap (its gen_check_io returns at once), and a hook cannot stop the instruction: it
 * runs in the middle of a translation block, which goes on after the hook returns. So this
 * hook asks the hypervisor (a Python callable: decide(op, port, size, value) -> allowed, which
 * applies xen/arch/x86/pv/emul-priv-op.c guest_io_okay and traces the access) and, when the
 * access is refused, raises #GP(0) the way QEMU's own I/O permission check does:
 * raise_exception_err(env, EXCP0D_GPF, 0), which leaves the translation block by longjmp with
 * EIP on the instruction (unicorn synced it before calling the hook). Only C frames are
 * unwound: the Python call has returned and the GIL is released by then.
 *
 * QEMU's env is not reachable through unicorn's API; its place (the CPU pointer in the
 * uc_struct, env inside the CPU) is found once by calibration (xenwb/iogate.py) and given here.
 * An allowed IN reads all ones: a domU has no I/O ports (guest_io_read).
 */
#include <Python.h>
#include <stdint.h>

typedef void (*raise_fn)(void *env, int intno, int error_code);

struct iogate {
    PyObject *decide;       /* decide(op, port, size, value) -> bool; op 0 = in, 1 = out */
    raise_fn raise_exc;     /* raise_exception_err_x86_64 from libunicorn */
    uint64_t cpu_off;       /* offset of the CPUState pointer in struct uc_struct */
    uint64_t env_off;       /* offset of CPUX86State in the CPU */
    uint64_t refused;       /* accesses answered with #GP */
};

#define EXCP0D_GPF 13

static int iogate_ask(struct iogate *g, int op, uint32_t port, int size, uint32_t value)
{
    int allowed = 1;
    PyGILState_STATE st = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(g->decide, "iIiI", op, port, size, value);
    if (r == NULL) {
        PyErr_Print();      /* a workbench bug: the access goes through, as before this hook */
    } else {
        allowed = PyObject_IsTrue(r) != 0;
        Py_DECREF(r);
    }
    PyGILState_Release(st);
    return allowed;
}

static void iogate_refuse(struct iogate *g, void *uc)
{
    char *cpu = *(char **)((char *)uc + g->cpu_off);
    g->refused++;
    g->raise_exc(cpu + g->env_off, EXCP0D_GPF, 0);     /* does not return */
}

static uint32_t iogate_in(void *uc, uint32_t port, int size, void *user_data)
{
    struct iogate *g = (struct iogate *)user_data;
    if (!iogate_ask(g, 0, port, size, 0))
        iogate_refuse(g, uc);
    return size >= 4 ? 0xFFFFFFFFu : (1u << (8 * size)) - 1;
}

static void iogate_out(void *uc, uint32_t port, int size, uint32_t value, void *user_data)
{
    struct iogate *g = (struct iogate *)user_data;
    if (!iogate_ask(g, 1, port, size, value))
        iogate_refuse(g, uc);
}

static PyObject *in_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)iogate_in);
}

static PyObject *out_hook_address(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromVoidPtr((void *)iogate_out);
}

static PyMethodDef methods[] = {
    {"in_hook_address", in_hook_address, METH_NOARGS, "Address of the C IN hook."},
    {"out_hook_address", out_hook_address, METH_NOARGS, "Address of the C OUT hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_iogate", "Port I/O as Xen allows it, or #GP(0), in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__iogate(void)
{
    return PyModule_Create(&module);
}
