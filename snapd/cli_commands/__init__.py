"""The inspection commands of the `snapd` CLI (everything but `serve`).

snapd.cli stays a thin registry: it calls `add_global_options` and the functions in
`REGISTER`. The parsers live in `parsers` (standard library only, so `snapd --help` imports
neither grpc, rich nor the engine); each command's implementation lives in a module that is
imported only when the command runs (see `context.execute`).
"""

from __future__ import annotations

from .exitcodes import EPILOG
from .parsers import REGISTER, ArgumentParser, add_global_options

__all__ = ["EPILOG", "REGISTER", "ArgumentParser", "add_global_options"]
