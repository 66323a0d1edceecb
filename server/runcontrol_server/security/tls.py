"""gRPC TLS: the server's credentials, and the names on a client's certificate."""

from __future__ import annotations

from typing import Any

import grpc

from .pem import CERTIFICATE, PRIVATE_KEY, read_pem

# Keys of grpc's auth context for a verified client certificate (mutual TLS).
_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with `client_ca`, mutual TLS:
    only clients presenting a certificate signed by that CA complete the handshake."""
    pair = (read_pem(key, PRIVATE_KEY), read_pem(cert, CERTIFICATE))
    roots = read_pem(client_ca, CERTIFICATE) if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )


def peer_certificate_names(context: Any) -> tuple[str, ...]:
    """The subject CN and SANs of the client's verified certificate, CN first; empty
    without mutual TLS. `context` is the call's grpc.aio.ServicerContext."""
    auth = context.auth_context()
    names: dict[str, None] = {}
    for key in _NAME_KEYS:
        for value in auth.get(key, ()):
            names[value.decode("utf-8", "replace")] = None
    return tuple(names)
