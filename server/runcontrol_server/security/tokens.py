"""The tokens file: which bearer tokens and client certificates have which role.

One entry per line; blank lines and everything after `#` are ignored::

    # ROLE   CREDENTIAL                          [NAME]
    admin    4f9c2e7a0b1d4c8e9f3a6b5d2c1e0f7a    ops
    worker   cert:worker-1.internal              worker-1

ROLE is `reader`, `worker` or `admin`. CREDENTIAL is either a bearer token (16 to 4096
visible ASCII characters, no spaces, not starting with `cert:`) or `cert:IDENTITY`,
which gives that role to a client certificate (mutual TLS) whose subject CN or one of
whose subject alternative names is IDENTITY. NAME, optional, stands for the entry in
logs (tokens are never logged); it defaults to `line N`.

Tokens are kept only as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .roles import Role

CERT_PREFIX = "cert:"
MIN_TOKEN_LENGTH = 16  # shorter tokens could be guessed
MAX_TOKEN_LENGTH = 4096
_VISIBLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))


class TokensFileError(ValueError):
    """The tokens file cannot be read or is malformed; the message names the line."""


@dataclass(frozen=True)
class Identity:
    """Who a credential belongs to: its NAME in the tokens file and its role."""

    name: str
    role: Role


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Credentials:
    """One parsed tokens file. Immutable: a reload builds a new one."""

    tokens: tuple[tuple[bytes, Identity], ...] = ()  # (SHA-256 of the token, identity)
    certificates: Mapping[str, Identity] = field(default_factory=dict)

    def for_token(self, token: str) -> Identity | None:
        """The identity of `token`, or None. Every entry is compared, whatever matches,
        so the time taken says nothing about which entries came close."""
        digest = _digest(token)
        found: Identity | None = None
        for known, identity in self.tokens:
            if hmac.compare_digest(digest, known):
                found = identity
        return found

    def for_certificate(self, names: Iterable[str]) -> Identity | None:
        """The identity of a client certificate with these names (CN and SANs); when
        several entries match, the one with the highest role."""
        matches = [self.certificates[name] for name in names if name in self.certificates]
        return max(matches, key=lambda identity: identity.role, default=None)


def _token_problem(token: str) -> str | None:
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
        return f"a token must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters long"
    if not set(token) <= _VISIBLE_ASCII:
        return "a token must be visible ASCII characters only (it travels in a header)"
    return None


def _entry(fields: list[str], number: int) -> tuple[str, Identity]:
    """One line's (credential, identity); ValueError says what is wrong with it."""
    if len(fields) not in (2, 3):
        raise ValueError("expected ROLE CREDENTIAL [NAME]")
    role = Role.parse(fields[0])
    credential = fields[1]
    if credential.startswith(CERT_PREFIX):
        if credential == CERT_PREFIX:
            raise ValueError("cert: needs the certificate's CN or SAN, e.g. cert:worker-1")
    else:
        problem = _token_problem(credential)
        if problem is not None:
            raise ValueError(problem)
    return credential, Identity(fields[2] if len(fields) == 3 else f"line {number}", role)


def parse_tokens(text: str, source: str = "tokens file") -> Credentials:
    """Parse the file's `text`; errors name `source` and the line, never a token."""
    tokens: list[tuple[bytes, Identity]] = []
    certificates: dict[str, Identity] = {}
    seen: dict[str | bytes, int] = {}  # certificate name or token digest -> its line
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            credential, identity = _entry(fields, number)
        except ValueError as error:
            raise TokensFileError(f"{source}, line {number}: {error}") from None
        key: str | bytes
        if credential.startswith(CERT_PREFIX):
            key = credential[len(CERT_PREFIX) :]
            what = f"certificate identity {key!r}"
        else:
            key = _digest(credential)
            what = "the same token"
        if key in seen:
            raise TokensFileError(f"{source}, line {number}: {what} is already on line {seen[key]}")
        seen[key] = number
        if isinstance(key, bytes):
            tokens.append((key, identity))
        else:
            certificates[key] = identity
    if not tokens and not certificates:
        raise TokensFileError(f"{source}: no entries: every call would be refused")
    return Credentials(tuple(tokens), certificates)


def load_tokens(path: str) -> Credentials:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TokensFileError(f"cannot read tokens file {path}: {error}") from None
    return parse_tokens(text, source=path)


def tokens_file(value: str) -> str:
    """Settings parser for `--tokens-file`: the path, once it parses."""
    load_tokens(value)
    return value
