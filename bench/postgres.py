"""The PostgreSQL section of `python -m bench`: the PostgreSQL store against bare psycopg.

One throwaway cluster (`runcontrol_server.pgserver.LocalPostgres`, 127.0.0.1, a free
port) serves the whole section, one fresh database per side:

- `rc_server`: `runcontrol-server --store URL --pool-size N` (the installed entry
  point, as in the gRPC section), replica A; later replica B on the same database;
- `bare`, `bare_counter`, `bare_tx`, `bare_counter_tx`: the bare psycopg loop
  (`bench.pgload`, its own process, on the server's event loop, psycopg_pool of the same
  size N): with or without the counter row, in one round trip or sent the way the
  store sends its transactions (`conn.transaction()` in pipeline mode).

Measurements, rounds interleaved after a warm-up round (order rotated every round):

1. CreateRun QPS at concurrency 64 (`bench.load`'s `unary` op, as for the in-memory
   server) against the bare loop (INSERT + UPDATE in one transaction, one round trip),
   and the bare loop's variants (the counter row `UPDATE bench_counter SET n = n + 1`
   taken last like the store's revision row; psycopg's transaction round trips). CPU
   time of the server process, of the client process and of PostgreSQL (postmaster and
   backends) is recorded per round, and a third process samples what the side's
   connections are doing (pg_stat_activity: executing, waiting for a row lock, for the
   client, ...).
2. Watch delivery latency: a WatchRuns stream on replica A, CreateRuns sent one at a
   time to replica B (cross-replica: LISTEN/NOTIFY and a read of the change rows) and,
   as the baseline, to replica A itself (same replica, same database and code).
"""

from __future__ import annotations

import functools
import importlib.util
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runcontrol_server.pgserver import LocalPostgres, PostgresError, find_postgres_bin

from .common import (
    Server,
    Worker,
    cpu_seconds,
    log,
    median,
    server_command,
    server_process,
    worker_process,
)

if TYPE_CHECKING:
    from .run import Plan

# The bare loop's variants: (counter row, how the transaction is sent; see bench.pgload).
BARE_SIDES = {
    "bare": (False, "pipeline"),
    "bare_counter": (True, "pipeline"),
    "bare_tx": (False, "transaction"),
    "bare_counter_tx": (True, "transaction"),
}
THROUGHPUT_SIDES = ("server", *BARE_SIDES)
DATABASES = ("rc_server", *BARE_SIDES)
LATENCY_SIDES = ("cross", "same")
# How often a third process samples pg_stat_activity during a measured round.
WAIT_SAMPLE_INTERVAL = 0.02


