"""`runctl`: the real console script run as a subprocess against an in-process server.

The children are started with `asyncio.create_subprocess_exec` so the server, which
runs on this test's event loop, keeps serving while a child waits for its answer.
Every child has a bounded timeout and is killed by its pid if it outlives the test.
The pure formatters (`runcontrol._cli_format`) are unit-tested at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from _streams import until

from runcontrol import _cli_format as fmt
from runcontrol import cli
from runcontrol._models import (
    CancelAction,
    DisconnectMode,
    EventType,
    MultitaskStrategy,
    Run,
    RunStatus,
)
from runcontrol._watch import Bookmark, Resynced, WatchEvent
from runcontrol.errors import RunControlError, RunNotFound
from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_pb2

RUNCTL = Path(sys.executable).parent / "runctl"
RUN_TIMEOUT = 30.0  # one runctl invocation, cold interpreter included
COMMANDS = ("create", "get", "list", "cancel", "status", "delete", "wait", "watch", "health")


# --- helpers -------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    # The developer's own RUNCONTROL_* variables must not leak into the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCONTROL_")}
    env.update(extra)
    return env


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    def one(self) -> dict[str, Any]:
        [value] = self.json_lines()
        return value


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()  # by this child's pid, never by name
    await asyncio.wait_for(proc.wait(), RUN_TIMEOUT)


async def runctl(
    *args: str, env: Mapping[str, str] | None = None, limit: float = RUN_TIMEOUT
) -> Result:
    """Run the console script to completion and collect its exit code and output."""
    assert RUNCTL.exists(), f"{RUNCTL} missing: pip install -e . (console script runctl)"
    proc = await asyncio.create_subprocess_exec(
        str(RUNCTL),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else _clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        await _kill(proc)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@asynccontextmanager
async def runctl_process(
    *args: str, sigint_default: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A running runctl (e.g. a watch) whose stdout the test reads line by line.

    `sigint_default` execs runctl with SIGINT at its default disposition, so Ctrl-C
    works even when this test process inherited an ignored SIGINT (a background job).
    """
    assert RUNCTL.exists()
    program: tuple[str, ...] = (str(RUNCTL), *args)
    if sigint_default:
        launcher = (
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        program = (sys.executable, "-c", launcher, *program)
    proc = await asyncio.create_subprocess_exec(
        *program,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
    )
    try:
        yield proc
    finally:
        await _kill(proc)


async def _finish(proc: asyncio.subprocess.Process) -> Result:
    out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _create(server: InProcessServer, thread_id: str, **fields: Any) -> str:
    response = await server.stub.CreateRun(pb.CreateRunRequest(thread_id=thread_id, **fields))
    run_id: str = response.run.run_id
    return run_id


async def _claim(server: InProcessServer, run_id: str, worker: str = "w1") -> None:
    await server.stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run_id, status=run_pb2.RUN_STATUS_RUNNING, worker_id=worker)
    )


async def _finish_run(server: InProcessServer, run_id: str) -> None:
    await server.stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=run_id, status=run_pb2.RUN_STATUS_SUCCESS, worker_id="w1")
    )


async def _until_waiting(server: InProcessServer, n: int) -> None:
    """Until the server holds `n` WaitRun calls (the child has connected and is blocked)."""
    waiters = server.manager.waiters
    await until(lambda: waiters.waiter_count == n, f"{n} waiting calls", within=RUN_TIMEOUT)


async def _revision(server: InProcessServer) -> int:
    revision: int = (await server.stub.ListRuns(pb.ListRunsRequest())).revision
    return revision


# --- help and usage ----------------------------------------------------------------------


