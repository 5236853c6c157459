"""The Xen side of the workbench: a library the vcpus call into, as in xen/arch/x86/pv/."""
