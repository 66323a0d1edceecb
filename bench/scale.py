"""The watcher-scale section of `python -m bench`: 10,000 WatchRuns streams on one server.

One runcontrol server (the installed entry point, its watcher limits raised to hold
the streams: every stream comes from 127.0.0.1, one peer host) and one echo server
(`bench.echo_server`: a bare asyncio fan-out indexed by thread) are each held
`streams` open streams by `holders` watcher-holding processes (`bench.watchers`, at
most 100 streams per channel, every channel its own connection); one load process
(`bench.load changes`) makes the changes. Phases:

1. **Idle** (each server fresh, the first time it holds streams): RSS before and after
   opening the idle mix of `streams` streams, then after closing them; and the server
   CPU per change on an unrelated thread with none and with all those streams open
   (what an idle watcher costs a write).
2. **Fan-out at K** (K = 100, 1,000, 10,000 of `streams` open): K streams watch the
   changed thread, the rest are the idle mix. Both servers hold their streams at once
   and rounds alternate A/B, B/A after a warm-up round; per round `changes` changes one
   after the other; deliveries/s = deliveries / (last arrival - first send) and server
   CPU (utime + stime from /proc) per delivery, medians of the rounds.
3. **Reach all** (K = `streams`): one change at a time, the next once every watcher
   has it; per delivery the latency from the change's send to the message's arrival
   (p50/p99), and per change the time until the last watcher had it.

The idle mix: half the streams on threads of their own, the other half on 50 shared
threads, half of those with a status filter (RUNNING). None of them sees a change of
the watched thread; the echo never writes to them either (a perfect index).
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from runcontrol.v1 import run_pb2

from .common import (
    Server,
    Worker,
    cpu_seconds,
    event_loop_of,
    log,
    median,
    percentile,
    server_command,
    server_process,
    worker_process,
)

SERVICES = ("echo", "subject")
# The idle phase once more on runcontrol with grpc's experimental HTTP/2 server transport.
EXPERIMENT = "ph2_server"
EXPERIMENTAL = "subject_ph2_server"
SHARED_THREADS = 50
RUNNING = int(run_pb2.RUN_STATUS_RUNNING)


def _order(round_index: int) -> tuple[str, ...]:
    return SERVICES if round_index % 2 == 0 else SERVICES[::-1]


def _split(count: int, parts: int, index: int) -> int:
    return count // parts + (1 if index < count % parts else 0)


def idle_mix(prefix: str, count: int) -> list[dict[str, Any]]:
    """Groups of `count` streams that see none of the bench's changes."""
    distinct = count // 2
    groups: list[dict[str, Any]] = []
    if distinct:
        groups.append({"thread": f"{prefix}-own", "count": distinct, "distinct": True})
    shared = count - distinct
    variants = 2 * SHARED_THREADS
    for v in range(variants):
        n = _split(shared, variants, v)
        if n:
            groups.append(
                {
                    "thread": f"{prefix}-shared-{v // 2}",
                    "count": n,
                    "statuses": [RUNNING] if v % 2 else [],
                }
            )
    for group in groups:
        group.setdefault("receiving", False)
    return groups


def _share(groups: list[dict[str, Any]], parts: int, index: int) -> list[dict[str, Any]]:
    """Holder `index`'s share of every group (distinct threads renamed per holder)."""
    out = []
    for group in groups:
        n = _split(group["count"], parts, index)
        if n:
            thread = f"{group['thread']}-h{index}" if group.get("distinct") else group["thread"]
            out.append({**group, "count": n, "thread": thread})
    return out