async def test_help_of_every_command_has_examples() -> None:
    results = await asyncio.gather(
        runctl("--help"), *(runctl(command, "--help") for command in COMMANDS)
    )
    for name, result in zip(("runctl", *COMMANDS), results, strict=True):
        assert result.rc == 0, (name, result)
        assert "Examples:" in result.out, name
        assert "--addr" in result.out and "--output" in result.out, name
    main_help = results[0].out
    for command in COMMANDS:
        assert command in main_help
    # Exit codes and the environment variable are documented in the top-level help.
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
        assert f"\n  {code}" in main_help
    assert "RUNCONTROL_ADDR" in main_help


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-command"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["get"], id="missing-run-id"),
        pytest.param(["create", "t", "--metadata", "{not json"], id="bad-json"),
        pytest.param(["create", "t", "--kwargs", "[1, 2]"], id="json-not-object"),
        pytest.param(["create", "t", "--metadata", '{"x": NaN}'], id="json-nan"),
        pytest.param(["create", "t", "--metadata", '{"x": "\\ud800"}'], id="json-surrogate"),
        pytest.param(["create", "t", "--strategy", "sometimes"], id="bad-strategy"),
        # A byte that is not UTF-8 (\xff): Python's argv holds it as a lone surrogate.
        pytest.param(["create", "\udcff"], id="thread-not-utf8"),
        pytest.param(["list", "--thread", "a\udcffb"], id="filter-not-utf8"),
        pytest.param(["status", "r", "flying"], id="bad-status"),
        pytest.param(["list", "--limit", "-1"], id="negative-limit"),
        # Past the protobuf field's range (int32 / int64): nothing could be sent.
        pytest.param(["list", "--page-size", str(2**31)], id="page-size-past-int32"),
        pytest.param(["watch", "--start-revision", str(2**63)], id="revision-past-int64"),
        pytest.param(
            ["status", "r", "running", "--expected-mod-revision", str(2**63)],
            id="expected-revision-past-int64",
        ),
        pytest.param(["--timeout", "soon", "health"], id="bad-timeout"),
        pytest.param(["create", "t", "--run-timeout", "1e20"], id="run-timeout-beyond-duration"),
        pytest.param(["wait", "r", "--timeout", "1e12"], id="wait-beyond-duration"),
        pytest.param(["-o", "yaml", "health"], id="bad-output"),
    ],
)
async def test_usage_errors_exit_2(args: list[str]) -> None:
    result = await runctl(*args, "--addr", f"127.0.0.1:{_free_port()}")
    assert result.rc == 2, result
    assert "usage: runctl" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


# --- create / get ------------------------------------------------------------------------


async def test_create_table_and_get_json(server: InProcessServer) -> None:
    created = await runctl("--addr", server.address, "create", "thread-1")
    assert created.rc == 0, created
    header, row = created.out.splitlines()
    assert header.split() == ["RUN_ID", "THREAD", "STATUS", "WORKER", "CREATED", "UPDATED", "REV"]
    run_id, thread, status, worker, *_rest = row.split()
    assert (thread, status, worker) == ("thread-1", "pending", "-")
    assert row.split()[4:6] == ["0s", "ago"]  # relative creation time
    # Columns line up: every header starts where its values start.
    assert row.index("thread-1") == header.index("THREAD")
    assert row.index("pending") == header.index("STATUS")

    # Global options may follow the command, as with etcdctl.
    got = await runctl("get", run_id, "-o", "json", "--addr", server.address)
    assert got.rc == 0, got
    record = got.one()
    assert record["run_id"] == run_id
    assert record["status"] == "pending"
    assert record["multitask_strategy"] == "reject"
    assert record["on_disconnect"] == "cancel"
    assert record["created_at"].endswith("Z")
    assert datetime.fromisoformat(record["created_at"]).tzinfo is not None
    assert record["create_revision"] == record["mod_revision"] >= 1


async def test_create_with_every_option(server: InProcessServer) -> None:
    result = await runctl(
        *("--addr", server.address, "-o", "json", "create", "thread-2"),
        *("--assistant-id", "agent-7", "--strategy", "enqueue", "--on-disconnect", "continue"),
        *("--metadata", '{"user": "ada"}', "--kwargs", '{"n": 3, "tags": ["x"]}'),
        *("--request-id", "req-1", "--run-timeout", "300"),
    )
    assert result.rc == 0, result
    run = result.one()
    assert run["assistant_id"] == "agent-7"
    assert run["multitask_strategy"] == "enqueue"
    assert run["on_disconnect"] == "continue"
    assert run["metadata"] == {"user": "ada"}
    assert run["kwargs"] == {"n": 3, "tags": ["x"]}
    assert run["request_id"] == "req-1"
    assert run["deadline"] is not None and run["deadline"].endswith("Z")

    # The same request_id again is a replay of the same run, noted on stderr.
    again = await runctl(
        *("--addr", server.address, "-o", "json", "create", "thread-2"),
        *("--assistant-id", "agent-7", "--strategy", "enqueue", "--on-disconnect", "continue"),
        *("--metadata", '{"user": "ada"}', "--kwargs", '{"n": 3, "tags": ["x"]}'),
        *("--request-id", "req-1", "--run-timeout", "300"),
    )
    assert again.rc == 0, again
    assert again.one()["run_id"] == run["run_id"]
    assert "replayed" in again.err


async def test_create_interrupt_notes_interrupted_runs(server: InProcessServer) -> None:
    first = await _create(server, "thread-3")
    result = await runctl("--addr", server.address, "create", "thread-3", "--strategy", "interrupt")
    assert result.rc == 0, result
    assert f"interrupted: {first}" in result.err


async def test_server_error_exits_1_with_reason(server: InProcessServer) -> None:
    await _create(server, "busy")
    result = await runctl("--addr", server.address, "create", "busy")
    assert result.rc == 1, result
    assert result.err.startswith("error: THREAD_BUSY: ")
    assert result.out == ""


