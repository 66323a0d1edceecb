"""Manager scale: our `RunManager` against a registry that works the way the original did.

`python -m bench.manager_scale --sizes 1000,10000,100000` prints one JSON line.

Both hold N runs (10 per thread, the newest of each thread active) and are measured
in-process, interleaved per round, on four operations: create (on a new thread; the
created runs are removed again, untimed, so N stays put), get, has-inflight and
list-by-thread. "mix" is the throughput of an equal mix of the four (harmonic).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runcontrol_server.domain.manager import RunManager
from runcontrol_server.domain.model import ListQuery, MultitaskStrategy
from runcontrol_server.stores.memory import InMemoryRunStore

from .common import median

RUNS_PER_THREAD = 10
OPS = ("create", "get", "inflight", "list")
_ACTIVE = frozenset({"pending", "running"})


class Busy(Exception):
    """The thread already has an active run (REJECT)."""


@dataclass
class _Record:
    run_id: str
    thread_id: str
    status: str
    created_at: str
    updated_at: str
    assistant_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class SeedStyleRegistry:
    """The original registry's data structure and algorithms, written for this bench.

    One dict of every run ever stored, one asyncio lock; creating (with its inflight
    check), listing a thread and the inflight check each scan every stored run.
    """

    def __init__(self) -> None:
        self._runs: dict[str, _Record] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._runs)

    def insert(self, record: _Record) -> None:
        self._runs[record.run_id] = record

    def remove(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    async def create_or_reject(self, thread_id: str) -> _Record:
        now = datetime.now(UTC).isoformat()
        record = _Record(str(uuid.uuid4()), thread_id, "pending", now, now)
        async with self._lock:
            for other in self._runs.values():
                if other.thread_id == thread_id and other.status in _ACTIVE:
                    raise Busy(thread_id)
            self._runs[record.run_id] = record
        return record

    def get(self, run_id: str) -> _Record | None:
        return self._runs.get(run_id)

    async def has_inflight(self, thread_id: str) -> bool:
        async with self._lock:
            for other in self._runs.values():
                if other.thread_id == thread_id and other.status in _ACTIVE:
                    return True
            return False

    async def list_by_thread(self, thread_id: str) -> list[_Record]:
        async with self._lock:
            found = [r for r in self._runs.values() if r.thread_id == thread_id]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found


def _thread(index: int) -> str:
    return f"thread-{index // RUNS_PER_THREAD:08d}"


async def populate_manager(manager: RunManager, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(n):
        outcome = await manager.create_run(
            _thread(i), multitask_strategy=MultitaskStrategy.INTERRUPT, metadata={"i": i}
        )
        ids.append(outcome.run.run_id)
    return ids


def populate_registry(registry: SeedStyleRegistry, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(n):
        now = datetime.now(UTC).isoformat()
        last_of_thread = i % RUNS_PER_THREAD == RUNS_PER_THREAD - 1 or i == n - 1
        status = "pending" if last_of_thread else "interrupted"
        record = _Record(str(uuid.uuid4()), _thread(i), status, now, now, metadata={"i": i})
        registry.insert(record)
        ids.append(record.run_id)
    return ids


async def _rate(op: Callable[[int], Awaitable[object]], max_ops: int, max_seconds: float) -> float:
    """Operations per second of `op(i)`, bounded by count and time."""
    start = time.perf_counter()
    deadline = start + max_seconds
    done = 0
    while done < max_ops and time.perf_counter() < deadline:
        await op(done)
        done += 1
    return done / (time.perf_counter() - start)


class _Subject:
    """One implementation under test, with the same four operations."""

    def __init__(self, name: str, n: int, ids: list[str], seed: int) -> None:
        self.name = name
        rng = random.Random(seed)
        self.sample_ids = [rng.choice(ids) for _ in range(1024)]
        threads = max(1, n // RUNS_PER_THREAD)
        picks = (rng.randrange(threads) for _ in range(1024))
        self.sample_threads = [_thread(t * RUNS_PER_THREAD) for t in picks]
        self.round = 0


class ManagerSubject(_Subject):
    def __init__(self, manager: RunManager, n: int, ids: list[str]) -> None:
        super().__init__("manager", n, ids, seed=n)
        self.manager = manager

    async def measure(self, op: str, max_ops: int, max_seconds: float) -> float:
        m = self.manager
        if op == "create":
            self.round += 1
            created: list[str] = []

            async def create(i: int) -> None:
                outcome = await m.create_run(f"new-{self.round:04d}-{i:08d}")
                created.append(outcome.run.run_id)

            rate = await _rate(create, max_ops, max_seconds)
            for run_id in created:  # untimed: keep N where it was
                await m.cancel_run(run_id)
                await m.delete_run(run_id)
            return rate
        if op == "get":
            ids = self.sample_ids
            return await _rate(lambda i: m.get_run(ids[i % 1024]), max_ops, max_seconds)
        threads = self.sample_threads
        if op == "inflight":
            return await _rate(lambda i: m.has_inflight(threads[i % 1024]), max_ops, max_seconds)
        return await _rate(
            lambda i: m.list_runs(ListQuery(thread_id=threads[i % 1024])), max_ops, max_seconds
        )


class RegistrySubject(_Subject):
    def __init__(self, registry: SeedStyleRegistry, n: int, ids: list[str]) -> None:
        super().__init__("seed_style", n, ids, seed=n)
        self.registry = registry

    async def measure(self, op: str, max_ops: int, max_seconds: float) -> float:
        r = self.registry
        if op == "create":
            self.round += 1
            created: list[str] = []

            async def create(i: int) -> None:
                record = await r.create_or_reject(f"new-{self.round:04d}-{i:08d}")
                created.append(record.run_id)

            rate = await _rate(create, max_ops, max_seconds)
            for run_id in created:
                r.remove(run_id)
            return rate
        if op == "get":
            ids = self.sample_ids

            async def get(i: int) -> None:
                r.get(ids[i % 1024])

            return await _rate(get, max_ops, max_seconds)
        threads = self.sample_threads
        if op == "inflight":
            return await _rate(lambda i: r.has_inflight(threads[i % 1024]), max_ops, max_seconds)
        return await _rate(lambda i: r.list_by_thread(threads[i % 1024]), max_ops, max_seconds)


def mix_rate(rates: dict[str, float]) -> float:
    """Throughput of an equal mix of the operations (each takes 1/rate seconds)."""
    return len(rates) / sum(1.0 / max(rate, 1e-9) for rate in rates.values())


async def measure_size(n: int, rounds: int, max_ops: int, max_seconds: float) -> dict[str, Any]:
    began = time.perf_counter()
    manager = RunManager(InMemoryRunStore(), retention=None)
    manager_ids = await populate_manager(manager, n)
    registry = SeedStyleRegistry()
    registry_ids = populate_registry(registry, n)
    populate_seconds = time.perf_counter() - began
    subjects: list[ManagerSubject | RegistrySubject] = [
        ManagerSubject(manager, n, manager_ids),
        RegistrySubject(registry, n, registry_ids),
    ]
    # create adds runs during a measurement: at most a fifth of N, so N stays ~N.
    create_ops = min(max_ops, max(50, n // 5))
    samples: dict[str, dict[str, list[float]]] = {s.name: {op: [] for op in OPS} for s in subjects}
    gc.collect()
    for round_index in range(rounds + 1):  # round 0 is the warm-up
        order = subjects if round_index % 2 == 0 else subjects[::-1]  # A/B, then B/A
        for op in OPS:
            for subject in order:
                ops = create_ops if op == "create" else max_ops
                rate = await subject.measure(op, ops, max_seconds)
                if round_index:
                    samples[subject.name][op].append(rate)
    await manager.close()
    result: dict[str, Any] = {"n": n, "populate_seconds": populate_seconds}
    for name, per_op in samples.items():
        rates = {op: median(values) for op, values in per_op.items()}
        result[name] = {**rates, "mix": mix_rate(rates), "rounds": per_op}
    return result


async def run(sizes: list[int], rounds: int, max_ops: int, max_seconds: float) -> dict[str, Any]:
    results = [await measure_size(n, rounds, max_ops, max_seconds) for n in sizes]
    return {"sizes": sizes, "rounds": rounds, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.manager_scale")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-ops", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=0.25)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    result = asyncio.run(run(sizes, args.rounds, args.max_ops, args.max_seconds))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
