"""Hostile bytes on every method: no UNKNOWN, no INTERNAL, no log flood, no hang, and
nothing changes to the runs that existed before.

The flood sends at least `REQUESTS` seeded requests through a raw channel (bytes as
they are, no client-side serialization) across every method the server has:
RunControl, health and reflection. The seed is printed; set RUNCONTROL_FUZZ_SEED to
replay a run, RUNCONTROL_FUZZ_REQUESTS to send more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from _hostile import KINDS, length_delimited, nested_struct
from _security import ADMIN_TOKEN, running, write_tokens
from conftest import rpc_error
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from runcontrol.errors import from_grpc_error
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.config import Settings
from runcontrol_server.servicer.throttled_log import ThrottledLog

SEED_ENV = "RUNCONTROL_FUZZ_SEED"
REQUESTS = int(os.environ.get("RUNCONTROL_FUZZ_REQUESTS", "10000"))
CONCURRENCY = 64  # calls in flight at once
CALL_DEADLINE = 10.0  # every call's own gRPC deadline
FIRST_MESSAGE_WAIT = 0.5  # a stream that says nothing this long is open and valid
FLOOD_BUDGET = 180.0  # hang guard for the whole flood, never a measure of its speed
MAX_LOG_LINES = 5  # "a handful": the malformed-request warning is one per 10 s
PRE_FLOOD_THREADS = tuple(f"pre-flood-{i}" for i in range(4))  # no hostile id can be one


@dataclass(frozen=True)
class Method:
    path: str
    request: Descriptor
    server_streaming: bool
    client_streaming: bool


def _methods(service: ServiceDescriptor) -> list[Method]:
    return [
        Method(
            f"/{service.full_name}/{m.name}", m.input_type, m.server_streaming, m.client_streaming
        )
        for m in service.methods
    ]


# Every method the server serves.
METHODS = [
    *_methods(pb.DESCRIPTOR.services_by_name["RunControl"]),
    *_methods(health_pb2.DESCRIPTOR.services_by_name["Health"]),
    *_methods(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]),
]
BY_NAME = {m.path.rsplit("/", 1)[1]: m for m in METHODS}


def parses(method: Method, data: bytes) -> bool:
    try:
        GetMessageClass(method.request).FromString(data)
    except DecodeError:
        return False
    return True


# --- the runs that exist before the flood, and requests aimed at them -----------------


async def seed_runs(server: InProcessServer) -> list[str]:
    """Runs in every state on `PRE_FLOOD_THREADS` (no deadlines, no leases: nothing but
    a call may change them). Returns their ids."""
    stub = server.stub
    ids: list[str] = []
    for index, thread_id in enumerate(PRE_FLOOD_THREADS):
        request = pb.CreateRunRequest(thread_id=thread_id, request_id=f"pre-{index}")
        request.metadata.update({"index": index, "note": "before the flood"})
        first = (await stub.CreateRun(request)).run
        queued = await stub.CreateRun(
            pb.CreateRunRequest(
                thread_id=thread_id, multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE
            )
        )
        ids += [first.run_id, queued.run.run_id]
        if index % 2:  # claimed, then finished; the queued one stays PENDING
            claim = pb.SetRunStatusRequest(
                run_id=first.run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w"
            )
            await stub.SetRunStatus(claim)
            if index == 3:
                done = pb.SetRunStatusRequest(
                    run_id=first.run_id, status=run_pb2.RUN_STATUS_SUCCESS, worker_id="w"
                )
                await stub.SetRunStatus(done)
    return ids


async def snapshot(server: InProcessServer) -> list[bytes]:
    """Every pre-flood thread's runs and active runs, as bytes."""
    parts: list[bytes] = []
    for thread_id in PRE_FLOOD_THREADS:
        listed = await server.stub.ListRuns(pb.ListRunsRequest(thread_id=thread_id))
        parts += [run.SerializeToString(deterministic=True) for run in listed.runs]
        inflight = await server.stub.HasInflight(pb.HasInflightRequest(thread_id=thread_id))
        parts.append(b",".join(i.encode() for i in inflight.run_ids))
    return parts