async def test_not_found_exits_3(server: InProcessServer) -> None:
    commands = ("get", "cancel", "delete", "wait")
    results = await asyncio.gather(
        *(runctl("--addr", server.address, command, "no-such-run") for command in commands)
    )
    for command, result in zip(commands, results, strict=True):
        assert result.rc == 3, (command, result)
        assert result.err.startswith("error: RUN_NOT_FOUND: "), command


# --- list --------------------------------------------------------------------------------


async def test_list_filters_limit_and_outputs(server: InProcessServer) -> None:
    ids = [await _create(server, f"list-{i}") for i in range(3)]
    await _claim(server, ids[0])
    other = await _create(server, "elsewhere")

    table = await runctl("--addr", server.address, "list")
    assert table.rc == 0, table
    lines = table.out.splitlines()
    assert lines[0].startswith("RUN_ID")
    assert [line.split()[0] for line in lines[1:]] == [other, ids[2], ids[1], ids[0]]

    listed = await runctl("--addr", server.address, "list", "-o", "json", "--status", "pending")
    assert listed.rc == 0, listed
    assert [r["run_id"] for r in listed.json_lines()] == [other, ids[2], ids[1]]
    assert {r["status"] for r in listed.json_lines()} == {"pending"}

    both = await runctl(
        *("--addr", server.address, "-o", "json", "list"),
        *("--status", "running", "--status", "PENDING", "--limit", "2", "--page-size", "1"),
    )
    assert [r["run_id"] for r in both.json_lines()] == [other, ids[2]]

    thread = await runctl("--addr", server.address, "-o", "json", "list", "--thread", "list-0")
    assert [(r["run_id"], r["status"], r["worker_id"]) for r in thread.json_lines()] == [
        (ids[0], "running", "w1")
    ]


async def test_list_nothing(server: InProcessServer) -> None:
    table = await runctl("--addr", server.address, "list", "--thread", "nobody")
    assert table.rc == 0, table
    assert table.out.split() == [
        "RUN_ID",
        "THREAD",
        "STATUS",
        "WORKER",
        "CREATED",
        "UPDATED",
        "REV",
    ]
    assert "no runs found" in table.err
    as_json = await runctl("--addr", server.address, "-o", "json", "list", "--thread", "nobody")
    assert (as_json.rc, as_json.out) == (0, "")


# --- cancel / status / delete -------------------------------------------------------------


async def test_cancel_is_idempotent(server: InProcessServer) -> None:
    run_id = await _create(server, "cancel-me")
    result = await runctl(
        *("--addr", server.address, "-o", "json", "cancel", run_id),
        *("--action", "rollback", "--reason", "user pressed stop"),
    )
    assert result.rc == 0, result
    run = result.one()
    assert run["status"] == "interrupted"
    assert run["cancel_action"] == "rollback"
    assert run["cancel_reason"] == "user pressed stop"
    assert result.err == ""

    again = await runctl("--addr", server.address, "cancel", run_id)
    assert again.rc == 0, again
    assert "interrupted" in again.out
    assert "not cancelled by this call" in again.err


async def test_status_transitions(server: InProcessServer) -> None:
    run_id = await _create(server, "worker")
    claimed = await runctl(
        "--addr", server.address, "-o", "json", "status", run_id, "running", "--worker-id", "w9"
    )
    assert claimed.rc == 0, claimed
    run = claimed.one()
    assert (run["status"], run["worker_id"]) == ("running", "w9")

    repeat = await runctl(
        "--addr", server.address, "status", run_id, "RUNNING", "--worker-id", "w9"
    )
    assert repeat.rc == 0, repeat
    assert "unchanged" in repeat.err

    stale = await runctl(
        *("--addr", server.address, "status", run_id, "error", "--worker-id", "w9"),
        *("--error", "boom", "--expected-mod-revision", str(run["mod_revision"] - 1)),
    )
    assert stale.rc == 1, stale
    assert stale.err.startswith("error: REVISION_MISMATCH: ")

    failed = await runctl(
        *("--addr", server.address, "-o", "json", "status", run_id, "error"),
        *("--worker-id", "w9", "--error", "boom"),
        *("--expected-mod-revision", str(run["mod_revision"])),
    )
    assert failed.rc == 0, failed
    assert (failed.one()["status"], failed.one()["error"]) == ("error", "boom")

    illegal = await runctl("--addr", server.address, "status", run_id, "pending")
    assert illegal.rc == 1, illegal
    assert illegal.err.startswith("error: INVALID_TRANSITION: ")


async def test_delete(server: InProcessServer) -> None:
    run_id = await _create(server, "delete-me")
    active = await runctl("--addr", server.address, "delete", run_id)
    assert active.rc == 1, active
    assert active.err.startswith("error: RUN_ACTIVE: ")

    await _claim(server, run_id)
    await _finish_run(server, run_id)
    deleted = await runctl("--addr", server.address, "-o", "json", "delete", run_id)
    assert deleted.rc == 0, deleted
    assert deleted.one()["run_id"] == run_id

    gone = await runctl("--addr", server.address, "get", run_id)
    assert gone.rc == 3, gone


