"""The one compiled part of snapd: snapd/_batchstat.c (see its comment and the README's design
section). Optional: without a C compiler the install still succeeds and snapd/batchstat.py falls
back to os.lstat. Everything else is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "snapd._batchstat",
            ["snapd/_batchstat.c"],
            extra_compile_args=["-O2", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
