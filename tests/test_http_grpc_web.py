"""gRPC-Web on the HTTP listener: binary `application/grpc-web+proto` framing, built by
hand as a browser library would, with the status and its ErrorInfo in the trailers
frame, as a gRPC client reads them from HTTP/2 trailers."""

from __future__ import annotations

import base64

from _http import GRPC_WEB_PROTO, TRAILERS, Envelopes, envelope, serving
from google.rpc import error_details_pb2, status_pb2

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2


def trailers(payload: bytes) -> dict[str, str]:
    """A trailers frame's "name: value\\r\\n" lines."""
    lines = payload.decode().split("\r\n")
    return dict(line.split(": ", 1) for line in lines if line)


async def test_a_grpc_web_call_and_a_refused_one() -> None:
    async with serving() as http:
        request = pb.CreateRunRequest(thread_id="web")
        async with http.client.stream(
            "POST",
            http.url("CreateRun"),
            content=envelope(request.SerializeToString()),
            headers=GRPC_WEB_PROTO,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/grpc-web+proto"
            frames = Envelopes(response)
            flags, data = await frames.next()
            assert flags == 0
            run = pb.CreateRunResponse.FromString(data).run
            flags, end = await frames.next()
        assert (run.thread_id, run.status) == ("web", run_pb2.RUN_STATUS_PENDING)
        assert flags == TRAILERS
        assert trailers(end)["grpc-status"] == "0"

        async with http.client.stream(
            "POST",
            http.url("CreateRun"),
            content=envelope(request.SerializeToString()),
            headers=GRPC_WEB_PROTO,
        ) as refused:
            assert refused.status_code == 200  # gRPC-Web: the status is in the trailers
            flags, end = await Envelopes(refused).next()
    assert flags == TRAILERS
    status_trailers = trailers(end)
    assert status_trailers["grpc-status"] == "9"  # FAILED_PRECONDITION
    details = status_trailers["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(details + "=" * (-len(details) % 4)))
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.metadata["thread_id"]) == ("THREAD_BUSY", "web")
    assert info.metadata["inflight_run_ids"] == run.run_id
