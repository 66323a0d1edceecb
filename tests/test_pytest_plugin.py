"""The `runcontrol_server` pytest plugin, used from a project outside this repository.

Each test writes a test file into an empty temporary directory (no conftest, no
configuration: pytest-asyncio's default strict mode) and runs pytest there in a child
process, as a user's project would: the fixture must come from the installed entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PYTEST_TIMEOUT = 120.0  # a cold interpreter importing grpc and the server, twice


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The developer's own settings must not reach the child project.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RUNCONTROL_", "PYTEST_", "COV_CORE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
        check=False,
    )


STRICT_MODE_TESTS = """
import pytest

from runcontrol import AsyncClient, ThreadBusy
from runcontrol.testing import InProcessServer
from runcontrol.v1 import run_control_pb2 as pb


@pytest.mark.asyncio
async def test_stub(runcontrol_server: InProcessServer) -> None:
    created = await runcontrol_server.stub.CreateRun(pb.CreateRunRequest(thread_id="t1"))
    assert created.run.thread_id == "t1"


@pytest.mark.asyncio
async def test_client(runcontrol_server: InProcessServer) -> None:
    # A fresh store per test: test_stub's run on t1 is not here.
    async with AsyncClient(runcontrol_server.address) as client:
        handle = await client.create_run("t1")
        with pytest.raises(ThreadBusy):
            await client.create_run("t1")
        assert handle.run.thread_id == "t1"
"""


def test_fixture_in_a_strict_mode_project(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(textwrap.dedent(STRICT_MODE_TESTS))
    # Warnings are errors, except pytest-asyncio's own notice about its unset option
    # (a fresh project's configuration, not ours to set).
    result = run_pytest(
        tmp_path,
        "-W",
        "error",
        "-W",
        "ignore:The configuration option:pytest.PytestDeprecationWarning",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout


def test_fixture_is_listed_by_the_plugin(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "--fixtures")
    assert result.returncode in (0, 5), result.stdout + result.stderr  # 5: no tests
    assert "runcontrol_server" in result.stdout, result.stdout
    assert "runcontrol_pytest/__init__.py" in result.stdout.replace(os.sep, "/")


def test_plugin_without_pytest_asyncio(tmp_path: Path) -> None:
    # Simulate a project without pytest-asyncio: other tests still run, and only a test
    # asking for the fixture fails, with a message naming what to install.
    (tmp_path / "test_plain.py").write_text(
        textwrap.dedent(
            """
            def test_unrelated() -> None:
                assert True


            def test_wants_server(runcontrol_server) -> None:
                pass
            """
        )
    )
    (tmp_path / "sitecustomize_dir").mkdir()
    # A `pytest_asyncio` that cannot be imported, first on the path.
    (tmp_path / "sitecustomize_dir" / "pytest_asyncio.py").write_text(
        "raise ImportError('pytest-asyncio is not installed (simulated)')\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",
            "-q",
            "-rE",
        ],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "PYTHONPATH": str(tmp_path / "sitecustomize_dir"),
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 passed, 1 error" in result.stdout, out
    assert "needs pytest-asyncio" in result.stdout, out


def test_fixture_without_the_server_extra(tmp_path: Path) -> None:
    # `pip install runcontrol` is the client alone: the plugin still loads and other
    # tests run; the test asking for the fixture fails with the command to run. A
    # meta-path finder makes prometheus-client (a server-only dependency) unimportable.
    (tmp_path / "test_plain.py").write_text(
        textwrap.dedent(
            """
            import pytest


            def test_unrelated() -> None:
                assert True


            @pytest.mark.asyncio
            async def test_wants_server(runcontrol_server) -> None:
                pass
            """
        )
    )
    refuse_and_run = textwrap.dedent(
        """
        import sys

        import pytest


        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "prometheus_client":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None


        assert "prometheus_client" not in sys.modules
        sys.meta_path.insert(0, Refuse())
        sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "-rE"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", refuse_and_run],
        cwd=tmp_path,
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RUNCONTROL_", "PYTEST_", "COV_CORE_"))
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 passed, 1 error" in result.stdout, out
    assert "the runcontrol_server fixture: runcontrol.testing" in result.stdout, out
    assert "(missing: prometheus-client): pip install 'runcontrol[server]'" in result.stdout, out
