"""WaitRun: validate, wait through the manager, answer the record and `done`.

Attaching needs the transport's disconnect signal: grpc.aio cancels the handler
task when the client goes away (or the call's deadline passes), and that
cancellation reaches `RunManager.wait_run`, which then cancels an attached run
whose on_disconnect is CANCEL.
"""

from __future__ import annotations

from runcontrol.v1 import run_control_pb2 as pb

from ..domain.manager import RunManager
from ..domain.model import Run
from . import validation
from .limits import Limits
from .peers import PeerSlots


async def wait_run(
    manager: RunManager, request: pb.WaitRunRequest, limits: Limits, slots: PeerSlots, peer: str
) -> tuple[Run, bool]:
    """The run when the wait ended, and whether it is done (terminal). The wait holds
    one of `peer`'s `slots` (`max_waiters_per_peer`) while it lasts."""
    validation.validate_wait_run(request, limits)
    # Unset or zero: no own limit; the wait then ends with the run or the call's deadline.
    timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else 0
    with slots.held(peer):
        return await manager.wait_run(
            request.run_id, timeout=timeout or None, attach=request.attach
        )