def _rotated(sides: tuple[str, ...], round_index: int) -> tuple[str, ...]:
    """Round 0 in order, then reversed, then shifted: drift hits every side alike."""
    if round_index % 2:
        return sides[::-1]
    shift = (round_index // 2) % len(sides)
    return sides[shift:] + sides[:shift]


def _server_args(url: str, pool_size: int) -> list[str]:
    # Started with `server_command()`: the installed entry point, as in the gRPC section.
    return [
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "WARNING",
        "--store",
        url,
        "--pool-size",
        str(pool_size),
    ]


def _timed(
    call: Callable[[], dict[str, Any]], server_pid: int | None, client_pid: int, pg_pid: int
) -> dict[str, Any]:
    """Run one round; add the cores each process used meanwhile (CPU seconds / wall)."""

    def sample() -> tuple[float, float, float]:
        server = cpu_seconds(server_pid) if server_pid is not None else 0.0
        return server, cpu_seconds(client_pid), cpu_seconds(pg_pid, with_children=True)

    before, started = sample(), time.perf_counter()
    result = call()
    wall = time.perf_counter() - started
    after = sample()
    cores = [(b - a) / wall if wall > 0 else 0.0 for a, b in zip(before, after, strict=True)]
    result["cpu_cores"] = dict(zip(("server", "client", "postgres"), cores, strict=True))
    return result


def _throughput(
    plan: Plan,
    load: Worker,
    bare: Worker,
    sampler: Worker,
    server: Server,
    urls: dict[str, str],
    pg_pid: int,
) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {side: [] for side in THROUGHPUT_SIDES}
    for round_index in range(plan.rounds + 1):  # round 0: warm-up, discarded
        seconds = plan.pg_warmup_seconds if round_index == 0 else plan.pg_seconds
        for side in _rotated(THROUGHPUT_SIDES, round_index):
            if side == "server":
                command: dict[str, Any] = {
                    "op": "unary",
                    "target": server.address,
                    "service": "subject",
                    "method": "create",
                    "concurrency": plan.pg_concurrency,
                    "duration": seconds,
                    "max_calls": plan.pg_max_ops,
                }
                worker, server_pid = load, server.pid
            else:
                command = {
                    "op": "bare",
                    "url": urls[side],
                    "pool_size": plan.pg_pool_size,
                    "concurrency": plan.pg_concurrency,
                    "duration": seconds,
                    "max_ops": plan.pg_max_ops,
                    "counter": BARE_SIDES[side][0],
                    "style": BARE_SIDES[side][1],
                }
                worker, server_pid = bare, None
            database = "rc_server" if side == "server" else side
            waits = {
                "op": "waits",
                "url": urls[database],
                "database": database,
                "duration": seconds,
                "interval": WAIT_SAMPLE_INTERVAL,
            }
            if round_index:
                sampler.send(waits)
            result = _timed(
                functools.partial(worker.call, command, timeout=seconds + 120),
                server_pid,
                worker.proc.pid,
                pg_pid,
            )
            if round_index:
                result["waits"] = sampler.receive(waits, timeout=seconds + 60)["mean"]
            if result["errors"]:
                raise RuntimeError(f"postgres {side}: {result['first_error']}")
            if round_index:
                samples[side].append(result)
    out: dict[str, Any] = {}
    for side, rounds in samples.items():
        out[side] = {
            "qps": median([r["qps"] for r in rounds]),
            "p50_ms": median([r["p50_ms"] for r in rounds]),
            "p99_ms": median([r["p99_ms"] for r in rounds]),
            "cpu_cores": {
                name: median([r["cpu_cores"][name] for r in rounds])
                for name in ("server", "client", "postgres")
            },
            # Mean connections per state over every measured round's samples.
            "waits": {
                name: statistics.fmean([r["waits"][name] for r in rounds])
                for name in rounds[0]["waits"]
            },
            "rounds": rounds,
        }
    return out


def _latency(plan: Plan, load: Worker, replica_a: Server, replica_b: Server) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {side: [] for side in LATENCY_SIDES}
    for round_index in range(plan.rounds + 1):
        events = plan.latency_warmup_events if round_index == 0 else plan.latency_events
        for side in _rotated(LATENCY_SIDES, round_index):
            writer = replica_b if side == "cross" else replica_a
            result = load.call(
                {
                    "op": "watch_latency",
                    "watch_target": replica_a.address,
                    "write_target": writer.address,
                    "events": events,
                    "budget": plan.pg_budget,
                },
                timeout=plan.pg_budget + 60,
            )
            if result["missed"] or result["events"] < events:
                raise RuntimeError(
                    f"watch latency ({side}): {result['events']}/{events} events arrived"
                    f" within {plan.pg_budget:.0f}s"
                )
            if round_index:
                samples[side].append(result)
    out: dict[str, Any] = {}
    for side, rounds in samples.items():
        out[side] = {
            name: median([r[name] for r in rounds])
            for name in ("p50_ms", "p99_ms", "max_ms", "send_p50_ms", "send_p99_ms")
        }
        out[side]["events"] = sum(r["events"] for r in rounds)
        out[side]["extra_messages"] = sum(r["extra_messages"] for r in rounds)
        out[side]["rounds"] = rounds
    return out


def postgres_section(plan: Plan) -> dict[str, Any]:
    """Run the whole PostgreSQL section; `{"unavailable": why}` without PostgreSQL."""
    missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
    if missing:
        return {"unavailable": f"{', '.join(missing)} not installed (pip install -e '.[dev]')"}
    try:
        bin_dir = find_postgres_bin()
    except PostgresError as error:
        return {"unavailable": str(error)}
    started = time.perf_counter()
    with LocalPostgres(durable=plan.pg_durable) as cluster:
        pg_pid = cluster.pid
        assert pg_pid is not None
        log(f"postgres: cluster on 127.0.0.1:{cluster.port} (pid {pg_pid}), {bin_dir}")
        urls = {name: cluster.create_database(name) for name in DATABASES}
        with (
            worker_process("bench.pgload") as bare,
            worker_process("bench.pgload", ["--loop", "asyncio"]) as sampler,
            worker_process() as load,
            server_process(
                _server_args(urls["rc_server"], plan.pg_pool_size), command=server_command()
            ) as replica_a,
        ):
            answers = [bare.call({"op": "setup", "url": urls[side]}) for side in BARE_SIDES]
            settings = answers[0]
            loop = bare.call({"op": "loop"})["loop"]
            log(
                f"postgres: replica A on {replica_a.address} (pid {replica_a.pid}); "
                f"CreateRun c{plan.pg_concurrency} vs bare psycopg (pool {plan.pg_pool_size})"
            )
            throughput = _throughput(plan, load, bare, sampler, replica_a, urls, pg_pid)
            with server_process(
                _server_args(urls["rc_server"], plan.pg_pool_size), command=server_command()
            ) as replica_b:
                log(f"postgres: replica B on {replica_b.address}; watch delivery latency")
                latency = _latency(plan, load, replica_a, replica_b)
    return {
        "durable": plan.pg_durable,
        "settings": settings,
        "bare_loop": loop,
        "pool_size": plan.pg_pool_size,
        "concurrency": plan.pg_concurrency,
        "throughput": throughput,
        "latency": latency,
        "elapsed": time.perf_counter() - started,
    }
