"""`make serve`, `make proto` and `make help` do what the README says (dry runs: nothing
is started or written)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNCONTROL_")}
    clean.pop("LISTEN", None)
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def serve_command(*args: str, **env: str) -> str:
    lines = make("-n", "serve", *args, **env).splitlines()
    (command,) = [line for line in lines if "runcontrol-server" in line]
    return command


def test_serve_leaves_the_address_to_the_server_and_its_environment() -> None:
    # No --listen from the Makefile: the server's default or RUNCONTROL_LISTEN decides.
    assert "--listen" not in serve_command()
    assert "--listen" not in serve_command(RUNCONTROL_LISTEN="127.0.0.1:6000")
    assert serve_command("LISTEN=127.0.0.1:7000").endswith("--listen 127.0.0.1:7000")


def test_serve_installs_the_server_runtime_only() -> None:
    # The package's base dependencies are the client's: serving needs the `server`
    # extra, and nothing of the dev set.
    dry = make("-n", "-B", "serve")
    assert "pip install --quiet -e '.[server]'" in dry
    assert "[dev]" not in dry


def test_proto_keeps_the_node_packages_copy_and_checks_it() -> None:
    # The Node client loads .proto files at run time: `make proto` copies protos/ into
    # its package and `make proto-check` fails when the committed copy differs.
    dry = make("-n", "-B", "proto-check")
    protos = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "protos/runcontrol/v1").glob("*.proto")
    )
    assert protos
    (copy,) = [line for line in dry.splitlines() if line.startswith("rm -rf client/node/proto/")]
    assert copy.endswith(f"cp {' '.join(protos)} client/node/proto/runcontrol/v1/"), copy
    checks = [line for line in dry.splitlines() if line.startswith(("git diff", "test -z"))]
    assert len(checks) == 2, dry
    for line in checks:
        assert "client/runcontrol/v1 client/node/proto/runcontrol/v1" in line, line


def test_help_names_every_target_without_make_syntax() -> None:
    text = make("help")
    assert "$(" not in text
    for target in ("serve", "serve-replicas", "test", "bench"):
        assert f"  {target} " in text