def aimed(rng: random.Random, run_ids: list[str]) -> tuple[Method, bytes]:
    """A request that parses, names a pre-flood run or thread and must be refused for
    one hostile value (a change would show in the snapshot)."""
    run_id, thread_id = rng.choice(run_ids), rng.choice(PRE_FLOOD_THREADS)
    running, never = run_pb2.RUN_STATUS_RUNNING, Duration(seconds=-1)
    choices: list[tuple[str, Any]] = [
        ("SetRunStatus", pb.SetRunStatusRequest(run_id=run_id, status=99)),
        ("SetRunStatus", pb.SetRunStatusRequest(run_id=run_id, status=0)),
        ("SetRunStatus", pb.SetRunStatusRequest(run_id=run_id, status=running, worker_id="")),
        (
            "SetRunStatus",
            pb.SetRunStatusRequest(run_id=run_id, status=running, expected_mod_revision=-1),
        ),
        (
            "SetRunStatus",
            pb.SetRunStatusRequest(
                run_id=run_id, status=run_pb2.RUN_STATUS_SUCCESS, lease_ttl=Duration(seconds=5)
            ),
        ),
        ("CancelRun", pb.CancelRunRequest(run_id=run_id, action=99)),
        ("CancelRun", pb.CancelRunRequest(run_id=run_id, reason="r" * 5000)),
        ("DeleteRun", pb.DeleteRunRequest(run_id=run_id, expected_mod_revision=-7)),
        ("WaitRun", pb.WaitRunRequest(run_id=run_id, timeout=never, attach=True)),
        ("RenewRunLease", pb.RenewRunLeaseRequest(run_id=run_id, worker_id="")),
        ("CreateRun", pb.CreateRunRequest(thread_id=thread_id, multitask_strategy=99)),
        (
            "CreateRun",
            pb.CreateRunRequest(
                thread_id=thread_id,
                multitask_strategy=run_pb2.MULTITASK_STRATEGY_INTERRUPT,
                max_attempts=-1,
            ),
        ),
        ("CreateRun", pb.CreateRunRequest(thread_id=thread_id, timeout=never)),
    ]
    name, request = rng.choice(choices)
    return BY_NAME[name], request.SerializeToString()


def requests(rng: random.Random, run_ids: list[str]) -> Iterator[tuple[str, Method, bytes]]:
    """`REQUESTS` (kind, method, bytes), made one at a time (some are large)."""
    kinds = [*KINDS, "aimed"]
    for _ in range(REQUESTS):
        kind = rng.choice(kinds)
        if kind == "aimed":
            yield (kind, *aimed(rng, run_ids))
        else:
            method = rng.choice(METHODS)
            yield kind, method, KINDS[kind](rng, method.request)


# --- sending --------------------------------------------------------------------------


async def send(channel: grpc.aio.Channel, method: Method, data: bytes) -> tuple[str, str]:
    """One raw call: its status code name and ErrorInfo reason. A stream that answers a
    message (or nothing within `FIRST_MESSAGE_WAIT`) is a valid request: "OK"/"OPEN"."""
    try:
        if not method.server_streaming:
            await channel.unary_unary(method.path)(data, timeout=CALL_DEADLINE)
            return "OK", ""
        if method.client_streaming:
            call: Any = channel.stream_stream(method.path)(iter((data,)), timeout=CALL_DEADLINE)
        else:
            call = channel.unary_stream(method.path)(data, timeout=CALL_DEADLINE)
        try:
            async with asyncio.timeout(FIRST_MESSAGE_WAIT):
                await call.read()
            return "OK", ""
        except TimeoutError:
            return "OPEN", ""
        finally:
            call.cancel()
    except grpc.aio.AioRpcError as error:
        return error.code().name, from_grpc_error(error).reason


@dataclass
class Tally:
    codes: Counter[str]
    by_kind: Counter[tuple[str, str]]
    reasons: Counter[str]
    wrong: list[str]  # answers that broke a rule, described


async def flood(channel: grpc.aio.Channel, work: Iterator[tuple[str, Method, bytes]]) -> Tally:
    tally = Tally(Counter(), Counter(), Counter(), [])

    async def worker() -> None:
        for kind, method, data in work:  # one shared iterator: each request sent once
            code, reason = await send(channel, method, data)
            tally.codes[code] += 1
            tally.by_kind[(kind, code)] += 1
            if reason:
                tally.reasons[reason] += 1
            malformed = not parses(method, data)
            if malformed and (code, reason) != ("INVALID_ARGUMENT", "MALFORMED_REQUEST"):
                tally.wrong.append(f"{kind} {method.path} {data[:40]!r}: {code} {reason}")
            if kind == "aimed" and code != "INVALID_ARGUMENT":
                tally.wrong.append(f"aimed {method.path} {data[:60]!r} was not refused: {code}")

    try:
        async with asyncio.timeout(FLOOD_BUDGET):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    except TimeoutError:
        # Only a guard: generous enough for any machine, it stops a hung call from
        # hanging the suite. How long the flood took is never asserted.
        raise AssertionError(f"hang: the flood did not end within {FLOOD_BUDGET:g} s") from None
    return tally


