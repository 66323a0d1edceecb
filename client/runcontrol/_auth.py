"""Client-side security: TLS channel credentials and a bearer token on every call.

`AsyncClient`, `Client` and `runctl` build their channels here. Each setting is an
argument, else an environment variable (an explicit argument wins, even `None`):

==============================  =====================================================
``RUNCONTROL_TOKEN``            bearer token, sent as ``authorization: Bearer <token>``
``RUNCONTROL_TLS_CA``           PEM file of the CA that signed the server's certificate;
                                set, the channel uses TLS
``RUNCONTROL_TLS_CLIENT_CERT``  PEM file of this client's certificate (mutual TLS)
``RUNCONTROL_TLS_CLIENT_KEY``   PEM file of that certificate's private key
==============================  =====================================================

The client certificate's variables are not the server's `RUNCONTROL_TLS_CERT` /
`RUNCONTROL_TLS_KEY`, so one environment can configure a server and its clients.
The token travels in a channel interceptor rather than call credentials because gRPC
refuses call credentials on plaintext channels, and a loopback server may well check
tokens without TLS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "RUNCONTROL_TOKEN"
TLS_CA_ENV = "RUNCONTROL_TLS_CA"
TLS_CLIENT_CERT_ENV = "RUNCONTROL_TLS_CLIENT_CERT"
TLS_CLIENT_KEY_ENV = "RUNCONTROL_TLS_CLIENT_KEY"
AUTHORIZATION = "authorization"

# "Not given": take the environment. Distinct from None, which means "none".
UNSET: Any = object()


class SecuritySettingError(ValueError):
    """A token or TLS setting cannot be used (unreadable file, half a key pair, ...)."""


def read_pem_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SecuritySettingError(f"cannot read {what} {path}: {error.strerror}") from None


def _check_token(token: str | None) -> str | None:
    if token is None or not token.strip():
        return None
    token = token.strip()
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise SecuritySettingError("a token must be visible ASCII characters only")
    return token


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches the server: plaintext or TLS, with or without a token."""

    token: str | None = field(default=None, repr=False)
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)
    credentials: grpc.ChannelCredentials | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if self.credentials is not None:
            return self.credentials
        if self.root_certificates is None and self.client_certificate is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        credentials = self.channel_credentials()
        interceptors: list[grpc.aio.ClientInterceptor] | None = None
        if self.token:
            interceptors = [_AioUnaryBearer(self.token), _AioStreamBearer(self.token)]
        if credentials is None:
            return grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        return grpc.aio.secure_channel(target, credentials, options, interceptors=interceptors)

    def channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        credentials = self.channel_credentials()
        channel = (
            grpc.insecure_channel(target, options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options)
        )
        return grpc.intercept_channel(channel, _SyncBearer(self.token)) if self.token else channel


def resolve(
    *,
    token: str | None = UNSET,
    root_certificates: bytes | None = UNSET,
    client_certificate: bytes | None = UNSET,
    client_key: bytes | None = UNSET,
    credentials: grpc.ChannelCredentials | None = None,
    environ: Mapping[str, str] | None = None,
) -> ChannelSecurity:
    """The security of a channel the client makes: arguments, else the environment.

    With `credentials` (your own channel credentials) the TLS arguments must stay
    unset and the TLS variables are ignored; the token still applies.
    """
    env = os.environ if environ is None else environ
    tls_given = [v for v in (root_certificates, client_certificate, client_key) if v is not UNSET]
    if credentials is not None and tls_given:
        raise SecuritySettingError("give credentials or the TLS certificates, not both")

    def from_env(value: bytes | None, name: str, what: str) -> bytes | None:
        if value is not UNSET:
            return value
        path = env.get(name, "") if credentials is None else ""
        return read_pem_file(path, f"{what} (${name})") if path else None

    security = ChannelSecurity(
        token=_check_token(env.get(TOKEN_ENV) if token is UNSET else token),
        root_certificates=from_env(root_certificates, TLS_CA_ENV, "CA certificate"),
        client_certificate=from_env(client_certificate, TLS_CLIENT_CERT_ENV, "client certificate"),
        client_key=from_env(client_key, TLS_CLIENT_KEY_ENV, "client key"),
        credentials=credentials,
    )
    if (security.client_certificate is None) != (security.client_key is None):
        raise SecuritySettingError("a client certificate and its key go together")
    return security


def check_no_channel_settings(**given: Any) -> None:
    """With a caller's own channel, security is the channel's: refuse settings that
    would silently be ignored."""
    named = [name for name, value in given.items() if value is not UNSET and value is not None]
    if named:
        raise ValueError(f"{', '.join(named)} cannot be combined with channel=")


def _bearer(token: str) -> tuple[str, str]:
    return (AUTHORIZATION, f"Bearer {token}")


def _with_header(
    details: grpc.aio.ClientCallDetails, header: tuple[str, str]
) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), header)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# One class per call kind: grpc.aio files an interceptor under the first kind it
# implements only, so a class doing both would skip the streams (WatchRuns).
class _AioUnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = _bearer(token)

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_header(client_call_details, self._header), request)


class _AioStreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._header = _bearer(token)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_header(client_call_details, self._header), request)


class _SyncDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the token to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._header = _bearer(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncDetails(details, (*(details.metadata or ()), self._header))

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)
