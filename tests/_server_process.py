"""Start the real `python -m runcontrol_server` for a test and learn its address.

Shared by the entry-point and shutdown tests: the child binds 127.0.0.1 port 0, the
port is read from the first stdout line, and the child is killed by its pid if the
test leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import pytest

STARTUP_TIMEOUT = 20.0  # a cold interpreter importing grpc can be slow on CI
EXIT_TIMEOUT = 10.0
LISTENING = re.compile(r"^listening on (127\.0\.0\.1:(\d+))$")


def clean_env(**extra: str) -> dict[str, str]:
    # The developer's own RUNCONTROL_* variables must not leak into the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCONTROL_")}
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    address: str
    # Draining both pipes keeps the child from blocking on a full pipe and lets
    # asyncio close the transport once the child exits.
    stdout_rest: asyncio.Task[bytes]
    stderr: asyncio.Task[bytes]

    async def stop(self, signum: signal.Signals) -> int:
        self.proc.send_signal(signum)
        return await asyncio.wait_for(self.proc.wait(), EXIT_TIMEOUT)


@contextlib.asynccontextmanager
async def server_process(
    *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    environment = dict(env) if env is not None else clean_env()
    if "--listen" not in args and not environment.get("RUNCONTROL_LISTEN"):
        # Never the default 50051: a developer's `make serve` (or anything else) may
        # hold it. Tests always take a free port.
        args = ("--listen", "127.0.0.1:0", *args)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runcontrol_server",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    stdout_rest: asyncio.Task[bytes] | None = None
    try:
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"no 'listening on' line within {STARTUP_TIMEOUT}s")
        line = first.decode().rstrip("\n")
        match = LISTENING.match(line)
        if match is None:
            await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
            err = (await asyncio.wait_for(stderr, EXIT_TIMEOUT)).decode()
            pytest.fail(f"first stdout line {line!r}, exit {proc.returncode}, stderr:\n{err}")
        assert int(match.group(2)) != 0
        stdout_rest = asyncio.ensure_future(proc.stdout.read())
        yield ServerProcess(proc, match.group(1), stdout_rest, stderr)
    finally:
        if proc.returncode is None:
            proc.kill()  # by this child's pid, never by name
        await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
        for task in (stderr, stdout_rest):
            if task is not None:
                await asyncio.wait_for(task, EXIT_TIMEOUT)