class _Records(logging.Handler):
    """Every record at WARNING or above, from any logger (the server runs in-process)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture
async def hostile_server() -> AsyncIterator[InProcessServer]:
    async with serve_in_process() as running:
        yield running


@pytest.mark.timeout(300)
async def test_hostile_requests_on_every_method(
    hostile_server: InProcessServer, server_log: _Records
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().getrandbits(32))
    print(f"hostile bytes: {REQUESTS} requests, {SEED_ENV}={seed}")
    run_ids = await seed_runs(hostile_server)
    before = await snapshot(hostile_server)
    server_log.records.clear()

    work = requests(random.Random(seed), run_ids)
    tally = await flood(hostile_server.channel, work)
    print(f"{sum(tally.codes.values())} calls; codes {dict(tally.codes)}")
    print(f"reasons {dict(tally.reasons)}")
    for (kind, code), count in sorted(tally.by_kind.items()):
        print(f"  {kind:16} {code:20} {count}")

    where = f"({SEED_ENV}={seed})"
    assert sum(tally.codes.values()) == REQUESTS, where
    assert tally.codes["UNKNOWN"] == 0 and tally.codes["INTERNAL"] == 0, where
    assert not tally.wrong, f"{where} {len(tally.wrong)} wrong answers: {tally.wrong[:10]}"
    assert tally.reasons["MALFORMED_REQUEST"] > REQUESTS // 10, where  # the flood did flood
    lines = [f"{r.name}: {r.getMessage()[:200]}" for r in server_log.records]
    print(f"log lines at WARNING or above: {len(lines)}")
    assert not [r for r in server_log.records if r.exc_info], f"{where} tracebacks: {lines}"
    assert len(lines) <= MAX_LOG_LINES, f"{where} {len(lines)} log lines: {lines}"

    assert await snapshot(hostile_server) == before, where
    # Still serving, every service.
    health = await hostile_server.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest(), timeout=CALL_DEADLINE)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    created = await hostile_server.stub.CreateRun(pb.CreateRunRequest(thread_id="after"))
    assert created.run.status == run_pb2.RUN_STATUS_PENDING
    # Whatever the flood created still decodes in every client's list and watch.
    await assert_every_record_decodes(hostile_server)


async def assert_every_record_decodes(server: InProcessServer) -> None:
    """Every stored run, through the typed stub: a list page or an initial watch set
    holding a record that does not parse would come back empty-handed (None)."""
    token, listed = "", 0
    for _ in range(1000):  # bounded: 1000 runs a page
        page = await server.stub.ListRuns(pb.ListRunsRequest(page_size=1000, page_token=token))
        assert page is not None, "a ListRuns page did not decode"
        listed += len(page.runs)
        token = page.next_page_token
        if not token:
            break
    call = server.stub.WatchRuns(pb.WatchRunsRequest(send_initial=True))
    seen = 0
    try:
        for _ in range(1000):  # bounded: the set comes in chunks, then the end marker
            async with asyncio.timeout(CALL_DEADLINE):
                message = await call.read()
            assert message is not None and message is not grpc.aio.EOF, "a watch message"
            seen += len(message.events)
            if message.end_of_initial_set:
                break
    finally:
        call.cancel()
    assert seen == listed


def nested_lists(levels: int) -> bytes:
    """A Struct {"k": [[...]]} with `levels` lists nested under its object."""
    value = length_delimited(6, b"")  # Value.list_value: an empty ListValue
    for _ in range(levels - 1):
        value = length_delimited(6, length_delimited(1, value))  # ListValue.values
    return length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))


@pytest.mark.parametrize(("levels", "refused"), [(31, False), (32, True)])
@pytest.mark.parametrize("lists", [False, True], ids=["structs", "lists"])
async def test_a_struct_too_deep_to_read_back_is_refused(
    server: InProcessServer, levels: int, refused: bool, lists: bool
) -> None:
    # `levels` containers nested under the payload object: 32 JSON levels are the most
    # a record keeps readable inside a watch event (the rule of metadata_json too).
    payload = nested_lists(levels) if lists else nested_struct(levels)
    data = length_delimited(1, b"deep") + length_delimited(5, payload)
    call = server.channel.unary_unary("/runcontrol.v1.RunControl/CreateRun")(data)
    if refused:
        error = await rpc_error(call)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert error.metadata == {"field": "metadata"}
    else:
        await call
    await assert_every_record_decodes(server)


def test_the_warning_is_throttled_and_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = ThrottledLog(logging.getLogger("throttle-test"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="throttle-test"):
        for _ in range(50):
            log.warning("bad bytes from %s", "peer")
        assert len(caplog.records) == 1 and log.suppressed == 49
        now[0] += 10.0
        log.warning("bad bytes from %s", "peer")
    assert len(caplog.records) == 2
    assert caplog.records[1].getMessage() == (
        "bad bytes from peer (49 more since the previous such line were not logged)"
    )
    assert log.suppressed == 0


async def test_with_tokens_an_unknown_caller_learns_nothing_from_bad_bytes(
    tmp_path: Path,
) -> None:
    settings = Settings(tokens_file=write_tokens(tmp_path / "tokens"))
    async with running(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        create = channel.unary_unary("/runcontrol.v1.RunControl/CreateRun")
        bad = b"\x0a\x02\xff\xfe"  # thread_id holding invalid UTF-8
        error = await rpc_error(create(bad, timeout=CALL_DEADLINE))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        admin = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        error = await rpc_error(create(bad, metadata=admin, timeout=CALL_DEADLINE))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
        assert error.metadata == {"message_type": "runcontrol.v1.CreateRunRequest"}
