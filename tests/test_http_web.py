"""The HTTP listener's web view files, CORS for pages of other origins, the `protocol`
label of the request metrics, and the `--http-cors-origin` setting. (The page itself,
in a browser: tests/test_web_view.py.)"""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import httpx
import pytest
from _http import GRPC_WEB_PROTO, JSON, envelope, serving
from prometheus_client.parser import text_string_to_metric_families

from runcontrol.v1 import run_control_pb2 as pb
from runcontrol.v1 import run_control_pb2_grpc
from runcontrol_server.config import Settings, parse_settings
from runcontrol_server.http.web import load_assets

PAGE = "http://page.example:3000"

# The HTTP options need a listener to apply to.
LISTEN = {"RUNCONTROL_HTTP_LISTEN": "127.0.0.1:0"}


async def test_the_page_and_its_files_are_served_with_their_types() -> None:
    assets = load_assets()
    assert {"/", "/index.html", "/app.js", "/app.css"} <= assets.keys()
    async with serving() as http:
        page = await http.client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.content == assets["/index.html"].body
        assert '<script type="module" src="app.js">' in page.text
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "connect-src 'self'" in page.headers["content-security-policy"]

        script = await http.client.get("/app.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.headers["content-length"] == str(len(assets["/app.js"].body))
        style = await http.client.get("/app.css")
        assert style.headers["content-type"] == "text/css; charset=utf-8"

        # Revalidation: the same ETag answers 304 with no body.
        again = await http.client.get("/app.js", headers={"if-none-match": script.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""
        head = await http.client.head("/")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(len(page.content))
        posted = await http.client.post("/app.js", content=b"x")
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "path",
    [
        "/missing.js",
        "/../pyproject.toml",
        "/%2e%2e/app.py",
        "/..%2fapp.py",
        "/web_assets/app.js",
        "//etc/passwd",
        "/app.js/",
    ],
)
async def test_nothing_but_the_page_s_files_is_served(path: str) -> None:
    async with serving() as http:
        # Sent as written (httpx would normalise "..").
        request = http.client.build_request("GET", "/")
        request.url = request.url.copy_with(raw_path=path.encode())
        refused = await http.client.send(request)
        assert refused.status_code == 404, (path, refused.text)


async def test_calls_still_reach_the_service_beside_the_page() -> None:
    async with serving() as http:
        created = await http.call("CreateRun", {"threadId": "t"})
        assert created.status_code == 200, created.text
        # A method the service lacks stays Connect's 404, not a page.
        missing = await http.client.post("/runcontrol.v1.RunControl/Nope", json={}, headers=JSON)
        assert missing.status_code == 404
        assert "text/html" not in missing.headers.get("content-type", "")


async def test_cors_lets_the_named_origins_call_and_no_other() -> None:
    settings = Settings(http_cors_origin=(PAGE,))
    async with serving(settings) as http:
        preflight = await http.client.options(
            http.url("CreateRun"),
            headers={
                "origin": PAGE,
                "access-control-request-method": "POST",
                "access-control-request-headers": (
                    "authorization,content-type,connect-protocol-version"
                ),
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == PAGE
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = {
            name.strip() for name in preflight.headers["access-control-allow-headers"].split(",")
        }
        assert {
            "authorization",
            "content-type",
            "connect-protocol-version",
            "x-grpc-web",
        } <= allowed
        assert preflight.headers["vary"] == "Origin"

        called = await http.call("CreateRun", {"threadId": "t"}, headers={"origin": PAGE})
        assert called.status_code == 200, called.text
        assert called.headers["access-control-allow-origin"] == PAGE
        exposed = called.headers["access-control-expose-headers"]
        assert "grpc-status-details-bin" in exposed and "runcontrol-store-id" in exposed

        # Another origin: its preflight is refused and its calls carry no CORS headers,
        # so the browser keeps the answer from the page.
        other = "http://evil.example"
        refused = await http.client.options(
            http.url("CreateRun"),
            headers={"origin": other, "access-control-request-method": "POST"},
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        answered = await http.call("ListRuns", headers={"origin": other})
        assert "access-control-allow-origin" not in answered.headers
        # Without an Origin (curl, servers) no CORS headers either.
        plain = await http.call("ListRuns")
        assert "access-control-allow-origin" not in plain.headers


async def test_with_cors_on_every_answer_varies_by_origin() -> None:
    # A cache between must not hand the answer meant for one origin (with or without
    # CORS headers) to another: every answer says it depends on Origin.
    async with serving(Settings(http_cors_origin=(PAGE,))) as http:
        answers = {
            "allowed call": await http.call("ListRuns", headers={"origin": PAGE}),
            "other origin's call": await http.call(
                "ListRuns", headers={"origin": "http://evil.example"}
            ),
            "call without an origin": await http.call("ListRuns"),
            "the page": await http.client.get("/"),
            "the page for another origin": await http.client.get(
                "/app.js", headers={"origin": "http://evil.example"}
            ),
            "refused preflight": await http.client.options(
                http.url("ListRuns"),
                headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
            ),
            "preflight": await http.client.options(
                http.url("ListRuns"),
                headers={"origin": PAGE, "access-control-request-method": "POST"},
            ),
        }
        for what, answer in answers.items():
            assert "origin" in _varies(answer), (what, answer.headers)
    # CORS off: the answers do not depend on Origin, and do not say so.
    async with serving() as http:
        assert "origin" not in _varies(await http.call("ListRuns", headers={"origin": PAGE}))
        assert "origin" not in _varies(await http.client.get("/"))


def _varies(answer: httpx.Response) -> set[str]:
    return {v.strip().lower() for v in answer.headers.get_list("vary", split_commas=True)}


async def test_cors_any_origin_and_none_by_default() -> None:
    async with serving(Settings(http_cors_origin=("*",))) as http:
        preflight = await http.client.options(
            http.url("WatchRuns"),
            headers={"origin": "https://anywhere.example", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 204
        # A literal "*" (no credentials are used): the answer is the same for any origin.
        assert preflight.headers["access-control-allow-origin"] == "*"
        called = await http.call("ListRuns", headers={"origin": "https://anywhere.example"})
        assert called.status_code == 200, called.text
        assert called.headers["access-control-allow-origin"] == "*"
        assert "runcontrol-store-id" in called.headers["access-control-expose-headers"]
    async with serving() as http:
        preflight = await http.client.options(
            http.url("WatchRuns"),
            headers={"origin": PAGE, "access-control-request-method": "POST"},
        )
        assert preflight.status_code != 204
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_parse_from_flags_and_environment() -> None:
    parsed = parse_settings(
        ["--http-cors-origin", "https://A.example", "--http-cors-origin", "http://b:8080"], LISTEN
    )
    assert parsed.http_cors_origin == ("https://a.example", "http://b:8080")
    from_env = parse_settings([], {**LISTEN, "RUNCONTROL_HTTP_CORS_ORIGIN": "https://a.example, *"})
    assert from_env.http_cors_origin == ("https://a.example", "*")
    assert parse_settings([], LISTEN).http_cors_origin == ()
    # Browsers never send a scheme's default port: the origin is kept without it.
    defaults = parse_settings(
        ["--http-cors-origin", "https://A.example:443", "--http-cors-origin", "http://x:80"], LISTEN
    )
    assert defaults.http_cors_origin == ("https://a.example", "http://x")
    others = parse_settings(
        ["--http-cors-origin", "http://x:443", "--http-cors-origin", "https://[::1]:443"], LISTEN
    )
    assert others.http_cors_origin == ("http://x:443", "https://[::1]")
    for bad in ("a.example", "https://a.example/", "ftp://a.example", "https://a.example:x"):
        with pytest.raises(SystemExit):
            parse_settings(["--http-cors-origin", bad], LISTEN)


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        return answer.read().decode()  # type: ignore[no-any-return]


async def test_request_metrics_say_which_protocol_each_call_came_in() -> None:
    async with serving(Settings(metrics_listen="127.0.0.1:0")) as http:
        assert (await http.call("ListRuns")).status_code == 200
        assert (await http.call("ListRuns")).status_code == 200
        web = await http.client.post(
            http.url("ListRuns"),
            content=envelope(pb.ListRunsRequest().SerializeToString()),
            headers=GRPC_WEB_PROTO,
        )
        assert web.status_code == 200
        async with grpc.aio.insecure_channel(http.grpc_address) as channel:
            await run_control_pb2_grpc.RunControlStub(channel).ListRuns(pb.ListRunsRequest())
        address = http.server.metrics_address
        assert address is not None
        text = await asyncio.to_thread(_scrape, address)
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    calls = {
        s.labels["protocol"]: s.value
        for s in samples
        if s.name == "runcontrol_rpcs_total" and s.labels["method"] == "ListRuns"
    }
    assert calls == {"connect": 2, "grpc-web": 1, "grpc": 1}
    durations = {
        s.labels["protocol"]: s.value
        for s in samples
        if s.name == "runcontrol_rpc_duration_seconds_count" and s.labels["method"] == "ListRuns"
    }
    assert durations == {"connect": 2, "grpc-web": 1, "grpc": 1}
