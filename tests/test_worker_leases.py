"""Worker leases over the wire: claim with a lease, renew it, and lose it.

A worker process that dies stops renewing; the server's janitor takes the run back
(PENDING for another attempt, or ERROR "worker lost"). The lapses here are real
(the smallest lease the server takes, 1 s): every wait is for an event (a watch
event, a counted renewal), bounded by `LIMIT`, never a sleep used as proof.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from runcontrol import (
    AsyncClient,
    InvalidArgument,
    LeaseNotHeld,
    Run,
    RunStatus,
    WatchEvent,
)
from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain.errors import StoreUnavailable

LIMIT = 30.0  # every wait in this file is bounded by this many seconds
LEASE = 1.0  # seconds: the smallest lease the server accepts


@pytest.fixture
async def client(server: InProcessServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address) as connected:
        yield connected


async def _next_change(client: AsyncClient, run_id: str, after: int) -> Run:
    """The run's first change after revision `after`, from a watch (no polling)."""
    async with asyncio.timeout(LIMIT):
        async for item in client.watch(run_ids=[run_id], start_revision=after + 1):
            if isinstance(item, WatchEvent):
                return item.run
    raise AssertionError("the watch ended")


async def test_claim_with_a_lease_and_renew_it(client: AsyncClient) -> None:
    handle = await client.create_run("t1", max_attempts=3)
    assert (handle.run.attempt, handle.run.max_attempts, handle.run.lease_ttl) == (0, 3, None)
    assert await handle.claim("w1", lease_ttl=timedelta(seconds=30))
    claimed = handle.run
    assert (claimed.attempt, claimed.lease_ttl) == (1, timedelta(seconds=30))
    before = datetime.now(UTC)
    run, lapse = await client.renew_lease(handle.run_id, "w1")
    assert run == claimed  # a renewal is not a change: same record, same revision
    assert lapse > before + timedelta(seconds=29)
    with pytest.raises(LeaseNotHeld) as refused:
        await client.renew_lease(handle.run_id, "someone-else")
    assert (refused.value.status, refused.value.worker_id) == ("RUN_STATUS_RUNNING", "w1")
    await handle.set_status(RunStatus.SUCCESS, worker_id="w1")
    assert handle.run.lease_ttl is None
    with pytest.raises(LeaseNotHeld) as finished:
        await client.renew_lease(handle.run_id, "w1")
    assert finished.value.status == "RUN_STATUS_SUCCESS"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        (
            {"status": run_pb2.RunStatus.RUN_STATUS_SUCCESS, "lease_ttl": {"seconds": 5}},
            "lease_ttl",
        ),
        (
            {"status": run_pb2.RunStatus.RUN_STATUS_RUNNING, "lease_ttl": {"nanos": 999}},
            "lease_ttl",
        ),
        (
            {"status": run_pb2.RunStatus.RUN_STATUS_RUNNING, "lease_ttl": {"seconds": 3601}},
            "lease_ttl",
        ),
    ],
)
async def test_bad_leases_are_refused_with_the_field_named(
    server: InProcessServer, request_fields: dict[str, Any], field: str
) -> None:
    created = await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
    request = pb.SetRunStatusRequest(run_id=created.run.run_id, worker_id="w", **request_fields)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.stub.SetRunStatus(request)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")
    run = (await server.stub.GetRun(pb.GetRunRequest(run_id=created.run.run_id))).run
    assert run.status == run_pb2.RunStatus.RUN_STATUS_PENDING  # nothing changed


