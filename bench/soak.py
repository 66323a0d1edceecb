"""Soak: mixed load on a real server, its footprint sampled over time (`make soak`).

`python -m bench.soak [--seconds 60] [--seed N] [--out soak-report]` (`make soak`,
`SOAK_SECONDS=` to change the load's length) serves RunControl in THIS process and
runs the load in a child process (`python -m bench.soak --load ADDRESS`) that talks to
it over gRPC on 127.0.0.1 with the Python client: creates under every multitask
strategy (some replayed by request_id), claims with and without leases (renewed a few
times, or abandoned so the lease lapses), worker transitions (legal and not),
cancels, deletes, reads, WaitRun calls (some attached, some cancelled mid-way) and
WatchRuns streams that open and disconnect at random. Every run gets a deadline of a
few seconds, so every run ends even when its worker walks away.

Why the server runs here and the load elsewhere: the figures worth watching are inside
the server (open asyncio tasks, open watch streams, pending waiters, stored runs, the
change history), and reading them from the live objects is exact and needs no
endpoint; the load's own memory (client channels, buffers, its interpreter) stays in
the child, so the RSS read from /proc/<this pid>/status is the server's plus this
sampler's (a few small objects). matplotlib is imported only after the last sample.

Every second (`--interval`) it samples; when the load ends it keeps sampling while the
server settles, waiting (bounded by `--settle-timeout`) until every watcher, waiter and
stored run is gone, the janitor has emptied the store's indexes and the change history
(retention 1 s, history age 3 s), and the task count is back at its baseline. Then it
prints the table, the load's operation and error counts and the RSS figures, and
writes `soak.png` and `samples.json` to `--out` (git-ignored: the directory gets a
`.gitignore` of its own). Exit status 1 when the load saw an unexpected error (anything
but the refusals the rules promise) or the server did not settle.

Reading the RSS column: it rises for the first minutes and stays up after the load,
while everything the server holds for clients returns to zero. That is the servicer's
encode caches filling towards their bounds (encoded records of up to 16,384 runs and
4,096 watch responses per payload format, also bounded in bytes; entries of deleted
runs age out by those bounds only), plus allocator high water. With the record cache
cut to 512 runs the same 240 s load holds RSS flat from 40 s on (about 50 MiB), and
four 30 s loads against fresh servers in one process peak within 0.5 MiB of each other.

`tests/test_soak.py` runs a short version of the same (`run_soak`) inside `make test`.
Every loop is bounded by a count and by time; every call has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from runcontrol import AsyncClient, CancelAction, MultitaskStrategy, RunStatus
from runcontrol.errors import RunControlError
from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol_server.domain import RunManager
from runcontrol_server.stores.memory import InMemoryRunStore

from .common import REPO_ROOT, rss_kib

# --- the server's settings: everything the load leaves must go away on its own ---------
RETENTION = timedelta(seconds=1)
HISTORY_MAX_AGE = timedelta(seconds=3)
PRUNE_INTERVAL = timedelta(seconds=1)

# --- the load -------------------------------------------------------------------------
ACTORS = 24  # concurrent client coroutines
THREADS = 48  # thread ids the load spreads over
MAX_OPS_PER_ACTOR = 100_000
CALL_TIMEOUT = 10.0  # every unary call's deadline
RUN_TIMEOUT = (1.0, 4.0)  # every run's own deadline (seconds): every run ends
LEASE_TTLS = (1.0, 2.0)  # the server's minimum is 1 s
RECENT_RUNS = 512
# The refusals the rules promise under this load; anything else is a finding.
EXPECTED_REASONS = frozenset(
    {
        "THREAD_BUSY",
        "INVALID_TRANSITION",
        "ALREADY_CLAIMED",
        "RUN_NOT_FOUND",
        "RUN_ACTIVE",
        "REQUEST_ID_REUSED",
        "LEASE_NOT_HELD",
    }
)
# op -> weight
OPS = {
    "create": 30,
    "claim": 20,
    "set_status": 6,
    "cancel": 6,
    "wait": 10,
    "watch": 8,
    "delete": 6,
    "read": 8,
}
EXIT_GRACE = 30.0  # beyond --seconds, how long the load may take to wind down


class Load:
    """One client process's mixed load against `address` until `deadline`."""

    def __init__(self, address: str, seed: int, deadline: float) -> None:
        self.client = AsyncClient(address, timeout=CALL_TIMEOUT)
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.runs: deque[str] = deque(maxlen=RECENT_RUNS)
        # request_id -> the create it was sent with, for replays
        self.requests: deque[tuple[str, str, MultitaskStrategy, float, int]] = deque(maxlen=64)
        self.ops: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.unexpected_count = 0
        self.workers = itertools.count(1)

    def pick(self) -> str:
        """A run id: mostly one of the newest (still stored), sometimes an older one
        (likely ended and deleted by retention: RUN_NOT_FOUND is part of the load)."""
        if not self.runs:
            return "no-such-run"
        if self.rng.random() < 0.8:
            return self.runs[-1 - self.rng.randrange(min(len(self.runs), 32))]
        return self.rng.choice(self.runs)

    def note(self, error: BaseException) -> None:
        if isinstance(error, RunControlError) and error.reason in EXPECTED_REASONS:
            self.refusals[error.reason] += 1
            return
        self.unexpected_count += 1
        if len(self.unexpected) < 20:
            self.unexpected.append(f"{type(error).__name__}: {error}")

    async def attempt(self, call: Awaitable[Any]) -> Any:
        """Await a call; a promised refusal is counted and answered None."""
        try:
            return await call
        except RunControlError as error:
            self.note(error)
            return None

    async def actor(self) -> None:
        names = list(OPS)
        weights = list(OPS.values())
        loop = asyncio.get_running_loop()
        for _ in range(MAX_OPS_PER_ACTOR):
            if loop.time() >= self.deadline:
                return
            op = self.rng.choices(names, weights)[0]
            self.ops[op] += 1
            await getattr(self, op)()

    async def create(self) -> None:
        rng = self.rng
        if self.requests and rng.random() < 0.1:
            request_id, thread, strategy, run_timeout, attempts = rng.choice(self.requests)
        else:
            request_id = str(uuid.uuid4())
            thread = f"soak-{rng.randrange(THREADS)}"
            strategy = rng.choice(list(MultitaskStrategy))
            run_timeout = round(rng.uniform(*RUN_TIMEOUT), 3)
            attempts = rng.choice((1, 1, 2, 3))
            self.requests.append((request_id, thread, strategy, run_timeout, attempts))
        handle = await self.attempt(
            self.client.create_run(
                thread,
                multitask_strategy=strategy,
                request_id=request_id,
                run_timeout=run_timeout,
                max_attempts=attempts,
            )
        )
        if handle is not None:
            self.runs.append(handle.run_id)
            if handle.creation is not None and handle.creation.replayed:
                self.ops["create (replayed)"] += 1

    async def claim(self) -> None:
        """Claim a run, maybe with a lease renewed a few times, then finish it or walk
        away (the lease lapses, or the deadline ends it)."""
        rng = self.rng
        run_id = self.pick()
        worker = None if rng.random() < 0.3 else f"worker-{next(self.workers)}"
        lease = rng.choice((None, *LEASE_TTLS))
        answer = await self.attempt(
            self.client.set_status(run_id, RunStatus.RUNNING, worker_id=worker, lease_ttl=lease)
        )
        if answer is None:
            return
        run, _ = answer
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            if lease is not None and run.worker_id is not None:
                await self.attempt(self.client.renew_lease(run_id, run.worker_id))
        fate = rng.random()
        if fate < 0.6:
            await self.attempt(
                self.client.set_status(run_id, RunStatus.SUCCESS, worker_id=run.worker_id)
            )
        elif fate < 0.8:
            await self.attempt(
                self.client.set_status(
                    run_id, RunStatus.ERROR, worker_id=run.worker_id, error="soak failure"
                )
            )
        else:  # the worker walks away: its lease lapses, or its deadline ends the run
            self.ops["claim (walked away)"] += 1

    async def set_status(self) -> None:
        status = self.rng.choice(list(RunStatus))
        await self.attempt(self.client.set_status(self.pick(), status))

    async def cancel(self) -> None:
        action = self.rng.choice(list(CancelAction))
        await self.attempt(self.client.cancel_run(self.pick(), action=action, reason="soak"))

    async def delete(self) -> None:
        await self.attempt(self.client.delete_run(self.pick()))

    async def read(self) -> None:
        rng = self.rng
        choice = rng.random()
        if choice < 0.4:
            await self.attempt(self.client.fetch_run(self.pick()))
        elif choice < 0.7:
            thread = f"soak-{rng.randrange(THREADS)}"
            await self.attempt(self.client.list_runs_page(thread_id=thread, page_size=20))
        else:
            await self.attempt(self.client.has_inflight(f"soak-{rng.randrange(THREADS)}"))

    async def wait(self) -> None:
        """WaitRun for up to 2 s; some attached; some given up (cancelled) mid-way."""
        rng = self.rng
        timeout = rng.uniform(0.2, 2.0)
        call = asyncio.ensure_future(
            self.client.wait_run(self.pick(), timeout=timeout, attach=rng.random() < 0.3)
        )
        if rng.random() < 0.4:
            await asyncio.wait({call}, timeout=rng.uniform(0.0, timeout))
            call.cancel()  # the caller goes away: an attached run is cancelled
        try:
            await self.attempt(call)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this actor itself is being cancelled, not just the call

    async def watch(self) -> None:
        """A stream that reads for a while (or a few messages) and disconnects."""
        rng = self.rng
        request = pb.WatchRunsRequest(send_initial=rng.random() < 0.5)
        if rng.random() < 0.5:
            request.thread_id = f"soak-{rng.randrange(THREADS)}"
        stream = self.client.stub.WatchRuns(request)
        try:
            async with asyncio.timeout(rng.uniform(0.05, 2.0)):
                for _ in range(rng.randrange(1, 50)):
                    if await stream.read() is grpc.aio.EOF:
                        break
        except TimeoutError:
            pass
        except grpc.aio.AioRpcError as error:
            self.unexpected_count += 1
            if len(self.unexpected) < 20:
                self.unexpected.append(f"WatchRuns: {error.code().name}: {error.details()}")
        finally:
            stream.cancel()

    async def run(self, actors: int) -> dict[str, Any]:
        started = time.monotonic()
        try:
            await asyncio.gather(*(self.actor() for _ in range(actors)))
        finally:
            await self.client.close()
        return {
            "elapsed": time.monotonic() - started,
            "ops": dict(self.ops),
            "refusals": dict(self.refusals),
            "unexpected": self.unexpected_count,
            "unexpected_first": self.unexpected,
        }


