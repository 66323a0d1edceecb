"""`ServerSecurity`: the security settings as the app uses them.

It loads the TLS files and the tokens file once at construction (so a bad file fails
before anything is bound), binds the port with or without TLS, provides the auth
interceptor when a tokens file is given, and re-reads that file on demand (SIGHUP).
"""

from __future__ import annotations

import logging

import grpc

from ..config import Settings
from .exposure import exposure_warnings, settings_problem
from .interceptor import AuthInterceptor
from .tls import server_credentials
from .tokens import Credentials, TokensFileError, load_tokens

log = logging.getLogger(__name__)


class ServerSecurity:
    """TLS, tokens and the safe-default rules of one server.

    Raises `ValueError` (a `TokensFileError` or `PemFileError`, naming the file) for
    unreadable or malformed files and for settings the entry point would refuse.
    """

    def __init__(self, settings: Settings, service: str) -> None:
        problem = settings_problem(settings)
        if problem is not None:
            raise ValueError(problem)
        self._settings = settings
        self._credentials: grpc.ServerCredentials | None = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            self._credentials = server_credentials(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca
            )
        self._tokens: Credentials | None = None
        self.interceptors: list[grpc.aio.ServerInterceptor] = []
        if settings.tokens_file is not None:
            self._tokens = load_tokens(settings.tokens_file)
            self.interceptors.append(AuthInterceptor(service, self.credentials))

    def credentials(self) -> Credentials:
        """The tokens file as last loaded (empty when authentication is off)."""
        return self._tokens if self._tokens is not None else Credentials()

    def add_port(self, server: grpc.aio.Server) -> int:
        """Bind the configured address, with TLS when configured; returns the port."""
        listen = self._settings.listen
        if self._credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self._credentials)

    def log_exposure(self) -> None:
        for warning in exposure_warnings(self._settings):
            log.warning("%s", warning)

    def reload(self) -> bool:
        """Re-read the tokens file. A file that no longer parses is reported and the
        previous entries stay in force; calls never see a half-read file."""
        path = self._settings.tokens_file
        if path is None:
            return False
        try:
            self._tokens = load_tokens(path)
        except TokensFileError as error:
            log.error("tokens file not reloaded, the previous one stays in force: %s", error)
            return False
        log.info(
            "tokens file reloaded: %d tokens, %d certificate identities",
            len(self._tokens.tokens),
            len(self._tokens.certificates),
        )
        return True
