"""Server settings: one table drives the dataclass defaults, the flags and the env vars.

Every setting is a `--flag` and a `RUNCONTROL_<NAME>` environment variable; a flag
wins over the environment, the environment over the default. Adding a setting is
one field on `Settings` plus one row in `OPTIONS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from .domain.history import DEFAULT_MAX_AGE, DEFAULT_MAX_CHANGES
from .domain.janitor import DEFAULT_RETENTION
from .domain.limits import (
    DEFAULT_MAX_ACTIVE_RUNS_PER_THREAD,
    DEFAULT_MAX_STORED_RUNS,
    StoreLimits,
)
from .domain.waiting import DEFAULT_MAX_WAITERS
from .domain.watch import (
    DEFAULT_MAX_WATCHERS,
    DEFAULT_PROGRESS_INTERVAL,
    MAX_PROGRESS_INTERVAL,
    MIN_PROGRESS_INTERVAL,
)
from .eventloop import LOOPS
from .security.exposure import settings_problem
from .security.pem import certificate_file, private_key_file
from .security.tokens import tokens_file
from .servicer.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_WAITERS_PER_PEER,
    DEFAULT_MAX_WATCHERS_PER_PEER,
    Limits,
)

ENV_PREFIX = "RUNCONTROL_"
# gRPC's own default receive limit, kept unless the payload limit needs more; and the
# room a CreateRun needs beside its two payloads.
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
MESSAGE_OVERHEAD = 64 << 10
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# A shorter HMAC key would make page tokens forgeable by brute force.
MIN_PAGE_TOKEN_KEY_LENGTH = 16


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    grace_period: float = 5.0
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    log_level: str = "INFO"
    # A secret: kept out of repr so it never reaches a log line.
    page_token_key: str | None = field(default=None, repr=False)
    max_concurrent_rpcs: int | None = None
    # Event loop: "auto" (uvloop when installed), "asyncio" or "uvloop".
    loop: str = "auto"
    # Seconds finished runs are kept before deletion; 0 keeps them forever.
    retention: float = DEFAULT_RETENTION.total_seconds()
    # WatchRuns: open streams at once; default heartbeat period (seconds).
    max_watchers: int = DEFAULT_MAX_WATCHERS
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    # Limits (README "Limits"): each refused past its edge with RESOURCE_EXHAUSTED /
    # LIMIT_EXCEEDED, except the message size, which gRPC itself refuses. None: derived
    # from max_payload_bytes (`max_message_bytes_of`).
    max_message_bytes: int | None = None
    max_active_runs_per_thread: int = DEFAULT_MAX_ACTIVE_RUNS_PER_THREAD
    max_stored_runs: int = DEFAULT_MAX_STORED_RUNS
    max_waiters: int = DEFAULT_MAX_WAITERS
    max_watchers_per_peer: int = DEFAULT_MAX_WATCHERS_PER_PEER
    max_waiters_per_peer: int = DEFAULT_MAX_WAITERS_PER_PEER
    # Change history serving watch resumes and slow watchers: change sets kept, and
    # their maximum age in seconds (0: bounded by count only).
    history_size: int = DEFAULT_MAX_CHANGES
    history_max_age: float = DEFAULT_MAX_AGE.total_seconds()
    # Where runs live: "memory" (this process only) or a PostgreSQL URL shared by
    # replicas. A secret: the URL may carry a password.
    store: str = field(default="memory", repr=False)
    pool_size: int = 10
    # HTTP/2 connection management for replicas behind one address (seconds; 0: off).
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    max_connection_age: float = 300.0
    max_connection_age_grace: float = 0.0
    # Security (runcontrol_server.security): TLS files, the tokens file (roles), and
    # the explicit waiver for a non-loopback address served with neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tokens_file: str | None = None
    insecure: bool = False
    # Observability (runcontrol_server.observability): the Prometheus endpoint (None:
    # off), the stderr line format, a log line per call, OpenTelemetry traces.
    metrics_listen: str | None = None
    log_format: str = "text"
    access_log: bool = False
    otel: bool = False
    # RunControl over Connect and gRPC-Web (runcontrol_server.http; None: off), and the
    # browser origins besides its own allowed to call it (CORS; "*": any).
    http_listen: str | None = None
    http_cors_origin: tuple[str, ...] = ()
    # Host names the HTTP listener answers besides loopback ones (DNS rebinding guard).
    http_allowed_host: tuple[str, ...] = ()


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


_N = TypeVar("_N", int, float)


def _at_most(parse: Callable[[str], _N], limit: int, why: str) -> Callable[[str], _N]:
    """`parse`, then refuse values above `limit` (`why` says what sets the limit)."""

    def bounded(value: str) -> _N:
        number = parse(value)
        if number > limit:
            raise ValueError(f"must be at most {limit} ({why})")
        return number

    return bounded


# grpc takes its sizes and counts as C ints, and its connection times as int
# milliseconds: a larger value stops the server at start with an OverflowError.
GRPC_INT_MAX = 2**31 - 1
GRPC_MS_MAX_SECONDS = GRPC_INT_MAX // 1000
_GRPC_MS = f"about {GRPC_MS_MAX_SECONDS // 86400} days: gRPC takes whole milliseconds as an int"
_GRPC_INT = "gRPC takes it as a 32-bit int"


def _progress_interval(value: str) -> float:
    """Within what a WatchRuns request may ask for (a near-zero default would have every
    stream send progress in a busy loop)."""
    number = _positive_float(value)
    if not MIN_PROGRESS_INTERVAL <= number <= MAX_PROGRESS_INTERVAL:
        raise ValueError(
            f"must be between {MIN_PROGRESS_INTERVAL:g} and {MAX_PROGRESS_INTERVAL:g} seconds"
        )
    return number


def _switch(value: str) -> bool:
    # For a flag without a value: its environment variable says yes or no.
    word = value.lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("must be 1/true/yes/on or 0/false/no/off")
    return word in ("1", "true", "yes", "on")


def _metrics_listen(value: str) -> str:
    # A bare port stays on this machine: exposing metrics is a decision to spell out.
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    try:
        split_host_port(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (or a bare PORT for 127.0.0.1)") from None
    return value


def _log_format(value: str) -> str:
    name = value.lower()
    if name not in ("text", "json"):
        raise ValueError("must be text or json")
    return name


def _loop(value: str) -> str:
    name = value.lower()
    if name not in LOOPS:
        raise ValueError(f"must be one of {', '.join(LOOPS)}")
    return name


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


def _origin(value: str) -> str:
    # An origin as browsers send it: scheme, host and port only, no path, no slash.
    if value == "*":
        return value
    parts = urllib.parse.urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError("expected SCHEME://HOST[:PORT] (http or https, no path) or *")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be an integer from 0 to 65535") from None
    # Written as browsers send it: lower case, brackets around an IPv6 host, and no
    # port when it is the scheme's default (they never send ":443" or ":80").
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_name(value: str) -> str:
    # A host name or IP literal as a Host header names it, without a port.
    name = value.strip().lower()
    if name == "*":
        return name
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if not bare or any(c in bare for c in "/@?#[] ") or (":" in bare and not _is_ipv6(bare)):
        raise ValueError("expected a host name or IP address without scheme or port, or *")
    return bare


def _is_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 6
    except ValueError:
        return False


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
    # A flag without a value (its env var takes 1/0, true/false, ...).
    switch: bool = False
    # A flag given any number of times, each value parsed alone; the setting is the
    # tuple of them (its env var: the values separated by commas).
    repeat: bool = False

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
        _at_most(
            _positive_int,
            (GRPC_INT_MAX - MESSAGE_OVERHEAD) // 2,
            "twice it plus 64 KiB is the gRPC message size, a 32-bit int",
        ),
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
        _at_most(_positive_int, GRPC_INT_MAX, _GRPC_INT),
        "N",
        "calls served at once; more are refused with RESOURCE_EXHAUSTED",
        default_text="unlimited",
    ),
    Option(
        "loop",
        _loop,
        "|".join(LOOPS),
        "event loop; auto takes uvloop when it is installed (a regular dependency where "
        "it has wheels), asyncio's loop elsewhere",
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
        _progress_interval,
        "SECONDS",
        "WatchRuns progress (bookmark) period for requests that do not set one",
    ),
    Option(
        "max_message_bytes",
        _at_most(_positive_int, GRPC_INT_MAX, _GRPC_INT),
        "BYTES",
        "largest request message received; gRPC itself refuses bigger ones with "
        "RESOURCE_EXHAUSTED (no ErrorInfo). At least twice --max-payload-bytes plus "
        f"{MESSAGE_OVERHEAD // 1024} KiB, so a CreateRun with both payloads at their limit fits",
        default_text=f"the larger of {DEFAULT_MAX_MESSAGE_BYTES} and that minimum",
    ),
    Option(
        "max_active_runs_per_thread",
        _positive_int,
        "N",
        "active (PENDING or RUNNING) runs one thread may have: ENQUEUE creates past it are "
        "refused, so a thread's queue cannot grow without bound",
    ),
    Option(
        "max_stored_runs",
        _positive_int,
        "N",
        "runs the store may hold (finished ones included); creates past it are refused. "
        "On PostgreSQL, creates racing on several connections may pass it by the number "
        "in flight",
    ),
    Option(
        "max_waiters",
        _positive_int,
        "N",
        "WaitRun calls waiting at once; more are refused with RESOURCE_EXHAUSTED",
    ),
    Option(
        "max_watchers_per_peer",
        _positive_int,
        "N",
        "WatchRuns streams one client host may hold open, so one client cannot take every "
        "slot (behind a proxy every caller is the proxy: raise it to --max-watchers)",
    ),
    Option(
        "max_waiters_per_peer",
        _positive_int,
        "N",
        "WaitRun calls one client host may have waiting (behind a proxy: raise it to "
        "--max-waiters)",
    ),
    Option(
        "history_size",
        _positive_int,
        "N",
        "change sets kept for watch resumes and slow watchers; older ones are compacted",
    ),
    Option(
        "history_max_age",
        _at_most(_non_negative_float, MAX_RETENTION_SECONDS, "10 years"),
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
        _at_most(_non_negative_float, GRPC_MS_MAX_SECONDS, _GRPC_MS),
        "SECONDS",
        "ping a client connection after this long without activity, so dead peers and "
        "proxies that silently dropped it are noticed; 0 disables",
    ),
    Option(
        "keepalive_timeout",
        _at_most(_positive_float, GRPC_MS_MAX_SECONDS, _GRPC_MS),
        "SECONDS",
        "close a connection whose keepalive ping is not answered within this time",
    ),
    Option(
        "max_connection_age",
        _at_most(_non_negative_float, GRPC_MS_MAX_SECONDS, _GRPC_MS),
        "SECONDS",
        "ask clients to reconnect (GOAWAY) after this long, so new calls spread over "
        "replicas added behind one address; 0 keeps connections forever",
    ),
    Option(
        "max_connection_age_grace",
        _at_most(_non_negative_float, GRPC_MS_MAX_SECONDS, _GRPC_MS),
        "SECONDS",
        "after GOAWAY, how long calls still open may run before the connection closes "
        "(watches then resume on the next replica); 0 waits for them to end",
        default_text="0 (wait)",
    ),
    Option(
        "tls_cert",
        certificate_file,
        "PEM_FILE",
        "serve TLS with this certificate chain (with --tls-key)",
        default_text="none: plaintext",
    ),
    Option(
        "tls_key",
        private_key_file,
        "PEM_FILE",
        "the private key of --tls-cert",
        default_text="none",
    ),
    Option(
        "tls_client_ca",
        certificate_file,
        "PEM_FILE",
        "mutual TLS: accept only clients whose certificate this CA signed",
        default_text="none",
    ),
    Option(
        "tokens_file",
        tokens_file,
        "PATH",
        "require a bearer token (or a listed client certificate) on every RunControl call; "
        "the file gives each its role (reader, worker, admin), one `ROLE TOKEN [NAME]` "
        "per line; re-read on SIGHUP",
        default_text="none: no authentication",
    ),
    Option(
        "insecure",
        _switch,
        "",
        "allow a non-loopback --listen address without TLS and without --tokens-file "
        "(logged as a warning)",
        switch=True,
    ),
    Option(
        "metrics_listen",
        _metrics_listen,
        "HOST:PORT",
        "serve Prometheus metrics over HTTP here (a bare PORT: 127.0.0.1:PORT; port 0 "
        "picks a free one)",
        default_text="off",
    ),
    Option("log_format", _log_format, "text|json", "stderr lines: text, or one JSON object each"),
    Option(
        "access_log",
        _switch,
        "",
        "log a line per call at INFO (method, code, duration, peer, run and thread ids; "
        "never payloads or credentials)",
        switch=True,
    ),
    Option(
        "otel",
        _switch,
        "",
        "OpenTelemetry: a span per call, exported over OTLP as the OTEL_* variables say "
        "(the `otel` extra)",
        switch=True,
    ),
    Option(
        "http_listen",
        _listen,
        "HOST:PORT",
        "also serve RunControl over HTTP here: the Connect protocol (JSON or binary) and "
        "gRPC-Web, with the same tokens and TLS as --listen (the `http` extra); port 0 "
        "picks a free one",
        default_text="off",
    ),
    Option(
        "http_cors_origin",
        _origin,
        "ORIGIN",
        "let browser pages from this origin (SCHEME://HOST[:PORT], or * for any) call the "
        "--http-listen address (CORS); repeat the flag for more",
        default_text="none: same origin only",
        repeat=True,
    ),
    Option(
        "http_allowed_host",
        _host_name,
        "NAME",
        "answer HTTP requests addressed to this host name (a proxy's public name, say; * "
        "for any); a loopback --http-listen answers loopback names only, a guard against "
        "DNS rebinding; repeat the flag for more",
        default_text="loopback names on a loopback address, else any",
        repeat=True,
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
        if option.repeat:
            parser.add_argument(
                option.flag,
                dest=option.name,
                type=_argparse_type(option),
                metavar=option.metavar,
                action="append",
                default=argparse.SUPPRESS,
                help=f"{option.help} [env {option.env}, comma-separated; default "
                f"{_default_text(option)}]",
            )
            continue
        if option.switch:
            parser.add_argument(
                option.flag,
                dest=option.name,
                action="store_const",
                const=True,
                default=argparse.SUPPRESS,
                help=f"{option.help} [env {option.env}=1]",
            )
            continue
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
            value = namespace[option.name]
            values[option.name] = tuple(value) if option.repeat else value
        elif env.get(option.env, ""):
            # An empty variable counts as unset, as `FOO=` in a compose file means.
            raw = env[option.env]
            try:
                if option.repeat:
                    items = (item.strip() for item in raw.split(","))
                    values[option.name] = tuple(option.parse(item) for item in items if item)
                else:
                    values[option.name] = option.parse(raw)
            except ValueError as exc:
                parser.error(f"environment variable {option.env}: {option.describe(raw)}: {exc}")
    settings = Settings(**values)
    problem = (
        settings_problem(settings)
        or message_limit_problem(settings)
        or http_options_problem(settings)
    )
    if problem is not None:
        parser.error(problem)
    return settings


def http_options_problem(settings: Settings) -> str | None:
    """Why the HTTP listener's options are set without a listener, if they are: they
    would do nothing, which is never what was meant."""
    if settings.http_listen is not None:
        return None
    for name, value in (
        ("--http-cors-origin", settings.http_cors_origin),
        ("--http-allowed-host", settings.http_allowed_host),
    ):
        if value:
            return f"{name} needs --http-listen (there is no HTTP listener to apply it to)"
    return None


def min_message_bytes(settings: Settings) -> int:
    """The smallest message limit that still takes a CreateRun with both payloads at
    `max_payload_bytes` (ids and the other fields fit in the overhead)."""
    return 2 * settings.max_payload_bytes + MESSAGE_OVERHEAD


def max_message_bytes_of(settings: Settings) -> int:
    """The request size gRPC accepts (`grpc.max_receive_message_length`)."""
    if settings.max_message_bytes is not None:
        return settings.max_message_bytes
    return max(DEFAULT_MAX_MESSAGE_BYTES, min_message_bytes(settings))


def message_limit_problem(settings: Settings) -> str | None:
    """Why `max_message_bytes` cannot work with `max_payload_bytes`, if it cannot."""
    needed = min_message_bytes(settings)
    if settings.max_message_bytes is not None and settings.max_message_bytes < needed:
        return (
            f"--max-message-bytes {settings.max_message_bytes} is below {needed}, twice "
            f"--max-payload-bytes ({settings.max_payload_bytes}) plus "
            f"{MESSAGE_OVERHEAD // 1024} KiB: lower --max-payload-bytes too"
        )
    return None


def store_limits_of(settings: Settings) -> StoreLimits:
    return StoreLimits(
        max_active_runs_per_thread=settings.max_active_runs_per_thread,
        max_stored_runs=settings.max_stored_runs,
    )


def limits_of(settings: Settings) -> Limits:
    """The servicer's request limits."""
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_watchers_per_peer=settings.max_watchers_per_peer,
        max_waiters_per_peer=settings.max_waiters_per_peer,
    )


def retention_of(settings: Settings) -> timedelta | None:
    """The retention as the manager takes it: None (0 seconds) keeps runs forever."""
    return timedelta(seconds=settings.retention) if settings.retention else None


def log_level_number(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.log_level]
