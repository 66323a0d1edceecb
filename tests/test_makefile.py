"""`make serve` and `make help` do what the README says (dry runs: nothing is started)."""

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


def test_serve_installs_the_runtime_only() -> None:
    dry = make("-n", "-B", "serve")
    assert "pip install --quiet -e ." in dry
    assert "[dev]" not in dry


def test_help_names_every_target_without_make_syntax() -> None:
    text = make("help")
    assert "$(" not in text
    for target in ("serve", "serve-replicas", "test", "bench"):
        assert f"  {target} " in text
