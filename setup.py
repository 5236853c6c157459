"""Build hook for the native pieces of xenwb: the virtual-clock block hook, the trace encoder,
the port I/O hook."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("xenwb._vclock", ["xenwb/_vclock.c"]),
                 Extension("xenwb._traceenc", ["xenwb/_traceenc.c"]),
                 Extension("xenwb._iogate", ["xenwb/_iogate.c"])])
