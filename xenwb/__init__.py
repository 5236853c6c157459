"""xenwb: a workbench for debugging and tracing Xen PV guests without Xen."""

__version__ = "0.1.0"