async def load_main(address: str, seconds: float, seed: int, actors: int) -> None:
    loop = asyncio.get_running_loop()
    load = Load(address, seed, loop.time() + seconds)
    async with asyncio.timeout(seconds + EXIT_GRACE):
        summary = await load.run(actors)
    print(json.dumps(summary), flush=True)


# --- the server side: serve, sample, settle --------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    phase: str  # "baseline", "load" or "settle"
    rss_kib: int
    tasks: int  # asyncio tasks in the server process
    watchers: int  # open WatchRuns streams
    waiters: int  # WaitRun calls waiting
    waited_runs: int  # runs with at least one waiter (one shared future each)
    runs: int  # stored runs
    history: int  # change sets in this process's watch cache
    revision: int


@dataclass
class SoakResult:
    baseline: Sample
    samples: list[Sample]
    final: Sample
    load: dict[str, Any]
    sizes: dict[str, int]  # the store's indexes at the end
    settled: bool
    unsettled: list[str] = field(default_factory=list)

    @property
    def rss_growth_kib(self) -> int:
        return self.final.rss_kib - self.baseline.rss_kib

    @property
    def rss_peak_kib(self) -> int:
        return max(s.rss_kib for s in self.samples)


def _sample(manager: RunManager, store: InMemoryRunStore, phase: str, t0: float) -> Sample:
    waiters = manager.waiters
    history = manager.feed.history
    return Sample(
        t=round(time.monotonic() - t0, 2),
        phase=phase,
        rss_kib=rss_kib(os.getpid()),
        tasks=len(asyncio.all_tasks()),
        watchers=manager.watch_hub.count,
        waiters=waiters.waiter_count,
        waited_runs=waiters.count,
        runs=store.sizes()["runs"],
        history=len(history),
        revision=history.head_revision,
    )


