"""metadata and kwargs round-trip exactly: JSON text in (`metadata_json`), JSON text out
(the `runcontrol-payload-format: json` header), integers of any size kept as ints.

Old clients (Structs, no header) see exactly what they saw before; their integral
numbers are stored as ints, so JSON readers see 100, not 100.0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from _streams import until
from conftest import ExpectError
from google.protobuf.struct_pb2 import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from runcontrol import AsyncClient, Client, RunStatus
from runcontrol._requests import CALL_METADATA
from runcontrol.compat.deerflow import RunManager as CompatManager
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc, run_pb2
from runcontrol_server.servicer import Limits, validation
from runcontrol_server.servicer.validation import MAX_JSON_DEPTH

JSON = CALL_METADATA  # (("runcontrol-payload-format", "json"),)
PAYLOAD: dict[str, Any] = {
    "recursion_limit": 100,
    "big": 2**60 + 1,
    "f": 1.5,
    "nested": {"l": [1, 2.0, -3]},
}
INVALID = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
TOO_BIG = (grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED")


def assert_exact(got: Any, expected: Any) -> None:
    """Equal, and of the same type all the way down (100 is not 100.0)."""
    assert type(got) is type(expected), (got, expected)
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert_exact(got[key], value)
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for item, value in zip(got, expected, strict=True):
            assert_exact(item, value)
    else:
        assert got == expected


@pytest.fixture
async def client(server: InProcessServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address) as connected:
        yield connected


# --- the Python client --------------------------------------------------------------


async def test_python_client_round_trips_payloads_exactly(client: AsyncClient) -> None:
    handle = await client.create_run("t", metadata=PAYLOAD, kwargs={"n": 7, "big": -(2**70)})
    kwargs = {"n": 7, "big": -(2**70)}
    assert_exact(handle.run.metadata, PAYLOAD)
    assert_exact(handle.run.kwargs, kwargs)
    fetched = await client.fetch_run(handle.run_id)
    assert_exact(fetched.metadata, PAYLOAD)
    assert_exact(fetched.kwargs, kwargs)
    listed = [run async for run in client.list_runs(thread_id="t")]
    assert_exact(listed[0].metadata, PAYLOAD)
    waited, done = await client.wait_run(handle.run_id, timeout=0.05)
    assert not done
    assert_exact(waited.metadata, PAYLOAD)
    async for item in client.watch(thread_id="t", send_initial=True):
        assert item.run.run_id == handle.run_id  # type: ignore[union-attr]
        assert_exact(item.run.metadata, PAYLOAD)  # type: ignore[union-attr]
        break
    # Every write answers the record in the same form.
    claimed, _ = await client.set_status(handle.run_id, RunStatus.RUNNING, worker_id="w")
    assert_exact(claimed.metadata, PAYLOAD)
    cancelled, _ = await client.cancel_run(handle.run_id)
    assert_exact(cancelled.kwargs, kwargs)
    deleted = await client.delete_run(handle.run_id)
    assert_exact(deleted.metadata, PAYLOAD)


async def test_watch_events_carry_exact_payloads(
    server: InProcessServer, client: AsyncClient
) -> None:
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def follow() -> None:
        async for item in client.watch(thread_id="w"):
            await seen.put(item)

    task = asyncio.create_task(follow())
    try:
        # A watch "from now" pins the store revision, then opens its stream: once the
        # server holds the stream, the create comes after the pin and is delivered.
        hub = server.manager.watch_hub
        await until(lambda: hub.count == 1, "the watch's stream is open")
        created = await client.create_run("w", metadata=PAYLOAD)
        event = await asyncio.wait_for(seen.get(), 10)
        assert event.run.run_id == created.run_id
        assert_exact(event.run.metadata, PAYLOAD)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_sync_client_round_trips_payloads_exactly(server: InProcessServer) -> None:
    def work() -> None:
        with Client(server.address) as client:
            handle = client.create_run("sync", metadata=PAYLOAD)
            assert_exact(handle.run.metadata, PAYLOAD)
            assert_exact(client.fetch_run(handle.run_id).metadata, PAYLOAD)

    await asyncio.to_thread(work)


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"x": float("nan")}, ValueError),
        ({"x": float("inf")}, ValueError),
        ({"x": {1, 2}}, TypeError),
        ([1, 2], TypeError),
        # A lone surrogate: JSON text, but not UTF-8 (the wire's strings are UTF-8).
        ({"x": "a\ud800b"}, ValueError),
        ({"a\udfff": 1}, ValueError),
    ],
)
async def test_python_client_refuses_what_json_cannot_hold_before_sending(
    metadata: Any, error: type[Exception]
) -> None:
    # No server at that address: the error must come before any network call.
    async with AsyncClient("127.0.0.1:1", timeout=0.5, retry=False) as client:
        with pytest.raises(error, match="metadata"):
            await client.create_run("t", metadata=metadata)


async def test_python_client_sends_text_and_asks_for_text(server: InProcessServer) -> None:
    from runcontrol import _requests as rq

    request = rq.create_request(
        "t",
        assistant_id=None,
        on_disconnect=None,
        multitask_strategy=None,
        metadata=PAYLOAD,
        kwargs=None,
        request_id="r",
        run_timeout=None,
        max_attempts=3,
    )
    assert not request.HasField("metadata") and not request.HasField("kwargs")
    assert json.loads(request.metadata_json) == PAYLOAD and request.kwargs_json == ""
    assert request.max_attempts == 3
    assert ("runcontrol-payload-format", "json") in rq.CALL_METADATA


async def test_compat_manager_keeps_recursion_limit_an_int(server: InProcessServer) -> None:
    async with CompatManager(address=server.address) as writer:
        record = await writer.create("t", metadata={"recursion_limit": 100})
    # Another manager learns the run from the server only.
    async with CompatManager(address=server.address) as reader:
        (seen,) = await reader.list_by_thread("t")
        assert seen.run_id == record.run_id
        assert_exact(seen.metadata, {"recursion_limit": 100})


def test_python_client_reads_structs_from_an_older_server() -> None:
    """A record without the text fields (a server that predates them)."""
    from datetime import timedelta

    from runcontrol import Run

    record = run_pb2.RunRecord(
        run_id="r",
        thread_id="t",
        status=run_pb2.RUN_STATUS_RUNNING,
        on_disconnect=run_pb2.DISCONNECT_MODE_CANCEL,
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_REJECT,
        cancel_action=run_pb2.CANCEL_ACTION_INTERRUPT,
    )
    record.created_at.GetCurrentTime()
    record.updated_at.CopyFrom(record.created_at)
    record.metadata.update({"n": 100, "s": "x"})
    run = Run.from_proto(record)
    assert run.metadata == {"n": 100.0, "s": "x"} and run.kwargs == {}
    assert (run.attempt, run.max_attempts, run.lease_ttl) == (0, 1, None)
    record.metadata_json, record.attempt, record.max_attempts = '{"n":100}', 2, 3
    record.lease_ttl.FromSeconds(30)
    run = Run.from_proto(record)
    assert_exact(run.metadata, {"n": 100})  # the text wins over the Struct
    assert (run.attempt, run.max_attempts, run.lease_ttl) == (2, 3, timedelta(seconds=30))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_objects = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=10,
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(json_objects, st.booleans())
def test_valid_text_is_read_exactly(value: dict[str, Any], ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=None if ascii_only else 2)
    parsed = validation.check_json_payload("metadata_json", text, Limits(), "metadata", False)
    assert_exact(parsed, value)


# --- old clients: Structs in, Structs out -------------------------------------------------


async def test_struct_requests_get_structs_back_and_ints_with_the_header(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
) -> None:
    sent = Struct()
    sent.update({"n": 100, "f": 1.5, "neg": -3, "zero": -0.0, "huge": 2.0**60, "s": "x"})
    request = pb.CreateRunRequest(thread_id="old")
    request.metadata.CopyFrom(sent)
    created = (await stub.CreateRun(request)).run
    # Without the header: the same Struct (-0.0 and every double as sent), no text.
    assert created.metadata == sent
    assert created.metadata_json == "" and created.kwargs_json == ""
    got = (await stub.GetRun(pb.GetRunRequest(run_id=created.run_id))).run
    assert got.metadata == sent
    # Any other value of the header means Structs too.
    other = (("runcontrol-payload-format", "struct"),)
    got = (await stub.GetRun(pb.GetRunRequest(run_id=created.run_id), metadata=other)).run
    assert got.metadata == sent and not got.metadata_json
    assert str(got.metadata.fields["zero"].number_value) == "-0.0"
    # With it: text, integral doubles within 2**53 read as ints; no Struct.
    got = (await stub.GetRun(pb.GetRunRequest(run_id=created.run_id), metadata=JSON)).run
    assert not got.HasField("metadata") and not got.HasField("kwargs")
    assert got.kwargs_json == ""  # the empty object is not sent
    assert got.metadata_json == (
        '{"f":1.5,"huge":1.152921504606847e+18,"n":100,"neg":-3,"s":"x","zero":-0.0}'
    )
    assert_exact(
        json.loads(got.metadata_json),
        {"f": 1.5, "huge": 2.0**60, "n": 100, "neg": -3, "s": "x", "zero": -0.0},
    )


async def test_text_requests_read_back_as_structs_without_the_header(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
) -> None:
    text = '{"big":1152921504606846977,"n":100,"u":"\\u00e9 \\ud83d\\ude00"}'
    created = (await stub.CreateRun(pb.CreateRunRequest(thread_id="t", metadata_json=text))).run
    assert created.metadata_json == ""
    assert created.metadata.fields["n"].number_value == 100.0
    assert created.metadata.fields["big"].number_value == float(2**60)  # a double can't hold it
    assert created.metadata.fields["u"].string_value == "é 😀"
    got = (await stub.GetRun(pb.GetRunRequest(run_id=created.run_id), metadata=JSON)).run
    # Stored canonical (sorted keys, no escapes it does not need), exact.
    assert got.metadata_json == '{"big":1152921504606846977,"n":100,"u":"é 😀"}'


async def test_the_header_changes_nothing_else(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
) -> None:
    request = pb.CreateRunRequest(thread_id="same", request_id="q", metadata_json='{"n":1}')
    request.kwargs.update({"k": [1, "two"]})
    created = await stub.CreateRun(request)
    run_id = created.run.run_id
    replayed = await stub.CreateRun(request, metadata=JSON)
    assert replayed.replayed
    assert stripped(replayed) == stripped(created, replayed=True)

    async def both(method: str, call: Any) -> None:
        plain, texts = await call(None), await call(JSON)
        assert stripped(plain) == stripped(texts), method
        runs = records_of(texts)
        assert runs and all(not r.HasField("metadata") for r in runs), method
        assert all(r.metadata_json == '{"n":1}' for r in runs), method
        assert all(not records_of(plain)[i].metadata_json for i in range(len(runs))), method

    get = pb.GetRunRequest(run_id=run_id)
    await both("GetRun", lambda md: stub.GetRun(get, metadata=md))
    listing = pb.ListRunsRequest(thread_id="same")
    await both("ListRuns", lambda md: stub.ListRuns(listing, metadata=md))
    claim = pb.SetRunStatusRequest(run_id=run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w")
    await stub.SetRunStatus(claim)
    # Repeats change nothing, so both forms answer the same record.
    await both("SetRunStatus", lambda md: stub.SetRunStatus(claim, metadata=md))
    wait = pb.WaitRunRequest(run_id=run_id)
    wait.timeout.FromMilliseconds(10)
    await both("WaitRun", lambda md: stub.WaitRun(wait, metadata=md))
    await stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
    cancel = pb.CancelRunRequest(run_id=run_id)
    await both("CancelRun", lambda md: stub.CancelRun(cancel, metadata=md))
    watch = pb.WatchRunsRequest(thread_id="same", send_initial=True)

    async def first_message(md: Any) -> pb.WatchRunsResponse:
        call = stub.WatchRuns(watch, metadata=md)
        try:
            async for message in call:
                return message
        finally:
            call.cancel()
        raise AssertionError("no message")

    await both("WatchRuns", first_message)
    plain = await stub.GetRun(get)
    deleted = await stub.DeleteRun(pb.DeleteRunRequest(run_id=run_id), metadata=JSON)
    assert stripped(deleted.run) == stripped(plain.run)
    assert deleted.run.metadata_json == '{"n":1}'


async def test_renew_run_lease_answers_in_the_format_asked_for(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
) -> None:
    created = await stub.CreateRun(
        pb.CreateRunRequest(thread_id="lease", metadata_json='{"n":1}', max_attempts=2)
    )
    claim = pb.SetRunStatusRequest(
        run_id=created.run.run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w"
    )
    claim.lease_ttl.FromSeconds(30)
    claimed = (await stub.SetRunStatus(claim, metadata=JSON)).run
    assert (claimed.attempt, claimed.max_attempts) == (1, 2)
    assert claimed.lease_ttl.ToSeconds() == 30 and claimed.metadata_json == '{"n":1}'
    renew = pb.RenewRunLeaseRequest(run_id=created.run.run_id, worker_id="w")
    plain, texts = await stub.RenewRunLease(renew), await stub.RenewRunLease(renew, metadata=JSON)
    assert plain.run.metadata.fields["n"].number_value == 1 and not plain.run.metadata_json
    assert texts.run.metadata_json == '{"n":1}' and not texts.run.HasField("metadata")
    assert stripped(plain.run) == stripped(texts.run) == stripped(claimed)


def records_of(message: Any) -> list[run_pb2.RunRecord]:
    if isinstance(message, pb.ListRunsResponse):
        return list(message.runs)
    if isinstance(message, pb.WatchRunsResponse):
        return [event.run for event in message.events]
    return [message.run]


def stripped(message: Any, **overrides: Any) -> bytes:
    """The message without any payload field (either form), as bytes."""
    copy = type(message)()
    copy.CopyFrom(message)
    records = [copy] if isinstance(copy, run_pb2.RunRecord) else records_of(copy)
    if isinstance(copy, pb.CreateRunResponse):
        records += list(copy.interrupted_runs)
    for record in records:
        for field in ("metadata", "kwargs", "metadata_json", "kwargs_json"):
            record.ClearField(field)
    for name, value in overrides.items():
        setattr(copy, name, value)
    return bytes(copy.SerializeToString(deterministic=True))


# --- refusals -------------------------------------------------------------------------


async def test_both_forms_of_one_payload_are_refused(
    stub: run_control_pb2_grpc.RunControlAsyncStub, expect_error: ExpectError
) -> None:
    both = pb.CreateRunRequest(thread_id="t", metadata_json='{"a":1}')
    both.metadata.update({"a": 1})
    await expect_error(stub.CreateRun(both), *INVALID, {"field": "metadata_json"})
    both = pb.CreateRunRequest(thread_id="t", kwargs_json='{"a":1}')
    both.kwargs.update({"a": 1})
    await expect_error(stub.CreateRun(both), *INVALID, {"field": "kwargs_json"})
    # One payload in each form is fine.
    mixed = pb.CreateRunRequest(thread_id="t", metadata_json='{"a":1}')
    mixed.kwargs.update({"b": 2})
    run = (await stub.CreateRun(mixed, metadata=JSON)).run
    assert (run.metadata_json, run.kwargs_json) == ('{"a":1}', '{"b":2}')


DEEP = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH  # inside the object: one level too many


@pytest.mark.parametrize(
    "text",
    [
        '{"x": NaN}',
        '{"x": Infinity}',
        '{"x": -Infinity}',
        '{"x": 1e400}',  # no double holds it
        "[1, 2]",
        "1",
        '"text"',
        "null",
        "{",
        '{"a": 1} trailing',
        "{'a': 1}",
        " ",
        '{"x": ' + DEEP + "}",
        "[" * 100_000,  # deeper than the parser goes
        '{"x": "\\ud800"}',  # an unpaired surrogate: no UTF-8 string holds it
        '{"x": "\\udc00\\ud800"}',
        '{"x": ' + "1" * 5000 + "}",  # beyond Python's int-from-text limit
    ],
    ids=lambda text: text[:24],
)
@pytest.mark.parametrize("field", ["metadata_json", "kwargs_json"])
async def test_invalid_text_is_refused_naming_the_field(
    stub: run_control_pb2_grpc.RunControlAsyncStub, expect_error: ExpectError, field: str, text: str
) -> None:
    request = pb.CreateRunRequest(thread_id="t")
    setattr(request, field, text)
    error = await expect_error(stub.CreateRun(request), *INVALID, {"field": field})
    assert error.message.startswith(f"{field}: ")


async def test_the_deepest_accepted_payload_reads_back_in_both_forms(
    stub: run_control_pb2_grpc.RunControlAsyncStub,
) -> None:
    inner = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    text = '{"x":' + inner + "}"
    created = await stub.CreateRun(pb.CreateRunRequest(thread_id="deep", metadata_json=text))
    assert created.run.HasField("metadata")
    # A watch event is the deepest message a record travels in.
    call = stub.WatchRuns(pb.WatchRunsRequest(thread_id="deep", send_initial=True))
    async for message in call:
        assert message.events[0].run.metadata.fields["x"].HasField("list_value")
        break
    call.cancel()
    got = await stub.GetRun(pb.GetRunRequest(run_id=created.run.run_id), metadata=JSON)
    assert got.run.metadata_json == text


async def test_size_is_counted_in_utf8_bytes(expect_error: ExpectError) -> None:
    async with serve_in_process(limits=Limits(max_payload_bytes=100)) as server:
        fits = '{"s":"' + "é" * 45 + '"}'  # 53 characters, 98 bytes
        run = (
            await server.stub.CreateRun(pb.CreateRunRequest(thread_id="a", kwargs_json=fits))
        ).run
        assert run.kwargs.fields["s"].string_value == "é" * 45
        too_big = '{"s":"' + "é" * 47 + '"}'  # 55 characters, 102 bytes
        request = pb.CreateRunRequest(thread_id="b", kwargs_json=too_big)
        error = await expect_error(
            server.stub.CreateRun(request),
            *TOO_BIG,
            {"limit": "max_payload_bytes", "field": "kwargs_json"},
        )
        assert "102 bytes" in error.message


async def test_oversized_text_is_refused_at_the_default_limit(
    stub: run_control_pb2_grpc.RunControlAsyncStub, expect_error: ExpectError
) -> None:
    text = json.dumps({"v": "x" * (1 << 20)})
    request = pb.CreateRunRequest(thread_id="t", metadata_json=text)
    await expect_error(
        stub.CreateRun(request),
        *TOO_BIG,
        {"limit": "max_payload_bytes", "field": "metadata_json"},
    )


# --- the PostgreSQL store -------------------------------------------------------------


async def test_exact_payloads_through_the_postgres_store(pg_url: str) -> None:
    from runcontrol_server.stores.postgres import PostgresRunStore

    store = PostgresRunStore(pg_url)
    async with (
        serve_in_process(store=store) as server,
        AsyncClient(server.address) as client,
    ):
        handle = await client.create_run("pg", metadata=PAYLOAD)
        assert_exact((await client.fetch_run(handle.run_id)).metadata, PAYLOAD)
        listed = [run async for run in client.list_runs(thread_id="pg")]
        assert_exact(listed[0].metadata, PAYLOAD)
