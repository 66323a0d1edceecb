"""The driver: `python -m bench [--quick]`.

Starts runcontrol (the installed `runcontrol-server` entry point, default flags) and
the echo baseline as server subprocesses on 127.0.0.1, drives them from a separate load
process (`bench.load`), holds 10,000 watch streams on each from watcher processes
(`bench.scale`, `bench.watchers`), measures latency and memory against the runs stored
(`bench.growth`), runs the in-process manager and memory benchmarks in their own
subprocesses, measures the PostgreSQL store against a bare psycopg loop on a throwaway
local cluster (`bench.postgres`), and hands everything to `report`.
Baseline and subject rounds are interleaved (A/B, then B/A) after a warm-up; the
median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import report
from .common import (
    REPO_ROOT,
    Server,
    Worker,
    event_loop_of,
    install_info,
    log,
    machine_info,
    median,
    now_utc,
    run_json_module,
    server_command,
    server_process,
    worker_process,
)
from .growth import growth_section
from .postgres import postgres_section
from .scale import scale_section

SERVICES = ("echo", "subject")
# Unary calls are measured on a third server too: the echo parsing each request as
# runcontrol's message (the floor of any Python server of the contract).
UNARY_SERVICES = ("echo", "subject", "echo_parse")
METHODS = ("create", "get", "list")
CONCURRENCY = (1, 64)
FANOUT_WATCHERS = (100, 1000)


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    unary_seconds: float
    unary_warmup_seconds: float
    unary_max_calls: int
    fanout_changes: dict[int, int]
    fanout_timeout: float
    watch_cycles: int
    watch_warmup_cycles: int
    manager_sizes: tuple[int, ...]
    manager_max_ops: int
    manager_max_seconds: float
    expire_runs: int
    expire_warmup: int
    # PostgreSQL (`bench.postgres`): timed CreateRun rounds at pg_concurrency against
    # the bare psycopg loop, both over pools of pg_pool_size connections; watch
    # delivery latency over latency_events changes per round (each bounded by
    # pg_budget seconds); pg_durable: fsync and synchronous commit on (--pg-durable).
    pg_seconds: float
    pg_warmup_seconds: float
    pg_max_ops: int
    latency_events: int
    latency_warmup_events: int
    # Watcher scale (`bench.scale`): streams held open on each server by scale_holders
    # processes; fan-out rounds at each K with scale_changes[K] changes; reach-all over
    # scale_latency_changes changes one at a time; every wait bounded by scale_budget.
    scale_streams: int = 10_000
    scale_holders: int = 4
    scale_ks: tuple[int, ...] = (100, 1_000, 10_000)
    scale_changes: dict[str, int] = field(default_factory=dict)
    scale_rounds: int = 1
    scale_latency_changes: int = 5
    scale_idle_changes: int = 200
    scale_budget: float = 120.0
    # How it grows (`bench.growth`): servers holding these many finished runs; memory per
    # stored run measured in-process over growth_memory_runs runs.
    growth_sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    growth_memory_runs: int = 100_000
    pg_concurrency: int = 64
    pg_pool_size: int = 10
    pg_budget: float = 60.0
    pg_durable: bool = False


QUICK = Plan(
    mode="quick",
    rounds=3,
    unary_seconds=0.25,
    unary_warmup_seconds=0.1,
    unary_max_calls=50_000,
    fanout_changes={100: 10, 1000: 4},
    fanout_timeout=60.0,
    watch_cycles=2_000,
    watch_warmup_cycles=500,
    manager_sizes=(1_000, 10_000, 100_000),
    manager_max_ops=300,
    manager_max_seconds=0.03,
    expire_runs=20_000,
    expire_warmup=10_000,
    pg_seconds=1.0,
    pg_warmup_seconds=0.5,
    pg_max_ops=50_000,
    latency_events=50,
    latency_warmup_events=10,
    scale_changes={"100": 40, "1000": 8, "10000": 3},
    scale_rounds=1,
    scale_latency_changes=3,
    scale_idle_changes=100,
    growth_memory_runs=20_000,
)
FULL = Plan(
    mode="full",
    rounds=5,
    unary_seconds=2.0,
    unary_warmup_seconds=0.5,
    unary_max_calls=1_000_000,
    fanout_changes={100: 100, 1000: 30},
    fanout_timeout=180.0,
    watch_cycles=10_000,
    watch_warmup_cycles=1_000,
    manager_sizes=(1_000, 10_000, 100_000),
    manager_max_ops=2_000,
    manager_max_seconds=0.25,
    expire_runs=100_000,
    expire_warmup=20_000,
    pg_seconds=3.0,
    pg_warmup_seconds=1.0,
    pg_max_ops=1_000_000,
    latency_events=300,
    latency_warmup_events=30,
    scale_changes={"100": 200, "1000": 30, "10000": 6},
    scale_rounds=3,
    scale_latency_changes=10,
    scale_idle_changes=300,
)


def _order(round_index: int, services: tuple[str, ...] = SERVICES) -> tuple[str, ...]:
    """Each round in another order (rotated, then reversed), so no side always goes
    first or last."""
    shift = round_index % len(services)
    rotated = services[shift:] + services[:shift]
    return rotated if round_index % 2 == 0 else rotated[::-1]


def unary_section(
    plan: Plan, worker: Worker, servers: dict[str, Server]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        for concurrency in CONCURRENCY:
            key = f"{method}_c{concurrency}"
            log(f"unary {key}")
            services = tuple(s for s in UNARY_SERVICES if s in servers)
            samples: dict[str, list[dict[str, Any]]] = {s: [] for s in services}
            for round_index in range(plan.rounds + 1):  # round 0: warm-up, discarded
                for service in _order(round_index, services):
                    seconds = plan.unary_warmup_seconds if round_index == 0 else plan.unary_seconds
                    result = worker.call(
                        {
                            "op": "unary",
                            "target": servers[service].address,
                            "service": service,
                            "method": method,
                            "concurrency": concurrency,
                            "duration": seconds,
                            "max_calls": plan.unary_max_calls,
                        }
                    )
                    if result["errors"]:
                        raise RuntimeError(f"{service} {key}: {result['first_error']}")
                    if round_index:
                        samples[service].append(result)
            out[key] = {
                service: {
                    "qps": median([r["qps"] for r in rounds]),
                    "p50_ms": median([r["p50_ms"] for r in rounds]),
                    "p99_ms": median([r["p99_ms"] for r in rounds]),
                    "rounds": rounds,
                }
                for service, rounds in samples.items()
            }
    return out


def fanout_section(
    plan: Plan, worker: Worker, servers: dict[str, Server], available: bool
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for watchers in FANOUT_WATCHERS:
        key = f"k{watchers}"
        if not available:
            out[key] = {"unavailable": "WatchRuns answered UNIMPLEMENTED"}
            continue
        log(f"fan-out K={watchers}")
        samples: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVICES}
        unavailable = None
        for round_index in range(plan.rounds + 1):
            for service in _order(round_index):
                changes = plan.fanout_changes[watchers]
                result = worker.call(
                    {
                        "op": "fanout",
                        "target": servers[service].address,
                        "service": service,
                        "watchers": watchers,
                        # The warm-up round is short: it only opens the paths.
                        "changes": max(1, changes // 4) if round_index == 0 else changes,
                        "budget": plan.fanout_timeout,
                    },
                    timeout=plan.fanout_timeout + 30,
                )
                if "unavailable" in result:
                    unavailable = f"{service}: {result['unavailable']}"
                    break
                if round_index:
                    samples[service].append(result)
            if unavailable:
                break
        if unavailable:
            out[key] = {"unavailable": unavailable}
            continue
        out[key] = {
            service: {
                "rate": median([r["rate"] for r in rounds]),
                "complete": all(r["complete"] for r in rounds),
                "rounds": rounds,
            }
            for service, rounds in samples.items()
        }
    return out


def watch_memory_section(
    plan: Plan, worker: Worker, servers: dict[str, Server], available: bool
) -> dict[str, Any]:
    if not available:
        return {"unavailable": "WatchRuns answered UNIMPLEMENTED"}
    out: dict[str, Any] = {"cycles": plan.watch_cycles}
    for service in SERVICES:
        log(f"watch open/cancel memory ({service})")
        server = servers[service]

        def cycles(count: int, target: str = server.address, name: str = service) -> None:
            result = worker.call(
                {
                    "op": "watch_cycles",
                    "target": target,
                    "service": name,
                    "cycles": count,
                    "concurrency": 50,
                    "budget": 240.0,
                },
                timeout=300.0,
            )
            if "unavailable" in result:
                raise RuntimeError(result["unavailable"])
            if result["failures"]:
                raise RuntimeError(f"{name}: {result['failures']} watch cycles failed")

        cycles(plan.watch_warmup_cycles)
        time.sleep(0.5)  # let the server finish tearing streams down
        before = server.rss_kib()
        started = time.perf_counter()
        cycles(plan.watch_cycles)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        after = server.rss_kib()
        out[service] = {
            "rss_before_kib": before,
            "rss_after_kib": after,
            "growth_mb": (after - before) / 1024,
            "elapsed": elapsed,
        }
    return out


def grpc_sections(plan: Plan) -> dict[str, Any]:
    # The server exactly as installed: the entry point with its default flags.
    subject_args = ["--listen", "127.0.0.1:0", "--log-level", "WARNING"]
    with (
        server_process(subject_args, command=server_command()) as subject,
        worker_process() as worker,
    ):
        log(f"runcontrol on {subject.address} (pid {subject.pid}); seeding")
        seed = worker.call({"op": "seed", "target": subject.address})
        echo_args = ["-m", "bench.echo_server", "--listen", "127.0.0.1:0"]
        echo_args += ["--sizes", json.dumps(seed["sizes"])]
        with server_process(echo_args) as echo, server_process([*echo_args, "--parse"]) as parse:
            log(f"echo on {echo.address} (pid {echo.pid}); sizes {seed['sizes']}")
            log(f"parsing echo on {parse.address} (pid {parse.pid})")
            servers = {"subject": subject, "echo": echo, "echo_parse": parse}
            available = bool(seed["watch_available"])
            loops = {
                "server": event_loop_of(subject.pid),
                "echo": event_loop_of(echo.pid),
                "load": worker.call({"op": "info"})["loop"],
            }
            log(f"event loops: {loops}")
            return {
                "loops": loops,
                "seed": seed,
                "unary": unary_section(plan, worker, servers),
                "fanout": fanout_section(plan, worker, servers, available),
                "watch_memory": watch_memory_section(plan, worker, servers, available),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the ~2 minute run (a smoke check: too short to decide a goal)",
    )
    parser.add_argument(
        "--only",
        choices=("grpc", "scale", "growth", "manager", "memory", "postgres"),
        action="append",
        help="run only these sections (repeatable); the report covers what ran",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument(
        "--pg-durable",
        action="store_true",
        help="PostgreSQL section with fsync and synchronous commit on (default: the tests' "
        "LocalPostgres settings, fsync off; both sides always share the cluster's settings)",
    )
    parser.add_argument(
        "--from",
        dest="from_json",
        type=Path,
        metavar="LATEST_JSON",
        help="measure nothing: write the report (table, chart, BENCHMARKS.md) again from "
        "the raw numbers of a saved run, e.g. after a note changed",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        _report(json.loads(args.from_json.read_text())["raw"], args)
        return 0
    plan = QUICK if args.quick else FULL
    if args.pg_durable:
        plan = replace(plan, pg_durable=True)
    sections = set(args.only or ("grpc", "scale", "growth", "manager", "memory", "postgres"))
    started = time.perf_counter()
    raw: dict[str, Any] = {
        "plan": asdict(plan),
        "machine": machine_info(),
        "install": install_info(),
        "date": now_utc(),
    }

    if "grpc" in sections:
        raw["grpc"] = grpc_sections(plan)
    if "scale" in sections:
        raw["scale"] = scale_section(plan)
    if "growth" in sections:
        raw["growth"] = growth_section(plan)
    if "manager" in sections:
        log(f"manager scale {plan.manager_sizes}")
        raw["manager"] = run_json_module(
            "bench.manager_scale",
            [
                "--sizes",
                ",".join(map(str, plan.manager_sizes)),
                "--rounds",
                str(plan.rounds),
                "--max-ops",
                str(plan.manager_max_ops),
                "--max-seconds",
                str(plan.manager_max_seconds),
            ],
            timeout=900.0,
        )
    if "memory" in sections:
        log(f"memory: {plan.expire_runs} created-and-expired runs")
        raw["expire_memory"] = run_json_module(
            "bench.memory",
            ["--runs", str(plan.expire_runs), "--warmup", str(plan.expire_warmup)],
            timeout=600.0,
        )
    if "postgres" in sections:
        log("postgres: store vs bare psycopg, watch delivery across replicas")
        raw["postgres"] = postgres_section(plan)
        if "unavailable" in raw["postgres"]:
            log(f"postgres: unavailable: {raw['postgres']['unavailable']}")
    raw["elapsed_seconds"] = time.perf_counter() - started
    metrics = _report(raw, args)
    missed = [m for m in metrics if m["passed"] is False]
    return 1 if args.strict and missed else 0


def _report(raw: dict[str, Any], args: argparse.Namespace) -> list[report.Metric]:
    """Print the table and write latest.json, the charts and BENCHMARKS.md."""
    metrics = report.build_metrics(raw)
    print(report.table(metrics))
    args.out.mkdir(parents=True, exist_ok=True)
    growth_path = args.out / "growth.png"
    if "growth" in raw and report.growth_chart(raw["growth"], growth_path):
        raw["growth_chart"] = os.path.relpath(growth_path, REPO_ROOT)
    json_path = args.out / "latest.json"
    json_path.write_text(json.dumps({"metrics": metrics, "raw": raw}, indent=2) + "\n")
    chart_path = args.out / "ratios.png"
    title = f"runcontrol bench ({raw['plan']['mode']})"
    chart_written = report.chart(metrics, chart_path, title=title)
    if not args.no_markdown:
        report.write_markdown(args.markdown, raw, metrics, chart_path if chart_written else None)
    if not chart_written:
        log("no chart: matplotlib is missing (pip install -e '.[bench]') or nothing to chart")
    written = [json_path, *([chart_path] if chart_written else [])]
    written += [] if args.no_markdown else [args.markdown]
    log(f"done in {raw['elapsed_seconds']:.0f}s: {', '.join(map(str, written))}")
    return metrics
