"""`--store embedded:DIR`: a single server keeps its runs across restarts, one flag."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _server_process import clean_env, server_process

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, PostgreSQL runs as an unprivileged user, which
    # must be able to reach the directory.
    parent = Path(tempfile.mkdtemp(prefix="runcontrol-durable-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.timeout(120)
async def test_runs_survive_a_restart_with_the_embedded_store(data_dir: Path) -> None:
    args = ("--listen", "127.0.0.1:0", "--store", f"embedded:{data_dir}")
    async with server_process(*args, env=clean_env()) as first:
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            created = await stub.CreateRun(pb.CreateRunRequest(thread_id="t1", request_id="r1"))
        assert await first.stop(signal.SIGTERM) == 0
    async with server_process(*args, env=clean_env()) as second:
        async with grpc.aio.insecure_channel(second.address) as channel:
            stub = run_control_pb2_grpc.RunControlStub(channel)
            got = await stub.GetRun(pb.GetRunRequest(run_id=created.run.run_id))
            assert got.run == created.run
            # The idempotency key survived too: the retry gets the FIRST answer.
            again = await stub.CreateRun(pb.CreateRunRequest(thread_id="t1", request_id="r1"))
            assert again.run == created.run
            listed = await stub.ListRuns(pb.ListRunsRequest())
            assert listed.revision == created.run.create_revision
        assert await second.stop(signal.SIGTERM) == 0
