"""The bounds a store holds on what it keeps: runs active per thread, runs stored.

Why in the store: each is a fact about the stored data that only the store's own
atomic step can check without a race (the in-memory store within one event-loop step,
PostgreSQL inside the create transaction). The rules that apply them are in `rules`
(`plan_create`, `check_stored_runs`), shared by every store.
"""

from __future__ import annotations

from dataclasses import dataclass

# ENQUEUE queues runs behind the active ones; nothing else bounds a queue's length.
DEFAULT_MAX_ACTIVE_RUNS_PER_THREAD = 100
# Retention bounds the runs kept only as fast as the janitor deletes them; this bounds
# them whatever the create rate (an in-memory store holds every run in the process).
DEFAULT_MAX_STORED_RUNS = 1_000_000


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Creates past either bound are refused with `LimitExceeded` (the limit's name is
    the field's name)."""

    max_active_runs_per_thread: int = DEFAULT_MAX_ACTIVE_RUNS_PER_THREAD
    max_stored_runs: int = DEFAULT_MAX_STORED_RUNS

    def __post_init__(self) -> None:
        if self.max_active_runs_per_thread < 1 or self.max_stored_runs < 1:
            raise ValueError("store limits must be at least 1")


DEFAULT_STORE_LIMITS = StoreLimits()
