"""Server settings: one table drives the dataclass defaults, the flags and the env vars.

Every setting is a `--flag` and a `RUNCONTROL_<NAME>` environment variable; a flag
wins over the environment, the environment over the default. Adding a setting is
one field on `Settings` plus one row in `OPTIONS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

ENV_PREFIX = "RUNCONTROL_"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# A shorter HMAC key would make page tokens forgeable by brute force.
MIN_PAGE_TOKEN_KEY_LENGTH = 16


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    grace_period: float = 5.0
    max_payload_bytes: int = 1 << 20  # 1 MiB: long message histories fit
    log_level: str = "INFO"
    # A secret: kept out of repr so it never reaches a log line.
    page_token_key: str | None = field(default=None, repr=False)
    max_concurrent_rpcs: int | None = None
    # Event loop: "auto" (uvloop when installed), "asyncio" or "uvloop".
    loop: str = "auto"
    # Seconds finished runs are kept before deletion; 0 keeps them forever.
    retention: float = 300.0
    # WatchRuns: open streams at once; default heartbeat period (seconds).
    max_watchers: int = 10_000
    progress_interval: float = 5.0
    # Change history serving watch resumes and slow watchers: change sets kept, and
    # their maximum age in seconds (0: bounded by count only).
    history_size: int = 10_000
    history_max_age: float = 600.0
    # Where runs live: "memory" (this process only) or a PostgreSQL URL shared by
    # replicas. A secret: the URL may carry a password.
    store: str = field(default="memory", repr=False)
    pool_size: int = 10
    # HTTP/2 connection management for replicas behind one address (seconds; 0: off).
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    max_connection_age: float = 300.0
    max_connection_age_grace: float = 0.0


# --- value parsers: each takes the raw string and raises ValueError with a reason.


def split_host_port(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" (IPv6 hosts in brackets) and check the port range."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError("IPv6 hosts must be in brackets, e.g. [::1]:50051")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be an integer from 0 to 65535")
    return host, int(port_text)


def _listen(value: str) -> str:
    split_host_port(value)
    return value


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    # float() accepts "nan" and "inf"; neither is a usable duration.
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a finite number >= 0")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be an integer") from None
    if number <= 0:
        raise ValueError("must be an integer > 0")
    return number


# Longer would overflow date arithmetic somewhere; use 0 to keep runs forever.
MAX_RETENTION_SECONDS = 10 * 366 * 24 * 3600


def _retention(value: str) -> float:
    seconds = _non_negative_float(value)
    if seconds > MAX_RETENTION_SECONDS:
        raise ValueError(f"must be at most {MAX_RETENTION_SECONDS} (10 years); 0 keeps forever")
    return seconds


def _positive_float(value: str) -> float:
    number = _non_negative_float(value)
    if number == 0:
        raise ValueError("must be a finite number > 0")
    return number


def _loop(value: str) -> str:
    name = value.lower()
    if name not in ("auto", "asyncio", "uvloop"):
        raise ValueError("must be one of auto, asyncio, uvloop")
    return name


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


STORE_SCHEMES = ("postgresql://", "postgres://")
EMBEDDED_SCHEME = "embedded:"


def _store(value: str) -> str:
    if value == "memory" or value.startswith(STORE_SCHEMES):
        return value
    if value.startswith(EMBEDDED_SCHEME) and value[len(EMBEDDED_SCHEME) :]:
        return value
    raise ValueError(
        "expected 'memory', a postgresql://USER@HOST:PORT/DB URL or embedded:DIRECTORY"
    )


def _page_token_key(value: str) -> str:
    if len(value) < MIN_PAGE_TOKEN_KEY_LENGTH:
        raise ValueError(f"must be at least {MIN_PAGE_TOKEN_KEY_LENGTH} characters")
    return value


@dataclass(frozen=True)
class Option:
    """One row of the settings table. `name` is the `Settings` field."""

    name: str
    parse: Callable[[str], Any]
    metavar: str
    help: str
    # Shown in --help instead of the field default, for defaults that are not a value.
    default_text: str | None = None
    # Secret values are never echoed back in error messages.
    secret: bool = False

    def describe(self, value: str) -> str:
        return "invalid value" if self.secret else f"invalid value {value!r}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("listen", _listen, "HOST:PORT", "address to serve on; port 0 picks a free port"),
    Option(
        "grace_period",
        _non_negative_float,
        "SECONDS",
        "on SIGTERM/SIGINT, how long in-flight calls may run before they are cancelled",
    ),
    Option(
        "max_payload_bytes",
        _positive_int,
        "BYTES",
        "largest serialized metadata or kwargs accepted per run (kwargs often carry a "
        "whole message history)",
    ),
    Option("log_level", _log_level, "LEVEL", f"stderr log level ({', '.join(_LOG_LEVELS)})"),
    Option(
        "page_token_key",
        _page_token_key,
        "SECRET",
        "key that signs ListRuns page tokens; give every replica the same one so a "
        f"token from one works on another (at least {MIN_PAGE_TOKEN_KEY_LENGTH} characters)",
        default_text="random per process",
        secret=True,
    ),
    Option(
        "max_concurrent_rpcs",
        _positive_int,
        "N",
        "calls served at once; more are refused with RESOURCE_EXHAUSTED",
        default_text="unlimited",
    ),
    Option(
        "loop",
        _loop,
        "auto|asyncio|uvloop",
        "event loop; auto takes uvloop when it is installed (the `uvloop` extra)",
    ),
    Option(
        "retention",
        _retention,
        "SECONDS",
        "how long finished runs are kept before they are deleted (watchers see DELETED, "
        "their request_id is forgotten); 0 keeps them forever",
    ),
    Option(
        "max_watchers",
        _positive_int,
        "N",
        "WatchRuns streams open at once; more are refused with RESOURCE_EXHAUSTED",
    ),
    Option(
        "progress_interval",
        _positive_float,
        "SECONDS",
        "WatchRuns progress (bookmark) period for requests that do not set one",
    ),
    Option(
        "history_size",
        _positive_int,
        "N",
        "change sets kept for watch resumes and slow watchers; older ones are compacted",
    ),
    Option(
        "history_max_age",
        _non_negative_float,
        "SECONDS",
        "change sets older than this are compacted; 0 bounds history by count only",
    ),
    Option(
        "store",
        _store,
        "memory|URL",
        "where runs live: memory (this process, lost on restart), a PostgreSQL URL "
        "(postgresql://USER@HOST:PORT/DB) that several replicas share (the `postgres` "
        "extra), or embedded:DIRECTORY, a private PostgreSQL this server runs in "
        "DIRECTORY (the `embedded` extra): durable with one flag",
        secret=True,
    ),
    Option(
        "pool_size",
        _positive_int,
        "N",
        "PostgreSQL connections per replica (plus one that listens for other replicas)",
    ),
    Option(
        "keepalive_time",
        _non_negative_float,
        "SECONDS",
        "ping a client connection after this long without activity, so dead peers and "
        "proxies that silently dropped it are noticed; 0 disables",
    ),
    Option(
        "keepalive_timeout",
        _positive_float,
        "SECONDS",
        "close a connection whose keepalive ping is not answered within this time",
    ),
    Option(
        "max_connection_age",
        _non_negative_float,
        "SECONDS",
        "ask clients to reconnect (GOAWAY) after this long, so new calls spread over "
        "replicas added behind one address; 0 keeps connections forever",
    ),
    Option(
        "max_connection_age_grace",
        _non_negative_float,
        "SECONDS",
        "after GOAWAY, how long calls still open may run before the connection closes "
        "(watches then resume on the next replica); 0 waits for them to end",
        default_text="0 (wait)",
    ),
)


def _check_table() -> None:
    # Fail at import, not at run time, if the table and the dataclass drift apart.
    fields = {f.name for f in dataclasses.fields(Settings)}
    rows = [o.name for o in OPTIONS]
    if sorted(rows) != sorted(fields):
        raise AssertionError(f"OPTIONS {rows} do not match Settings fields {sorted(fields)}")


_check_table()
_DEFAULTS = Settings()


def _default_text(option: Option) -> str:
    if option.default_text is not None:
        return option.default_text
    return str(getattr(_DEFAULTS, option.name))


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return option.parse(value)
        except ValueError as exc:
            # argparse shows the message of ArgumentTypeError as is.
            raise argparse.ArgumentTypeError(f"{option.describe(value)}: {exc}") from None

    return parse


def build_parser(prog: str | None = "runcontrol-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the runcontrol.v1.RunControl gRPC API. Each flag can also be "
        "set with the environment variable shown; a flag wins over the environment.",
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=_argparse_type(option),
            metavar=option.metavar,
            # SUPPRESS leaves unset flags out of the namespace, so env and defaults
            # can be told apart from an explicit flag.
            default=argparse.SUPPRESS,
            help=f"{option.help} [env {option.env}; default {_default_text(option)}]",
        )
    return parser


def parse_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
) -> Settings:
    """Resolve every setting: flag, then `RUNCONTROL_<NAME>`, then the default.

    An empty environment variable counts as unset. Invalid values exit with
    status 2 and a usage message (argparse's `error`).
    """
    parser = parser or build_parser()
    env = os.environ if environ is None else environ
    namespace = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name in namespace:
            values[option.name] = namespace[option.name]
        elif env.get(option.env, ""):
            # An empty variable counts as unset, as `FOO=` in a compose file means.
            raw = env[option.env]
            try:
                values[option.name] = option.parse(raw)
            except ValueError as exc:
                parser.error(f"environment variable {option.env}: {option.describe(raw)}: {exc}")
    return Settings(**values)


def retention_of(settings: Settings) -> timedelta | None:
    """The retention as the manager takes it: None (0 seconds) keeps runs forever."""
    return timedelta(seconds=settings.retention) if settings.retention else None


def log_level_number(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level]
