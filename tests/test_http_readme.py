"""The README's HTTP section runs as shown: its curl lines against a real server's HTTP
listener (the documented 127.0.0.1:8080 becomes the listener's address)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import struct
from pathlib import Path
from typing import Any

import pytest
from _http import READ_TIMEOUT, serving

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## HTTP (Connect and gRPC-Web)"
DOCUMENTED = "127.0.0.1:8080"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the README uses curl")


def curl_lines() -> list[str]:
    """The section's curl commands (continuation lines joined), in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.DOTALL)).replace("\\\n", " ")
    return [line for line in shell.splitlines() if "curl " in line]


async def start(command: str, address: str) -> asyncio.subprocess.Process:
    # Its own session, so the pipeline's processes can be ended together (by its id).
    return await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command.replace(DOCUMENTED, address),
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def output_json(command: str, address: str) -> dict[str, Any]:
    process = await start(command, address)
    async with asyncio.timeout(READ_TIMEOUT):
        out, _ = await process.communicate()
    assert process.returncode == 0, command
    return json.loads(out)  # type: ignore[no-any-return]


async def test_the_readme_curl_lines_run_as_shown() -> None:
    create, list_runs, create_again, watch = curl_lines()
    async with serving() as http:
        address = http.server.http_address
        assert address is not None
        run = (await output_json(create, address))["run"]
        assert (run["threadId"], run["status"]) == ("thread-1", "RUN_STATUS_PENDING")
        assert (await output_json(list_runs, address))["runs"] == [run]
        refused = await output_json(create_again, address)
        assert refused["code"] == "failed_precondition"
        assert refused["details"][0]["debug"]["reason"] == "THREAD_BUSY"

        # The stream goes on until the server stops: read its initial set, then end it.
        process = await start(watch, address)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                flags, size = struct.unpack(">BI", await process.stdout.readexactly(5))
                first = json.loads(await process.stdout.readexactly(size))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            await process.wait()
    assert flags == 0
    assert [event["run"]["runId"] for event in first["events"]] == [run["runId"]]
