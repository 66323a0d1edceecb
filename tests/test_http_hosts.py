"""The HTTP listener's Host check: a loopback listener answers only requests addressed
to a loopback name or to a name `--http-allowed-host` gives, so a web page that
rebinds its own host name to 127.0.0.1 cannot drive a token-less local server."""

from __future__ import annotations

import dataclasses

import pytest
from _http import serving

from runcontrol import AsyncClient, RunStatus
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.http.hosts import allowed_hosts, host_name

# The HTTP options need a listener to apply to.
LISTEN = {"RUNCONTROL_HTTP_LISTEN": "127.0.0.1:0"}


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LocalHost:8080", "localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("example.com", "example.com"),
        (" Proxy.Example:443 ", "proxy.example"),
    ],
)
def test_the_host_of_a_host_header(header: str, name: str) -> None:
    assert host_name(header) == name


def test_which_names_a_listener_answers() -> None:
    assert allowed_hosts("127.0.0.1", ()) == {"localhost", "localhost."}
    assert allowed_hosts("[::1]", ("Proxy.Example",)) == {
        "localhost",
        "localhost.",
        "proxy.example",
    }
    assert allowed_hosts("127.0.0.1", ("*",)) is None  # the check turned off
    assert allowed_hosts("0.0.0.0", ()) is None  # exposed: TLS and tokens guard it
    assert allowed_hosts("0.0.0.0", ("runs.example",)) == {"runs.example"}
    # An IPv6 literal as the setting keeps it (its colons are not a port).
    assert allowed_hosts("0.0.0.0", ("::1", "[FE80::1]")) == {"::1", "fe80::1"}


async def test_a_rebound_host_name_is_refused_and_changes_nothing() -> None:
    async with serving() as http:
        async with AsyncClient(http.grpc_address) as client:
            run = await client.create_run("thread-1")
        port = http.server.http_address.rpartition(":")[2]  # type: ignore[union-attr]
        # What a page on evil.example sends after pointing its name at 127.0.0.1.
        refused = await http.call(
            "CancelRun", {"runId": run.run_id}, headers={"host": f"evil.example:{port}"}
        )
        assert refused.status_code == 403
        assert "--http-allowed-host" in refused.text
        page = await http.client.get("/", headers={"host": f"evil.example:{port}"})
        assert page.status_code == 403
        async with AsyncClient(http.grpc_address) as client:
            assert (await client.fetch_run(run.run_id)).status is RunStatus.PENDING

        # Loopback names, however written, are the listener's own.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"127.0.0.2:{port}", "[::1]"):
            answer = await http.call("GetRun", {"runId": run.run_id}, headers={"host": host})
            assert answer.status_code == 200, (host, answer.text)


async def test_allowed_host_names_are_answered_too() -> None:
    settings = Settings(http_allowed_host=("runs.example",))
    async with serving(settings) as http:
        ok = await http.call("ListRuns", headers={"host": "runs.example"})
        assert ok.status_code == 200
        other = await http.call("ListRuns", headers={"host": "other.example"})
        assert other.status_code == 403
    async with serving(dataclasses.replace(settings, http_allowed_host=("*",))) as http:
        anything = await http.call("ListRuns", headers={"host": "other.example"})
        assert anything.status_code == 200


def test_the_allowed_host_setting() -> None:
    settings = parse_settings(
        ["--http-allowed-host", "Runs.Example", "--http-allowed-host", "[::1]"], LISTEN
    )
    assert settings.http_allowed_host == ("runs.example", "::1")
    from_env = parse_settings([], {**LISTEN, "RUNCONTROL_HTTP_ALLOWED_HOST": "a.example,::1,*"})
    assert from_env.http_allowed_host == ("a.example", "::1", "*")
    for bad in ("runs.example:443", "http://runs.example", "", "a b"):
        with pytest.raises(SystemExit):
            parse_settings(["--http-allowed-host", bad], LISTEN)


@pytest.mark.parametrize("flag", ["--http-allowed-host", "--http-cors-origin"])
def test_http_options_need_the_http_listener(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    value = "runs.example" if flag == "--http-allowed-host" else "https://page.example"
    with pytest.raises(SystemExit) as exited:
        parse_settings([flag, value], {})
    assert exited.value.code == 2
    assert f"{flag} needs --http-listen" in capsys.readouterr().err
    assert parse_settings([flag, value, "--http-listen", "127.0.0.1:0"], {})
