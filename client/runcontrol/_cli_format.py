"""Pure output formatting for `runctl`: no I/O, no clock (pass `now`), easy to unit-test.

Two outputs, as in etcdctl and the temporal CLI:

* table — aligned columns for people, times relative to `now` ("3s ago"); the live
  watch table instead has fixed-width columns (long values end in "…") and wall-clock
  times ("14:03:27"), since a stream cannot measure its rows first and "0s ago" says
  nothing about an event printed as it happens;
* json — one JSON object per line (NDJSON) for scripts: statuses and enums as
  lower-case names, timestamps ISO 8601 UTC with a `Z`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

from ._models import Run, RunStatus
from ._watch import Bookmark, Resynced, WatchEvent, WatchItem

RUN_COLUMNS = ("RUN_ID", "THREAD", "STATUS", "WORKER", "CREATED", "UPDATED", "REV")
WATCH_COLUMNS = (
    "TYPE",
    "REVISION",
    "RUN_ID",
    "THREAD",
    "STATUS",
    "PREV",
    "WORKER",
    "UPDATED",
    "DETAIL",
)
# Streaming output cannot measure its rows first: fixed widths (a UUID is 36); a longer
# value is cut to the width and ends in "…" (-o json has every value in full). DETAIL,
# the last column, is never cut: the run's error and cancel reason, when present.
_WATCH_WIDTHS = (8, 8, 36, 16, 11, 11, 12, 8, 0)
_MISSING = "-"
ELLIPSIS = "…"


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z` suffix (`2024-05-01T12:00:00.250000Z`); None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:  # naive values are UTC by convention
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def relative_time(value: datetime, now: datetime) -> str:
    """How long ago `value` was, compactly: "3s ago", "5m ago", "2h ago", "4d ago".

    Whole units, rounded down. A time in the future (clock skew between hosts) reads
    "in 3s"; less than a second either way is "0s ago".
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    seconds = (now - value).total_seconds()
    future = seconds < 0
    amount = int(abs(seconds))
    if amount < 60:
        text = f"{amount}s"
    elif amount < 3600:
        text = f"{amount // 60}m"
    elif amount < 86400:
        text = f"{amount // 3600}h"
    else:
        text = f"{amount // 86400}d"
    if future and amount > 0:
        return f"in {text}"
    return f"{text} ago"


def clock_time(value: datetime, tz: tzinfo | None = None) -> str:
    """Wall-clock time of day, `HH:MM:SS`, in `tz` (None: the local time zone)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(tz).strftime("%H:%M:%S")


def fit(cell: str, width: int) -> str:
    """`cell` cut to at most `width` characters, ending in "…" when cut (0: no limit)."""
    if width <= 0 or len(cell) <= width:
        return cell
    return cell[: width - 1] + ELLIPSIS


def _one_line(text: str) -> str:
    """Control characters (newlines in an error message) would break a row."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


def run_detail(run: Run) -> str:
    """The run's error and cancel reason for the watch table ("-" when neither)."""
    parts = []
    if run.error:
        parts.append(f"error: {run.error}")
    if run.cancel_reason:
        parts.append(f"reason: {run.cancel_reason}")
    return _one_line("; ".join(parts)) or _MISSING


def run_to_dict(run: Run) -> dict[str, Any]:
    """A run as plain JSON values (the `json` output's object for one run)."""
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "status": run.status.name.lower(),
        "on_disconnect": run.on_disconnect.name.lower(),
        "multitask_strategy": run.multitask_strategy.name.lower(),
        "metadata": run.metadata,
        "kwargs": run.kwargs,
        "created_at": iso_utc(run.created_at),
        "updated_at": iso_utc(run.updated_at),
        "error": run.error,
        "cancel_action": run.cancel_action.name.lower(),
        "cancel_reason": run.cancel_reason,
        "worker_id": run.worker_id,
        "deadline": iso_utc(run.deadline),
        "create_revision": run.create_revision,
        "mod_revision": run.mod_revision,
        "request_id": run.request_id,
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=False, separators=(", ", ": "), ensure_ascii=False)


def run_json(run: Run) -> str:
    """One line: the run as a JSON object."""
    return _dumps(run_to_dict(run))


def run_row(run: Run, now: datetime) -> tuple[str, ...]:
    return (
        run.run_id,
        run.thread_id,
        run.status.name.lower(),
        run.worker_id or _MISSING,
        relative_time(run.created_at, now),
        relative_time(run.updated_at, now),
        str(run.mod_revision),
    )


def align(rows: Sequence[Sequence[str]], gap: int = 3) -> list[str]:
    """Rows as left-aligned columns separated by `gap` spaces; no trailing spaces."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((" " * gap).join(cells).rstrip())
    return lines


def runs_table(runs: Sequence[Run], now: datetime) -> list[str]:
    """A header and one aligned row per run."""
    return align([RUN_COLUMNS, *(run_row(run, now) for run in runs)])


def _fixed(cells: Sequence[str]) -> str:
    parts = [
        fit(_one_line(cell), width).ljust(width)
        for cell, width in zip(cells, _WATCH_WIDTHS, strict=True)
    ]
    return "   ".join(parts).rstrip()


def watch_header() -> str:
    return _fixed(WATCH_COLUMNS)


def _watch_row(
    kind: str, revision: int, run: Run, prev: RunStatus | None, tz: tzinfo | None
) -> str:
    return _fixed(
        (
            kind,
            str(revision),
            run.run_id,
            run.thread_id,
            run.status.name.lower(),
            prev.name.lower() if prev is not None else _MISSING,
            run.worker_id or _MISSING,
            clock_time(run.updated_at, tz),
            run_detail(run),
        )
    )


def watch_event_row(event: WatchEvent, tz: tzinfo | None = None) -> str:
    """One table row; UPDATED is the run's update time of day in `tz` (None: local)."""
    return _watch_row(event.type.name.lower(), event.revision, event.run, event.prev_status, tz)


def watch_event_json(event: WatchEvent) -> str:
    return _dumps(
        {
            "type": event.type.name.lower(),
            "revision": event.revision,
            "prev_status": event.prev_status.name.lower() if event.prev_status else None,
            "run": run_to_dict(event.run),
        }
    )


def watch_item_lines(item: WatchItem, output: str, tz: tzinfo | None = None) -> list[str]:
    """The lines one watch item prints (bookmarks print nothing).

    A `Resynced` (the watch fell behind the server's history, or reached a server that
    lost its state, and re-listed) prints one `resynced` line saying why, then the
    complete current set, which replaces earlier state.
    Table times are in `tz` (None: the local time zone).
    """
    if isinstance(item, WatchEvent):
        return [watch_event_json(item) if output == "json" else watch_event_row(item, tz)]
    if isinstance(item, Resynced):
        if output == "json":
            runs = [run_to_dict(run) for run in item.runs]
            resynced = {"type": "resynced", "revision": item.revision, "reason": item.reason}
            return [_dumps({**resynced, "runs": runs})]
        marker = (
            f"-- resynced at revision {item.revision} ({item.reason}): "
            f"{len(item.runs)} matching runs --"
        )
        rows = [_watch_row("current", item.revision, run, None, tz) for run in item.runs]
        return [marker, *rows]
    assert isinstance(item, Bookmark)
    return []
