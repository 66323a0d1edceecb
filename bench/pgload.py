"""The bare PostgreSQL baseline: a psycopg loop, a separate process driven by JSON lines.

`python -m bench.pgload [--loop auto|asyncio|uvloop]` reads one JSON command per line and
answers one JSON line, like `bench.load`. It runs on the event loop the server runs on
(`auto`: uvloop when installed, as `runcontrol-server --loop auto` does).

The work of one operation is the shape of a CreateRun without runcontrol: ONE
transaction that INSERTs a row (a run-sized row with a small JSON document) and UPDATEs
a row (the one just inserted: no contention). With `counter`, the transaction also
takes the one counter row last (`UPDATE bench_counter SET n = n + 1`), the way
runcontrol's store takes its revision row. Two ways to send it (`style`):

- `pipeline`: BEGIN, the statements and COMMIT queued in psycopg pipeline mode and sent
  with ONE Sync: a single round trip, the counter row held only while the database
  executes the tail and commits (the design in docs/postgres-revisions.md);
- `transaction`: `conn.pipeline()` + `conn.transaction()`, as the PostgreSQL store
  does. psycopg wraps a transaction in pipeline mode in nested pipelines and syncs
  after BEGIN, at the end of the block and after COMMIT (4 round trips here), so the
  counter row is held across a round trip to this process (and its busy event loop).

Commands (`op`): `setup` (create the tables in a database), `bare` (a timed round at a
given concurrency over a psycopg_pool pool of a given size), `waits` (sample what a
database's connections wait for while another process drives it), `loop`, `quit`.
Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from runcontrol_server import eventloop

from .common import load_summary, serve_commands

CALL_TIMEOUT = 30.0
MAX_ERRORS = 100
SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_runs (
    run_id        text PRIMARY KEY,
    thread_id     text NOT NULL,
    status        text NOT NULL,
    metadata      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    mod_count     integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bench_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    n         bigint NOT NULL
);
INSERT INTO bench_counter (n) VALUES (0) ON CONFLICT DO NOTHING;
"""
INSERT = (
    b"INSERT INTO bench_runs (run_id, thread_id, status, metadata)"
    b" VALUES (%s, %s, 'pending', %s::jsonb)"
)
UPDATE = b"UPDATE bench_runs SET status = 'running', mod_count = mod_count + 1 WHERE run_id = %s"
COUNTER = b"UPDATE bench_counter SET n = n + 1 RETURNING n"
METADATA = json.dumps({"source": "bench", "attempt": 1})


