"""The examples/ gateway and worker run as shown: two processes against a real server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from _server_process import clean_env, server_process

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LIMIT = 60.0


async def _start(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )


@pytest.mark.timeout(120)
async def test_gateway_and_worker_create_follow_and_roll_back() -> None:
    async with server_process("--listen", "127.0.0.1:0") as server:
        worker = await _start(
            "worker.py", "--addr", server.address, "--worker-id", "w1", "--max-runs", "2"
        )
        try:
            assert worker.stdout is not None
            async with asyncio.timeout(LIMIT):
                ready = await worker.stdout.readline()
            assert ready.strip() == b"worker ready"
            gateway = await _start("gateway.py", "--addr", server.address)
            async with asyncio.timeout(LIMIT):
                out, err = await gateway.communicate()
            assert gateway.returncode == 0, err.decode()
            lines = out.decode().splitlines()
            assert lines[0].startswith("rejected: thread busy with ")
            first = lines[0].removeprefix("rejected: thread busy with ")
            assert f"{first} SUCCESS" in lines
            assert lines[-1].endswith("INTERRUPTED ROLLBACK (Rolled back by user)"), lines
            async with asyncio.timeout(LIMIT):
                worker_out, worker_err = await worker.communicate()
            assert worker.returncode == 0, worker_err.decode()
            worker_lines = worker_out.decode().splitlines()
            assert f"{first} done" in worker_lines
            assert any(
                "cancelled: ROLLBACK (user pressed stop)" in line for line in worker_lines
            ), worker_lines
        finally:
            if worker.returncode is None:
                worker.kill()  # by its pid
                await worker.wait()
