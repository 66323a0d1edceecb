"""The TLS files: read once, checked to hold what their flag promises.

gRPC would take any bytes and fail only at the first handshake, with a message that
names no file; these checks fail at start instead, naming the flag's file.
"""

from __future__ import annotations

from pathlib import Path

CERTIFICATE = "certificate"
PRIVATE_KEY = "private key"
_MARKERS = {CERTIFICATE: b"-----BEGIN CERTIFICATE-----", PRIVATE_KEY: b"PRIVATE KEY-----"}


class PemFileError(ValueError):
    """A TLS file cannot be read or holds no PEM block of the expected kind."""


def read_pem(path: str, kind: str) -> bytes:
    """The file's bytes, once it holds a PEM `kind` (CERTIFICATE or PRIVATE_KEY)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PemFileError(f"cannot read {kind} file {path}: {error.strerror or error}") from None
    if _MARKERS[kind] not in data:
        raise PemFileError(f"{path} holds no PEM {kind}")
    return data


def certificate_file(value: str) -> str:
    """Settings parser for `--tls-cert` and `--tls-client-ca`."""
    read_pem(value, CERTIFICATE)
    return value


def private_key_file(value: str) -> str:
    """Settings parser for `--tls-key`."""
    read_pem(value, PRIVATE_KEY)
    return value