class PgLoad:
    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], AsyncConnectionPool[Any]] = {}
        self._ids = itertools.count()
        self._tag = f"{os.getpid() % 100000:05d}"

    async def _pool(self, url: str, size: int) -> AsyncConnectionPool[Any]:
        key = (url, size)
        if key not in self._pools:
            # The server's pool settings (min 1, max N, autocommit, UTC), without its
            # per-checkout health check: the bare minimum.
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                url,
                min_size=1,
                max_size=size,
                kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
                timeout=CALL_TIMEOUT,
                open=False,
                name=f"bench-{len(self._pools)}",
            )
            await pool.open(wait=True, timeout=CALL_TIMEOUT)
            self._pools[key] = pool
        return self._pools[key]

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    async def setup(self, url: str) -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(SCHEMA.encode())
            cursor = await conn.execute(
                b"SELECT current_setting('fsync'), current_setting('synchronous_commit'), version()"
            )
            row = await cursor.fetchone()
        assert row is not None
        return {"fsync": row[0], "synchronous_commit": row[1], "version": row[2]}

    async def bare(
        self,
        url: str,
        pool_size: int,
        concurrency: int,
        duration: float,
        max_ops: int,
        counter: bool,
        style: str,
    ) -> dict[str, Any]:
        if style not in ("pipeline", "transaction"):
            raise ValueError(f"unknown style {style!r}")
        pool = await self._pool(url, pool_size)
        latencies: list[float] = []
        errors: list[str] = []
        ops = 0
        start = time.perf_counter()
        deadline = start + duration

        async def one(run_id: str, thread_id: str) -> None:
            async with pool.connection() as conn:
                if style == "transaction":
                    async with conn.pipeline(), conn.transaction():
                        await conn.execute(INSERT, (run_id, thread_id, METADATA))
                        await conn.execute(UPDATE, (run_id,))
                        if counter:
                            await conn.execute(COUNTER)
                    return
                async with conn.pipeline():
                    await conn.execute(b"BEGIN")
                    await conn.execute(INSERT, (run_id, thread_id, METADATA))
                    await conn.execute(UPDATE, (run_id,))
                    if counter:
                        await conn.execute(COUNTER)
                    await conn.execute(b"COMMIT")

        async def worker() -> None:
            nonlocal ops
            while ops < max_ops and time.perf_counter() < deadline:
                ops += 1
                n = next(self._ids)
                # Fixed width, the size of runcontrol's ids.
                run_id = f"bench-r-{self._tag}-{n:027d}"
                thread_id = f"bench-c-{self._tag}-{n:010d}"
                began = time.perf_counter_ns()
                try:
                    await asyncio.wait_for(one(run_id, thread_id), CALL_TIMEOUT)
                except (psycopg.Error, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    if len(errors) >= MAX_ERRORS:
                        return
                    continue
                latencies.append((time.perf_counter_ns() - began) / 1e6)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return load_summary(latencies, errors, time.perf_counter() - start)

    async def waits(
        self, url: str, database: str, duration: float, interval: float
    ) -> dict[str, Any]:
        """What the database's connections are doing, sampled from pg_stat_activity every
        `interval` seconds for `duration` seconds while another process drives the load:
        the mean number of connections in each state (see `CATEGORIES`)."""
        totals = dict.fromkeys(CATEGORIES, 0)
        samples = 0
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            deadline = time.perf_counter() + duration
            while time.perf_counter() < deadline:
                cursor = await conn.execute(WAITS, (database,))
                for state, wait_type, wait_event, count in await cursor.fetchall():
                    totals[_category(state, wait_type, wait_event)] += count
                samples += 1
                await asyncio.sleep(interval)
        return {
            "samples": samples,
            "mean": {name: total / samples if samples else 0.0 for name, total in totals.items()},
        }


CATEGORIES = {
    "on_cpu": "executing (active, no wait)",
    "row_lock": "waiting for a row lock another transaction holds (Lock: transactionid/tuple)",
    "notify_lock": "waiting for the NOTIFY queue's commit lock (Lock: object)",
    "other_lock": "waiting for another heavyweight lock",
    "lwlock": "waiting for an internal lock (LWLock)",
    "io": "waiting for IO (WAL writes and flushes, data files)",
    "client_mid_tx": "inside a statement sequence, waiting for the client to send the next"
    " statement (active, ClientRead: the client's event loop is busy elsewhere)",
    "client_write": "sending results to the client (ClientWrite)",
    "idle_in_tx": "between round trips of a transaction, waiting for the client (idle in"
    " transaction)",
    "idle": "no transaction: in the pool (and the replicas' LISTEN connections)",
    "other": "anything else",
}
WAITS = (
    b"SELECT state, wait_event_type, wait_event, count(*) FROM pg_stat_activity"
    b" WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    b" GROUP BY 1, 2, 3"
)


def _category(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    if state == "idle":
        return "idle"
    if state is not None and state.startswith("idle in transaction"):
        return "idle_in_tx"
    if state != "active":
        return "other"
    if wait_type is None:
        return "on_cpu"
    if wait_type == "Lock":
        if wait_event in ("transactionid", "tuple"):
            return "row_lock"
        return "notify_lock" if wait_event == "object" else "other_lock"
    if wait_type == "Client":
        return "client_write" if wait_event == "ClientWrite" else "client_mid_tx"
    return {"LWLock": "lwlock", "IO": "io"}.get(wait_type, "other")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgload")
    parser.add_argument("--loop", choices=eventloop.LOOPS, default="auto")
    args = parser.parse_args(argv)
    # The same loop choice as runcontrol-server's (`--loop auto` by default).
    factory = eventloop.loop_factory(args.loop)
    name = "asyncio" if factory is None else "uvloop"
    eventloop.run(serve_commands(PgLoad(), {"loop": {"loop": name}}), args.loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
