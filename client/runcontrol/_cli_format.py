"""Pure output formatting for `runctl`: no I/O, no clock (pass `now`), easy to unit-test.

Two outputs, as in etcdctl and the temporal CLI:

* table — aligned columns for people, times relative to `now` ("3s ago");
* json — one JSON object per line (NDJSON) for scripts: statuses and enums as
  lower-case names, timestamps ISO 8601 UTC with a `Z`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ._models import Run
from ._watch import Bookmark, Resynced, WatchEvent, WatchItem

RUN_COLUMNS = ("RUN_ID", "THREAD", "STATUS", "WORKER", "CREATED", "UPDATED", "REV")
WATCH_COLUMNS = ("TYPE", "REVISION", "RUN_ID", "THREAD", "STATUS", "PREV", "WORKER", "UPDATED")
# Streaming output cannot measure its rows first: fixed minimum widths (a UUID is 36).
_WATCH_WIDTHS = (8, 8, 36, 16, 11, 11, 12, 0)
_MISSING = "-"


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
    parts = [cell.ljust(width) for cell, width in zip(cells, _WATCH_WIDTHS, strict=True)]
    return "   ".join(parts).rstrip()


def watch_header() -> str:
    return _fixed(WATCH_COLUMNS)


def watch_event_row(event: WatchEvent, now: datetime) -> str:
    run = event.run
    return _fixed(
        (
            event.type.name.lower(),
            str(event.revision),
            run.run_id,
            run.thread_id,
            run.status.name.lower(),
            event.prev_status.name.lower() if event.prev_status is not None else _MISSING,
            run.worker_id or _MISSING,
            relative_time(run.updated_at, now),
        )
    )


def watch_event_json(event: WatchEvent) -> str:
    return _dumps(
        {
            "type": event.type.name.lower(),
            "revision": event.revision,
            "prev_status": event.prev_status.name.lower() if event.prev_status else None,
            "run": run_to_dict(event.run),
        }
    )


def watch_item_lines(item: WatchItem, output: str, now: datetime) -> list[str]:
    """The lines one watch item prints (bookmarks print nothing).

    A `Resynced` (the watch fell behind the server's history and re-listed) prints one
    `resynced` line holding the complete current set, which replaces earlier state.
    """
    if isinstance(item, WatchEvent):
        return [watch_event_json(item) if output == "json" else watch_event_row(item, now)]
    if isinstance(item, Resynced):
        if output == "json":
            runs = [run_to_dict(run) for run in item.runs]
            return [_dumps({"type": "resynced", "revision": item.revision, "runs": runs})]
        marker = f"-- resynced at revision {item.revision}: {len(item.runs)} matching runs --"
        rows = [
            _fixed(
                (
                    "current",
                    str(item.revision),
                    run.run_id,
                    run.thread_id,
                    run.status.name.lower(),
                    _MISSING,
                    run.worker_id or _MISSING,
                    relative_time(run.updated_at, now),
                )
            )
            for run in item.runs
        ]
        return [marker, *rows]
    assert isinstance(item, Bookmark)
    return []