# --- wait (needs WaitRun on the server) --------------------------------------------------


async def test_wait_timeout_exits_4(server: InProcessServer) -> None:
    run_id = await _create(server, "slow")
    result = await runctl(
        "--addr", server.address, "-o", "json", "wait", run_id, "--wait-timeout", "0.2"
    )
    assert result.rc == 4, result
    assert result.one()["status"] == "pending"
    assert result.err.startswith("error: wait timed out: ")


async def test_wait_returns_when_the_run_finishes(server: InProcessServer) -> None:
    run_id = await _create(server, "fast")
    await _claim(server, run_id)
    async with runctl_process(
        "--addr", server.address, "wait", run_id, "--wait-timeout", "20"
    ) as proc:
        await _until_waiting(server, 1)  # blocked in WaitRun, not answered at once
        await _finish_run(server, run_id)
        result = await _finish(proc)
    assert result.rc == 0, result
    assert "success" in result.out.splitlines()[1]


async def test_wait_attach_interrupted_cancels_the_run(server: InProcessServer) -> None:
    run_id = await _create(server, "attached")  # on_disconnect defaults to CANCEL
    async with runctl_process(
        "--addr", server.address, "wait", run_id, "--attach", sigint_default=True
    ) as proc:
        await _until_waiting(server, 1)
        proc.send_signal(signal.SIGINT)
        result = await _finish(proc)
    assert result.rc == 130, result
    assert result.err == ""

    async def interrupted() -> bool:
        got = await server.stub.GetRun(pb.GetRunRequest(run_id=run_id))
        return bool(got.run.status == run_pb2.RUN_STATUS_INTERRUPTED)

    await until(interrupted, "the attached run is interrupted")


# --- watch (needs WatchRuns on the server) -----------------------------------------------


async def test_watch_json_max_events(server: InProcessServer) -> None:
    start = await _revision(server) + 1  # from here on nothing can be missed
    async with runctl_process(
        *("--addr", server.address, "-o", "json", "watch", "--thread", "watched"),
        *("--start-revision", str(start), "--max-events", "2"),
    ) as proc:
        await _create(server, "not-watched")
        run_id = await _create(server, "watched")
        await _claim(server, run_id)
        await _create(server, "not-watched-either")
        result = await _finish(proc)
    assert result.rc == 0, result
    added, modified = result.json_lines()
    assert set(added) == {"type", "revision", "prev_status", "run"}
    assert (added["type"], added["prev_status"], added["run"]["run_id"]) == (
        "added",
        None,
        run_id,
    )
    assert added["run"]["status"] == "pending"
    assert (modified["type"], modified["prev_status"], modified["run"]["status"]) == (
        "modified",
        "pending",
        "running",
    )
    assert modified["revision"] > added["revision"] >= start


async def test_watch_table_send_initial_and_run_id_filter(server: InProcessServer) -> None:
    run_id = await _create(server, "initial")
    await _create(server, "ignored")
    result = await runctl(
        *("--addr", server.address, "watch", "--send-initial"),
        *("--run-id", run_id, "--status", "pending", "--max-events", "1"),
    )
    assert result.rc == 0, result
    header, row = result.out.splitlines()
    assert header.split()[:3] == ["TYPE", "REVISION", "RUN_ID"]
    assert row.split()[:5] == ["added", row.split()[1], run_id, "initial", "pending"]


async def test_watch_ctrl_c_exits_130_quietly(server: InProcessServer) -> None:
    await _create(server, "ctrl-c")
    async with runctl_process(
        "--addr", server.address, "-o", "json", "watch", "--send-initial", sigint_default=True
    ) as proc:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), RUN_TIMEOUT)
        assert json.loads(first)["type"] == "added"  # the watch is streaming
        proc.send_signal(signal.SIGINT)
        result = await _finish(proc)
    assert result.rc == 130, result
    assert result.err == ""


async def test_watch_unreachable_exits_1(server: InProcessServer) -> None:
    address = f"127.0.0.1:{_free_port()}"
    result = await runctl("--addr", address, "--timeout", "5", "watch")
    assert result.rc == 1, result
    assert address in result.err and result.err.startswith("error: cannot reach")


# --- health, address and connection failures ---------------------------------------------


async def test_health(server: InProcessServer) -> None:
    table = await runctl("--addr", server.address, "health")
    assert table.rc == 0, table
    assert table.out.splitlines()[1].split() == [server.address, "-", "SERVING"]
    as_json = await runctl("--addr", server.address, "health", "-o", "json")
    assert as_json.one() == {"address": server.address, "service": "", "status": "SERVING"}
    one = await runctl("--addr", server.address, "health", "--service", "runcontrol.v1.RunControl")
    assert one.rc == 0 and "SERVING" in one.out
    unknown = await runctl("--addr", server.address, "health", "--service", "no.Such")
    assert unknown.rc == 1, unknown
    assert unknown.err.startswith("error: NOT_FOUND: ")


