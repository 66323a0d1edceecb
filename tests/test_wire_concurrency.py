"""Atomicity over the wire: concurrent callers race through real gRPC calls."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc

from runcontrol.errors import from_grpc_error
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

if TYPE_CHECKING:
    from runcontrol.v1.run_control_pb2_grpc import RunControlAsyncStub as Stub


async def test_64_concurrent_reject_creates_have_one_winner_100_times(stub: Stub) -> None:
    async def create(thread_id: str) -> str | None:
        try:
            response = await stub.CreateRun(pb.CreateRunRequest(thread_id=thread_id))
        except grpc.aio.AioRpcError as error:
            assert from_grpc_error(error).reason == "THREAD_BUSY"
            return None
        return response.run.run_id

    winners_per_round = []
    for round_number in range(100):
        thread_id = f"race-{round_number}"
        results = await asyncio.gather(*(create(thread_id) for _ in range(64)))
        winners = [r for r in results if r is not None]
        winners_per_round.append(len(winners))
        inflight = await stub.HasInflight(pb.HasInflightRequest(thread_id=thread_id))
        assert list(inflight.run_ids) == winners
    assert winners_per_round == [1] * 100


async def test_16_concurrent_claimers_have_one_winner(stub: Stub) -> None:
    for round_number in range(20):
        created = await stub.CreateRun(pb.CreateRunRequest(thread_id=f"claim-{round_number}"))
        run_id = created.run.run_id

        async def claim(worker: str, run_id: str = run_id) -> str | None:
            try:
                await stub.SetRunStatus(
                    pb.SetRunStatusRequest(
                        run_id=run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id=worker
                    )
                )
            except grpc.aio.AioRpcError as error:
                decoded = from_grpc_error(error)
                assert decoded.reason == "ALREADY_CLAIMED"
                return None
            return worker

        results = await asyncio.gather(*(claim(f"worker-{i}") for i in range(16)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        got = await stub.GetRun(pb.GetRunRequest(run_id=run_id))
        assert got.run.worker_id == winners[0]
        assert got.run.status == run_pb2.RUN_STATUS_RUNNING


async def test_concurrent_request_id_retries_create_one_run(stub: Stub) -> None:
    request = pb.CreateRunRequest(thread_id="idem", request_id="retry-me")
    responses = await asyncio.gather(*(stub.CreateRun(request) for _ in range(32)))
    assert len({r.run.run_id for r in responses}) == 1
    assert sum(not r.replayed for r in responses) == 1
    first = next(r for r in responses if not r.replayed)
    for response in responses:
        assert response.run.SerializeToString() == first.run.SerializeToString()
