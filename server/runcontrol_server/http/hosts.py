"""The Host-header check in front of the HTTP listener: a defence against DNS rebinding.

A page on any web site can make its own host name resolve to 127.0.0.1 and then call
a listener on this machine as if it were its own origin: the browser sees a
same-origin request, so CORS never comes into play, and a loopback server without
`--tokens-file` would take its CreateRun and CancelRun calls. Such a request still
names the attacker's host in its `Host` header, so a loopback listener answers only
requests addressed to a loopback name (`localhost`, 127.0.0.0/8, ::1) and to the
names `--http-allowed-host` adds (a reverse proxy's public name, say); `*` turns the
check off. A listener on any other address is reached by whatever names point at it,
and is guarded by TLS and tokens instead (the safe-default rule): there only the
names given, if any, are allowed. The same defence as Jupyter's and webpack's
dev-server "allowed hosts".
"""

from __future__ import annotations

from ..security.exposure import is_loopback
from .web import ASGIApp, Receive, Scope, Send, answer

_REFUSED = (
    b"this host name is not allowed here: name it with --http-allowed-host "
    b"(a guard against DNS rebinding)\n"
)


def host_name(header: str) -> str:
    """The host of a `Host` header value, lower case, without port or brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8080
        return header[1 : header.find("]")] if "]" in header else header[1:]
    return header.rpartition(":")[0] if ":" in header else header


def allowed_hosts(listen_host: str, names: tuple[str, ...]) -> frozenset[str] | None:
    """The host names a listener on `listen_host` answers (None: any).

    Loopback listeners answer loopback names and `names`; others only `names`, or
    any when none are given. `*` among `names` means any.
    """
    if "*" in names:
        return None
    # Names as `--http-allowed-host` gives them: no port (an IPv6 literal's colons are
    # not one), brackets optional; only their case and brackets are evened out here.
    given = frozenset(name.strip().strip("[]").lower() for name in names)
    if is_loopback(listen_host):
        return given | {"localhost", "localhost."}
    return given or None


class HostCheck:
    """Refuses (403) requests whose `Host` names a host outside `allowed`; loopback
    addresses written as IP literals are always allowed when `allowed` holds
    `localhost`."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self._app = app
        self._allowed = allowed
        self._loopback_literals = "localhost" in allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allows(scope):
            await answer(send, 403, [(b"content-type", b"text/plain; charset=utf-8")], _REFUSED)
            return
        await self._app(scope, receive, send)

    def _allows(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"host":
                host = host_name(value.decode("latin-1"))
                return host in self._allowed or (self._loopback_literals and is_loopback(host))
        return True  # no Host (HTTP/1.0): not a browser, so not a rebinding
