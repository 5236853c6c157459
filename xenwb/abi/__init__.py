"""The Xen PV ABI as data: numbers, names and struct layouts.

This package is the single place that knows the guest-visible ABI. Every other
part of xenwb (hypervisor, tracer, plugins, gdb stub) imports from here.
"""
