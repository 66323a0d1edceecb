"""Memory of created-and-expired runs, in-process: `python -m bench.memory --runs 100000`.

A `RunManager` with a 1 ms run timeout and a 1 ms retention: every run is created,
expires (TIMEOUT) and is purged by the janitor. RSS (/proc/self/status VmRSS) is read
after a warm-up that fills the bounded structures (the change history) and again after
`--runs` more runs went through; prints one JSON line with the growth and the store's
structure sizes at the end (all should be back near zero).

The watch open/cancel memory figure is measured over gRPC against the server process
by the driver (`run.py`, `bench.load watch_cycles`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from datetime import timedelta
from typing import Any

from runcontrol_server.domain.manager import RunManager
from runcontrol_server.stores.memory import InMemoryRunStore

from .common import rss_kib

BATCH = 1000
TICK = timedelta(milliseconds=1)


async def churn(manager: RunManager, store: InMemoryRunStore, runs: int, deadline: float) -> int:
    """Create `runs` runs that expire; return how many went through before `deadline`."""
    done = 0
    while done < runs and time.monotonic() < deadline:
        for i in range(min(BATCH, runs - done)):
            await manager.create_run(f"expire-{(done + i) % 50_000:06d}", run_timeout=TICK)
        done += min(BATCH, runs - done)
        # Let the janitor expire and purge the batch (bounded wait).
        for _ in range(2500):  # at most ~5 s
            if store.sizes()["runs"] <= BATCH:
                break
            await asyncio.sleep(0.002)
    return done


async def measure(runs: int, warmup: int, budget: float) -> dict[str, Any]:
    store = InMemoryRunStore()
    manager = RunManager(store, retention=TICK, prune_interval=timedelta(milliseconds=50))
    await manager.start()
    deadline = time.monotonic() + budget
    try:
        await churn(manager, store, warmup, deadline)
        await asyncio.sleep(0.1)
        gc.collect()
        before = rss_kib_self()
        start = time.monotonic()
        done = await churn(manager, store, runs, deadline)
        elapsed = time.monotonic() - start
        for _ in range(500):  # at most ~5 s
            if not store.sizes()["runs"]:
                break
            await asyncio.sleep(0.01)
        gc.collect()
        after = rss_kib_self()
        return {
            "runs": done,
            "complete": done == runs,
            "elapsed": elapsed,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "growth_mb": (after - before) / 1024,
            "sizes_after": store.sizes(),
        }
    finally:
        await manager.close()


def rss_kib_self() -> int:
    return rss_kib(os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.runs, args.warmup, args.timeout))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
