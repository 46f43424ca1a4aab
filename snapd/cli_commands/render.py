"""Formatting for people: sizes, times, tables. Imported only when a command runs; rich
itself only when a table is drawn (--json runs never draw one)."""

from __future__ import annotations

import stat
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

# Change kinds as short words and the style they get on a terminal.
CHANGE_STYLE = {
    "added": "green",
    "modified": "yellow",
    "deleted": "red",
    "type_changed": "magenta",
    "metadata": "cyan",
}


def size(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def mtime(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


def mode(kind: str, bits: int) -> str:
    kind_bits = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(kind, stat.S_IFREG)
    return stat.filemode(kind_bits | (bits & 0o7777))


def flags(snap: Any) -> str:
    """'durable', 'pinned', and the origin when it is not a plain user snapshot."""
    out = []
    if snap.origin != "user":
        out.append(snap.origin)
    if snap.durable:
        out.append("durable")
    if snap.pinned:
        out.append("pinned")
    return ",".join(out)


def table(*columns: str, title: str | None = None) -> Table:
    """A plain table: header, no borders (easy to read and to grep)."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in columns:
        t.add_column(name, overflow="fold")
    return t


def key_values(rows: list[tuple[str, Any]], title: str | None = None) -> Table:
    from rich.table import Table

    t = Table(title=title, box=None, show_header=False, pad_edge=False, title_justify="left")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, "" if v is None else str(v))
    return t


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested statistics as one level, with dotted keys ("watcher.events")."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def stat_value(key: str, value: Any) -> str:
    """A snapshot/store statistic, with sizes in readable units."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key.endswith("bytes"):
        return f"{size(value)} ({value})" if value >= 1024 else f"{value} B"
    if key.endswith("_ms"):
        return f"{value:.1f} ms"
    if key.endswith("_s") or key.endswith("seconds"):
        return f"{value:.3f} s"
    if key.endswith("ratio"):
        return f"{value:.3f}"
    return str(value)
