"""RunControl over the Connect protocol, unary calls: curl-shaped JSON calls with httpx
(create, get, list), error bodies carrying the same code and ErrorInfo as over gRPC,
binary Connect, and one manager behind both ports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from _http import JSON, Serving, error_info, serving
from _streams import until

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc, run_pb2


@pytest.fixture
async def http() -> AsyncIterator[Serving]:
    async with serving() as running:
        yield running


async def test_create_get_and_list_in_json(http: Serving) -> None:
    created = await http.call("CreateRun", {"threadId": "thread-1", "metadata": {"user": "ada"}})
    assert created.status_code == 200, created.text
    assert created.headers["content-type"] == "application/json"
    run = created.json()["run"]
    assert run["threadId"] == "thread-1"
    assert run["status"] == "RUN_STATUS_PENDING"
    assert run["metadata"] == {"user": "ada"}
    # The proto3 JSON mapping: 64-bit integers are strings.
    assert run["createRevision"] == run["modRevision"] == "1"

    got = await http.call("GetRun", {"runId": run["runId"]})
    assert got.status_code == 200, got.text
    assert got.json()["run"] == run

    listed = await http.call("ListRuns", {"threadId": "thread-1"})
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"runs": [run], "revision": "1"}


async def test_an_empty_body_is_the_empty_request(http: Serving) -> None:
    # `curl -X POST -H 'content-type: application/json' .../ListRuns` sends no body.
    listed = await http.client.post(http.url("ListRuns"), headers=JSON)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {}  # no runs, revision 0: every field at its default


async def test_thread_busy_is_the_grpc_error_with_its_error_info(http: Serving) -> None:
    first = (await http.call("CreateRun", {"threadId": "t"})).json()["run"]
    refused = await http.call("CreateRun", {"threadId": "t"})

    assert refused.status_code == 400  # Connect's HTTP status for failed_precondition
    body = refused.json()
    assert body["code"] == "failed_precondition"
    assert body["message"] == f"thread 't' has active runs: {first['runId']}"
    info = error_info(body)
    assert (info.domain, info.reason) == ("runcontrol", "THREAD_BUSY")
    assert dict(info.metadata) == {"thread_id": "t", "inflight_run_ids": first["runId"]}
    # The library also shows the detail decoded, for people reading the body.
    assert body["details"][0]["debug"]["reason"] == "THREAD_BUSY"


async def test_invalid_argument_names_the_field(http: Serving) -> None:
    refused = await http.call("GetRun", {"runId": ""})
    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "invalid_argument"
    info = error_info(body)
    assert info.reason == "INVALID_ARGUMENT"
    assert dict(info.metadata) == {"field": "run_id"}


async def test_not_found_is_a_404_with_the_run_id(http: Serving) -> None:
    refused = await http.call("GetRun", {"runId": "no-such-run"})
    assert refused.status_code == 404
    assert refused.json()["code"] == "not_found"
    assert dict(error_info(refused.json()).metadata) == {"run_id": "no-such-run"}


async def test_json_that_does_not_parse_is_a_malformed_request(http: Serving) -> None:
    refused = await http.client.post(http.url("ListRuns"), content=b"{nope", headers=JSON)
    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "invalid_argument"
    info = error_info(body)
    assert info.reason == "MALFORMED_REQUEST"
    assert dict(info.metadata) == {"message_type": "runcontrol.v1.ListRunsRequest"}


async def test_binary_connect_takes_and_answers_protobuf(http: Serving) -> None:
    request = pb.CreateRunRequest(thread_id="bin", request_id="r-1")
    answered = await http.client.post(
        http.url("CreateRun"),
        content=request.SerializeToString(),
        headers={"content-type": "application/proto"},
    )
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"] == "application/proto"
    run = pb.CreateRunResponse.FromString(answered.content).run
    assert (run.thread_id, run.request_id, run.status) == ("bin", "r-1", run_pb2.RUN_STATUS_PENDING)

    garbage = await http.client.post(
        http.url("GetRun"), content=b"\xff\xff", headers={"content-type": "application/proto"}
    )
    assert garbage.status_code == 400
    assert error_info(garbage.json()).reason == "MALFORMED_REQUEST"


async def test_both_ports_serve_one_manager(http: Serving) -> None:
    run_id = (await http.call("CreateRun", {"threadId": "shared"})).json()["run"]["runId"]
    async with grpc.aio.insecure_channel(http.grpc_address) as channel:
        stub = run_control_pb2_grpc.RunControlStub(channel)
        got = await stub.GetRun(pb.GetRunRequest(run_id=run_id))
        assert got.run.thread_id == "shared"
        claimed = await stub.SetRunStatus(
            pb.SetRunStatusRequest(run_id=run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w1")
        )
    seen = (await http.call("GetRun", {"runId": run_id})).json()["run"]
    assert seen["status"] == "RUN_STATUS_RUNNING"
    assert seen["workerId"] == "w1"
    assert seen["modRevision"] == str(claimed.run.mod_revision)


async def test_an_attached_wait_cancels_its_run_when_the_client_goes_away(http: Serving) -> None:
    run_id = (await http.call("CreateRun", {"threadId": "attached"})).json()["run"]["runId"]
    wait = asyncio.ensure_future(http.call("WaitRun", {"runId": run_id, "attach": True}))
    waiters = http.server.manager.waiters
    await until(lambda: waiters.waiter_count == 1, "the wait is registered")
    wait.cancel()  # httpx drops the connection: the server sees the client go
    await asyncio.gather(wait, return_exceptions=True)

    async def interrupted() -> bool:
        run = (await http.call("GetRun", {"runId": run_id})).json()["run"]
        return bool(run["status"] == "RUN_STATUS_INTERRUPTED")

    await until(interrupted, "the abandoned attached run is cancelled")


async def test_the_payload_format_header_gives_exact_integers(http: Serving) -> None:
    big = 2**63 + 1
    created = await http.call(
        "CreateRun",
        {"threadId": "exact", "metadataJson": f'{{"n": {big}}}'},
        headers={"runcontrol-payload-format": "json"},
    )
    assert created.status_code == 200, created.text
    assert json.loads(created.json()["run"]["metadataJson"]) == {"n": big}
