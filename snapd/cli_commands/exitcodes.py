"""Exit codes of the inspection commands, and how a daemon status maps onto them.

Kept free of imports beyond the standard library: `snapd --help` shows EPILOG.
"""

from __future__ import annotations

OK = 0
ERROR = 1  # anything not covered below; the message says what happened
USAGE = 2  # bad arguments (argparse), or the daemon rejected an argument (INVALID_ARGUMENT)
NOT_FOUND = 3  # no such snapshot, workspace or path
CONFLICT = 4  # failed precondition, aborted by a concurrent change, restore left conflicts
UNAVAILABLE = 5  # no daemon on the socket, or it is shutting down
DATA_LOSS = 6  # stored data is damaged: DATA_LOSS from the daemon, or verify found problems
PERMISSION = 7  # the daemon's user may not touch that path
INTERRUPTED = 130  # Ctrl-C

# gRPC status name -> exit code. Statuses missing here exit with ERROR.
BY_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": USAGE,
    "OUT_OF_RANGE": USAGE,
    "NOT_FOUND": NOT_FOUND,
    "FAILED_PRECONDITION": CONFLICT,
    "ABORTED": CONFLICT,
    "ALREADY_EXISTS": CONFLICT,
    "UNAVAILABLE": UNAVAILABLE,
    "DATA_LOSS": DATA_LOSS,
    "PERMISSION_DENIED": PERMISSION,
    "UNAUTHENTICATED": PERMISSION,
    "CANCELLED": INTERRUPTED,
}


def for_status(code: str) -> int:
    return BY_STATUS.get(code, ERROR)


EPILOG = """\
exit codes:
  0    success
  1    error not listed below (the message says what happened)
  2    usage: bad arguments, or an argument the daemon rejected (INVALID_ARGUMENT),
       e.g. a path with '..' or an ambiguous snapshot id prefix
  3    not found: no such snapshot, workspace, or path in the snapshot
  4    conflict: a failed precondition (e.g. overlapping workspaces, restoring another
       workspace's snapshot), an operation aborted by concurrent changes (retry), or a
       restore that left conflicts
  5    daemon unavailable: nothing listens on the socket, or the daemon is stopping
  6    data loss: stored data is damaged (DATA_LOSS, or 'verify' found problems)
  7    permission denied
  130  interrupted

With --json every command prints exactly one JSON document on stdout, also on failure:
{"error": {"code": "NOT_FOUND", "message": "...", "exit_code": 3}}.
Snapshot ids accept unique prefixes (4+ hex characters) and 'latest' (the workspace's newest).
The workspace is the one enclosing the current directory unless --workspace names another.
See docs/cli.md.
"""