async def test_address_from_environment(server: InProcessServer) -> None:
    env = _clean_env(RUNCONTROL_ADDR=server.address)
    result = await runctl("health", env=env)
    assert result.rc == 0, result
    assert server.address in result.out
    # --addr wins over the environment.
    unreachable = f"127.0.0.1:{_free_port()}"
    overridden = await runctl("--addr", unreachable, "health", env=env)
    assert overridden.rc == 1, overridden


async def test_unreachable_server_names_the_address() -> None:
    address = f"127.0.0.1:{_free_port()}"
    commands = (["get", "some-run"], ["health"], ["list"])
    results = await asyncio.gather(
        *(runctl("--addr", address, "--timeout", "5", *command) for command in commands)
    )
    for command, result in zip(commands, results, strict=True):
        assert result.rc == 1, (command, result)
        assert result.err.startswith(f"error: cannot reach runcontrol server at {address}")
        assert result.out == ""


def test_default_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNCONTROL_ADDR", raising=False)
    assert cli.build_parser().parse_args(["health"]).addr == "127.0.0.1:50051"
    monkeypatch.setenv("RUNCONTROL_ADDR", "")  # empty counts as unset
    assert cli.build_parser().parse_args(["health"]).addr == "127.0.0.1:50051"
    monkeypatch.setenv("RUNCONTROL_ADDR", "elsewhere:1")
    args = cli.build_parser().parse_args(["health"])
    assert (args.addr, args.output, args.timeout) == ("elsewhere:1", "table", 10.0)
    # A global option after the command overrides one before it.
    args = cli.build_parser().parse_args(
        ["-o", "json", "--addr", "a:1", "get", "r", "--addr", "b:2"]
    )
    assert (args.addr, args.output) == ("b:2", "json")


# --- in-process main() --------------------------------------------------------------------


def test_main_returns_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "Exit codes:" in capsys.readouterr().out
    assert cli.main(["create"]) == 2
    assert "THREAD_ID" in capsys.readouterr().err


def test_describe_error() -> None:
    unavailable = RunControlError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert cli.describe_error(unavailable, "h:1", 5.0) == (
        "error: cannot reach runcontrol server at h:1: connection refused"
    )
    deadline = RunControlError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert "within 5s" in cli.describe_error(deadline, "h:1", 5.0)
    missing = RunNotFound(grpc.StatusCode.NOT_FOUND, "run 'x' not found", reason="RUN_NOT_FOUND")
    assert cli.describe_error(missing, "h:1", None) == "error: RUN_NOT_FOUND: run 'x' not found"
    bare = RunControlError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    assert cli.describe_error(bare, "h:1", None) == "error: UNIMPLEMENTED: Method not found!"


# --- pure formatters ----------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(0), "0s ago"),
        (timedelta(milliseconds=999), "0s ago"),
        (timedelta(seconds=3), "3s ago"),
        (timedelta(seconds=59.9), "59s ago"),
        (timedelta(seconds=60), "1m ago"),
        (timedelta(minutes=5, seconds=59), "5m ago"),
        (timedelta(minutes=59, seconds=59), "59m ago"),
        (timedelta(hours=2), "2h ago"),
        (timedelta(hours=23, minutes=59), "23h ago"),
        (timedelta(days=1), "1d ago"),
        (timedelta(days=4, hours=23), "4d ago"),
        (timedelta(days=400), "400d ago"),
        (timedelta(seconds=-3), "in 3s"),
        (timedelta(minutes=-2), "in 2m"),
        (timedelta(milliseconds=-300), "0s ago"),
    ],
)
def test_relative_time(ago: timedelta, text: str) -> None:
    assert fmt.relative_time(NOW - ago, NOW) == text


def test_relative_time_accepts_naive_utc() -> None:
    assert fmt.relative_time(datetime(2024, 5, 1, 11, 0), NOW) == "1h ago"


def test_iso_utc() -> None:
    assert fmt.iso_utc(None) is None
    assert fmt.iso_utc(datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)) == (
        "2024-05-01T12:00:00.250000Z"
    )
    plus_two = datetime(2024, 5, 1, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    assert fmt.iso_utc(plus_two) == "2024-05-01T14:00:00Z"
    assert fmt.iso_utc(datetime(2024, 5, 1)) == "2024-05-01T00:00:00Z"


def _run(**changes: Any) -> Run:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "thread_id": "thread-1",
        "assistant_id": None,
        "status": RunStatus.RUNNING,
        "on_disconnect": DisconnectMode.CANCEL,
        "multitask_strategy": MultitaskStrategy.REJECT,
        "metadata": {"user": "ada"},
        "kwargs": {},
        "created_at": NOW - timedelta(minutes=5),
        "updated_at": NOW - timedelta(seconds=3),
        "error": None,
        "cancel_action": CancelAction.INTERRUPT,
        "cancel_reason": None,
        "worker_id": "w1",
        "deadline": None,
        "create_revision": 4,
        "mod_revision": 9,
        "request_id": "req",
    }
    values.update(changes)
    return Run(**values)


