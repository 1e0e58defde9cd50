"""The build of geotm's one compiled part, dnsd.protocol._fastudp (batched UDP I/O, Linux only); the
rest of the project's metadata is in pyproject.toml. optional=True: without a C compiler or the Python
headers the install still succeeds and dnsd serves UDP through asyncio instead (dnsd.protocol.udp)."""
import sys

from setuptools import Extension, setup

FASTUDP = Extension("dnsd.protocol._fastudp", ["dnsd/protocol/_fastudp.c"], optional=True)

setup(ext_modules=[FASTUDP] if sys.platform.startswith("linux") else [])
