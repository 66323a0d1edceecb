"""Every from -> to pair of the status machine, driven over the wire with SetRunStatus."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

if TYPE_CHECKING:
    from runcontrol.v1.run_control_pb2_grpc import RunControlAsyncStub

S = run_pb2
STATUSES = [
    S.RUN_STATUS_PENDING,
    S.RUN_STATUS_RUNNING,
    S.RUN_STATUS_SUCCESS,
    S.RUN_STATUS_ERROR,
    S.RUN_STATUS_TIMEOUT,
    S.RUN_STATUS_INTERRUPTED,
]
ALLOWED = {
    (S.RUN_STATUS_PENDING, S.RUN_STATUS_RUNNING),
    (S.RUN_STATUS_PENDING, S.RUN_STATUS_INTERRUPTED),
    (S.RUN_STATUS_PENDING, S.RUN_STATUS_ERROR),
    (S.RUN_STATUS_PENDING, S.RUN_STATUS_TIMEOUT),
    (S.RUN_STATUS_RUNNING, S.RUN_STATUS_SUCCESS),
    (S.RUN_STATUS_RUNNING, S.RUN_STATUS_ERROR),
    (S.RUN_STATUS_RUNNING, S.RUN_STATUS_TIMEOUT),
    (S.RUN_STATUS_RUNNING, S.RUN_STATUS_INTERRUPTED),
}
WORKER = "worker-1"


async def _run_in(
    stub: RunControlAsyncStub, status: int, thread_id: str
) -> pb.SetRunStatusResponse:
    """A run brought to `status` through legal moves only."""
    created = await stub.CreateRun(pb.CreateRunRequest(thread_id=thread_id))
    run_id = created.run.run_id
    current = pb.SetRunStatusResponse(run=created.run)
    path: list[int] = []
    if status != S.RUN_STATUS_PENDING:
        path.append(S.RUN_STATUS_RUNNING)
    if status not in (S.RUN_STATUS_PENDING, S.RUN_STATUS_RUNNING):
        path.append(status)
    for step in path:
        current = await stub.SetRunStatus(
            pb.SetRunStatusRequest(run_id=run_id, status=step, worker_id=WORKER)
        )
    assert current.run.status == status
    return current


@pytest.mark.parametrize(
    ("src", "dst"),
    list(itertools.product(STATUSES, STATUSES)),
    ids=lambda s: S.RunStatus.Name(s).removeprefix("RUN_STATUS_"),
)
async def test_every_pair(stub: RunControlAsyncStub, src: Any, dst: Any, expect_error: Any) -> None:
    before = (await _run_in(stub, src, f"pair-{src}-{dst}")).run
    request = pb.SetRunStatusRequest(run_id=before.run_id, status=dst, worker_id=WORKER)
    if (src, dst) in ALLOWED:
        response = await stub.SetRunStatus(request)
        assert response.changed
        assert response.run.status == dst
        assert response.run.mod_revision > before.mod_revision
    elif src == dst and dst != S.RUN_STATUS_PENDING:
        response = await stub.SetRunStatus(request)  # repeating what happened: a no-op
        assert not response.changed
        assert response.run.SerializeToString() == before.SerializeToString()
    else:
        await expect_error(
            stub.SetRunStatus(request),
            grpc.StatusCode.FAILED_PRECONDITION,
            "INVALID_TRANSITION",
            {
                "run_id": before.run_id,
                "from_status": S.RunStatus.Name(src),
                "to_status": S.RunStatus.Name(dst),
            },
        )
        after = await stub.GetRun(pb.GetRunRequest(run_id=before.run_id))
        assert after.run.SerializeToString() == before.SerializeToString()
