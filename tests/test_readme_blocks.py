"""Every code block of the READMEs runs as shown.

``python`` blocks of README.md run as scripts (``sys.executable``) and ``js`` /
``javascript`` blocks of README.md and client/node/README.md under ``node``, each in a
child process against a real server (``python -m runcontrol_server`` on 127.0.0.1:0):
the documented ``127.0.0.1:50051`` becomes the server's address and
``require('./client/node')`` the client's absolute path. Each block runs twice against
the same server, so an example that leaves a thread busy or reuses a fixed request_id
fails here. Python blocks must also be clean under pyflakes (ruff's F rules): an
undefined name inside a function that the script only defines is caught too.

An HTML comment on the line before a block changes what happens to it:

* ``<!-- fragment: WHY -->``: not runnable alone (top-level ``await``, names from the
  surrounding prose); only its syntax is checked. Keep these few.
* ``<!-- pytest: WHY -->``: a test file; it runs with pytest in an empty directory
  (pytest-asyncio's strict mode, no conftest), as in a user's own project.

``sh`` blocks and unlabelled blocks are not run.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from _server_process import clean_env, server_process

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "client" / "node"
READMES = {"README.md": ("python", "js"), "client/node/README.md": ("js",)}
LANGUAGES = {"python": "python", "py": "python", "js": "js", "javascript": "js"}
DOCUMENTED_ADDRESS = "127.0.0.1:50051"
MAX_FRAGMENTS = 3
RUN_TIMEOUT = 60.0  # one run of one block; a Node example lingering 30 s fails at 20
NODE_RUN_TIMEOUT = 20.0

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>fragment|pytest)\s*:\s*(?P<why>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    readme: str
    line: int  # of the opening fence, 1-based
    lang: str  # "python" or "js"
    code: str
    kind: str  # "script", "fragment" or "pytest"
    why: str

    @property
    def id(self) -> str:
        return f"{self.readme}:{self.line}:{self.lang}"


def extract(readme: str) -> list[Block]:
    lines = (ROOT / readme).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening["indent"], opening["lang"].lower()
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != f"{indent}```":
            end += 1
        assert end < len(lines), f"{readme}:{i + 1}: unclosed code block"
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        if lang in LANGUAGES and LANGUAGES[lang] in READMES[readme]:
            body = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            blocks.append(
                Block(
                    readme,
                    i + 1,
                    LANGUAGES[lang],
                    body,
                    marker["kind"] if marker else "script",
                    marker["why"] if marker else "",
                )
            )
        i = end + 1
    return blocks


BLOCKS = [block for readme in READMES for block in extract(readme)]
RUNNABLE = [b for b in BLOCKS if b.kind != "fragment"]


def test_blocks_found_and_fragments_are_few() -> None:
    # Guards the parser: if it silently found nothing, every test below would vanish.
    assert sum(b.lang == "python" and b.kind == "script" for b in BLOCKS) >= 3, BLOCKS
    assert sum(b.kind == "pytest" for b in BLOCKS) >= 1, BLOCKS
    assert sum(b.lang == "js" for b in BLOCKS) == 2, BLOCKS
    fragments = [b for b in BLOCKS if b.kind == "fragment"]
    assert len(fragments) <= MAX_FRAGMENTS, [b.id for b in fragments]
    for block in fragments:
        assert block.why, f"{block.id}: a fragment marker must say why"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "fragment"], ids=lambda b: b.id)
def test_fragment_is_valid_syntax(block: Block) -> None:
    assert block.lang == "python", f"{block.id}: only Python blocks may be fragments"
    ast.parse(block.code, filename=block.id, feature_version=(3, 11))
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def run(
    *argv: str, cwd: Path, limit: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run a child (stdout and stderr together); kill it by its pid after `limit` seconds."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{argv} still running after {limit}s")
    return proc.returncode or 0, out.decode(errors="replace")


def script_for(block: Block, address: str) -> str:
    code = block.code.replace(DOCUMENTED_ADDRESS, address)
    if block.lang == "js":
        code = code.replace("require('./client/node')", f"require({json.dumps(str(NODE_CLIENT))})")
        assert str(NODE_CLIENT) in code, f"{block.id}: does not require('./client/node')"
    return code


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.lang == "python"], ids=lambda b: b.id)
async def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    if block.kind == "pytest":
        (tmp_path / "test_readme_block.py").write_text(block.code)
        env = {k: v for k, v in clean_env().items() if not k.startswith("PYTEST_")}
        argv = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
        code, out = await run(*argv, cwd=tmp_path, limit=RUN_TIMEOUT, env=env)
        assert code == 0, f"{block.id}:\n{out}"
        assert " passed" in out and "skipped" not in out, f"{block.id}:\n{out}"
        return
    async with server_process() as server:
        script = tmp_path / "block.py"
        script.write_text(script_for(block, server.address))
        lint, out = await run(
            sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F",
            "--target-version", "py311", str(script), cwd=tmp_path, limit=RUN_TIMEOUT,
        )  # fmt: skip
        assert lint == 0, f"{block.id} (pyflakes):\n{out}"
        for attempt in (1, 2):
            code, out = await run(sys.executable, str(script), cwd=tmp_path, limit=RUN_TIMEOUT)
            assert code == 0, f"{block.id} (run {attempt}) exited {code}:\n{out}"


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.lang == "js"], ids=lambda b: b.id)
async def test_js_block_runs(block: Block, tmp_path: Path) -> None:
    node = shutil.which("node")
    # Never skipped: `make test` installs both (a missing one is a broken setup).
    assert node is not None, "node is not installed (make test needs Node.js and npm)"
    assert (NODE_CLIENT / "node_modules").is_dir(), (
        "client/node has no node_modules: run `make pytest` (it runs npm ci) or npm ci there"
    )
    async with server_process() as server:
        script = tmp_path / "block.js"  # CommonJS, as `node example.js` runs it
        script.write_text(script_for(block, server.address))
        first_lines = []
        for attempt in (1, 2):
            code, out = await run(node, str(script), cwd=tmp_path, limit=NODE_RUN_TIMEOUT)
            assert code == 0, f"{block.id} (run {attempt}) exited {code}:\n{out}"
            first_lines.append(out.splitlines()[0] if out else "")
        if block.readme == "client/node/README.md":
            # "RUN_ID RUN_STATUS_PENDING ...": a new run each time, never a replayed answer.
            assert first_lines[0] != first_lines[1], first_lines


def test_environment_has_no_stray_address() -> None:
    # The blocks must reach the test's server, not one named in the environment.
    assert "RUNCONTROL_ADDR" not in clean_env()
    assert os.path.isdir(ROOT / "client" / "node")
