"""Malformed input is refused with INVALID_ARGUMENT naming the field, and changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from runcontrol.errors import from_grpc_error
from runcontrol.testing import InProcessServer, serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2
from runcontrol_server.domain.errors import InvalidArgument
from runcontrol_server.servicer import Limits, validation
from runcontrol_server.servicer.page_token import filter_digest

RunControlAsyncStub = Any
UNKNOWN_ENUM = 99
RUNNING = run_pb2.RUN_STATUS_RUNNING


@dataclass(frozen=True)
class Seed:
    """Runs present before the bad calls: a pending run and a finished one."""

    run_id: str
    done_id: str
    token: str  # a genuine page token for ListRuns(thread_id="seed", page_size=1)


# Each case: (id, method name, request builder, field the error must name).
Case = tuple[str, str, Callable[[Seed], Any], str]


def bad_ids(allow_empty: bool = False) -> list[tuple[str, str]]:
    values = [
        ("long", "x" * 129),
        ("newline", "a\nb"),
        ("nul", "a\x00b"),
        ("tab", "a\tb"),
        ("zero-width", "a\u200bb"),
    ]
    return values if allow_empty else [("empty", ""), *values]


def _create(**fields: Any) -> Callable[[Seed], Any]:
    def build(seed: Seed) -> Any:
        return pb.CreateRunRequest(**{"thread_id": "new-thread", **fields})

    return build


def _create_with(field: str, **values: Any) -> Callable[[Seed], Any]:
    def build(seed: Seed) -> Any:
        request = pb.CreateRunRequest(thread_id="new-thread")
        getattr(request, field).update(values)
        return request

    return build


def _tampered(token: str) -> str:
    middle = len(token) // 2
    flipped = "A" if token[middle] != "A" else "B"
    return token[:middle] + flipped + token[middle + 1 :]


CASES: list[Case] = [
    # ids, for every id field of every implemented RPC
    *[
        (f"create.thread_id.{n}", "CreateRun", _create(thread_id=v), "thread_id")
        for n, v in bad_ids()
    ],
    *[
        (f"create.assistant_id.{n}", "CreateRun", _create(assistant_id=v), "assistant_id")
        for n, v in bad_ids()
    ],
    *[
        (f"create.request_id.{n}", "CreateRun", _create(request_id=v), "request_id")
        for n, v in bad_ids()
    ],
    *[
        (f"get.run_id.{n}", "GetRun", lambda s, v=v: pb.GetRunRequest(run_id=v), "run_id")
        for n, v in bad_ids()
    ],
    *[
        (
            f"set.run_id.{n}",
            "SetRunStatus",
            lambda s, v=v: pb.SetRunStatusRequest(run_id=v, status=RUNNING),
            "run_id",
        )
        for n, v in bad_ids()
    ],
    *[
        (
            f"set.worker_id.{n}",
            "SetRunStatus",
            lambda s, v=v: pb.SetRunStatusRequest(run_id=s.run_id, status=RUNNING, worker_id=v),
            "worker_id",
        )
        for n, v in bad_ids()
    ],
    *[
        (f"cancel.run_id.{n}", "CancelRun", lambda s, v=v: pb.CancelRunRequest(run_id=v), "run_id")
        for n, v in bad_ids()
    ],
    *[
        (f"delete.run_id.{n}", "DeleteRun", lambda s, v=v: pb.DeleteRunRequest(run_id=v), "run_id")
        for n, v in bad_ids()
    ],
    *[
        (
            f"inflight.thread_id.{n}",
            "HasInflight",
            lambda s, v=v: pb.HasInflightRequest(thread_id=v),
            "thread_id",
        )
        for n, v in bad_ids()
    ],
    *[
        (
            f"list.thread_id.{n}",
            "ListRuns",
            lambda s, v=v: pb.ListRunsRequest(thread_id=v),
            "thread_id",
        )
        for n, v in bad_ids(allow_empty=True)  # empty means "every thread" here
    ],
    # enums: unknown numbers, and UNSPECIFIED where a value is required
    ("create.on_disconnect.99", "CreateRun", _create(on_disconnect=UNKNOWN_ENUM), "on_disconnect"),
    ("create.on_disconnect.-1", "CreateRun", _create(on_disconnect=-1), "on_disconnect"),
    (
        "create.multitask_strategy.99",
        "CreateRun",
        _create(multitask_strategy=UNKNOWN_ENUM),
        "multitask_strategy",
    ),
    (
        "set.status.unspecified",
        "SetRunStatus",
        lambda s: pb.SetRunStatusRequest(run_id=s.run_id),
        "status",
    ),
    (
        "set.status.99",
        "SetRunStatus",
        lambda s: pb.SetRunStatusRequest(run_id=s.run_id, status=UNKNOWN_ENUM),
        "status",
    ),
    (
        "cancel.action.99",
        "CancelRun",
        lambda s: pb.CancelRunRequest(run_id=s.run_id, action=UNKNOWN_ENUM),
        "action",
    ),
    (
        "list.statuses.unspecified",
        "ListRuns",
        lambda s: pb.ListRunsRequest(statuses=[0]),
        "statuses",
    ),
    (
        "list.statuses.99",
        "ListRuns",
        lambda s: pb.ListRunsRequest(statuses=[run_pb2.RUN_STATUS_PENDING, UNKNOWN_ENUM]),
        "statuses",
    ),
    # payloads and free text (a payload past its size is a limit: tests/test_limits.py)
    ("create.metadata.nan", "CreateRun", _create_with("metadata", x=float("nan")), "metadata"),
    ("create.kwargs.inf", "CreateRun", _create_with("kwargs", x=float("inf")), "kwargs"),
    (
        "cancel.reason.long",
        "CancelRun",
        lambda s: pb.CancelRunRequest(run_id=s.run_id, reason="r" * 4097),
        "reason",
    ),
    # sizes, revisions, durations
    ("list.page_size.-1", "ListRuns", lambda s: pb.ListRunsRequest(page_size=-1), "page_size"),
    ("list.page_size.1001", "ListRuns", lambda s: pb.ListRunsRequest(page_size=1001), "page_size"),
    (
        "set.expected_mod_revision.-1",
        "SetRunStatus",
        lambda s: pb.SetRunStatusRequest(run_id=s.run_id, status=RUNNING, expected_mod_revision=-1),
        "expected_mod_revision",
    ),
    (
        "delete.expected_mod_revision.-1",
        "DeleteRun",
        lambda s: pb.DeleteRunRequest(run_id=s.done_id, expected_mod_revision=-1),
        "expected_mod_revision",
    ),
    ("create.timeout.negative", "CreateRun", _create(timeout=Duration(seconds=-5)), "timeout"),
    ("create.timeout.zero", "CreateRun", _create(timeout=Duration()), "timeout"),
    ("create.timeout.sub-µs", "CreateRun", _create(timeout=Duration(nanos=999)), "timeout"),
    (
        "create.timeout.nanos-out-of-range",
        "CreateRun",
        _create(timeout=Duration(seconds=1, nanos=1_000_000_000)),
        "timeout",
    ),
    (
        "create.timeout.mixed-signs",
        "CreateRun",
        _create(timeout=Duration(seconds=1, nanos=-5)),
        "timeout",
    ),
    (
        "create.timeout.beyond-duration-range",
        "CreateRun",
        _create(timeout=Duration(seconds=315_576_000_001)),
        "timeout",
    ),
    (
        "create.timeout.beyond-limit",
        "CreateRun",
        _create(timeout=Duration(seconds=300_000_000_000)),
        "timeout",
    ),
    # page tokens: garbage, tampered, foreign, and bound to another filter
    (
        "token.garbage",
        "ListRuns",
        lambda s: pb.ListRunsRequest(page_token="not a token!"),
        "page_token",
    ),
    ("token.short", "ListRuns", lambda s: pb.ListRunsRequest(page_token="AAAA"), "page_token"),
    (
        "token.non-ascii",
        "ListRuns",
        lambda s: pb.ListRunsRequest(thread_id="seed", page_token="ä" * 20),
        "page_token",
    ),
    (
        "token.tampered",
        "ListRuns",
        lambda s: pb.ListRunsRequest(thread_id="seed", page_token=_tampered(s.token)),
        "page_token",
    ),
    (
        "token.truncated",
        "ListRuns",
        lambda s: pb.ListRunsRequest(thread_id="seed", page_token=s.token[:-3]),
        "page_token",
    ),
    (
        "token.other-thread",
        "ListRuns",
        lambda s: pb.ListRunsRequest(thread_id="other", page_token=s.token),
        "page_token",
    ),
    (
        "token.no-thread",
        "ListRuns",
        lambda s: pb.ListRunsRequest(page_token=s.token),
        "page_token",
    ),
    (
        "token.other-statuses",
        "ListRuns",
        lambda s: pb.ListRunsRequest(
            thread_id="seed", statuses=[run_pb2.RUN_STATUS_PENDING], page_token=s.token
        ),
        "page_token",
    ),
]


async def seed(server: InProcessServer) -> Seed:
    stub = server.stub
    done = (await stub.CreateRun(pb.CreateRunRequest(thread_id="seed"))).run
    await stub.CancelRun(pb.CancelRunRequest(run_id=done.run_id))
    run = (await stub.CreateRun(pb.CreateRunRequest(thread_id="seed"))).run
    page = await stub.ListRuns(pb.ListRunsRequest(thread_id="seed", page_size=1))
    assert page.next_page_token
    return Seed(run.run_id, done.run_id, page.next_page_token)


async def snapshot(stub: RunControlAsyncStub) -> bytes:
    listed = await stub.ListRuns(pb.ListRunsRequest(page_size=1000))
    return bytes(listed.SerializeToString(deterministic=True))


async def assert_invalid(stub: RunControlAsyncStub, method: str, request: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(stub, method)(request)
    error = from_grpc_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == "INVALID_ARGUMENT", error
    assert error.metadata == {"field": field}, error
    assert field in error.message


@pytest.mark.parametrize(
    ("method", "build", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_malformed_request_is_refused_and_changes_nothing(
    server: InProcessServer, method: str, build: Callable[[Seed], Any], field: str
) -> None:
    seeded = await seed(server)
    before = await snapshot(server.stub)
    await assert_invalid(server.stub, method, build(seeded), field)
    assert await snapshot(server.stub) == before


async def test_all_bad_calls_in_a_row_leave_the_store_unchanged(server: InProcessServer) -> None:
    seeded = await seed(server)
    before = await snapshot(server.stub)
    for _, method, build, field in CASES:
        await assert_invalid(server.stub, method, build(seeded), field)
    assert await snapshot(server.stub) == before


async def test_token_from_another_key_is_refused() -> None:
    async with serve_in_process(page_token_key=b"key-one") as one:
        token = (await seed(one)).token
    async with serve_in_process(page_token_key=b"key-two") as two:
        await seed(two)
        request = pb.ListRunsRequest(thread_id="seed", page_token=token)
        await assert_invalid(two.stub, "ListRuns", request, "page_token")


async def test_token_with_an_unknown_version_is_refused() -> None:
    # Authentic (right key, right filter) but from a future token format.
    key = b"shared-key"
    body = struct.pack(">Bqq16s", 2, 0, 1, filter_digest("seed", ()))
    mac = hmac.new(key, body, hashlib.sha256).digest()
    token = base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
    async with serve_in_process(page_token_key=key) as server:
        await seed(server)
        request = pb.ListRunsRequest(thread_id="seed", page_token=token)
        await assert_invalid(server.stub, "ListRuns", request, "page_token")


async def test_boundary_values_are_accepted(stub: RunControlAsyncStub) -> None:
    longest = "i" * 128
    request = pb.CreateRunRequest(
        thread_id=longest,
        assistant_id="ü-agent ✓",  # printable non-ASCII is fine
        request_id=longest,
    )
    request.metadata.update({"v": "x" * 60_000})
    run = (await stub.CreateRun(request)).run
    assert run.thread_id == longest
    # The shortest timeout (on its own run: deadlines are enforced, it times out at once).
    short = await stub.CreateRun(pb.CreateRunRequest(thread_id="t", timeout=Duration(nanos=1000)))
    assert short.run.deadline.ToNanoseconds() - short.run.created_at.ToNanoseconds() == 1000
    listed = await stub.ListRuns(pb.ListRunsRequest(page_size=1000, thread_id=longest))
    assert [r.run_id for r in listed.runs] == [run.run_id]
    response = await stub.SetRunStatus(
        pb.SetRunStatusRequest(
            run_id=run.run_id,
            status=run_pb2.RUN_STATUS_ERROR,
            error="e" * 4096,
            expected_mod_revision=run.mod_revision,
        )
    )
    assert response.run.error == "e" * 4096


async def test_an_over_long_error_is_kept_truncated_never_refused(
    stub: RunControlAsyncStub,
) -> None:
    run = (await stub.CreateRun(pb.CreateRunRequest(thread_id="t"))).run
    await stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run.run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id="w")
    )
    traceback_text = "Traceback (most recent call last):\n" + "  frame\n" * 5000
    request = pb.SetRunStatusRequest(
        run_id=run.run_id, status=run_pb2.RUN_STATUS_ERROR, error=traceback_text, worker_id="w"
    )
    finished = await stub.SetRunStatus(request)
    assert finished.changed and finished.run.status == run_pb2.RUN_STATUS_ERROR
    error = finished.run.error
    assert len(error) == 4096 and traceback_text.startswith(error[:4000])
    cut = len(traceback_text) - error.index("… [truncated")
    assert error.endswith(f"… [truncated {cut} characters]")
    # A retry of the same write is the same (clipped) write: an idempotent repeat.
    assert not (await stub.SetRunStatus(request)).changed


async def test_smaller_configured_limits_apply() -> None:
    limits = Limits(max_id_length=8, max_payload_bytes=100, max_page_size=10)
    async with serve_in_process(limits=limits) as server:
        await assert_invalid(
            server.stub, "CreateRun", pb.CreateRunRequest(thread_id="123456789"), "thread_id"
        )
        request = pb.CreateRunRequest(thread_id="t")
        request.kwargs.update({"v": "x" * 200})
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await server.stub.CreateRun(request)
        error = from_grpc_error(raised.value)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert error.metadata == {"limit": "max_payload_bytes", "field": "kwargs"}, error
        await assert_invalid(server.stub, "ListRuns", pb.ListRunsRequest(page_size=11), "page_size")


# WaitRun and WatchRuns request checks (their wire behaviour: test_wait.py, test_watch.py).
@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.WaitRunRequest(run_id=""), "run_id"),
        (pb.WaitRunRequest(run_id="r", timeout=Duration(seconds=-1)), "timeout"),
        (pb.WaitRunRequest(run_id="r", timeout=Duration(seconds=1, nanos=-1)), "timeout"),
    ],
)
def test_wait_run_validation(request_: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validation.validate_wait_run(request_, Limits())
    assert raised.value.field == field


def test_wait_run_validation_accepts_zero_and_unset_timeouts() -> None:
    validation.validate_wait_run(pb.WaitRunRequest(run_id="r"), Limits())
    validation.validate_wait_run(pb.WaitRunRequest(run_id="r", timeout=Duration()), Limits())


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.WatchRunsRequest(thread_id="a\nb"), "thread_id"),
        (pb.WatchRunsRequest(run_ids=["ok", ""]), "run_ids"),
        (pb.WatchRunsRequest(run_ids=[f"r{i}" for i in range(1001)]), "run_ids"),
        (pb.WatchRunsRequest(statuses=[0]), "statuses"),
        (pb.WatchRunsRequest(statuses=[UNKNOWN_ENUM]), "statuses"),
        (pb.WatchRunsRequest(start_revision=-1), "start_revision"),
        (pb.WatchRunsRequest(progress_interval=Duration(nanos=1_000_000)), "progress_interval"),
        (pb.WatchRunsRequest(progress_interval=Duration(seconds=3601)), "progress_interval"),
        (pb.WatchRunsRequest(progress_interval=Duration(seconds=-1)), "progress_interval"),
        (pb.WatchRunsRequest(send_initial=True, start_revision=5), "send_initial"),
    ],
)
def test_watch_runs_validation(request_: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validation.validate_watch_runs(request_, Limits())
    assert raised.value.field == field


def test_watch_runs_validation_accepts_a_full_valid_request() -> None:
    request = pb.WatchRunsRequest(
        thread_id="t",
        run_ids=[f"r{i}" for i in range(1000)],
        statuses=[run_pb2.RUN_STATUS_PENDING],
        start_revision=5,
        progress_interval=Duration(seconds=1),
    )
    validation.validate_watch_runs(request, Limits())
    request.start_revision = 0
    request.send_initial = True  # with the initial set, its snapshot fixes the revision
    validation.validate_watch_runs(request, Limits())
