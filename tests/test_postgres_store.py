"""PostgreSQL specifics beyond the shared contract: schema versions, outages, tidiness."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from runcontrol_server.domain import RunManager, RunStatus
from runcontrol_server.domain.errors import StoreUnavailable
from runcontrol_server.pgserver import LocalPostgres
from runcontrol_server.stores import InMemoryRunStore
from runcontrol_server.stores.postgres import LATEST_VERSION, PostgresRunStore, SchemaTooNew

BOUND = 30.0


async def _scalar(url: str, query: str) -> object:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(query.encode())
        row = await cursor.fetchone()
        assert row is not None
        return row[0]


async def test_schema_is_created_once_and_versioned(pg_url: str) -> None:
    stores = [PostgresRunStore(pg_url) for _ in range(3)]
    try:
        # Replicas starting together: the advisory lock makes each migration run once.
        await asyncio.gather(*(store.open() for store in stores))
        versions = await _scalar(pg_url, "SELECT array_agg(version) FROM rc_schema_version")
        assert versions == list(range(1, LATEST_VERSION + 1))
    finally:
        for store in stores:
            await store.close()


async def test_a_schema_newer_than_this_code_is_refused(pg_url: str) -> None:
    store = PostgresRunStore(pg_url)
    await store.open()
    await store.close()
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            b"INSERT INTO rc_schema_version (version, name) VALUES (%s, 'from the future')",
            (LATEST_VERSION + 1,),
        )
    newer = PostgresRunStore(pg_url)
    try:
        with pytest.raises(SchemaTooNew, match="upgrade runcontrol"):
            await newer.open()
    finally:
        await newer.close()


async def test_threads_without_runs_are_forgotten_by_retention(pg_url: str) -> None:
    store = PostgresRunStore(pg_url)
    await store.open()
    try:
        manager = RunManager(store)
        run = (await manager.create_run("t1")).run
        kept = (await manager.create_run("t2")).run
        await manager.cancel_run(run.run_id)
        (purged,) = await store.purge_finished(await store.now(), 100)
        assert purged.run_id == run.run_id
        # t1 has no run left: its row is gone; t2 keeps its active run and its row.
        assert await _scalar(pg_url, "SELECT array_agg(thread_id) FROM rc_threads") == ["t2"]
        again = (await manager.create_run("t1")).run  # the thread is born again
        assert again.status is RunStatus.PENDING and kept.status is RunStatus.PENDING
    finally:
        await store.close()


async def test_an_unreachable_database_is_store_unavailable() -> None:
    with LocalPostgres() as pg:
        store = PostgresRunStore(pg.url(), connect_timeout=0.5)
        await store.open()
        try:
            run = (await RunManager(store).create_run("t1")).run
            await asyncio.to_thread(pg.stop)
            for call in (store.get_run(run.run_id), store.revision(), store.feed_bounds()):
                with pytest.raises(StoreUnavailable):
                    await call
            await asyncio.to_thread(pg.start)
            # The pool reconnects by itself.
            async with asyncio.timeout(BOUND):
                while True:
                    try:
                        assert await store.get_run(run.run_id) == run
                        break
                    except StoreUnavailable:
                        await asyncio.sleep(0.05)
        finally:
            await store.close()


async def test_opening_without_a_database_is_store_unavailable() -> None:
    with LocalPostgres() as pg:
        url = pg.url()
    store = PostgresRunStore(url, connect_timeout=0.3)
    try:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await store.open()
    finally:
        await store.close()


async def test_a_task_cancelled_inside_a_pipeline_ends_cancelled(pg_url: str) -> None:
    """Cancelled while its pipeline waits for a result (a stopping feed reader, a
    client gone mid-write), the task ends cancelled, not with a StoreUnavailable a
    stopping loop would take for an outage and retry, and the pool lends a working
    connection after (psycopg cancels the query on the server)."""
    store = PostgresRunStore(pg_url)
    await store.open()
    try:
        sent = asyncio.Event()

        async def slow_read() -> None:
            async with store._connection() as conn, conn.pipeline():
                await conn.execute("SELECT pg_sleep(5)")
                sent.set()  # from here the pipeline's exit waits for the result

        task = asyncio.create_task(slow_read())
        await sent.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.revision() == 0  # the pool lends a working connection after
    finally:
        await store.close()


async def test_the_change_feed_is_trimmed_by_age_too(pg_url: str) -> None:
    store = PostgresRunStore(pg_url, history_limit=1000, history_max_age=timedelta(0))
    await store.open()
    try:
        manager = RunManager(store)
        for i in range(3):
            await manager.create_run(f"t{i}")
        head = await store.revision()
        # Every change is older than "now - 0": all of them go, by the database's clock.
        assert await store.compact_changes() == head
        assert (await store.feed_bounds()).compact_revision == head
        assert await store.read_changes(head, 10) == []
    finally:
        await store.close()


async def test_the_store_identity_lives_as_long_as_the_data(pg_url: str) -> None:
    first = PostgresRunStore(pg_url)
    await first.open()
    identity = await first.identity()
    await first.close()
    again = PostgresRunStore(pg_url)  # a restarted replica, or another one
    await again.open()
    try:
        assert await again.identity() == identity
    finally:
        await again.close()
    memory = InMemoryRunStore()
    assert await memory.identity() != await InMemoryRunStore().identity()
