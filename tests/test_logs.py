"""Structured logs: `--log-format json` and the access log (`--access-log`).

Every line is one JSON object; an access line names the call (method, code, duration,
peer, run and thread ids) and never carries payloads, invocation metadata or tokens,
even when they hold secret-looking values.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

import grpc
import pytest
from _server_process import clean_env, server_process

from runcontrol.testing import serve_in_process
from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.observability.logs import (
    ACCESS_LOGGER,
    JsonFormatter,
    TextFormatter,
    formatter,
)

SECRETS = ("sk-live-METADATA-SECRET", "KWARGS-PASSWORD-hunter2", "TOKEN-abc123-bearer")
CALL_METADATA = (
    ("authorization", f"Bearer {SECRETS[2]}"),
    ("x-api-key", SECRETS[2]),
)


def _create_request(thread_id: str) -> pb.CreateRunRequest:
    request = pb.CreateRunRequest(thread_id=thread_id)
    request.metadata.update({"api_key": SECRETS[0]})
    request.kwargs.update({"password": SECRETS[1]})
    return request


async def _calls(stub: run_control_pb2_grpc.RunControlAsyncStub) -> str:
    """A success, a refusal and a failure or two, every one carrying secrets."""
    created = await stub.CreateRun(_create_request("thread-a"), metadata=CALL_METADATA)
    run_id = created.run.run_id
    await stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=CALL_METADATA)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetRun(pb.GetRunRequest(run_id="missing"), metadata=CALL_METADATA)
    with pytest.raises(grpc.aio.AioRpcError):  # the thread is busy: REJECT
        await stub.CreateRun(_create_request("thread-a"), metadata=CALL_METADATA)
    await stub.ListRuns(pb.ListRunsRequest(thread_id="thread-a"), metadata=CALL_METADATA)
    return run_id


def _check_access_lines(lines: list[dict[str, object]], run_id: str) -> None:
    by_call = [(line["method"], line["code"]) for line in lines]
    assert by_call == [
        ("CreateRun", "OK"),
        ("GetRun", "OK"),
        ("GetRun", "NOT_FOUND"),
        ("CreateRun", "FAILED_PRECONDITION"),
        ("ListRuns", "OK"),
    ]
    for line in lines:
        assert line["service"] == "runcontrol.v1.RunControl"
        assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
        assert str(line["peer"]).startswith("ipv4:127.0.0.1:")
        assert line["protocol"] == "grpc"
    created, got, missing, refused, listed = lines
    assert created["run_id"] == run_id and created["thread_id"] == "thread-a"
    assert got["run_id"] == run_id and "thread_id" not in got
    assert missing["run_id"] == "missing"
    assert refused["thread_id"] == "thread-a" and "run_id" not in refused
    assert listed["thread_id"] == "thread-a"


async def test_access_lines_name_the_call_and_carry_no_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with serve_in_process(settings=Settings(access_log=True)) as server:
        run_id = await _calls(server.stub)
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    json_lines = [JsonFormatter().format(r) for r in records]
    parsed = [json.loads(line) for line in json_lines]
    assert all(set(p) >= {"time", "level", "logger", "message"} for p in parsed)
    _check_access_lines(parsed, run_id)
    text_lines = [TextFormatter("%(message)s").format(r) for r in records]
    assert text_lines[0].startswith("CreateRun OK ")
    assert f'run_id="{run_id}"' in text_lines[0]
    everything = "\n".join([*json_lines, *text_lines, *(repr(vars(r)) for r in records)])
    for secret in SECRETS:
        assert secret not in everything


async def test_no_access_lines_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serve_in_process() as server:
        await _calls(server.stub)
    assert not [r for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_server_process_writes_one_json_object_per_line() -> None:
    async with server_process("--log-format", "json", "--access-log") as child:
        async with grpc.aio.insecure_channel(child.address) as channel:
            run_id = await _calls(run_control_pb2_grpc.RunControlStub(channel))
        assert await child.stop(signal.SIGTERM) == 0
        stderr = (await child.stderr).decode()
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line parses
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in lines)
    assert any(line["message"].startswith("serving runcontrol.v1.RunControl") for line in lines)
    _check_access_lines([line for line in lines if line["logger"] == ACCESS_LOGGER], run_id)
    for secret in SECRETS:
        assert secret not in stderr


async def test_access_log_level_follows_log_level() -> None:
    # At WARNING the access lines (INFO) are not written: no cost, no noise.
    env = clean_env(RUNCONTROL_ACCESS_LOG="1", RUNCONTROL_LOG_LEVEL="WARNING")
    async with server_process(env=env) as child:
        async with grpc.aio.insecure_channel(child.address) as channel:
            await run_control_pb2_grpc.RunControlStub(channel).ListRuns(pb.ListRunsRequest())
        assert await child.stop(signal.SIGTERM) == 0
        assert ACCESS_LOGGER not in (await child.stderr).decode()


def _record(message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, (), None)
    if fields:
        record.rpc = fields
    return record


def test_a_hostile_id_cannot_split_or_forge_a_text_line() -> None:
    line = TextFormatter("%(message)s").format(
        _record("GetRun OK", run_id='a\nERROR forged="line"')
    )
    assert "\n" not in line
    assert line == 'GetRun OK run_id="a\\nERROR forged=\\"line\\""'


def test_json_lines_hold_tracebacks_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed" and entry["level"] == "ERROR"
    assert "ValueError: boom" in entry["exception"]


def test_log_settings() -> None:
    assert Settings().log_format == "text" and Settings().access_log is False
    settings = parse_settings(["--log-format", "JSON", "--access-log"], {})
    assert settings.log_format == "json" and settings.access_log is True
    from_env = parse_settings([], {"RUNCONTROL_LOG_FORMAT": "json", "RUNCONTROL_ACCESS_LOG": "on"})
    assert from_env.log_format == "json" and from_env.access_log is True
    with pytest.raises(SystemExit):
        parse_settings(["--log-format", "xml"], {})
    assert isinstance(formatter("json"), JsonFormatter)
    assert isinstance(formatter("text"), TextFormatter)
    with pytest.raises(ValueError, match="xml"):
        formatter("xml")
