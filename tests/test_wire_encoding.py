"""Hand-built wire bytes (`servicer.wire`) are exactly protobuf's own serialization.

The servicer answers CreateRun, GetRun, ListRuns, SetRunStatus, CancelRun, DeleteRun
and WatchRuns with bytes assembled from each run's record, encoded once per revision.
These tests hold every builder byte-equal to `SerializeToString()` of the message
built the ordinary way (`convert.run_to_proto`), over the wire as well, and show the
cached record changes whenever the run does.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain.model import (
    CancelAction,
    DisconnectMode,
    MultitaskStrategy,
    Run,
    RunStatus,
    canonical_json,
)
from runcontrol_server.servicer import wire
from runcontrol_server.servicer.convert import run_to_proto, struct_to_dict
from runcontrol_server.servicer.watch import encode_event

SERVICE = "/runcontrol.v1.RunControl/"
T0 = datetime(2030, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)

# --- strategies ---------------------------------------------------------------------------

texts = st.text(max_size=40)
ids = st.text(min_size=1, max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
revisions = st.integers(min_value=0, max_value=2**62)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    return Run(
        run_id=draw(ids),
        thread_id=draw(ids),
        assistant_id=draw(st.none() | texts),
        status=draw(st.sampled_from(RunStatus)),
        on_disconnect=draw(st.sampled_from(DisconnectMode)),
        multitask_strategy=draw(st.sampled_from(MultitaskStrategy)),
        metadata_json=canonical_json(draw(json_objects)),
        kwargs_json=canonical_json(draw(json_objects)),
        created_at=draw(times),
        updated_at=draw(times),
        create_revision=draw(revisions),
        mod_revision=draw(revisions),
        error=draw(st.none() | texts),
        cancel_action=draw(st.sampled_from(CancelAction)),
        cancel_reason=draw(st.none() | texts),
        worker_id=draw(st.none() | texts),
        deadline=draw(st.none() | times),
        request_id=draw(st.none() | texts),
    )


def a_run(**changes: Any) -> Run:
    run = Run(
        run_id="r-1",
        thread_id="t-1",
        assistant_id="agent",
        status=RunStatus.PENDING,
        on_disconnect=DisconnectMode.CANCEL,
        multitask_strategy=MultitaskStrategy.REJECT,
        metadata_json=canonical_json({"user": "ann", "n": 3}),
        kwargs_json="{}",
        created_at=T0,
        updated_at=T0,
        create_revision=7,
        mod_revision=7,
    )
    return run._replace(**changes)


# --- records ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(runs())
def test_encoded_record_is_protobufs_serialization(run: Run) -> None:
    expected = run_to_proto(run).SerializeToString()
    assert wire.encode_record(run) == expected
    assert run_pb2.RunRecord.FromString(wire.encode_record(run)) == run_to_proto(run)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"created_at": datetime(1970, 1, 1, tzinfo=UTC)},  # an all-zero Timestamp
        {"created_at": datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)},  # negative
        {"updated_at": T0 + timedelta(seconds=1), "deadline": T0 + timedelta(days=1)},
        {"assistant_id": None, "metadata_json": "{}", "error": "", "worker_id": ""},
        {"run_id": "é" * 100, "thread_id": "x" * 300, "request_id": "ключ"},
        {"create_revision": 0, "mod_revision": 2**63 - 1},
        {"status": RunStatus.INTERRUPTED, "cancel_action": CancelAction.ROLLBACK},
    ],
)
def test_encoded_record_edge_cases(changes: dict[str, Any]) -> None:
    run = a_run(**changes)
    assert wire.encode_record(run) == run_to_proto(run).SerializeToString()


@pytest.mark.parametrize(
    "value", [1, 127, 128, 300, 16_383, 16_384, 2**31, 2**63 - 1, -1, -(2**63)]
)
def test_varint_matches_protobuf(value: int) -> None:
    message = run_pb2.RunRecord(create_revision=value)
    assert message.SerializeToString() == wire.tag(16, 0) + wire.varint(value)
    assert wire.varint(0) == b"\x00"


# --- the cache ------------------------------------------------------------------------------


def test_record_cache_encodes_once_per_revision_and_changes_with_the_run() -> None:
    cache = wire.RecordCache()
    run = a_run()
    first = cache.encode(run)
    assert cache.encode(run) is first  # the same revision: the cached bytes
    changed = run._replace(status=RunStatus.RUNNING, worker_id="w", mod_revision=8)
    second = cache.encode(changed)
    assert second != first
    assert second == run_to_proto(changed).SerializeToString()
    assert cache.encode(changed) is second
    # An older revision (a watcher behind) is answered correctly and keeps the newer.
    assert cache.encode(run) == first
    assert cache.encode(changed) is second
    assert len(cache) == 1


def test_record_cache_is_bounded_by_count_and_by_bytes() -> None:
    by_count = wire.RecordCache(max_entries=3)
    for i in range(10):
        by_count.encode(a_run(run_id=f"r{i}"))
    assert len(by_count) == 3
    size = len(wire.encode_record(a_run()))
    by_bytes = wire.RecordCache(max_bytes=2 * size)
    for i in range(10):
        by_bytes.encode(a_run(run_id=f"s{i}"))
    assert len(by_bytes) == 2 and by_bytes.size_bytes <= 2 * size


# --- responses ------------------------------------------------------------------------------


# The reference answers: built the ordinary way, each record in place with
# `run_to_proto` (as the servicer did before it answered bytes). Struct maps are built
# in one order either way: protobuf serializes a map in the order of its hash table,
# so a *copied* message (e.g. `ListRunsResponse(runs=[...])`) may order it differently.


def reference_get(run: Run) -> bytes:
    response = pb.GetRunResponse()
    run_to_proto(run, response.run)
    return response.SerializeToString()


def reference_list(runs: list[Run], token: str, revision: int) -> bytes:
    response = pb.ListRunsResponse(next_page_token=token, revision=revision)
    for run in runs:
        run_to_proto(run, response.runs.add())
    return response.SerializeToString()


def reference_create(run: Run, interrupted: list[Run], queued: list[str], replayed: bool) -> bytes:
    response = pb.CreateRunResponse(queued_behind_run_ids=queued, replayed=replayed)
    run_to_proto(run, response.run)
    for other in interrupted:
        run_to_proto(other, response.interrupted_runs.add())
    return response.SerializeToString()


def reference_flagged(message: Any, run: Run) -> bytes:
    run_to_proto(run, message.run)
    return bytes(message.SerializeToString())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(runs(), max_size=3),
    st.lists(ids, max_size=3),
    st.booleans(),
    texts,
    revisions,
)
def test_responses_are_protobufs_serialization(
    some: list[Run], queued: list[str], flag: bool, token: str, revision: int
) -> None:
    records = [wire.encode_record(run) for run in some]
    run = some[0] if some else a_run()
    record = wire.encode_record(run)

    assert wire.get_run_response(record) == reference_get(run)
    assert wire.list_runs_response(records, token, revision) == reference_list(
        some, token, revision
    )
    assert wire.create_run_response(record, records, queued, flag) == reference_create(
        run, some, queued, flag
    )
    status = reference_flagged(pb.SetRunStatusResponse(changed=flag), run)
    assert wire.record_and_flag(record, flag) == status
    cancel = reference_flagged(pb.CancelRunResponse(cancelled=flag), run)
    assert wire.record_and_flag(record, flag) == cancel
    delete = reference_flagged(pb.DeleteRunResponse(revision=revision), run)
    assert wire.delete_run_response(record, revision) == delete
    # And they read back as the messages they stand for.
    listed = pb.ListRunsResponse.FromString(wire.list_runs_response(records, token, revision))
    assert list(listed.runs) == [run_to_proto(r) for r in some]
    assert (listed.next_page_token, listed.revision) == (token, revision)


@pytest.mark.parametrize("prev", [run_pb2.RUN_STATUS_UNSPECIFIED, run_pb2.RUN_STATUS_RUNNING])
@pytest.mark.parametrize("revision", [0, 1, 2**40])
def test_run_event_is_protobufs_serialization(prev: int, revision: int) -> None:
    from runcontrol_server.domain.watch import EventType

    run = a_run()
    expected = pb.RunEvent(
        type=run_pb2.EVENT_TYPE_MODIFIED,
        prev_status=prev,  # type: ignore[arg-type]
        revision=revision,
    )
    run_to_proto(run, expected.run)
    built = encode_event(EventType.MODIFIED, run, prev, revision)  # type: ignore[arg-type]
    assert built == expected.SerializeToString()
    assert encode_event(EventType.MODIFIED, run, prev, revision, wire.RecordCache()) == built  # type: ignore[arg-type]


# --- Struct -> JSON -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(json_objects)
def test_struct_to_dict_matches_json_format(value: dict[str, Any]) -> None:
    struct = Struct()
    struct.update(value)
    assert struct_to_dict(struct) == json_format.MessageToDict(struct)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_struct_to_dict_refuses_numbers_without_a_json_form(number: float) -> None:
    struct = Struct()
    struct.update({"deep": [{"x": number}]})
    with pytest.raises(ValueError, match=r"Value\.number_value"):
        struct_to_dict(struct)


# --- over the wire --------------------------------------------------------------------------


async def raw(server: InProcessServer, method: str, request: Any) -> bytes:
    """The response bytes exactly as the server sent them (no deserializer)."""
    call = server.channel.unary_unary(
        SERVICE + method, request_serializer=type(request).SerializeToString
    )
    data = await call(request, timeout=10)
    assert isinstance(data, bytes)
    return data


async def test_answers_over_the_wire_are_protobufs_serialization(server: InProcessServer) -> None:
    request = pb.CreateRunRequest(thread_id="t", assistant_id="a", request_id="q")
    request.metadata.update({"user": "ann", "tags": ["x", 1], "nested": {"ok": True}})
    request.kwargs.update({"prompt": "hi", "none": None})
    first = pb.CreateRunResponse.FromString(await raw(server, "CreateRun", request))
    # ENQUEUE: queued behind the first; INTERRUPT: the first two interrupted.
    enqueue = pb.CreateRunRequest(
        thread_id="t", multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE
    )
    queued_bytes = await raw(server, "CreateRun", enqueue)
    queued = pb.CreateRunResponse.FromString(queued_bytes)
    assert list(queued.queued_behind_run_ids) == [first.run.run_id]
    queued_run = await server.manager.get_run(queued.run.run_id)
    assert queued_bytes == reference_create(queued_run, [], [first.run.run_id], False)
    interrupt = pb.CreateRunRequest(
        thread_id="t", multitask_strategy=run_pb2.MULTITASK_STRATEGY_INTERRUPT
    )
    created_bytes = await raw(server, "CreateRun", interrupt)
    created = pb.CreateRunResponse.FromString(created_bytes)
    assert len(created.interrupted_runs) == 2
    manager = server.manager

    async def proto_of(run_id: str) -> run_pb2.RunRecord:
        return run_to_proto(await manager.get_run(run_id))

    assert created_bytes == reference_create(
        await manager.get_run(created.run.run_id),
        [await manager.get_run(first.run.run_id), await manager.get_run(queued.run.run_id)],
        [],
        False,
    )
    assert created.run == await proto_of(created.run.run_id)

    # A replay answers the stored outcome, flagged.
    replay = pb.CreateRunResponse.FromString(await raw(server, "CreateRun", request))
    assert replay.replayed and replay.run.run_id == first.run.run_id

    got = await raw(server, "GetRun", pb.GetRunRequest(run_id=created.run.run_id))
    assert got == reference_get(await manager.get_run(created.run.run_id))

    listed = await raw(server, "ListRuns", pb.ListRunsRequest(thread_id="t", page_size=2))
    page = pb.ListRunsResponse.FromString(listed)
    assert page.next_page_token and page.revision == await manager.revision()
    assert [r.run_id for r in page.runs] == [created.run.run_id, queued.run.run_id]
    expected_runs = [await manager.get_run(r.run_id) for r in page.runs]
    assert listed == reference_list(expected_runs, page.next_page_token, page.revision)


async def test_cached_record_changes_when_the_run_changes(server: InProcessServer) -> None:
    created = pb.CreateRunResponse.FromString(
        await raw(server, "CreateRun", pb.CreateRunRequest(thread_id="t"))
    ).run
    get = pb.GetRunRequest(run_id=created.run_id)
    before = await raw(server, "GetRun", get)
    assert before == await raw(server, "GetRun", get)

    claimed = await raw(
        server,
        "SetRunStatus",
        pb.SetRunStatusRequest(
            run_id=created.run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w"
        ),
    )
    after = await raw(server, "GetRun", get)
    assert after != before
    run = await server.manager.get_run(created.run_id)
    assert after == reference_get(run)
    assert claimed == reference_flagged(pb.SetRunStatusResponse(changed=True), run)
    assert pb.GetRunResponse.FromString(after).run.status == run_pb2.RUN_STATUS_RUNNING

    cancelled = await raw(server, "CancelRun", pb.CancelRunRequest(run_id=created.run_id))
    run = await server.manager.get_run(created.run_id)
    assert cancelled == reference_flagged(pb.CancelRunResponse(cancelled=True), run)
    deleted = await raw(server, "DeleteRun", pb.DeleteRunRequest(run_id=created.run_id))
    revision = await server.manager.revision()
    assert deleted == reference_flagged(pb.DeleteRunResponse(revision=revision), run)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await raw(server, "GetRun", get)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