def test_run_to_dict_uses_lower_case_names_and_iso_times() -> None:
    record = fmt.run_to_dict(_run(deadline=NOW))
    assert record["status"] == "running"
    assert record["on_disconnect"] == "cancel"
    assert record["multitask_strategy"] == "reject"
    assert record["cancel_action"] == "interrupt"
    assert record["created_at"] == "2024-05-01T11:55:00Z"
    assert record["deadline"] == "2024-05-01T12:00:00Z"
    assert json.loads(fmt.run_json(_run())) == fmt.run_to_dict(_run())


def test_runs_table_aligns_columns() -> None:
    runs = [_run(), _run(run_id="a-much-longer-run-id", worker_id=None, status=RunStatus.PENDING)]
    header, first, second = fmt.runs_table(runs, NOW)
    assert header.split() == list(fmt.RUN_COLUMNS)
    assert first.split() == ["run-1", "thread-1", "running", "w1", "5m", "ago", "3s", "ago", "9"]
    assert second.split()[:4] == ["a-much-longer-run-id", "thread-1", "pending", "-"]
    for column in ("THREAD", "STATUS", "WORKER", "REV"):
        assert first[header.index(column)] != " "
        assert header.index(column) > 0
    assert first.index("thread-1") == second.index("thread-1") == header.index("THREAD")
    assert not any(line.endswith(" ") for line in (header, first, second))
    assert fmt.runs_table([], NOW) == ["   ".join(fmt.RUN_COLUMNS)]


def test_watch_formatting() -> None:
    event = WatchEvent(EventType.MODIFIED, _run(), RunStatus.PENDING, 9)
    [line] = fmt.watch_item_lines(event, "json", NOW)
    decoded = json.loads(line)
    assert decoded["type"] == "modified"
    assert (decoded["revision"], decoded["prev_status"]) == (9, "pending")
    assert decoded["run"]["run_id"] == "run-1"

    [row] = fmt.watch_item_lines(event, "table", UTC)
    expected = ["modified", "9", "run-1", "thread-1", "running", "pending", "w1", "11:59:57", "-"]
    assert row.split() == expected  # UPDATED: wall-clock time, not "0s ago"
    assert row.index("run-1") == fmt.watch_header().index("RUN_ID")

    added = WatchEvent(EventType.ADDED, _run(), None, 4)
    assert json.loads(fmt.watch_event_json(added))["prev_status"] is None
    assert fmt.watch_item_lines(Bookmark(10), "json", UTC) == []
    assert fmt.watch_item_lines(Bookmark(10, end_of_initial_set=True), "table", UTC) == []

    resynced = Resynced(12, (_run(),), "server restarted; state was in memory")
    [snapshot] = fmt.watch_item_lines(resynced, "json", UTC)
    assert json.loads(snapshot)["type"] == "resynced"
    assert json.loads(snapshot)["reason"] == "server restarted; state was in memory"
    assert [r["run_id"] for r in json.loads(snapshot)["runs"]] == ["run-1"]
    marker, current = fmt.watch_item_lines(resynced, "table", UTC)
    assert "resynced at revision 12 (server restarted; state was in memory)" in marker
    assert current.split()[:3] == ["current", "12", "run-1"]


def test_watch_table_truncates_long_values_and_shows_detail() -> None:
    long_id = "r" * 50
    long_thread = "a-thread-id-far-longer-than-its-column"
    run = _run(
        run_id=long_id,
        thread_id=long_thread,
        status=RunStatus.ERROR,
        error="out of\nmemory",
        cancel_reason="user pressed stop",
        worker_id="worker-with-a-long-name",
    )
    header = fmt.watch_header()
    row = fmt.watch_event_row(WatchEvent(EventType.MODIFIED, run, RunStatus.RUNNING, 9), UTC)
    assert header.split() == list(fmt.WATCH_COLUMNS)
    # Every column still starts under its header, long values end in an ellipsis.
    for column, start in (("THREAD", "a-thread"), ("STATUS", "error"), ("UPDATED", "11:")):
        assert row.index(start) == header.index(column), column
    assert row[header.index("RUN_ID") :].startswith("r" * 35 + fmt.ELLIPSIS + " ")
    assert long_thread[:15] + fmt.ELLIPSIS in row and long_thread not in row
    assert "worker-with" in row and "worker-with-a-long-name" not in row
    # DETAIL, the last column, is never cut and stays on one line.
    assert row[header.index("DETAIL") :] == "error: out of memory; reason: user pressed stop"
    assert "\n" not in row
    plain = fmt.watch_event_row(WatchEvent(EventType.ADDED, _run(), None, 4), UTC)
    assert plain.endswith("11:59:57   -")


