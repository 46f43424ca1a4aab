"""The pipeline's event log: one JSON object per line, readable after the run.

Every event has `t` (seconds since the run started), `ts` (unix time), `run` and `event`;
step events add `step` (position from 0), `name`, `attempt` and `plan` (plan version); timed
ones add `ms`. Event names:

    run_started planned step_started executed checkpoint verify_started verified failed
    abandoned restored retried replanned restarted persisted run_finished run_failed cancelled

    python -m snapd_client.pipeline show run.jsonl     # the same log as aligned text
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

EventSink = str | os.PathLike | IO[str] | Callable[[dict[str, Any]], None] | None


class EventLog:
    """Keeps every event in memory and writes each one, as it happens, to the sink: a path
    (appended to), an open text stream, or a callable taking the event dict."""

    def __init__(
        self, sink: EventSink, run_id: str, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.run_id = run_id
        self.events: list[dict[str, Any]] = []
        self._clock = clock
        self._t0 = clock()
        self._stream: IO[str] | None = None
        self._owned = False
        self._callback: Callable[[dict[str, Any]], None] | None = None
        if isinstance(sink, str | os.PathLike):
            self._stream = open(sink, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._owned = True
        elif callable(sink):
            self._callback = sink
        elif sink is not None:
            self._stream = sink

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"t": round(self.elapsed(), 6), "ts": round(time.time(), 6), "run": self.run_id}
        record["event"] = event
        record.update((k, v) for k, v in fields.items() if v is not None)
        self.events.append(record)
        if self._stream is not None:
            # One write per line and a flush: a crash leaves every finished line readable.
            self._stream.write(json.dumps(record, default=str) + "\n")
            self._stream.flush()
        if self._callback is not None:
            self._callback(record)
        return record

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()
        self._stream = None


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_SHOWN = ("phase", "snapshot", "reason", "how", "steps", "temperature", "files_written", "deleted")


def format_events(events: Iterable[dict[str, Any]]) -> str:
    """One aligned line per event: time, event, step, attempt, duration, the interesting rest."""
    lines = []
    for e in events:
        step = f"#{e['step'] + 1}" if "step" in e else ""
        attempt = f"try {e['attempt'] + 1}" if e.get("attempt") else ""
        ms = f"{e['ms']:.1f} ms" if "ms" in e else ""
        rest = []
        if e.get("name"):
            rest.append(repr(e["name"]))
        if "ok" in e:
            rest.append("ok" if e["ok"] else "FAILED")
        for key in _SHOWN:
            if key in e:
                rest.append(f"{key}={e[key]}")
        lines.append(
            f"{e['t']:10.3f}s  {e['event']:<14} {step:>4} {attempt:>6} {ms:>11}  {' '.join(rest)}"
        )
    return "\n".join(lines)
