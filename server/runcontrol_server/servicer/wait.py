"""WaitRun: validate, wait through the manager, answer the record and `done`.

Attaching needs the transport's disconnect signal: grpc.aio cancels the handler
task when the client goes away (or the call's deadline passes), and that
cancellation reaches `RunManager.wait_run`, which then cancels an attached run
whose on_disconnect is CANCEL.
"""

from __future__ import annotations

from runcontrol.v1 import run_control_pb2 as pb

from ..domain.manager import RunManager
from . import validation
from .convert import run_to_proto
from .limits import Limits


async def wait_run(
    manager: RunManager, request: pb.WaitRunRequest, limits: Limits
) -> pb.WaitRunResponse:
    validation.validate_wait_run(request, limits)
    # Unset or zero: no own limit; the wait then ends with the run or the call's deadline.
    timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 0
    run, done = await manager.wait_run(
        request.run_id, timeout=timeout or None, attach=request.attach
    )
    response = pb.WaitRunResponse(done=done)
    run_to_proto(run, response.run)
    return response
