"""Hand-built wire bytes (`servicer.wire`) are exactly protobuf's own serialization.

The servicer answers every RPC that carries runs (CreateRun, GetRun, ListRuns,
SetRunStatus, CancelRun, DeleteRun, WaitRun, RenewRunLease, WatchRuns) with bytes
assembled from each run's record, encoded once per revision. These tests hold every
builder byte-equal to `SerializeToString()` of the message built the ordinary way
(`_reference_encoding.run_to_proto`), over the wire as well, and show the cached
record changes whenever the run does.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from _reference_encoding import run_to_proto
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
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
from runcontrol_server.servicer.convert import struct_to_dict
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
    | st.integers(min_value=-(2**64), max_value=2**64)  # beyond 2**53 too: JSON text is exact
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
int32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
durations = st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=3))


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
        attempt=draw(int32s),
        max_attempts=draw(int32s),
        lease_ttl=draw(st.none() | durations),
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


def _every_field_set() -> Run:
    return a_run(
        status=RunStatus.RUNNING,
        on_disconnect=DisconnectMode.CONTINUE,
        multitask_strategy=MultitaskStrategy.ENQUEUE,
        kwargs_json=canonical_json({"k": 1}),
        updated_at=T0 + timedelta(seconds=1),
        error="e",
        cancel_action=CancelAction.ROLLBACK,
        cancel_reason="r",
        worker_id="w",
        deadline=T0 + timedelta(hours=1),
        request_id="q",
        attempt=1,
        max_attempts=2,
        lease_ttl=timedelta(seconds=30),
    )


@pytest.mark.parametrize("payload_json", [False, True])
def test_every_record_field_of_the_contract_is_written(payload_json: bool) -> None:
    """A RunRecord field added to the proto but not to the encoder fails here."""
    run = _every_field_set()
    data = wire.encode_record_json(run) if payload_json else wire.encode_record(run)
    written = {field.name for field, _ in run_pb2.RunRecord.FromString(data).ListFields()}
    other_format = {"metadata", "kwargs"} if payload_json else {"metadata_json", "kwargs_json"}
    assert written == set(run_pb2.RunRecord.DESCRIPTOR.fields_by_name) - other_format


def test_field_tags_refuse_a_message_with_a_field_the_encoder_does_not_write() -> None:
    tags = wire.FieldTags(run_pb2.RunRecord.DESCRIPTOR)
    for name in run_pb2.RunRecord.DESCRIPTOR.fields_by_name:
        if name != "lease_ttl":
            tags(name)
    with pytest.raises(RuntimeError, match="lease_ttl"):
        tags.check_complete()
    assert tags("status") == wire.tag(4, 0)  # tags come from the descriptor
    assert tags("lease_ttl") == wire.tag(23, 2)
    tags.check_complete()


@settings(max_examples=150, deadline=None)
@given(runs())
def test_encoded_record_is_protobufs_serialization(run: Run) -> None:
    expected = run_to_proto(run).SerializeToString()
    assert wire.encode_record(run) == expected
    assert run_pb2.RunRecord.FromString(wire.encode_record(run)) == run_to_proto(run)


@settings(max_examples=150, deadline=None)
@given(runs())
def test_encoded_json_record_is_protobufs_serialization(run: Run) -> None:
    expected = run_to_proto(run, payload_json=True)
    assert wire.encode_record_json(run) == expected.SerializeToString()
    # The payload text, exactly as stored (absent for {}), and no Struct.
    assert expected.metadata_json == ("" if run.metadata_json == "{}" else run.metadata_json)
    assert expected.kwargs_json == ("" if run.kwargs_json == "{}" else run.kwargs_json)
    assert not expected.HasField("metadata") and not expected.HasField("kwargs")


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
        # The lease fields: attempt omitted at 0, max_attempts always there (>= 1).
        {"attempt": 0, "max_attempts": 1, "lease_ttl": None},
        {"attempt": 3, "max_attempts": 100, "lease_ttl": timedelta(seconds=30)},
        {"attempt": 1, "lease_ttl": timedelta(seconds=1, microseconds=500_000)},
        {"lease_ttl": timedelta(0)},  # set but zero: an empty Duration, still present
        {"lease_ttl": timedelta(microseconds=-1)},  # negative: seconds and nanos share a sign
        {"lease_ttl": timedelta(seconds=-1, microseconds=5), "attempt": -1, "max_attempts": 0},
        {"metadata_json": canonical_json({"big": 2**60 + 1, "n": 100, "f": 1.5, "u": "é"})},
        {"kwargs_json": canonical_json({"l": [1, 2.0, -3], "neg": -(2**70)})},
    ],
)
def test_encoded_record_edge_cases(changes: dict[str, Any]) -> None:
    run = a_run(**changes)
    assert wire.encode_record(run) == run_to_proto(run).SerializeToString()
    json_record = run_to_proto(run, payload_json=True)
    assert wire.encode_record_json(run) == json_record.SerializeToString()
    # Field by field as well, so a change of protobuf's own rules shows here.
    assert (json_record.attempt, json_record.max_attempts) == (run.attempt, run.max_attempts)
    assert json_record.HasField("lease_ttl") is (run.lease_ttl is not None)
    if run.lease_ttl is not None:
        assert json_record.lease_ttl.ToTimedelta() == run.lease_ttl


@pytest.mark.parametrize(
    "value", [1, 127, 128, 300, 16_383, 16_384, 2**31, 2**63 - 1, -1, -(2**63)]
)
def test_varint_matches_protobuf(value: int) -> None:
    message = run_pb2.RunRecord(create_revision=value)
    assert message.SerializeToString() == wire.tag(16, 0) + wire.varint(value)
    assert wire.varint(0) == b"\x00"


def test_timestamps_sharing_their_second_encode_as_protobuf_does() -> None:
    """The seconds field is reused while timestamps stay within one second: moving to
    another second and back, and to the epoch (no seconds field), changes it."""
    base = datetime(2026, 12, 2, 16, 0, 0, tzinfo=UTC)
    moments = [
        base + timedelta(microseconds=1),
        base + timedelta(microseconds=999_999),
        base,
        base + timedelta(seconds=1, microseconds=5),
        base + timedelta(microseconds=7),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 3, tzinfo=UTC),
        base + timedelta(microseconds=7),
    ]
    for moment in moments:
        expected = Timestamp()
        expected.FromDatetime(moment)
        assert wire._timestamp_body(moment) == expected.SerializeToString(), moment


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


def test_record_caches_keep_payload_formats_apart() -> None:
    structs, texts = wire.RecordCache(), wire.RecordCache(payload_json=True)
    run = a_run(metadata_json=canonical_json({"n": 100}))
    as_struct, as_json = structs.encode(run), texts.encode(run)
    assert as_struct == run_to_proto(run).SerializeToString()
    assert as_json == run_to_proto(run, payload_json=True).SerializeToString()
    assert as_struct != as_json
    # Hits and re-encodings (an older revision) stay in each cache's format.
    assert structs.encode(run) is as_struct and texts.encode(run) is as_json
    newer = run._replace(mod_revision=8)
    assert texts.encode(newer) == wire.encode_record_json(newer)
    assert texts.encode(run) == as_json and structs.encode(run) is as_struct


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


def reference_get(run: Run, payload_json: bool = False) -> bytes:
    response = pb.GetRunResponse()
    run_to_proto(run, response.run, payload_json=payload_json)
    return response.SerializeToString()


def reference_list(runs: list[Run], token: str, revision: int, payload_json: bool = False) -> bytes:
    response = pb.ListRunsResponse(next_page_token=token, revision=revision)
    for run in runs:
        run_to_proto(run, response.runs.add(), payload_json=payload_json)
    return response.SerializeToString()


def reference_create(
    run: Run,
    interrupted: list[Run],
    queued: list[str],
    replayed: bool,
    payload_json: bool = False,
) -> bytes:
    response = pb.CreateRunResponse(queued_behind_run_ids=queued, replayed=replayed)
    run_to_proto(run, response.run, payload_json=payload_json)
    for other in interrupted:
        run_to_proto(other, response.interrupted_runs.add(), payload_json=payload_json)
    return response.SerializeToString()


def reference_flagged(message: Any, run: Run, payload_json: bool = False) -> bytes:
    run_to_proto(run, message.run, payload_json=payload_json)
    return bytes(message.SerializeToString())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(runs(), max_size=3),
    st.lists(ids, max_size=3),
    st.booleans(),
    texts,
    revisions,
    st.booleans(),
)
def test_responses_are_protobufs_serialization(
    some: list[Run], queued: list[str], flag: bool, token: str, revision: int, as_json: bool
) -> None:
    encode = wire.encode_record_json if as_json else wire.encode_record
    records = [encode(run) for run in some]
    run = some[0] if some else a_run()
    record = encode(run)

    assert wire.get_run_response(record) == reference_get(run, as_json)
    assert wire.list_runs_response(records, token, revision) == reference_list(
        some, token, revision, as_json
    )
    assert wire.create_run_response(record, records, queued, flag) == reference_create(
        run, some, queued, flag, as_json
    )
    status = reference_flagged(pb.SetRunStatusResponse(changed=flag), run, as_json)
    assert wire.record_and_flag(record, flag) == status
    cancel = reference_flagged(pb.CancelRunResponse(cancelled=flag), run, as_json)
    assert wire.record_and_flag(record, flag) == cancel
    delete = reference_flagged(pb.DeleteRunResponse(revision=revision), run, as_json)
    assert wire.delete_run_response(record, revision) == delete
    # And they read back as the messages they stand for.
    listed = pb.ListRunsResponse.FromString(wire.list_runs_response(records, token, revision))
    assert list(listed.runs) == [run_to_proto(r, payload_json=as_json) for r in some]
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
    # The JSON-payload form: the same event around the record of that format.
    expected.run.Clear()
    run_to_proto(run, expected.run, payload_json=True)
    json_cache = wire.RecordCache(payload_json=True)
    built_json = encode_event(EventType.MODIFIED, run, prev, revision, json_cache)  # type: ignore[arg-type]
    assert built_json == expected.SerializeToString() != built


def test_event_encoders_keep_payload_formats_apart() -> None:
    from runcontrol_server.domain.model import Change, ChangeKind
    from runcontrol_server.domain.watch import EventType, WatchBatch, WatchEvent
    from runcontrol_server.servicer.watch import EventEncoder

    run = a_run(metadata_json=canonical_json({"n": 100, "big": 2**60 + 1}))
    event = WatchEvent(EventType.ADDED, Change(ChangeKind.CREATED, run, None), 7, 0)
    batch = WatchBatch(7, (event,))
    structs = EventEncoder(wire.RecordCache())
    texts = EventEncoder(wire.RecordCache(payload_json=True))
    as_struct = pb.WatchRunsResponse.FromString(structs.encode_batch(batch)).events[0].run
    as_json = pb.WatchRunsResponse.FromString(texts.encode_batch(batch)).events[0].run
    assert as_struct == run_to_proto(run) and as_json == run_to_proto(run, payload_json=True)
    assert as_json.metadata_json == '{"big":1152921504606846977,"n":100}'
    assert not as_struct.metadata_json and as_struct.metadata.fields["n"].number_value == 100


# --- Struct -> JSON -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(json_objects)
def test_struct_to_dict_matches_json_format(value: dict[str, Any]) -> None:
    struct = Struct()
    struct.update(value)
    assert struct_to_dict(struct) == json_format.MessageToDict(struct)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (100.0, 100),
        (0.0, 0),
        (-3.0, -3),
        (float(2**53), 2**53),
        (-float(2**53), -(2**53)),
        (1.5, 1.5),
        (-0.0, -0.0),  # its sign is data: stays a float
        (float(2**53 + 2), float(2**53 + 2)),  # beyond 2**53 a double is not one integer
        (1e300, 1e300),
    ],
)
def test_struct_to_dict_reads_integral_numbers_as_ints(number: float, expected: Any) -> None:
    struct = Struct()
    struct.update({"n": number, "deep": [{"n": number}]})
    value = struct_to_dict(struct)
    assert type(value["n"]) is type(expected) and value["n"] == expected
    assert type(value["deep"][0]["n"]) is type(expected)
    assert math.copysign(1.0, value["n"]) == math.copysign(1.0, number)
    # The Struct built back from the stored text is the one that came in (compared as
    # messages: a map's serialized entry order is not part of its value).
    again = Struct()
    again.update(json.loads(canonical_json(value)))
    assert again == struct


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_struct_to_dict_refuses_numbers_without_a_json_form(number: float) -> None:
    struct = Struct()
    struct.update({"deep": [{"x": number}]})
    with pytest.raises(ValueError, match=r"Value\.number_value"):
        struct_to_dict(struct)


# --- over the wire --------------------------------------------------------------------------


JSON_HEADER = (("runcontrol-payload-format", "json"),)


async def raw(
    server: InProcessServer, method: str, request: Any, payload_json: bool = False
) -> bytes:
    """The response bytes exactly as the server sent them (no deserializer)."""
    call = server.channel.unary_unary(
        SERVICE + method, request_serializer=type(request).SerializeToString
    )
    data = await call(request, timeout=10, metadata=JSON_HEADER if payload_json else None)
    assert isinstance(data, bytes)
    return data


@pytest.mark.parametrize("as_json", [False, True], ids=["structs", "json"])
async def test_answers_over_the_wire_are_protobufs_serialization(
    server: InProcessServer, as_json: bool
) -> None:
    request = pb.CreateRunRequest(thread_id="t", assistant_id="a", request_id="q")
    request.metadata.update({"user": "ann", "tags": ["x", 1], "nested": {"ok": True}})
    request.kwargs.update({"prompt": "hi", "none": None})
    first = pb.CreateRunResponse.FromString(await raw(server, "CreateRun", request, as_json))
    # ENQUEUE: queued behind the first; INTERRUPT: the first two interrupted.
    enqueue = pb.CreateRunRequest(
        thread_id="t",
        multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
        metadata_json='{"big":1152921504606846977,"n":100}',
    )
    queued_bytes = await raw(server, "CreateRun", enqueue, as_json)
    queued = pb.CreateRunResponse.FromString(queued_bytes)
    assert list(queued.queued_behind_run_ids) == [first.run.run_id]
    queued_run = await server.manager.get_run(queued.run.run_id)
    assert queued_bytes == reference_create(queued_run, [], [first.run.run_id], False, as_json)
    interrupt = pb.CreateRunRequest(
        thread_id="t", multitask_strategy=run_pb2.MULTITASK_STRATEGY_INTERRUPT
    )
    created_bytes = await raw(server, "CreateRun", interrupt, as_json)
    created = pb.CreateRunResponse.FromString(created_bytes)
    assert len(created.interrupted_runs) == 2
    manager = server.manager

    async def proto_of(run_id: str) -> run_pb2.RunRecord:
        return run_to_proto(await manager.get_run(run_id), payload_json=as_json)

    assert created_bytes == reference_create(
        await manager.get_run(created.run.run_id),
        [await manager.get_run(first.run.run_id), await manager.get_run(queued.run.run_id)],
        [],
        False,
        as_json,
    )
    assert created.run == await proto_of(created.run.run_id)

    # A replay answers the stored outcome, flagged.
    replay = pb.CreateRunResponse.FromString(await raw(server, "CreateRun", request, as_json))
    assert replay.replayed and replay.run.run_id == first.run.run_id

    got = await raw(server, "GetRun", pb.GetRunRequest(run_id=created.run.run_id), as_json)
    assert got == reference_get(await manager.get_run(created.run.run_id), as_json)

    listed = await raw(server, "ListRuns", pb.ListRunsRequest(thread_id="t", page_size=2), as_json)
    page = pb.ListRunsResponse.FromString(listed)
    assert page.next_page_token and page.revision == await manager.revision()
    assert [r.run_id for r in page.runs] == [created.run.run_id, queued.run.run_id]
    expected_runs = [await manager.get_run(r.run_id) for r in page.runs]
    assert listed == reference_list(expected_runs, page.next_page_token, page.revision, as_json)
    # The queued run's payload, exactly as sent in the one format, as doubles in the other.
    if as_json:
        assert page.runs[1].metadata_json == enqueue.metadata_json
    else:
        assert page.runs[1].metadata.fields["big"].number_value == float(2**60)


@pytest.mark.parametrize("as_json", [False, True], ids=["structs", "json"])
async def test_cached_record_changes_when_the_run_changes(
    server: InProcessServer, as_json: bool
) -> None:
    created = pb.CreateRunResponse.FromString(
        await raw(server, "CreateRun", pb.CreateRunRequest(thread_id="t"), as_json)
    ).run
    get = pb.GetRunRequest(run_id=created.run_id)
    before = await raw(server, "GetRun", get, as_json)
    assert before == await raw(server, "GetRun", get, as_json)

    claimed = await raw(
        server,
        "SetRunStatus",
        pb.SetRunStatusRequest(
            run_id=created.run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w"
        ),
        as_json,
    )
    after = await raw(server, "GetRun", get, as_json)
    assert after != before
    run = await server.manager.get_run(created.run_id)
    assert after == reference_get(run, as_json)
    assert claimed == reference_flagged(pb.SetRunStatusResponse(changed=True), run, as_json)
    assert pb.GetRunResponse.FromString(after).run.status == run_pb2.RUN_STATUS_RUNNING

    cancel = pb.CancelRunRequest(run_id=created.run_id)
    cancelled = await raw(server, "CancelRun", cancel, as_json)
    run = await server.manager.get_run(created.run_id)
    assert cancelled == reference_flagged(pb.CancelRunResponse(cancelled=True), run, as_json)
    deleted = await raw(server, "DeleteRun", pb.DeleteRunRequest(run_id=created.run_id), as_json)
    revision = await server.manager.revision()
    expected = reference_flagged(pb.DeleteRunResponse(revision=revision), run, as_json)
    assert deleted == expected
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await raw(server, "GetRun", get, as_json)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