def test_clock_time_and_fit() -> None:
    assert fmt.clock_time(NOW, UTC) == "12:00:00"
    assert fmt.clock_time(NOW, timezone(timedelta(hours=2))) == "14:00:00"
    assert fmt.clock_time(datetime(2024, 5, 1, 7, 8, 9), UTC) == "07:08:09"  # naive is UTC
    assert fmt.fit("abcdef", 4) == "abc…"
    assert fmt.fit("abcd", 4) == "abcd"
    assert fmt.fit("abcdef", 0) == "abcdef"


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("127.0.0.1", "127.0.0.1:50051"),
        ("127.0.0.1:7000", "127.0.0.1:7000"),
        ("localhost", "localhost:50051"),
        ("runcontrol.internal", "runcontrol.internal:50051"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:7000", "[::1]:7000"),
        ("::1", "[::1]:50051"),
        ("fe80::1", "[fe80::1]:50051"),
        ("dns:///runcontrol:7000", "dns:///runcontrol:7000"),
        ("unix:/tmp/runcontrol.sock", "unix:/tmp/runcontrol.sock"),
    ],
)
def test_address_port_defaults_to_50051(
    given: str, dialled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.address(given) == dialled
    assert cli.build_parser().parse_args(["--addr", given, "health"]).addr == dialled
    monkeypatch.setenv("RUNCONTROL_ADDR", given)
    assert cli.build_parser().parse_args(["health"]).addr == dialled


@pytest.mark.parametrize("bad", ["", "host:port", "host:", "[::1", "[::1]:x", "a b"])
def test_bad_address_is_a_usage_error(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an address"):
        cli.address(bad)


async def test_address_without_port_dials_50051_not_443() -> None:
    # Whatever listens there (usually nothing), the message names the port dialled.
    results = await asyncio.gather(
        runctl("--addr", "127.0.0.1", "--timeout", "5", "health"),
        runctl("--timeout", "5", "health", env=_clean_env(RUNCONTROL_ADDR="[::1]")),
    )
    for result, dialled in zip(results, ("127.0.0.1:50051", "[::1]:50051"), strict=True):
        assert dialled in result.out + result.err, result
        assert ":443" not in result.out + result.err
    bad = await runctl("--addr", "host:port", "health")
    assert bad.rc == 2, bad


# --- wait: how the run ended -------------------------------------------------------------


async def test_wait_exit_code_says_how_the_run_ended(server: InProcessServer) -> None:
    ids = {name: await _create(server, f"ended-{name}") for name in ("ok", "err", "to", "int")}
    for name in ("ok", "err", "to"):
        await _claim(server, ids[name])
    await _finish_run(server, ids["ok"])
    await server.stub.SetRunStatus(
        pb.SetRunStatusRequest(
            run_id=ids["err"], status=run_pb2.RUN_STATUS_ERROR, worker_id="w1", error="boom"
        )
    )
    await server.stub.SetRunStatus(
        pb.SetRunStatusRequest(run_id=ids["to"], status=run_pb2.RUN_STATUS_TIMEOUT, worker_id="w1")
    )
    await server.stub.CancelRun(pb.CancelRunRequest(run_id=ids["int"], reason="stop"))
    names = ("ok", "err", "to", "int")
    results = await asyncio.gather(
        *(runctl("--addr", server.address, "-o", "json", "wait", ids[n]) for n in names)
    )
    expected = {
        "ok": (0, "success"),
        "err": (5, "error"),
        "to": (6, "timeout"),
        "int": (7, "interrupted"),
    }
    for name, result in zip(names, results, strict=True):
        assert (result.rc, result.one()["status"]) == expected[name], result
    assert results[0].err == ""
    assert results[1].err.startswith(f"error: run {ids['err']} finished error: boom")
    assert results[3].err.startswith(f"error: run {ids['int']} finished interrupted: stop")
    # Still running after --wait-timeout stays distinct from every way of ending.
    assert cli.EXIT_WAIT_TIMEOUT not in {cli.EXIT_RUN_ERROR, cli.EXIT_RUN_TIMEOUT}
    assert cli.EXIT_WAIT_TIMEOUT != cli.EXIT_RUN_INTERRUPTED


async def test_wait_exit_codes_are_documented() -> None:
    main_help, wait_help = await asyncio.gather(runctl("--help"), runctl("wait", "--help"))
    for code, words in (("5", "error"), ("6", "timeout"), ("7", "interrupted")):
        assert any(
            line.strip().startswith(code) and words in line for line in main_help.out.splitlines()
        ), code
        assert any(
            line.strip().startswith(code) and words in line for line in wait_help.out.splitlines()
        ), code
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## runctl (command-line client)")[1].split("\n## ")[0]
    for code in ("| 4 |", "| 5 |", "| 6 |", "| 7 |", "--reconnect-timeout", "50051"):
        assert code in section, code


# --- watch: whole revisions, missing runs, reconnects --------------------------------------


async def test_watch_max_events_finishes_the_revision(server: InProcessServer) -> None:
    first = await _create(server, "revisions")
    start = await _revision(server) + 1
    # One revision, two events: the interrupted run and the new one.
    second = await _create(
        server, "revisions", multitask_strategy=run_pb2.MULTITASK_STRATEGY_INTERRUPT
    )
    await _create(server, "revisions-later")
    result = await runctl(
        *("--addr", server.address, "-o", "json", "watch", "--thread", "revisions"),
        *("--start-revision", str(start), "--max-events", "1"),
    )
    assert result.rc == 0, result
    events = result.json_lines()
    assert {e["run"]["run_id"] for e in events} == {first, second}
    assert {e["revision"] for e in events} == {start}

    # The initial set is one revision: --max-events 1 prints all of it.
    initial = await runctl(
        *("--addr", server.address, "-o", "json", "watch", "--thread", "revisions"),
        *("--send-initial", "--max-events", "1"),
    )
    assert initial.rc == 0, initial
    assert {e["run"]["run_id"] for e in initial.json_lines()} == {first, second}


async def test_watch_missing_run_id_is_noted_once_and_watched(server: InProcessServer) -> None:
    present = await _create(server, "present")
    async with runctl_process(
        *("--addr", server.address, "-o", "json", "watch"),
        *("--run-id", "not-yet", present, "--max-events", "1"),
    ) as proc:
        assert proc.stderr is not None
        note = await asyncio.wait_for(proc.stderr.readline(), RUN_TIMEOUT)
        assert note.decode().startswith("note: run not-yet does not exist (yet)")
        await _until_watching(server.manager, 1)
        await _claim(server, present)  # still watching: the change arrives
        result = await _finish(proc)
    assert result.rc == 0, result
    assert [e["run"]["run_id"] for e in result.json_lines()] == [present]
    assert result.err == ""  # the note was said once (read above), nothing else


async def _until_watching(manager: Any, n: int) -> None:
    """Until the server's watch hub holds `n` watches (the child's stream is open)."""
    hub = manager.watch_hub
    await until(lambda: hub.count == n, f"{n} watches", within=RUN_TIMEOUT)


async def start_server(address: str, store: Any) -> Any:
    from runcontrol_server.app import RunControlServer
    from runcontrol_server.config import Settings
    from runcontrol_server.domain import RunManager

    server = RunControlServer(Settings(listen=address), manager=RunManager(store))
    await server.start()
    return server


async def _read_until(stream: asyncio.StreamReader, text: str) -> list[str]:
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(stream.readline(), RUN_TIMEOUT)).decode()
        assert line, f"stream ended before {text!r}: {lines}"
        lines.append(line)
        if text in line:
            return lines


async def test_watch_reconnects_visibly_and_resumes() -> None:
    from runcontrol_server.stores.memory import InMemoryRunStore

    store = InMemoryRunStore()
    address = f"127.0.0.1:{_free_port()}"
    first = await start_server(address, store)
    second: Any = None
    try:
        async with runctl_process(
            "--addr", address, "-o", "json", "watch", "--max-events", "2"
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            await _until_watching(first.manager, 1)
            await first.manager.create_run("t")
            await asyncio.wait_for(proc.stdout.readline(), RUN_TIMEOUT)
            await first.stop(grace=0)
            await _read_until(proc.stderr, f"reconnecting to {address} (attempt 2)")
            second = await start_server(address, store)
            await second.manager.create_run("u")  # resumed from where it stopped
            result = await _finish(proc)
        assert result.rc == 0, result
        [event] = result.json_lines()
        assert event["run"]["thread_id"] == "u"
        assert f"reconnected to {address}" in result.err
    finally:
        await first.stop(grace=0)
        if second is not None:
            await second.stop(grace=0)


async def test_watch_gives_up_after_reconnect_timeout() -> None:
    from runcontrol_server.stores.memory import InMemoryRunStore

    address = f"127.0.0.1:{_free_port()}"
    server = await start_server(address, InMemoryRunStore())
    try:
        await server.manager.create_run("t")
        async with runctl_process(
            *("--addr", address, "-o", "json", "watch", "--send-initial"),
            *("--reconnect-timeout", "1.5"),
        ) as proc:
            assert proc.stdout is not None
            first = await asyncio.wait_for(proc.stdout.readline(), RUN_TIMEOUT)
            assert json.loads(first)["type"] == "added"  # streaming
            await server.stop(grace=0)
            result = await _finish(proc)
    finally:
        await server.stop(grace=0)
    assert result.rc == 1, result
    lines = result.err.splitlines()
    assert lines[0] == f"reconnecting to {address} (attempt 1)"
    assert lines[-1].startswith(f"error: gave up reconnecting to {address}")
    assert "1.5s" in lines[-1]
