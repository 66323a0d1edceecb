"""Every implemented RPC over real gRPC: happy paths and the behaviours the contract promises."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

RunControlAsyncStub = Any  # generated async stub (typed in the .pyi)

PENDING = run_pb2.RUN_STATUS_PENDING
RUNNING = run_pb2.RUN_STATUS_RUNNING
SUCCESS = run_pb2.RUN_STATUS_SUCCESS
ERROR = run_pb2.RUN_STATUS_ERROR
INTERRUPTED = run_pb2.RUN_STATUS_INTERRUPTED
FPC = grpc.StatusCode.FAILED_PRECONDITION


async def create(stub: RunControlAsyncStub, thread_id: str, **fields: Any) -> pb.CreateRunResponse:
    response: pb.CreateRunResponse = await stub.CreateRun(
        pb.CreateRunRequest(thread_id=thread_id, **fields)
    )
    return response


async def set_status(
    stub: RunControlAsyncStub, run_id: str, status: int, **fields: Any
) -> pb.SetRunStatusResponse:
    response: pb.SetRunStatusResponse = await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run_id, status=status, **fields)
    )
    return response


def wire(message: Any) -> bytes:
    return bytes(message.SerializeToString(deterministic=True))


async def test_create_then_get_returns_byte_equal_record(stub: RunControlAsyncStub) -> None:
    request = pb.CreateRunRequest(
        thread_id="t-1",
        assistant_id="agent-7",
        request_id="req-1",
        timeout=Duration(seconds=30, nanos=500_000_000),
    )
    request.metadata.update({"user": "ann", "tags": ["a", "b"], "n": 3, "nested": {"ok": True}})
    request.kwargs.update({"prompt": "hello", "temperature": 0.5, "none": None})
    created = (await stub.CreateRun(request)).run

    fetched = (await stub.GetRun(pb.GetRunRequest(run_id=created.run_id))).run
    assert wire(fetched) == wire(created)

    assert created.thread_id == "t-1"
    assert created.assistant_id == "agent-7"
    assert created.request_id == "req-1"
    assert created.status == PENDING
    assert created.create_revision == created.mod_revision >= 1
    assert created.created_at == created.updated_at
    deadline = created.deadline.ToDatetime() - created.created_at.ToDatetime()
    assert deadline == timedelta(seconds=30, milliseconds=500)
    assert dict(created.metadata) == {
        "user": "ann",
        "tags": ["a", "b"],
        "n": 3,
        "nested": {"ok": True},
    }
    assert created.kwargs["prompt"] == "hello"
    assert created.kwargs["temperature"] == 0.5
    assert created.kwargs["none"] is None
    for unset in ("error", "cancel_reason", "worker_id"):
        assert not created.HasField(unset), unset


async def test_create_applies_defaults_and_sets_nothing_optional(stub: RunControlAsyncStub) -> None:
    run = (await create(stub, "t-defaults")).run
    assert run.on_disconnect == run_pb2.DISCONNECT_MODE_CANCEL
    assert run.multitask_strategy == run_pb2.MULTITASK_STRATEGY_REJECT
    assert run.cancel_action == run_pb2.CANCEL_ACTION_INTERRUPT
    for unset in ("assistant_id", "error", "cancel_reason", "worker_id", "deadline", "request_id"):
        assert not run.HasField(unset), unset
    assert dict(run.metadata) == {}
    assert dict(run.kwargs) == {}


async def test_create_keeps_explicit_enum_values(stub: RunControlAsyncStub) -> None:
    run = (
        await create(
            stub,
            "t-explicit",
            on_disconnect=run_pb2.DISCONNECT_MODE_CONTINUE,
            multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        )
    ).run
    assert run.on_disconnect == run_pb2.DISCONNECT_MODE_CONTINUE
    assert run.multitask_strategy == run_pb2.MULTITASK_STRATEGY_ENQUEUE


async def test_reject_refuses_a_busy_thread_until_it_is_free(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    first = (await create(stub, "t-reject")).run
    await expect_error(
        create(stub, "t-reject", multitask_strategy=run_pb2.MULTITASK_STRATEGY_REJECT),
        FPC,
        "THREAD_BUSY",
        {"thread_id": "t-reject", "inflight_run_ids": first.run_id},
    )
    await set_status(stub, first.run_id, RUNNING)
    await set_status(stub, first.run_id, SUCCESS)
    second = await create(stub, "t-reject")
    assert second.run.status == PENDING
    assert list(second.interrupted_runs) == []


@pytest.mark.parametrize(
    ("strategy", "action"),
    [
        (run_pb2.MULTITASK_STRATEGY_INTERRUPT, run_pb2.CANCEL_ACTION_INTERRUPT),
        (run_pb2.MULTITASK_STRATEGY_ROLLBACK, run_pb2.CANCEL_ACTION_ROLLBACK),
    ],
)
async def test_interrupting_strategies_interrupt_every_active_run(
    stub: RunControlAsyncStub, strategy: int, action: int
) -> None:
    older = (await create(stub, "t-int")).run
    await set_status(stub, older.run_id, RUNNING, worker_id="w1")
    queued = (
        await create(stub, "t-int", multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE)
    ).run

    response = await create(stub, "t-int", multitask_strategy=strategy)
    new = response.run
    assert new.status == PENDING
    interrupted = {r.run_id: r for r in response.interrupted_runs}
    assert set(interrupted) == {older.run_id, queued.run_id}
    for record in interrupted.values():
        assert record.status == INTERRUPTED
        assert record.cancel_action == action
        assert new.run_id in record.cancel_reason
        # One atomic change: the interrupts share the new run's revision.
        assert record.mod_revision == new.create_revision
        stored = (await stub.GetRun(pb.GetRunRequest(run_id=record.run_id))).run
        assert wire(stored) == wire(record)

    listed = await stub.ListRuns(pb.ListRunsRequest(thread_id="t-int", statuses=[INTERRUPTED]))
    assert {r.run_id for r in listed.runs} == {older.run_id, queued.run_id}
    inflight = await stub.HasInflight(pb.HasInflightRequest(thread_id="t-int"))
    assert list(inflight.run_ids) == [new.run_id]


async def test_enqueue_is_fifo_and_refuses_early_claims(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    enqueue = run_pb2.MULTITASK_STRATEGY_ENQUEUE
    first = (await create(stub, "t-q")).run
    second_response = await create(stub, "t-q", multitask_strategy=enqueue)
    third_response = await create(stub, "t-q", multitask_strategy=enqueue)
    second, third = second_response.run, third_response.run
    assert list(second_response.queued_behind_run_ids) == [first.run_id]
    assert list(third_response.queued_behind_run_ids) == [first.run_id, second.run_id]
    assert list(second_response.interrupted_runs) == []

    await expect_error(
        set_status(stub, second.run_id, RUNNING),
        FPC,
        "INVALID_TRANSITION",
        {
            "run_id": second.run_id,
            "from_status": "RUN_STATUS_PENDING",
            "to_status": "RUN_STATUS_RUNNING",
            "queued_behind": first.run_id,
        },
    )
    await set_status(stub, first.run_id, RUNNING)
    await set_status(stub, first.run_id, SUCCESS)
    # The third run still waits for the second one.
    error = await expect_error(set_status(stub, third.run_id, RUNNING), FPC, "INVALID_TRANSITION")
    assert error.metadata["queued_behind"] == second.run_id
    claimed = await set_status(stub, second.run_id, RUNNING, worker_id="w")
    assert claimed.changed
    assert claimed.run.status == RUNNING


async def test_claim_succeeds_for_exactly_one_worker(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    run = (await create(stub, "t-claim")).run
    claimed = await set_status(stub, run.run_id, RUNNING, worker_id="w1")
    assert claimed.changed
    assert claimed.run.worker_id == "w1"
    assert claimed.run.mod_revision > run.mod_revision

    # The winner's retry is an idempotent success that uses no revision.
    retry = await set_status(stub, run.run_id, RUNNING, worker_id="w1")
    assert not retry.changed
    assert wire(retry.run) == wire(claimed.run)

    await expect_error(
        set_status(stub, run.run_id, RUNNING, worker_id="w2"),
        FPC,
        "ALREADY_CLAIMED",
        {"run_id": run.run_id, "worker_id": "w1"},
    )
    done = await set_status(stub, run.run_id, SUCCESS, worker_id="w1")
    assert done.run.status == SUCCESS
    assert done.run.worker_id == "w1"


async def test_concurrent_claims_have_one_winner(stub: RunControlAsyncStub) -> None:
    run = (await create(stub, "t-race")).run
    calls = [
        stub.SetRunStatus(pb.SetRunStatusRequest(run_id=run.run_id, status=RUNNING, worker_id=w))
        for w in (f"w{i}" for i in range(10))
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    winners = [r for r in results if isinstance(r, pb.SetRunStatusResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 9
    assert all(e.code() == FPC for e in losers)


async def test_expected_mod_revision_is_a_compare_and_set(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    run = (await create(stub, "t-cas")).run
    await expect_error(
        set_status(stub, run.run_id, RUNNING, expected_mod_revision=run.mod_revision + 5),
        grpc.StatusCode.ABORTED,
        "REVISION_MISMATCH",
        {
            "run_id": run.run_id,
            "expected_mod_revision": str(run.mod_revision + 5),
            "mod_revision": str(run.mod_revision),
        },
    )
    moved = await set_status(stub, run.run_id, RUNNING, expected_mod_revision=run.mod_revision)
    assert moved.changed


async def test_error_status_stores_the_error_text(stub: RunControlAsyncStub) -> None:
    run = (await create(stub, "t-err")).run
    await set_status(stub, run.run_id, RUNNING)
    failed = await set_status(stub, run.run_id, ERROR, error="boom")
    assert failed.run.status == ERROR
    assert failed.run.error == "boom"


async def test_cancel_is_idempotent(stub: RunControlAsyncStub) -> None:
    run = (await create(stub, "t-cancel")).run
    first = await stub.CancelRun(
        pb.CancelRunRequest(
            run_id=run.run_id, action=run_pb2.CANCEL_ACTION_ROLLBACK, reason="user pressed stop"
        )
    )
    assert first.cancelled
    assert first.run.status == INTERRUPTED
    assert first.run.cancel_action == run_pb2.CANCEL_ACTION_ROLLBACK
    assert first.run.cancel_reason == "user pressed stop"

    second = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    assert not second.cancelled
    assert wire(second.run) == wire(first.run)


async def test_cancel_uses_default_action_and_reason(stub: RunControlAsyncStub) -> None:
    run = (await create(stub, "t-cancel-default")).run
    response = await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
    assert response.cancelled
    assert response.run.cancel_action == run_pb2.CANCEL_ACTION_INTERRUPT
    assert response.run.cancel_reason == "cancelled by client"


async def test_request_id_retry_replays_and_reuse_is_refused(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    request = pb.CreateRunRequest(thread_id="t-idem", request_id="rq-1", assistant_id="a")
    request.metadata.update({"k": "v"})
    first = await stub.CreateRun(request)
    assert not first.replayed

    again = await stub.CreateRun(request)
    assert again.replayed
    again.replayed = False
    assert wire(again) == wire(first)

    listed = await stub.ListRuns(pb.ListRunsRequest(thread_id="t-idem"))
    assert [r.run_id for r in listed.runs] == [first.run.run_id]

    different = pb.CreateRunRequest(thread_id="t-idem", request_id="rq-1", assistant_id="b")
    await expect_error(
        stub.CreateRun(different),
        FPC,
        "REQUEST_ID_REUSED",
        {"request_id": "rq-1", "run_id": first.run.run_id},
    )


async def test_delete_refuses_active_runs_and_removes_finished_ones(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    run = (await create(stub, "t-del")).run
    await expect_error(
        stub.DeleteRun(pb.DeleteRunRequest(run_id=run.run_id)),
        FPC,
        "RUN_ACTIVE",
        {"run_id": run.run_id, "status": "RUN_STATUS_PENDING"},
    )
    cancelled = (await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))).run
    deleted = await stub.DeleteRun(
        pb.DeleteRunRequest(run_id=run.run_id, expected_mod_revision=cancelled.mod_revision)
    )
    assert wire(deleted.run) == wire(cancelled)
    assert deleted.revision > cancelled.mod_revision
    await expect_error(
        stub.GetRun(pb.GetRunRequest(run_id=run.run_id)),
        grpc.StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
        {"run_id": run.run_id},
    )


async def test_has_inflight_lists_active_runs_oldest_first(stub: RunControlAsyncStub) -> None:
    empty = await stub.HasInflight(pb.HasInflightRequest(thread_id="t-none"))
    assert not empty.has_inflight
    assert list(empty.run_ids) == []

    first = (await create(stub, "t-in")).run
    second = (await create(stub, "t-in", multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE)).run
    busy = await stub.HasInflight(pb.HasInflightRequest(thread_id="t-in"))
    assert busy.has_inflight
    assert list(busy.run_ids) == [first.run_id, second.run_id]
    assert busy.revision == second.create_revision

    await stub.CancelRun(pb.CancelRunRequest(run_id=first.run_id))
    await stub.CancelRun(pb.CancelRunRequest(run_id=second.run_id))
    idle = await stub.HasInflight(pb.HasInflightRequest(thread_id="t-in"))
    assert not idle.has_inflight
    assert idle.revision == busy.revision + 2


async def test_list_runs_filters_and_reports_revision(stub: RunControlAsyncStub) -> None:
    a1 = (await create(stub, "t-a")).run
    b1 = (await create(stub, "t-b")).run
    await stub.CancelRun(pb.CancelRunRequest(run_id=a1.run_id))
    a2 = (await create(stub, "t-a")).run

    everything = await stub.ListRuns(pb.ListRunsRequest())
    assert [r.run_id for r in everything.runs] == [a2.run_id, b1.run_id, a1.run_id]
    assert everything.revision == a2.create_revision
    assert everything.next_page_token == ""

    thread_a = await stub.ListRuns(pb.ListRunsRequest(thread_id="t-a"))
    assert [r.run_id for r in thread_a.runs] == [a2.run_id, a1.run_id]
    pending = await stub.ListRuns(pb.ListRunsRequest(statuses=[PENDING]))
    assert [r.run_id for r in pending.runs] == [a2.run_id, b1.run_id]
    both = await stub.ListRuns(pb.ListRunsRequest(thread_id="t-a", statuses=[INTERRUPTED]))
    assert [r.run_id for r in both.runs] == [a1.run_id]
    none = await stub.ListRuns(pb.ListRunsRequest(thread_id="t-unknown"))
    assert list(none.runs) == []


# WaitRun: tests/test_wait.py; WatchRuns: tests/test_watch.py.
