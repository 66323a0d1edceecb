"""The live web view and cross-origin access, in front of the Connect application.

`WebView` serves the page's few static files (`web_assets/`, built from client/web by
`make web` and shipped in the package, so serving it needs no Node.js) at "/", and
hands every other request to the RunControl application. The files are read once at
start-up into a table keyed by URL path: a request names one of them exactly or is not
a file request at all, so no path is ever joined onto a directory (no traversal).

`Cors` answers the CORS preflight of the origins `--http-cors-origin` names and adds
the CORS response headers to their calls, with the headers Connect and gRPC-Web send
and read (as connectrpc's cors-es lists them) plus this service's own. Other origins
get no CORS headers, so browsers keep their pages from reading the answers; calls
without an `Origin` (curl, servers, the page itself, same-origin) get none either.
Every answer says `Vary: Origin`, so a cache between never hands one origin's answer
(with or without CORS headers) to another. With `*` the allowed origin is a literal
`*`: no credentials (cookies, HTTP auth) are involved, the token is a plain header.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASSETS = "web_assets"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# The page loads its own script and style and talks to its own origin; nothing else.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: bytes


def load_assets(package: str = __package__ or "runcontrol_server.http") -> dict[str, Asset]:
    """URL path -> file, for every file of the package's `web_assets` directory;
    "/" is index.html."""
    assets: dict[str, Asset] = {}
    folder = resources.files(package) / ASSETS
    if not folder.is_dir():
        return assets
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
        assets["/" + entry.name] = Asset(body, _TYPES[suffix], etag)
    if "/index.html" in assets:
        assets["/"] = assets["/index.html"]
    return assets


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def answer(
    send: Send, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


class WebView:
    """The static files at their paths (GET and HEAD), everything else to `app`."""

    def __init__(self, app: ASGIApp, assets: Mapping[str, Asset] | None = None) -> None:
        self._app = app
        self._assets = load_assets() if assets is None else assets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asset = self._assets.get(scope["path"]) if scope["type"] == "http" else None
        if asset is None:
            await self._app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await answer(send, 405, [(b"allow", b"GET, HEAD"), (b"content-length", b"0")], b"")
            return
        headers = [
            (b"etag", asset.etag),
            # Revalidated on every load (an ETag match costs a 304): an upgraded server
            # never leaves a browser running the old page against the new API.
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", _POLICY.encode()),
        ]
        if _header(scope, b"if-none-match") == asset.etag:
            await answer(send, 304, headers, b"")
            return
        headers += [
            (b"content-type", asset.content_type.encode()),
            (b"content-length", str(len(asset.body)).encode()),
        ]
        await answer(send, 200, headers, b"" if scope["method"] == "HEAD" else asset.body)


# What Connect and gRPC-Web clients send and read (connectrpc's cors-es), plus the bearer
# token, the payload format and the store identity WatchRuns announces.
ALLOWED_METHODS = b"GET, POST"
ALLOWED_HEADERS = (
    b"content-type, connect-protocol-version, connect-timeout-ms, connect-content-encoding, "
    b"connect-accept-encoding, content-encoding, accept-encoding, grpc-message-type, "
    b"x-grpc-web, x-user-agent, grpc-timeout, authorization, runcontrol-payload-format"
)
EXPOSED_HEADERS = (
    b"grpc-status, grpc-message, grpc-status-details-bin, content-encoding, "
    b"connect-content-encoding, runcontrol-store-id"
)
# How long a browser may reuse a preflight answer (seconds; Chromium caps it at 7200).
PREFLIGHT_MAX_AGE = b"7200"


class Cors:
    """CORS for `origins` ("*" allows any) around `app`; no origins: `app` alone."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self._app = app
        self._origins = frozenset(origin.encode() for origin in origins)
        self._any = b"*" in self._origins

    def _allowed(self, origin: bytes | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    def _allow_origin(self, origin: bytes) -> bytes:
        return b"*" if self._any else origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        preflight = (
            scope["method"] == "OPTIONS"
            and origin is not None
            and _header(scope, b"access-control-request-method") is not None
        )
        if preflight:
            await self._preflight(send, origin)
            return
        if self._allowed(origin):
            assert origin is not None
            cors = [
                (b"access-control-allow-origin", self._allow_origin(origin)),
                (b"access-control-expose-headers", EXPOSED_HEADERS),
                (b"vary", b"Origin"),
            ]
        else:
            cors = [(b"vary", b"Origin")]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *cors]
            await send(message)

        await self._app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: bytes | None) -> None:
        if not self._allowed(origin):
            # No CORS headers: the browser refuses the call it asked about.
            await answer(send, 403, [(b"content-length", b"0"), (b"vary", b"Origin")], b"")
            return
        assert origin is not None
        headers = [
            (b"access-control-allow-origin", self._allow_origin(origin)),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await answer(send, 204, headers, b"")
