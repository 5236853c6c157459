"""Build hook for the one native piece of xenwb: the virtual-clock block hook."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("xenwb._vclock", ["xenwb/_vclock.c"])])
