"""Connections aged out by the server (GOAWAY, then the grace period): a watch and a wait
carry on exactly on the next connection, as they would on another replica."""

from __future__ import annotations

import asyncio

from _streams import until

from runcontrol import AsyncClient, WatchEvent
from runcontrol import RunStatus as ClientStatus
from runcontrol.testing import serve_in_process
from runcontrol_server.app import connection_options
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.domain import RunStatus, Watcher

# Reconnect quickly after a GOAWAY (gRPC's default first backoff is 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]
AGED = Settings(max_connection_age=0.2, max_connection_age_grace=0.2)
WANTED_STREAMS = 3  # the watch must have been cut and resumed at least twice
MAX_WRITES = 5000


def test_connection_settings_become_channel_arguments() -> None:
    options = dict(connection_options(AGED))
    assert options["grpc.max_connection_age_ms"] == 200
    assert options["grpc.max_connection_age_grace_ms"] == 200
    assert options["grpc.keepalive_time_ms"] == 30_000
    defaults = dict(connection_options(parse_settings([], {})))
    assert defaults["grpc.max_connection_age_ms"] == 300_000
    # Grace 0 means "let open calls finish": no grace argument at all.
    assert "grpc.max_connection_age_grace_ms" not in defaults
    off = dict(connection_options(Settings(keepalive_time=0, max_connection_age=0)))
    assert "grpc.keepalive_time_ms" not in off and "grpc.max_connection_age_ms" not in off


async def test_a_watch_cut_by_connection_age_resumes_exactly() -> None:
    async with (
        serve_in_process(settings=AGED) as server,
        AsyncClient(server.address, options=FAST_RECONNECT) as client,
    ):
        manager, hub = server.manager, server.manager.watch_hub
        seen: list[int] = []
        watch = aiter(client.watch(start_revision=1))

        async def consume() -> None:
            async for item in watch:
                if isinstance(item, WatchEvent):
                    seen.append(item.revision)

        consumer = asyncio.ensure_future(consume())
        streams: set[Watcher] = set()  # held, so no two are ever the same object
        try:
            for i in range(MAX_WRITES):
                run = (await manager.create_run(f"t{i}")).run
                await until(lambda rev=run.create_revision: rev in seen, "the event arrived")
                streams.update(hub.watchers)
                if len(streams) >= WANTED_STREAMS:
                    break
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        assert len(streams) >= WANTED_STREAMS, "the connection was never aged out"
        assert seen == list(range(1, len(seen) + 1)), "a revision was lost or repeated"


async def test_a_wait_cut_by_connection_age_is_retried_and_sees_the_end() -> None:
    async with (
        serve_in_process(settings=AGED) as server,
        AsyncClient(server.address, options=FAST_RECONNECT) as client,
    ):
        manager = server.manager
        run = (await manager.create_run("t1")).run
        waiting = asyncio.ensure_future(client.wait_run(run.run_id, timeout=60))
        # Outlive two connections (each lives 0.2 s + 0.2 s of grace) before finishing:
        # each cut drops the server-side wait (its shared slot), the retry makes a new one.
        slots = manager.waiters._slots
        for _ in range(2):
            await until(lambda: run.run_id in slots, "the wait is open")
            slot = slots[run.run_id]
            await until(lambda s=slot: slots.get(run.run_id) is not s, "the wait was cut")
        await until(lambda: manager.waiters.waiter_count == 1, "the retried wait is open")
        await manager.set_status(run.run_id, RunStatus.RUNNING, worker_id="w")
        await manager.set_status(run.run_id, RunStatus.SUCCESS, worker_id="w")
        finished, done = await asyncio.wait_for(waiting, 20)
        assert done and finished.status is ClientStatus.SUCCESS
