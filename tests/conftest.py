"""Shared fixtures: machines built from the bundled example guests, and the tiny test guests."""

from __future__ import annotations

import shutil

import pytest
from support.harness import BuiltGuest, Hv, build_guest

# name -> (source in tests/guests, -D defines[, bits])
GUEST_BUILDS: dict[str, tuple] = {
    "cpuid": ("cpuid", ()),
    "wrmsr": ("wrmsr", ("NO_HYPERCALL_NOTE=1",)),
    "hlt": ("hlt", ()),
    "crash": ("hlt", ("NO_TRAPS=1",)),
    "ptwr": ("ptwr", ()),
    "failsafe": ("failsafe", ()),
    "failsafe-reload": ("failsafe", ("RELOAD=1",)),
    "failsafe-bad-handler": ("failsafe", ("BAD_HANDLER=1",)),
    "failsafe-no-np-handler": ("failsafe", ("NO_NP_HANDLER=1",)),
    "user82": ("user82", ()),
    "privileged": ("privileged", ()),
    "privileged64": ("privileged", (), 64),
    "mc_iret": ("mc_iret", ()),
    "mc_iret64": ("mc_iret", (), 64),
    "smc": ("smc", ()),
    "smc64": ("smc", (), 64),
    "gdt_access": ("gdt_access", ()),
    "gdt_access64": ("gdt_access", (), 64),
    "sysenter": ("sysenter", ()),
    "dbreg": ("dbreg", ()),
    "dbreg64": ("dbreg", (), 64),
    "bsdsym": ("bsdsym", ()),
    "iopl": ("iopl", ()),
    "ldt": ("ldt", ()),
    "gate": ("gate", ()),
    "seg": ("seg", ()),
    "fifo_init": ("fifo_init", ()),
}


class _Guests:
    """Builds each guest on first use (gcc -m32 -c, ld -m elf_i386) and keeps it."""

    def __init__(self, outdir) -> None:
        self.outdir = outdir
        self.built: dict[str, BuiltGuest] = {}

    def __getitem__(self, name: str) -> BuiltGuest:
        if name not in self.built:
            src, defines, *bits = GUEST_BUILDS[name]
            self.built[name] = build_guest(src, self.outdir / name, defines=defines, bits=bits[0] if bits else 32)
        return self.built[name]


@pytest.fixture(params=["pvdemo-pae", "pvdemo-nonpae"], ids=["pae", "nonpae"])
def hv(request) -> Hv:
    """A freshly built (not yet running) machine, PAE and non-PAE."""
    return Hv.example(request.param)


@pytest.fixture
def hv_pae() -> Hv:
    return Hv.example("pvdemo-pae")


@pytest.fixture
def hv_nonpae() -> Hv:
    return Hv.example("pvdemo-nonpae")


@pytest.fixture(scope="session")
def guests(tmp_path_factory):
    """The tiny guests of tests/guests, assembled and linked once per session."""
    if not (shutil.which("gcc") and shutil.which("ld") and shutil.which("nm")):
        pytest.skip("gcc/binutils not available")
    return _Guests(tmp_path_factory.mktemp("guests"))
