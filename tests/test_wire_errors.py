"""Every error row of the contract, as a client sees it over the wire.

Rows the implemented RPCs reach naturally are provoked for real; the remaining
rows (compaction, limits, draining) are injected through a store that raises the
domain error, which still exercises the whole path: handler -> error table ->
google.rpc.Status trailer -> client decoding.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from runcontrol.errors import from_grpc_error
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc, run_pb2
from runcontrol_server.domain import errors as de
from runcontrol_server.domain.model import Run
from runcontrol_server.servicer.errors import ERROR_TABLE
from runcontrol_server.stores.memory import InMemoryRunStore

RunControlAsyncStub = Any
FPC = grpc.StatusCode.FAILED_PRECONDITION
MISSING = "no-such-run"


async def new_run(stub: RunControlAsyncStub, thread_id: str = "t", **fields: Any) -> Any:
    return (await stub.CreateRun(pb.CreateRunRequest(thread_id=thread_id, **fields))).run


async def test_errors_carry_a_google_rpc_status_with_error_info(stub: RunControlAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetRun(pb.GetRunRequest(run_id=MISSING))
    # Decode the trailer by hand once, independently of runcontrol.errors.
    trailer = dict(raised.value.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(trailer)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == raised.value.details()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.domain, info.reason, dict(info.metadata)) == (
        "runcontrol",
        "RUN_NOT_FOUND",
        {"run_id": MISSING},
    )


async def test_invalid_argument(stub: RunControlAsyncStub, expect_error: Any) -> None:
    await expect_error(
        stub.CreateRun(pb.CreateRunRequest(thread_id="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        {"field": "thread_id"},
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.GetRun(pb.GetRunRequest(run_id=MISSING)),
        lambda s: s.SetRunStatus(
            pb.SetRunStatusRequest(run_id=MISSING, status=run_pb2.RUN_STATUS_RUNNING)
        ),
        lambda s: s.CancelRun(pb.CancelRunRequest(run_id=MISSING)),
        lambda s: s.DeleteRun(pb.DeleteRunRequest(run_id=MISSING)),
    ],
    ids=["GetRun", "SetRunStatus", "CancelRun", "DeleteRun"],
)
async def test_run_not_found(stub: RunControlAsyncStub, expect_error: Any, call: Any) -> None:
    error = await expect_error(
        call(stub), grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND", {"run_id": MISSING}
    )
    assert error.message  # a human-readable text accompanies the reason


async def test_thread_busy_lists_every_inflight_run(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    first = await new_run(stub, "busy")
    second = await new_run(stub, "busy", multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE)
    await expect_error(
        stub.CreateRun(pb.CreateRunRequest(thread_id="busy")),
        FPC,
        "THREAD_BUSY",
        {"thread_id": "busy", "inflight_run_ids": f"{first.run_id},{second.run_id}"},
    )


@pytest.mark.parametrize(
    ("moves", "target", "from_name"),
    [
        ([], run_pb2.RUN_STATUS_SUCCESS, "RUN_STATUS_PENDING"),
        ([], run_pb2.RUN_STATUS_PENDING, "RUN_STATUS_PENDING"),
        ([run_pb2.RUN_STATUS_RUNNING], run_pb2.RUN_STATUS_PENDING, "RUN_STATUS_RUNNING"),
        (
            [run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_SUCCESS],
            run_pb2.RUN_STATUS_RUNNING,
            "RUN_STATUS_SUCCESS",
        ),
        ([run_pb2.RUN_STATUS_TIMEOUT], run_pb2.RUN_STATUS_ERROR, "RUN_STATUS_TIMEOUT"),
    ],
)
async def test_invalid_transition(
    stub: RunControlAsyncStub, expect_error: Any, moves: list[int], target: int, from_name: str
) -> None:
    run = await new_run(stub)
    for status in moves:
        await stub.SetRunStatus(pb.SetRunStatusRequest(run_id=run.run_id, status=status))
    await expect_error(
        stub.SetRunStatus(pb.SetRunStatusRequest(run_id=run.run_id, status=target)),
        FPC,
        "INVALID_TRANSITION",
        {
            "run_id": run.run_id,
            "from_status": from_name,
            "to_status": run_pb2.RunStatus.Name(target),
        },
    )


async def test_already_claimed_names_the_claimer_when_known(
    stub: RunControlAsyncStub, expect_error: Any
) -> None:
    named = await new_run(stub, "t1")
    running = run_pb2.RUN_STATUS_RUNNING
    await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=named.run_id, status=running, worker_id="w1")
    )
    await expect_error(
        stub.SetRunStatus(
            pb.SetRunStatusRequest(run_id=named.run_id, status=running, worker_id="w2")
        ),
        FPC,
        "ALREADY_CLAIMED",
        {"run_id": named.run_id, "worker_id": "w1"},
    )
    # A different worker may not finish someone else's run either.
    await expect_error(
        stub.SetRunStatus(
            pb.SetRunStatusRequest(
                run_id=named.run_id, status=run_pb2.RUN_STATUS_SUCCESS, worker_id="w2"
            )
        ),
        FPC,
        "ALREADY_CLAIMED",
        {"run_id": named.run_id, "worker_id": "w1"},
    )

    # An anonymous claim is given a claimer id: it is named to later claimers, and a
    # second anonymous claim is another claimer (exactly one wins).
    anonymous = await new_run(stub, "t2")
    claimed = await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=anonymous.run_id, status=running)
    )
    claimer = claimed.run.worker_id
    assert claimed.changed and claimer.startswith("anonymous-")
    for worker_id in ("w2", None):
        await expect_error(
            stub.SetRunStatus(
                pb.SetRunStatusRequest(run_id=anonymous.run_id, status=running, worker_id=worker_id)
            ),
            FPC,
            "ALREADY_CLAIMED",
            {"run_id": anonymous.run_id, "worker_id": claimer},
        )


async def test_run_active(stub: RunControlAsyncStub, expect_error: Any) -> None:
    run = await new_run(stub)
    await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run.run_id, status=run_pb2.RUN_STATUS_RUNNING)
    )
    await expect_error(
        stub.DeleteRun(pb.DeleteRunRequest(run_id=run.run_id)),
        FPC,
        "RUN_ACTIVE",
        {"run_id": run.run_id, "status": "RUN_STATUS_RUNNING"},
    )


async def test_request_id_reused(stub: RunControlAsyncStub, expect_error: Any) -> None:
    run = await new_run(stub, "t1", request_id="rq")
    await expect_error(
        stub.CreateRun(pb.CreateRunRequest(thread_id="t2", request_id="rq")),
        FPC,
        "REQUEST_ID_REUSED",
        {"request_id": "rq", "run_id": run.run_id},
    )


async def test_revision_mismatch_on_delete(stub: RunControlAsyncStub, expect_error: Any) -> None:
    run = await new_run(stub)
    cancelled = (await stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))).run
    await expect_error(
        stub.DeleteRun(pb.DeleteRunRequest(run_id=run.run_id, expected_mod_revision=0)),
        grpc.StatusCode.ABORTED,
        "REVISION_MISMATCH",
        {
            "run_id": run.run_id,
            "expected_mod_revision": "0",
            "mod_revision": str(cancelled.mod_revision),
        },
    )


class FailingStore(InMemoryRunStore):
    """An in-memory store whose get_run raises `error` once armed."""

    error: BaseException | None = None

    async def get_run(self, run_id: str) -> Run:
        if self.error is not None:
            raise self.error
        return await super().get_run(run_id)


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    [
        (
            de.RevisionCompacted(3, 10),
            grpc.StatusCode.OUT_OF_RANGE,
            "REVISION_COMPACTED",
            {"compact_revision": "10"},
        ),
        (
            de.LimitExceeded("max_runs", "too many runs"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "LIMIT_EXCEEDED",
            {"limit": "max_runs"},
        ),
        (
            de.ShuttingDown(41),
            grpc.StatusCode.UNAVAILABLE,
            "SHUTTING_DOWN",
            {"revision": "41", "resume_revision": "42"},
        ),
    ],
    ids=["REVISION_COMPACTED", "LIMIT_EXCEEDED", "SHUTTING_DOWN"],
)
async def test_rows_reached_through_the_store(
    expect_error: Any,
    error: de.RunControlError,
    code: grpc.StatusCode,
    reason: str,
    metadata: dict[str, str],
) -> None:
    store = FailingStore()
    store.error = error
    async with serve_in_process(store=store) as server:
        raised = await expect_error(
            server.stub.GetRun(pb.GetRunRequest(run_id="r")), code, reason, metadata
        )
        assert raised.message == str(error)


async def test_unexpected_exception_is_internal_logged_and_survivable(
    expect_error: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailingStore()
    async with serve_in_process(store=store) as server:
        run = (await server.stub.CreateRun(pb.CreateRunRequest(thread_id="t"))).run
        store.error = RuntimeError("secret detail at /srv/db password=hunter2")
        with (
            caplog.at_level(logging.ERROR, logger="runcontrol_server"),
            pytest.raises(grpc.aio.AioRpcError) as raised,
        ):
            await server.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        error = from_grpc_error(raised.value)
        assert error.code == grpc.StatusCode.INTERNAL
        assert error.message == "internal error"
        assert error.reason == ""
        assert "secret" not in str(raised.value.debug_error_string())
        assert "hunter2" not in repr(raised.value.trailing_metadata())
        logged = [r for r in caplog.records if r.exc_info and "hunter2" in str(r.exc_info[1])]
        assert logged, "the unexpected exception must be logged with its traceback"

        # The server keeps serving.
        store.error = None
        again = await server.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        assert again.run.run_id == run.run_id
        other = await server.stub.HasInflight(pb.HasInflightRequest(thread_id="t"))
        assert list(other.run_ids) == [run.run_id]


async def test_domain_error_without_a_table_row_is_internal(expect_error: Any) -> None:
    store = FailingStore()
    store.error = de.RunControlError("not meant for clients")
    async with serve_in_process(store=store) as server:
        error = await expect_error(
            server.stub.GetRun(pb.GetRunRequest(run_id="r")), grpc.StatusCode.INTERNAL, ""
        )
        assert error.message == "internal error"


def test_every_domain_error_class_has_a_table_row() -> None:
    classes = {
        cls
        for cls in vars(de).values()
        if isinstance(cls, type) and issubclass(cls, de.RunControlError)
    }
    assert set(ERROR_TABLE) == classes - {de.RunControlError}


async def test_sync_clients_decode_the_same_error_info(server: InProcessServer) -> None:
    def call() -> grpc.RpcError:
        with grpc.insecure_channel(server.address) as channel:
            sync_stub = run_control_pb2_grpc.RunControlStub(channel)
            try:
                sync_stub.GetRun(pb.GetRunRequest(run_id=MISSING), timeout=10)
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("the call should have failed")

    error = from_grpc_error(await asyncio.to_thread(call))
    assert (error.code, error.reason, error.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
        {"run_id": MISSING},
    )


def test_every_server_reason_has_a_typed_client_error() -> None:
    from runcontrol import errors as client_errors

    reasons = {mapping.reason for mapping in ERROR_TABLE.values()}
    typed = {
        cls.reason_key
        for cls in vars(client_errors).values()
        if isinstance(cls, type)
        and issubclass(cls, client_errors.RunControlError)
        and cls.reason_key
    }
    assert reasons <= typed, reasons - typed
