"""How cost grows with the work stored: `python -m bench.growth serve|memory`.

- `serve --runs N [server flags]`: the installed server's code (settings, logging, GC
  tuning, event loop and `RunControlServer` exactly as `runcontrol-server` builds them),
  with its in-memory store filled with N finished runs before the port opens. The fill
  is a bench-only bulk path (`fill_finished`): it puts into the store's structures what
  creating, claiming and finishing each run would have left there (no change history,
  which is bounded anyway), about 50x faster than making the calls, so a million runs
  take seconds. Run ids are `bench_run_id(i)`, so the load generator can ask for any of
  them. Prints `listening on HOST:PORT`, and the fill's time and RSS on stderr.
- `memory --runs N`: one JSON line, the memory a stored finished run costs, measured
  in-process through the store's own methods (create, claim, finish: the real path):
  the slope between N/5 and N runs of Python's traced memory (tracemalloc, exact bytes
  of every object) and, in a second pass without tracemalloc, of RSS; and the same for
  the bulk fill, which shows the fill stores what the real path stores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
import tracemalloc
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from runcontrol_server import eventloop
from runcontrol_server.domain.model import (
    RunDraft,
    RunStatus,
    StatusChange,
    canonical_json,
)
from runcontrol_server.domain.rules import new_run
from runcontrol_server.stores.memory import InMemoryRunStore

from .common import rss_kib

T = TypeVar("T")
RUNS_PER_THREAD = 10
# The bench's small metadata (as `bench.load` sends it).
METADATA = {"attempt": 1, "source": "bench"}
WORKERS = 8


def bench_run_id(index: int) -> str:
    """The id of stored run `index`: a canonical UUID text, like a real run id."""
    return f"00000000-0000-4000-8000-{index:012x}"


def _thread(index: int) -> str:
    return f"growth-{index // RUNS_PER_THREAD:010d}"


def fill_finished(store: InMemoryRunStore, count: int, *, start: int = 0) -> None:
    """Store runs `start`..`start + count - 1`, finished (SUCCESS after one claim), as
    creating, claiming and finishing each would leave them: the run in the store's
    maps and indexes (every thread's runs in creation order, none active) and in the
    retention queue. Bench-only: it writes the store's internals directly and must
    run before the manager starts (the change feed is reset to the new revision)."""
    base = datetime.now(UTC)
    revision = store._revision
    for i in range(start, start + count):
        # Distinct objects per run (each write reads the clock anew).
        created = base + timedelta(microseconds=i)
        draft = RunDraft(
            run_id=bench_run_id(i),
            thread_id=_thread(i),
            assistant_id="bench-assistant",
            # Distinct objects per run, as each request's payload is.
            metadata_json=canonical_json(dict(METADATA)),
        )
        run = new_run(draft, created, revision + 1)
        finished = created + timedelta(milliseconds=1)
        run = run._replace(
            status=RunStatus.SUCCESS,
            worker_id=f"worker-{i % WORKERS}",
            attempt=1,
            updated_at=finished,
            mod_revision=revision + 3,
        )
        revision += 3
        store._insert(run)
        store._finished.append((run.updated_at, run.run_id))
    store._revision = revision
    store._feed.reset(revision)


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the in-memory store's methods) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise RuntimeError("the coroutine suspended")


def fill_real(store: InMemoryRunStore, count: int, *, start: int = 0) -> None:
    """The same runs through the store's own methods: create, claim, finish."""
    for i in range(start, start + count):
        draft = RunDraft(
            run_id=bench_run_id(i),
            thread_id=_thread(i),
            assistant_id="bench-assistant",
            metadata_json=canonical_json(dict(METADATA)),
        )
        _sync(store.create_run(draft))
        worker = f"worker-{i % WORKERS}"
        _sync(store.set_status(StatusChange(draft.run_id, RunStatus.RUNNING, worker_id=worker)))
        _sync(store.set_status(StatusChange(draft.run_id, RunStatus.SUCCESS, worker_id=worker)))


def _per_run(fill: Callable[..., None], runs: int, traced: bool) -> dict[str, float]:
    """Bytes per stored run: the slope between runs // 5 and runs stored."""
    store = InMemoryRunStore()
    first = runs // 5
    if traced:
        tracemalloc.start()
    try:
        fill(store, first)
        gc.collect()
        a = tracemalloc.get_traced_memory()[0] if traced else rss_kib(os.getpid()) * 1024
        fill(store, runs - first, start=first)
        gc.collect()
        b = tracemalloc.get_traced_memory()[0] if traced else rss_kib(os.getpid()) * 1024
    finally:
        if traced:
            tracemalloc.stop()
    assert store.sizes()["runs"] == runs
    return {"bytes_per_run": (b - a) / (runs - first), "runs": runs}


def memory(runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs, "metadata_json": canonical_json(METADATA)}
    for name, fill in (("real", fill_real), ("bulk", fill_finished)):
        for traced in (True, False):
            started = time.perf_counter()
            result = _per_run(fill, runs, traced)
            result["seconds"] = time.perf_counter() - started
            out[f"{name}_{'traced' if traced else 'rss'}"] = result
            gc.collect()
    return out


async def _serve_filled(runs: int, argv: list[str]) -> None:
    """`app.serve`, with the store filled before the server starts."""
    from runcontrol_server.app import RunControlServer, build_manager
    from runcontrol_server.config import parse_settings

    settings = parse_settings(argv)
    manager = build_manager(settings)
    store = manager.store
    if not isinstance(store, InMemoryRunStore):
        raise SystemExit("bench.growth serves the in-memory store only")
    before = rss_kib(os.getpid())
    started = time.perf_counter()
    fill_finished(store, runs)
    gc.collect()
    filled = rss_kib(os.getpid())
    server = RunControlServer(settings, manager=manager)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    address = await server.start()
    print(f"listening on {address}", flush=True)
    print(
        f"[bench.growth] filled {runs:,} runs in {time.perf_counter() - started:.1f}s: "
        f"RSS {before:,} -> {filled:,} KiB",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth")
    parser.add_argument("mode", choices=("serve", "memory"))
    parser.add_argument("--runs", type=int, required=True)
    args, server_args = parser.parse_known_args(argv)
    if args.mode == "memory":
        print(json.dumps(memory(args.runs)), flush=True)
        return 0
    # As the entry point (`runcontrol_server.__main__.main`) does it.
    from runcontrol_server.__main__ import tune_gc
    from runcontrol_server.app import configure_logging
    from runcontrol_server.config import parse_settings

    settings = parse_settings(server_args)
    configure_logging(settings)
    logging.getLogger("runcontrol_server").debug("bench.growth: %d runs", args.runs)
    tune_gc()
    eventloop.run(_serve_filled(args.runs, server_args), settings.loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --- the driver's section ---------------------------------------------------------------

GROWTH_SERVICES = ("echo", "subject")


def growth_section(plan: Any) -> dict[str, Any]:
    """CreateRun and GetRun at concurrency 1 against `bench.growth` servers holding each
    of `plan.growth_sizes` finished runs and the echo, all running at once, rounds
    rotated over them after a warm-up; and the memory a stored run costs
    (`python -m bench.growth memory`, its own process)."""
    import contextlib

    from .common import log, median, run_json_module, server_process, worker_process

    sizes: tuple[int, ...] = plan.growth_sizes
    largest = max(sizes)
    started = time.perf_counter()
    log(f"growth: memory per stored run ({plan.growth_memory_runs:,} runs, in-process)")
    memory_result = run_json_module(
        "bench.growth", ["memory", "--runs", str(plan.growth_memory_runs)], timeout=600.0
    )
    out: dict[str, Any] = {"sizes": list(sizes), "memory": memory_result}
    with contextlib.ExitStack() as stack:
        load = stack.enter_context(worker_process())
        servers = {}
        for n in sizes:
            log(f"growth: server with {n:,} stored runs")
            args = ["-m", "bench.growth", "serve", "--runs", str(n), "--listen", "127.0.0.1:0"]
            # Retention off and the stored-runs bound above the largest fill: the store
            # must keep what it was given and still take the creates.
            args += ["--log-level", "WARNING", "--retention", "0"]
            args += ["--max-stored-runs", str(2 * largest + 1_000_000)]
            servers[str(n)] = stack.enter_context(server_process(args, start_timeout=600.0))
        answer_sizes = {}
        for n in sizes:
            target = servers[str(n)].address
            answer_sizes[str(n)] = load.call({"op": "growth_target", "target": target, "stored": n})
        echo_args = ["-m", "bench.echo_server", "--listen", "127.0.0.1:0"]
        echo_args += ["--sizes", json.dumps(answer_sizes[str(largest)])]
        echo = stack.enter_context(server_process(echo_args))
        rss = {key: server.rss_kib() for key, server in servers.items()}
        sides = ["echo", *servers]
        targets = {"echo": echo.address, **{k: s.address for k, s in servers.items()}}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            side: {"create": [], "get": []} for side in sides
        }
        for round_index in range(plan.rounds + 1):  # round 0: warm-up
            shift = round_index % len(sides)
            order = sides[shift:] + sides[:shift]
            if round_index % 2:
                order = order[::-1]
            for side in order:
                for method in ("create", "get"):
                    result = load.call(
                        {
                            "op": "unary",
                            "target": targets[side],
                            "service": "echo" if side == "echo" else "subject",
                            "method": method,
                            "concurrency": 1,
                            "duration": plan.unary_warmup_seconds
                            if round_index == 0
                            else plan.unary_seconds,
                            "max_calls": plan.unary_max_calls,
                        }
                    )
                    if result["errors"]:
                        raise RuntimeError(f"growth {side} {method}: {result['first_error']}")
                    if round_index:
                        samples[side][method].append(result)
        out["rss_kib"] = rss
        out["answer_sizes"] = answer_sizes
    out["latency"] = {
        side: {
            method: {
                "p50_ms": median([r["p50_ms"] for r in rounds]),
                "p99_ms": median([r["p99_ms"] for r in rounds]),
                "qps": median([r["qps"] for r in rounds]),
                "rounds": rounds,
            }
            for method, rounds in by_method.items()
        }
        for side, by_method in samples.items()
    }
    out["elapsed"] = time.perf_counter() - started
    return out
