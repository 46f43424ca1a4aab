"""The compiled parts of snapd: snapd/_batchstat.c (batched lstat and small reads) and
snapd/_treepack.c (tree packing); see their comments and the README's design section. Both are
optional: without a C compiler the install still succeeds and snapd/batchstat.py and
snapd/index.py fall back to Python, with the same results. Everything else is declared in
pyproject.toml."""

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
# Portable C (GCC or Clang): built wherever there is a compiler.
ext_modules.append(Extension("snapd._treepack", ["snapd/_treepack.c"], optional=True))

setup(ext_modules=ext_modules)