def _unsettled(manager: RunManager, store: InMemoryRunStore, baseline: Sample) -> list[str]:
    """What has not returned to its baseline yet (empty: settled)."""
    now = _sample(manager, store, "settle", 0.0)
    left = [
        f"{name} {getattr(now, name)} (baseline {getattr(baseline, name)})"
        for name in ("tasks", "watchers", "waiters", "waited_runs", "runs", "history")
        if getattr(now, name) != getattr(baseline, name)
    ]
    left += [f"store {key} {value}" for key, value in store.sizes().items() if value]
    return left


def _load_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCONTROL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    return env


async def run_soak(
    seconds: float,
    *,
    seed: int,
    interval: float = 1.0,
    settle_timeout: float = 30.0,
    actors: int = ACTORS,
    on_sample: Callable[[Sample], None] | None = None,
) -> SoakResult:
    """Serve in this event loop, run the load process for `seconds`, sample every
    `interval`, then wait (at most `settle_timeout`) for the server to settle."""
    store = InMemoryRunStore(history_max_age=HISTORY_MAX_AGE)
    manager = RunManager(store, retention=RETENTION, prune_interval=PRUNE_INTERVAL)
    samples: list[Sample] = []

    def take(phase: str, t0: float) -> Sample:
        sample = _sample(manager, store, phase, t0)
        samples.append(sample)
        if on_sample is not None:
            on_sample(sample)
        return sample

    async with serve_in_process(manager=manager) as server:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        baseline = take("baseline", t0)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.soak",
                "--load",
                server.address,
                "--seconds",
                str(seconds),
                "--seed",
                str(seed),
                "--actors",
                str(actors),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_load_env(),
                cwd=REPO_ROOT,
            )
            try:
                # Sample while the load runs (bounded: it ends itself within its grace).
                wait = asyncio.ensure_future(proc.wait())
                end = loop.time() + seconds + EXIT_GRACE + 30.0
                while not wait.done() and loop.time() < end:
                    await asyncio.wait({wait}, timeout=interval)
                    take("load", t0)
                if not wait.done():
                    raise RuntimeError(f"the load process {proc.pid} did not end in time")
                await wait
            finally:
                if proc.returncode is None:
                    proc.kill()  # by its pid
                    await proc.wait()
            out.seek(0)
            err.seek(0)
            lines = out.read().decode().strip().splitlines()
            if proc.returncode != 0 or not lines:
                raise RuntimeError(
                    f"the load process exited {proc.returncode}:\n{err.read().decode()[-4000:]}"
                )
            load = json.loads(lines[-1])
        # Settle: every stream and waiter gone, attached cancels done, the janitor has
        # expired and purged every run and aged out the history, tasks at baseline.
        settle_end = loop.time() + settle_timeout
        next_sample = loop.time() + interval
        await manager.wait_detach_cancels()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle_timeout):
                await manager.watch_hub.wait_closed()
        left = _unsettled(manager, store, baseline)
        while left and loop.time() < settle_end:
            await asyncio.sleep(0.02)
            if loop.time() >= next_sample:
                take("settle", t0)
                next_sample += interval
            left = _unsettled(manager, store, baseline)
        final = take("settle", t0)
        return SoakResult(baseline, samples, final, load, store.sizes(), not left, left)


