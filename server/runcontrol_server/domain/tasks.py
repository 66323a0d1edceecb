"""Stopping a background task for good, even past a cancellation that got lost."""

from __future__ import annotations

import asyncio

# How often a stop repeats its cancel while the task is still running.
RECANCEL_INTERVAL = 0.1


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel `task` and return once it has ended.

    A single `cancel()` is not always enough: on Python 3.11, `asyncio.wait_for` (used
    inside libraries, e.g. psycopg_pool waiting for a connection) returns its result
    instead of raising when the cancel arrives in the same step as the result, and the
    task runs on. So the cancel is repeated until the task is done. A cancellation of
    the caller itself is passed on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=RECANCEL_INTERVAL)
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
