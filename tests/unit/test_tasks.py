"""`stop_task`: a background task ends even when it swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from runcontrol_server.domain.tasks import stop_task


async def test_a_task_that_swallows_the_first_cancel_is_stopped_anyway() -> None:
    swallowed = 0
    started = asyncio.Event()

    async def stubborn() -> None:
        nonlocal swallowed
        started.set()
        while True:
            try:
                await asyncio.Event().wait()  # never set: only a cancel ends the wait
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what asyncio.wait_for does on 3.11 in a race

    task = asyncio.ensure_future(stubborn())
    await started.wait()
    await stop_task(task)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_failed_passes_its_error_on() -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    task = asyncio.ensure_future(failing())
    await asyncio.wait((task,))
    with pytest.raises(RuntimeError, match="boom"):
        await stop_task(task)


async def test_a_finished_task_is_left_alone() -> None:
    async def quick() -> None:
        return None

    task = asyncio.ensure_future(quick())
    await task
    await stop_task(task)
    assert not task.cancelled()