# --- the report ---------------------------------------------------------------------------

COLUMNS = (
    ("t", "t (s)", 7),
    ("phase", "phase", 8),
    ("rss_kib", "RSS MiB", 8),
    ("tasks", "tasks", 6),
    ("watchers", "watchers", 9),
    ("waiters", "waiters", 8),
    ("waited_runs", "waited", 7),
    ("runs", "runs", 6),
    ("history", "history", 8),
    ("revision", "revision", 9),
)


def table_header() -> str:
    return " ".join(f"{title:>{width}}" for _, title, width in COLUMNS)


def table_row(sample: Sample) -> str:
    cells = []
    for key, _, width in COLUMNS:
        value = getattr(sample, key)
        if key == "rss_kib":
            value = f"{value / 1024:.1f}"
        cells.append(f"{value:>{width}}")
    return " ".join(cells)


def summary_lines(result: SoakResult) -> list[str]:
    load = result.load
    mib = 1024
    return [
        f"load: {load['elapsed']:.1f} s, {sum(load['ops'].values())} operations: "
        + ", ".join(f"{k} {v}" for k, v in sorted(load["ops"].items())),
        "refusals (promised by the rules): "
        + (", ".join(f"{k} {v}" for k, v in sorted(load["refusals"].items())) or "none"),
        f"unexpected errors: {load['unexpected']}"
        + (f" (first: {load['unexpected_first'][:3]})" if load["unexpected"] else ""),
        f"RSS: baseline {result.baseline.rss_kib / mib:.1f} MiB, peak "
        f"{result.rss_peak_kib / mib:.1f} MiB, final {result.final.rss_kib / mib:.1f} MiB "
        f"(growth {result.rss_growth_kib / mib:+.1f} MiB)",
        f"peak: tasks {max(s.tasks for s in result.samples)}, watchers "
        f"{max(s.watchers for s in result.samples)}, waiters "
        f"{max(s.waiters for s in result.samples)}, runs {max(s.runs for s in result.samples)}",
        "settled: back to baseline (tasks, watchers, waiters, runs, history, store indexes)"
        if result.settled
        else f"NOT settled: {'; '.join(result.unsettled)}",
    ]