class Holders:
    """The watcher-holding processes, commanded together."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def all(self, commands: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        for worker, command in zip(self.workers, commands, strict=True):
            worker.send(command)
        return [
            worker.receive(command, timeout)
            for worker, command in zip(self.workers, commands, strict=True)
        ]

    def same(self, command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return self.all([dict(command) for _ in self.workers], timeout)

    def open(
        self, server: Server, service: str, groups: list[dict[str, Any]], budget: float
    ) -> dict[str, Any]:
        parts = len(self.workers)
        answers = self.all(
            [
                {
                    "op": "open",
                    "target": server.address,
                    "service": service,
                    "groups": _share(groups, parts, i),
                    "budget": budget,
                }
                for i in range(parts)
            ],
            budget + 30,
        )
        opened = sum(a["opened"] for a in answers)
        expected = sum(a["expected"] for a in answers)
        if opened != expected:
            errors = [a["first_error"] for a in answers if a["first_error"]]
            raise RuntimeError(f"{service}: {opened}/{expected} streams opened; {errors[:1]}")
        return {
            "opened": opened,
            "receiving": sum(a["receiving"] for a in answers),
            "channels": sum(a["channels"] for a in answers),
            "seconds": max(a["seconds"] for a in answers),
        }

    def close(self, server: Server) -> None:
        self.same({"op": "close", "target": server.address}, 120)


def _changes(
    load: Worker, server: Server, service: str, thread: str, count: int, budget: float
) -> list[float]:
    answer = load.call(
        {
            "op": "changes",
            "target": server.address,
            "service": service,
            "thread": thread,
            "count": count,
            "budget": budget,
        },
        timeout=budget + 60,
    )
    sent: list[float] = answer["sent"]
    return sent


def _idle_phase(
    plan: Any, load: Worker, holders: Holders, server: Server, service: str
) -> dict[str, Any]:
    """RSS and per-change CPU of `plan.scale_streams` idle streams on a fresh server."""
    n = plan.scale_streams
    unrelated = f"scale-unrelated-{service}"

    def cpu_per_change() -> float:
        before = cpu_seconds(server.pid)
        sent = _changes(load, server, service, unrelated, plan.scale_idle_changes, 20.0)
        return (cpu_seconds(server.pid) - before) / max(1, len(sent))

    _changes(load, server, service, unrelated, 20, 10.0)  # warm-up
    time.sleep(0.5)
    rss_before = server.rss_kib()
    cpu_none = cpu_per_change()
    opened = holders.open(server, service, idle_mix(f"scale-idle-{service}", n), plan.scale_budget)
    time.sleep(1.0)  # let the server finish its side of the last streams
    rss_open = server.rss_kib()
    cpu_idle = cpu_per_change()
    holders.close(server)
    time.sleep(1.0)
    rss_closed = server.rss_kib()
    return {
        "streams": n,
        "open_seconds": opened["seconds"],
        "channels": opened["channels"],
        "rss_before_kib": rss_before,
        "rss_open_kib": rss_open,
        "rss_closed_kib": rss_closed,
        "growth_mb": (rss_open - rss_before) / 1024,
        "kib_per_stream": (rss_open - rss_before) / n,
        "cpu_per_change_none_us": cpu_none * 1e6,
        "cpu_per_change_idle_us": cpu_idle * 1e6,
    }


def _round(
    load: Worker,
    holders: Holders,
    server: Server,
    service: str,
    thread: str,
    watchers: int,
    changes: int,
    budget: float,
) -> dict[str, Any]:
    holders.same({"op": "reset", "target": server.address}, 30)
    cpu_before = cpu_seconds(server.pid)
    sent = _changes(load, server, service, thread, changes, budget)
    waited = holders.same(
        {"op": "await_count", "target": server.address, "count": len(sent), "budget": budget},
        budget + 30,
    )
    cpu = cpu_seconds(server.pid) - cpu_before
    collected = holders.same({"op": "collect", "target": server.address, "send_times": sent}, 120)
    latencies = [x for c in collected for x in c["latencies_ms"]]
    last = max((max(c["last_arrival"], default=0.0) for c in collected), default=0.0)
    deliveries = len(latencies)
    elapsed = max(last - sent[0], 1e-9) if sent and deliveries else 0.0
    return {
        "changes": len(sent),
        "deliveries": deliveries,
        "expected": watchers * len(sent),
        "complete": all(w["complete"] for w in waited) and deliveries == watchers * len(sent),
        "elapsed": elapsed,
        "rate": deliveries / elapsed if elapsed else 0.0,
        "cpu_seconds": cpu,
        "cpu_per_delivery_us": cpu / deliveries * 1e6 if deliveries else 0.0,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }


def _reach_all(
    plan: Any, load: Worker, holders: Holders, servers: dict[str, Server], threads: dict[str, str]
) -> dict[str, Any]:
    """One change at a time to every watcher, both servers alternating; change 0 is a
    warm-up and not counted."""
    sent: dict[str, list[float]] = {s: [] for s in SERVICES}
    budget = plan.scale_budget
    for service in SERVICES:
        holders.same({"op": "reset", "target": servers[service].address}, 30)
    for j in range(plan.scale_latency_changes + 1):
        for service in _order(j):
            server = servers[service]
            sent[service] += _changes(load, server, service, threads[service], 1, budget)
            holders.same(
                {
                    "op": "await_count",
                    "target": server.address,
                    "count": len(sent[service]),
                    "budget": budget,
                },
                budget + 30,
            )
    out: dict[str, Any] = {}
    for service in SERVICES:
        address = servers[service].address
        collected = holders.same(
            {"op": "collect", "target": address, "send_times": sent[service], "skip": 1}, 120
        )
        times = sent[service]
        # Per change: when the last watcher had it, after the send (change 0 dropped).
        reach = [
            (max(c["last_arrival"][j] for c in collected) - times[j]) * 1e3
            for j in range(1, len(times))
        ]
        latencies = [x for c in collected for x in c["latencies_ms"]]
        out[service] = {
            "changes": len(times) - 1,
            "deliveries": len(latencies),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies, default=0.0),
            "reach_all_median_ms": median(reach),
            "reach_all_max_ms": max(reach, default=0.0),
        }
    return out


def _k_phase(
    plan: Any, load: Worker, holders: Holders, servers: dict[str, Server], watchers: int
) -> dict[str, Any]:
    n = plan.scale_streams
    threads = {s: f"scale-k{watchers}-{s}" for s in SERVICES}
    opened = {}
    for service in SERVICES:
        groups = [{"thread": threads[service], "count": watchers, "receiving": True}]
        groups += idle_mix(f"scale-k{watchers}-idle-{service}", n - watchers)
        opened[service] = holders.open(servers[service], service, groups, plan.scale_budget)
    try:
        samples: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVICES}
        changes = plan.scale_changes[str(watchers)]
        for round_index in range(plan.scale_rounds + 1):  # round 0: warm-up
            for service in _order(round_index):
                result = _round(
                    load,
                    holders,
                    servers[service],
                    service,
                    threads[service],
                    watchers,
                    max(1, changes // 4) if round_index == 0 else changes,
                    plan.scale_budget,
                )
                if round_index:
                    samples[service].append(result)
        out: dict[str, Any] = {
            service: {
                "rate": median([r["rate"] for r in rounds]),
                "cpu_per_delivery_us": median([r["cpu_per_delivery_us"] for r in rounds]),
                "complete": all(r["complete"] for r in rounds),
                "open_seconds": opened[service]["seconds"],
                "rounds": rounds,
            }
            for service, rounds in samples.items()
        }
        if watchers == n:
            log(f"scale: one change at a time to all {n:,} watchers")
            out["reach_all"] = _reach_all(plan, load, holders, servers, threads)
        return out
    finally:
        for service in SERVICES:
            holders.close(servers[service])


def scale_section(plan: Any) -> dict[str, Any]:
    n = plan.scale_streams
    # Every stream comes from 127.0.0.1 (one peer host): the per-peer bound is raised
    # with the server-wide one (the documented setting behind a proxy).
    limit = str(2 * n + 100)
    subject_args = ["--listen", "127.0.0.1:0", "--log-level", "WARNING"]
    subject_args += ["--max-watchers", limit, "--max-watchers-per-peer", limit]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        subject = stack.enter_context(server_process(subject_args, command=server_command()))
        load = stack.enter_context(worker_process())
        seed = load.call({"op": "seed", "target": subject.address})
        echo_args = ["-m", "bench.echo_server", "--listen", "127.0.0.1:0"]
        echo = stack.enter_context(
            server_process([*echo_args, "--sizes", json.dumps(seed["sizes"])])
        )
        holders = Holders(
            [
                stack.enter_context(worker_process("bench.watchers"))
                for _ in range(plan.scale_holders)
            ]
        )
        servers = {"subject": subject, "echo": echo}
        loops = {
            "server": event_loop_of(subject.pid),
            "echo": event_loop_of(echo.pid),
            "holder": holders.workers[0].call({"op": "info"})["loop"],
            "holders": len(holders.workers),
            "load": load.call({"op": "info"})["loop"],
        }
        log(f"scale: {n:,} streams per server, {plan.scale_holders} holder processes; {loops}")
        idle = {}
        for service in SERVICES:
            log(f"scale: {n:,} idle streams on a fresh server ({service})")
            idle[service] = _idle_phase(plan, load, holders, servers[service], service)
        fanout = {}
        for watchers in plan.scale_ks:
            log(f"scale: fan-out K={watchers:,} of {n:,} open streams")
            fanout[str(watchers)] = _k_phase(plan, load, holders, servers, watchers)
        # The only setting found that changes grpc's own per-stream memory: its
        # experimental HTTP/2 server transport (not a default; see BENCHMARKS.md).
        log(f"scale: {n:,} idle streams on a fresh server, GRPC_EXPERIMENTS={EXPERIMENT}")
        experimental = stack.enter_context(
            server_process(
                subject_args, command=server_command(), env={"GRPC_EXPERIMENTS": EXPERIMENT}
            )
        )
        idle[EXPERIMENTAL] = _idle_phase(plan, load, holders, experimental, "subject")
        idle[EXPERIMENTAL]["grpc_experiments"] = EXPERIMENT
    return {
        "streams": n,
        "holders": plan.scale_holders,
        "server_flags": subject_args[4:],
        "loops": loops,
        "idle": idle,
        "fanout": fanout,
        "elapsed": time.perf_counter() - started,
    }
