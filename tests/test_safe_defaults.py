"""Safe defaults: loopback unless told otherwise, and a non-loopback address served
with neither TLS nor authentication only with an explicit `--insecure` (a warning).

Nothing here binds a non-loopback address: the refusal happens before binding, and
the warning is checked on the server object without starting it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from _certs import make_certificates
from _security import write_tokens
from _server_process import STARTUP_TIMEOUT, clean_env

from runcontrol_server.app import ConfigurationError, RunControlServer
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.security.exposure import is_loopback
from runcontrol_server.security.server import ServerSecurity

NON_LOOPBACK = ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051", "runcontrol.example:443"]
LOOPBACK = ["127.0.0.1:0", "127.0.0.2:0", "[::1]:0", "localhost:0"]


def test_the_default_address_is_loopback() -> None:
    assert parse_settings([], environ={}).listen == "127.0.0.1:50051"
    assert is_loopback("127.0.0.1")


@pytest.mark.parametrize("listen", LOOPBACK)
def test_loopback_needs_nothing(listen: str) -> None:
    assert parse_settings(["--listen", listen], environ={}).listen == listen


@pytest.mark.parametrize("listen", NON_LOOPBACK)
def test_non_loopback_without_tls_or_auth_is_refused(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_settings(["--listen", listen], environ={})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"refusing to serve {listen} without TLS or authentication" in err
    assert "--insecure" in err


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--insecure"], {}),
        ([], {"RUNCONTROL_INSECURE": "1"}),
        ([], {"RUNCONTROL_INSECURE": "true"}),
        ([], {"RUNCONTROL_LISTEN": "0.0.0.0:50051", "RUNCONTROL_INSECURE": "yes"}),
    ],
)
def test_insecure_is_an_explicit_choice(argv: list[str], environ: dict[str, str]) -> None:
    settings = parse_settings(["--listen", "0.0.0.0:50051", *argv], environ=environ)
    assert settings.insecure


def test_insecure_off_in_the_environment_still_refuses() -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--listen", "0.0.0.0:1"], environ={"RUNCONTROL_INSECURE": "0"})


def test_tls_or_a_tokens_file_is_enough(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key]
    tokens = ["--tokens-file", write_tokens(tmp_path / "tokens")]
    for extra in (tls, tokens, tls + tokens):
        settings = parse_settings(["--listen", "0.0.0.0:50051", *extra], environ={})
        assert not settings.insecure


async def test_the_server_object_applies_the_same_rule() -> None:
    # Code that builds Settings itself, skipping the command line, is refused too.
    with pytest.raises(ConfigurationError, match=r"refusing to serve 0\.0\.0\.0:0"):
        RunControlServer(Settings(listen="0.0.0.0:0"))


def test_insecure_logs_a_warning(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING)

    def warnings_for(settings: Settings) -> str:
        caplog.clear()
        ServerSecurity(settings, "runcontrol.v1.RunControl").log_exposure()
        return caplog.text

    assert "without TLS or authentication (--insecure)" in warnings_for(
        Settings(listen="0.0.0.0:0", insecure=True)
    )
    tokens = write_tokens(tmp_path / "tokens")
    assert "bearer tokens cross the network in plaintext" in warnings_for(
        Settings(listen="0.0.0.0:0", tokens_file=tokens)
    )
    assert warnings_for(Settings(listen="127.0.0.1:0", insecure=True)) == ""


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--listen", "0.0.0.0:0"], {}),
        ([], {"RUNCONTROL_LISTEN": "[::]:0"}),
    ],
)
def test_the_entry_point_refuses_to_start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runcontrol_server", *args],
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # no `listening on` line: nothing was bound
    assert "without TLS or authentication" in done.stderr
