"""Shared by the security tests: tokens, a tokens file, an in-process server with
TLS and/or authentication on 127.0.0.1, and `eventually` (the shared `until` for a
check that is a call)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from _streams import until

from runcontrol_server.app import RunControlServer
from runcontrol_server.config import Settings

READER_TOKEN = "reader-token-0123456789"
WORKER_TOKEN = "worker-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789ab"
TOKENS = {"reader": READER_TOKEN, "worker": WORKER_TOKEN, "admin": ADMIN_TOKEN}
CALL_TIMEOUT = 10.0


def write_tokens(path: Path, *lines: str) -> str:
    """A tokens file with one entry per role (named after it) plus `lines`."""
    entries = [f"{role} {token} {role}-name" for role, token in TOKENS.items()]
    path.write_text("# test tokens\n" + "\n".join([*entries, *lines]) + "\n")
    return str(path)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunControlServer]:
    """A real server with `settings` on 127.0.0.1:<free port>, stopped at once after."""
    server = RunControlServer(dataclasses.replace(settings, listen="127.0.0.1:0"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


async def eventually(
    check: Callable[[], Awaitable[bool]], limit: float = 10.0, *, what: str = "the check holds"
) -> None:
    """`until` (tests/_streams.py) for an effect another process applies at its own
    moment (a signal's handler): its state offers no event to wait on."""
    await until(check, what, within=limit)