@pytest.mark.parametrize("max_attempts", [-1, 101])
async def test_bad_max_attempts_is_refused(client: AsyncClient, max_attempts: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await client.create_run("t1", max_attempts=max_attempts)
    assert raised.value.field == "max_attempts"


async def test_renew_requires_run_and_worker_ids(client: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await client.renew_lease("some-run", "")
    assert raised.value.field == "worker_id"


async def test_claimed_renews_while_the_worker_lives(
    server: InProcessServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewals = 0
    three = asyncio.Event()
    renew = server.manager.renew_lease

    async def counting(run_id: str, worker_id: str) -> tuple[Run, datetime]:
        nonlocal renewals
        answer = await renew(run_id, worker_id)
        renewals += 1
        if renewals == 3:
            three.set()
        return answer  # type: ignore[return-value]

    monkeypatch.setattr(server.manager, "renew_lease", counting)
    handle = await client.create_run("t1")
    async with handle.claimed("w1", lease_ttl=LEASE) as job:
        async with asyncio.timeout(LIMIT):
            await three.wait()  # three renewals: a whole lease period and more went by
        assert not job.cancelled.is_set()
        run = await client.fetch_run(handle.run_id)
        assert (run.status, run.worker_id, run.attempt) == (RunStatus.RUNNING, "w1", 1)
    run = await client.fetch_run(handle.run_id)
    assert (run.status, run.worker_id, run.lease_ttl) == (RunStatus.SUCCESS, "w1", None)


WORKER = textwrap.dedent(
    """
    import asyncio
    import sys

    from runcontrol import AsyncClient

    async def main() -> None:
        async with AsyncClient(sys.argv[1]) as client:
            handle = await client.get_run(sys.argv[2])
            async with handle.claimed(sys.argv[3], lease_ttl=float(sys.argv[4])):
                print("claimed", flush=True)
                await asyncio.Event().wait()  # works until killed

    asyncio.run(main())
    """
)


async def _claim_in_a_process_and_kill_it(address: str, run_id: str, worker_id: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        address,
        run_id,
        worker_id,
        str(LEASE),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(LIMIT):  # a cold interpreter
            line = await proc.stdout.readline()
        assert line.decode().strip() == "claimed", (await proc.communicate())[1].decode()
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL, this child only (by its pid): no cleanup runs
            await proc.wait()


async def test_a_killed_worker_loses_its_run_worker_lost(
    server: InProcessServer, client: AsyncClient
) -> None:
    handle = await client.create_run("t1")
    await _claim_in_a_process_and_kill_it(server.address, handle.run_id, "doomed")
    claimed = await client.fetch_run(handle.run_id)
    assert (claimed.status, claimed.worker_id, claimed.attempt) == (RunStatus.RUNNING, "doomed", 1)
    lost = await _next_change(client, handle.run_id, claimed.mod_revision)
    assert lost.status is RunStatus.ERROR
    assert lost.error is not None and lost.error.startswith("worker lost")
    assert "doomed" in lost.error
    assert not await client.has_inflight("t1")


async def test_a_killed_worker_s_run_goes_back_for_another_attempt(
    server: InProcessServer, client: AsyncClient
) -> None:
    handle = await client.create_run("t1", max_attempts=2)
    await _claim_in_a_process_and_kill_it(server.address, handle.run_id, "doomed")
    claimed = await client.fetch_run(handle.run_id)
    requeued = await _next_change(client, handle.run_id, claimed.mod_revision)
    assert (requeued.status, requeued.worker_id, requeued.attempt) == (RunStatus.PENDING, None, 1)
    # Another worker takes it and finishes: the second and last attempt.
    async with handle.claimed("survivor", lease_ttl=LEASE) as job:
        assert job.run.attempt == 2
    done = await client.fetch_run(handle.run_id)
    assert (done.status, done.worker_id, done.attempt) == (RunStatus.SUCCESS, "survivor", 2)


async def test_claimed_hears_that_its_lease_was_lost(
    server: InProcessServer, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker cut off from the server for a whole lease (renewals failing) learns it
    lost the run once it is back, and writes nothing on exit."""
    handle = await client.create_run("t1", max_attempts=2)
    renew = server.manager.renew_lease
    cut_off = asyncio.Event()
    cut_off.set()

    async def unreachable(run_id: str, worker_id: str) -> tuple[Run, datetime]:
        if cut_off.is_set():
            raise StoreUnavailable("cut off for this test")
        return await renew(run_id, worker_id)  # type: ignore[no-any-return]

    monkeypatch.setattr(server.manager, "renew_lease", unreachable)
    async with handle.claimed("w1", lease_ttl=LEASE) as job:
        requeued = await _next_change(client, handle.run_id, job.run.mod_revision)
        assert requeued.status is RunStatus.PENDING
        cut_off.clear()
        async with asyncio.timeout(LIMIT):
            await job.wait_cancelled()
        assert job.cancel_reason is not None and "lease lost" in job.cancel_reason
    run = await client.fetch_run(handle.run_id)
    assert (run.status, run.worker_id) == (RunStatus.PENDING, None)  # nothing written
