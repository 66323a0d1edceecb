"""`from_grpc_error` on a synchronous stub, with grpcio-testing playing the server.

grpcio-testing has no asyncio support, but it fits the synchronous client path: the
test scripts the server's answer (status, details and the ErrorInfo trailer) exactly.
"""

from __future__ import annotations

import threading

import grpc
import grpc_testing
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from runcontrol.errors import RunControlError, from_grpc_error
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["RunControl"]


def _answer_with(status: status_pb2.Status | None, trailer: bytes | None = None) -> RunControlError:
    channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
    stub = run_control_pb2_grpc.RunControlStub(channel)
    outcome: dict[str, RunControlError] = {}

    def call() -> None:
        try:
            stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
        except grpc.RpcError as error:
            outcome["error"] = from_grpc_error(error)

    caller = threading.Thread(target=call)
    caller.start()
    _, _, rpc = channel.take_unary_unary(SERVICE.methods_by_name["CreateRun"])
    details = status.SerializeToString() if status is not None else trailer
    trailing = (("grpc-status-details-bin", details),) if details is not None else ()
    rpc.terminate(None, trailing, grpc.StatusCode.FAILED_PRECONDITION, "thread busy")
    caller.join(timeout=5)
    return outcome["error"]


def test_error_info_is_decoded() -> None:
    info = error_details_pb2.ErrorInfo(
        domain="runcontrol",
        reason="THREAD_BUSY",
        metadata={"thread_id": "t1", "inflight_run_ids": "a,b"},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=code_pb2.FAILED_PRECONDITION, message="thread busy", details=[detail]
    )
    error = _answer_with(status)
    assert (error.code, error.reason, error.message) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "THREAD_BUSY",
        "thread busy",
    )
    assert error.metadata == {"thread_id": "t1", "inflight_run_ids": "a,b"}


def test_foreign_domain_and_garbage_trailers_keep_the_status() -> None:
    info = error_details_pb2.ErrorInfo(domain="elsewhere.example", reason="THREAD_BUSY")
    detail = any_pb2.Any()
    detail.Pack(info)
    foreign = _answer_with(status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, details=[detail]))
    assert (foreign.code, foreign.reason, foreign.metadata) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
        {},
    )
    garbage = _answer_with(None, trailer=b"\xff\xff not a status")
    assert (garbage.code, garbage.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "")