def plot(result: SoakResult, path: Path, load_seconds: float) -> bool:
    """Write the PNG; False when matplotlib is missing (the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = result.samples
    t = [s.t for s in samples]
    figure, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    panels: list[tuple[Any, str, list[tuple[str, list[float]]]]] = [
        (axes[0][0], "RSS (MiB)", [("RSS", [s.rss_kib / 1024 for s in samples])]),
        (axes[0][1], "asyncio tasks", [("tasks", [s.tasks for s in samples])]),
        (
            axes[1][0],
            "open streams",
            [
                ("watchers", [s.watchers for s in samples]),
                ("waiters", [s.waiters for s in samples]),
            ],
        ),
        (
            axes[1][1],
            "stored",
            [("runs", [s.runs for s in samples]), ("history", [s.history for s in samples])],
        ),
    ]
    load_end = max((s.t for s in samples if s.phase == "load"), default=load_seconds)
    for axis, title, series in panels:
        for label, values in series:
            axis.plot(t, values, label=label)
        axis.axvline(load_end, color="grey", linestyle="--", linewidth=1)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend()
    for axis in axes[1]:
        axis.set_xlabel("seconds (dashed: load ends)")
    figure.suptitle(f"runcontrol soak: {load_seconds:g} s of mixed load, then settling")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_report(result: SoakResult, out: Path, load_seconds: float) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    ignore = out / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# soak reports are local (python -m bench.soak)\n*\n")
    data = {
        "samples": [asdict(s) for s in result.samples],
        "load": result.load,
        "sizes": result.sizes,
        "settled": result.settled,
        "unsettled": result.unsettled,
    }
    (out / "samples.json").write_text(json.dumps(data, indent=1))
    written = [str(out / "samples.json")]
    png = out / "soak.png"
    if plot(result, png, load_seconds):
        written.append(str(png))
    else:
        written.append("(no plot: matplotlib is missing; pip install -e '.[bench]')")
    return written


async def soak_main(args: argparse.Namespace) -> int:
    print(
        f"soak: {args.seconds:g} s of mixed load (seed {args.seed}), sampling every "
        f"{args.interval:g} s",
        flush=True,
    )
    print(table_header(), flush=True)
    result = await run_soak(
        args.seconds,
        seed=args.seed,
        interval=args.interval,
        settle_timeout=args.settle_timeout,
        actors=args.actors,
        on_sample=lambda s: print(table_row(s), flush=True),
    )
    for line in summary_lines(result):
        print(line)
    for path in write_report(result, Path(args.out), args.seconds):
        print(f"wrote {path}")
    return 0 if result.settled and result.load["unexpected"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    parser.add_argument("--seed", type=int, default=None, help="the load's random seed")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--settle-timeout", type=float, default=60.0)
    parser.add_argument("--actors", type=int, default=ACTORS, help="concurrent client coroutines")
    parser.add_argument("--out", default="soak-report", help="directory for soak.png, samples.json")
    parser.add_argument("--load", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 24 * 3600:
        parser.error("--seconds must be between 0 and 86400")
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    if args.load:
        asyncio.run(load_main(args.load, args.seconds, args.seed, args.actors))
        return 0
    return asyncio.run(soak_main(args))


if __name__ == "__main__":
    sys.exit(main())
