"""Calls one peer may hold open at once (WatchRuns streams, WaitRun calls).

Why per peer: the server-wide bounds (`max_watchers`, `max_waiters`) protect the
process, but one client that leaks streams would take every slot and lock the others
out. A peer is the client's host as the transport reports it (`context.peer()`, port
dropped, so one host's connections count together). Behind a proxy every caller is
the proxy's host: raise the per-peer bound to the server-wide one there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..domain.errors import LimitExceeded


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string: "ipv4:10.0.0.5:41234" -> "10.0.0.5",
    "ipv6:[::1]:5000" -> "[::1]"; a peer without a port (e.g. "unix:/path") as it is."""
    scheme, sep, address = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address


class PeerSlots:
    """Open calls of one kind per peer host, at most `max_per_peer` each.

    Holds only peers with a call open, so its size is bounded by the open calls.
    """

    def __init__(self, limit: str, max_per_peer: int, what: str) -> None:
        if max_per_peer < 1:
            raise ValueError(f"{limit} must be at least 1")
        self.limit = limit
        self.max_per_peer = max_per_peer
        self._what = what
        self._open: dict[str, int] = {}

    def open_calls(self, peer: str) -> int:
        return self._open.get(peer_host(peer), 0)

    def take(self, peer: str) -> str:
        """Take a slot for one call of `peer` (a `context.peer()` string); returns the
        host to `give_back` when the call ends. Raises LimitExceeded when the peer's
        calls already fill its slots."""
        host = peer_host(peer)
        count = self._open.get(host, 0)
        if count >= self.max_per_peer:
            raise LimitExceeded(
                self.limit, f"at most {self.max_per_peer} {self._what} per client host"
            )
        self._open[host] = count + 1
        return host

    def give_back(self, host: str) -> None:
        """Release a slot `take` returned `host` for."""
        remaining = self._open[host] - 1
        if remaining:
            self._open[host] = remaining
        else:
            del self._open[host]

    @contextmanager
    def held(self, peer: str) -> Iterator[None]:
        """A slot for one call of `peer` while the block runs (`take`, `give_back`)."""
        host = self.take(peer)
        try:
            yield
        finally:
            self.give_back(host)
