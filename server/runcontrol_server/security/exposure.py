"""Safe defaults: what the server refuses to start with, and what it warns about.

The default address is loopback (127.0.0.1). Serving any other address with neither
TLS nor token authentication would let anyone who reaches the port create, cancel and
delete every run, so it needs an explicit `--insecure`, and is logged as a warning
when given.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports this module: only the type, never at run time
    from ..config import Settings


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (bracketed or not) and `localhost`. Any other name
    counts as non-loopback: it may resolve to anything."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host(listen: str) -> str:
    return listen.rpartition(":")[0]


def uses_tls(settings: Settings) -> bool:
    return settings.tls_cert is not None


def uses_auth(settings: Settings) -> bool:
    return settings.tokens_file is not None


def settings_problem(settings: Settings) -> str | None:
    """Why these settings must not start (a usage error), or None."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        return "--tls-cert and --tls-key go together: give both or neither"
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        return "--tls-client-ca (mutual TLS) needs TLS: give --tls-cert and --tls-key too"
    for listen in _addresses(settings):
        exposed = not is_loopback(_host(listen))
        if exposed and not uses_tls(settings) and not uses_auth(settings) and not settings.insecure:
            return (
                f"refusing to serve {listen} without TLS or authentication: anyone "
                "who reaches it could create, cancel and delete every run. Give --tls-cert "
                "and --tls-key, or --tokens-file, or --insecure to accept that "
                "(RUNCONTROL_INSECURE=1)"
            )
    return None


def _addresses(settings: Settings) -> list[str]:
    """Every address serving RunControl: the gRPC one and the HTTP one when given
    (the same TLS and tokens guard both)."""
    return [settings.listen] + ([settings.http_listen] if settings.http_listen else [])


def exposure_warnings(settings: Settings) -> list[str]:
    """What to log at start about how exposed the server is."""
    warnings: list[str] = []
    for listen in _addresses(settings):
        if is_loopback(_host(listen)):
            continue
        if not uses_tls(settings) and not uses_auth(settings):
            warnings.append(
                f"serving {listen} without TLS or authentication (--insecure): "
                "anyone who reaches it can create, cancel and delete every run"
            )
        elif not uses_tls(settings):
            warnings.append(
                f"serving {listen} without TLS: bearer tokens cross the network "
                "in plaintext (give --tls-cert and --tls-key)"
            )
    return warnings
