"""`runctl`: the RunControl command-line client, in the style of etcdctl and the temporal CLI.

::

    runctl create thread-1 --metadata '{"user": "ada"}'
    runctl list --thread thread-1 -o json
    runctl watch --thread thread-1

Every command talks to one server (`--addr`, else `$RUNCONTROL_ADDR`, else
127.0.0.1:50051) with a per-call deadline (`--timeout`), and prints a table or one
JSON object per line (`-o json`). Formatting lives in `_cli_format` (pure functions);
this module parses arguments, calls the server and maps outcomes to exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _auth
from . import _cli_format as fmt
from ._client import AsyncClient, Client
from ._models import CancelAction, DisconnectMode, MultitaskStrategy, Run, RunStatus
from ._requests import CALL_METADATA, channel_options
from ._watch import Bookmark, Resynced, WatchEvent, resuming_watch
from .errors import RunControlError, RunNotFound, translated_errors
from .v1 import run_control_pb2 as pb
from .v1 import run_control_pb2_grpc

PROG = "runctl"
ADDR_ENV = "RUNCONTROL_ADDR"
DEFAULT_PORT = 50051
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CALL_TIMEOUT = 10.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_WAIT_TIMEOUT = 4
EXIT_RUN_ERROR = 5
EXIT_RUN_TIMEOUT = 6
EXIT_RUN_INTERRUPTED = 7
EXIT_INTERRUPTED = 130

# `wait`: how a finished run that did not succeed ends the command.
_RUN_FAILED_EXIT = {
    RunStatus.ERROR: EXIT_RUN_ERROR,
    RunStatus.TIMEOUT: EXIT_RUN_TIMEOUT,
    RunStatus.INTERRUPTED: EXIT_RUN_INTERRUPTED,
}

_STATUS_NAMES = [s.name.lower() for s in RunStatus]

_MAIN_DESCRIPTION = """\
Command-line client for the runcontrol service: create, inspect, cancel, wait for
and watch runs, and move them through their statuses as a worker would."""

_MAIN_EPILOG = f"""\
Examples:
  runctl create thread-1 --metadata '{{"user": "ada"}}'
  runctl list --thread thread-1 --status pending running
  runctl status RUN_ID running --worker-id w1
  runctl wait RUN_ID --wait-timeout 60 && echo finished
  runctl watch --thread thread-1 -o json
  RUNCONTROL_ADDR=runcontrol:50051 runctl health

Global options (--addr, --output/-o, --timeout) may also follow the command.

Output:
  table  aligned columns: RUN_ID THREAD STATUS WORKER CREATED UPDATED REV
  json   one JSON object per run per line (watch: one per event); statuses as
         lower-case names, timestamps ISO 8601 UTC

Exit codes:
  0    success
  1    the server answered with an error ("error: REASON: message" on stderr),
       or could not be reached; health: the server is not SERVING; watch: gave
       up reconnecting after --reconnect-timeout
  2    usage error (bad flags or arguments)
  3    run not found (RUN_NOT_FOUND)
  4    wait: the wait timed out before the run finished (it is still active)
  5    wait: the run finished with status error
  6    wait: the run finished with status timeout (its run deadline passed)
  7    wait: the run finished with status interrupted (cancelled)
  130  interrupted (Ctrl-C)

Environment:
  {ADDR_ENV}  server address used when --addr is not given (default {DEFAULT_ADDR})
  {_auth.TOKEN_ENV}, {_auth.TLS_CA_ENV}, {_auth.TLS_CLIENT_CERT_ENV},
  {_auth.TLS_CLIENT_KEY_ENV}
      used when --token, --tls-ca, --tls-cert, --tls-key are not given

Addresses: HOST[:PORT], [IPV6][:PORT] or a bare IPv6 address; the port defaults to
{DEFAULT_PORT}. A gRPC target with a scheme (dns:, unix:, ipv4:, ...) is used as is."""


# --- argument types --------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _lower(text: str) -> str:
    return text.lower()


def _pem_file(text: str) -> bytes:
    try:
        return _auth.read_pem_file(text, "file")
    except _auth.SecuritySettingError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_SCHEME = re.compile(r"^(dns|unix|unix-abstract|vsock|ipv4|ipv6|xds|google-c2p):", re.I)
_BRACKETED = re.compile(r"^\[([^\[\]]+)\](?::(\d+))?$")


def address(text: str) -> str:
    """A server address with the port filled in (gRPC would otherwise dial 443).

    `host` -> `host:50051`; `[::1]` and a bare `::1` -> `[::1]:50051`; `host:port` and
    `[::1]:port` are kept; a gRPC target with a scheme (`dns:///h:1`, `unix:/s`) is
    passed through unchanged.
    """
    text = text.strip()
    if _SCHEME.match(text):
        return text
    bracketed = _BRACKETED.match(text)
    if bracketed:
        return f"[{bracketed[1]}]:{bracketed[2] or DEFAULT_PORT}"
    colons = text.count(":")
    if colons >= 2 and "[" not in text and "]" not in text:
        return f"[{text}]:{DEFAULT_PORT}"  # a bare IPv6 address has no port
    if colons == 0 and text and not any(c in text for c in "[]/ "):
        return f"{text}:{DEFAULT_PORT}"
    if colons == 1:
        host, port = text.split(":")
        if host and not any(c in host for c in "[]/ ") and port.isdigit():
            return text
    raise argparse.ArgumentTypeError(
        f"not an address (HOST[:PORT], [IPV6][:PORT] or a gRPC target): {text!r}"
    )


# --- parser -----------------------------------------------------------------------------


def _add_globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The global options; on subcommands they default to SUPPRESS so they never
    overwrite a value given before the command."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--addr",
        type=address,
        default=default(os.environ.get(ADDR_ENV) or DEFAULT_ADDR),
        metavar="HOST[:PORT]",
        help=f"server address; the port defaults to {DEFAULT_PORT} "
        f"(default: ${ADDR_ENV}, else {DEFAULT_ADDR})",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        type=_lower,
        default=default("table"),
        help="output format (default: table)",
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=default(DEFAULT_CALL_TIMEOUT),
        metavar="SECONDS",
        help=f"deadline of each call, 0 for none (default: {DEFAULT_CALL_TIMEOUT:g})",
    )
    # Security: a flag wins over its environment variable (read by `_auth.resolve`).
    group.add_argument(
        "--token",
        default=default(None),
        help=f"bearer token sent with every call (default: ${_auth.TOKEN_ENV}); "
        "the variable keeps it out of the process list",
    )
    for flag, env, what in (
        ("--tls-ca", _auth.TLS_CA_ENV, "use TLS, trusting the CA in this PEM file"),
        ("--tls-cert", _auth.TLS_CLIENT_CERT_ENV, "client certificate (mutual TLS), PEM"),
        ("--tls-key", _auth.TLS_CLIENT_KEY_ENV, "the client certificate's key, PEM"),
    ):
        group.add_argument(
            flag, type=_pem_file, default=default(None), metavar="FILE", help=f"{what} (${env})"
        )


def _command(
    commands: Any, name: str, help_text: str, examples: Sequence[str], description: str = ""
) -> argparse.ArgumentParser:
    epilog = "Examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, suppress=True)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_MAIN_DESCRIPTION,
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = _command(
        commands,
        "create",
        "create a run on a thread",
        [
            "runctl create thread-1",
            "runctl create thread-1 --strategy interrupt --assistant-id agent",
            """runctl create thread-1 --metadata '{"user": "ada"}' --kwargs '{"n": 3}'""",
            "runctl create thread-1 --request-id job-42 --run-timeout 300 -o json",
        ],
        "Create a PENDING run on THREAD_ID. --strategy decides what happens when the\n"
        "thread already has an active run; --request-id makes a retried create safe.",
    )
    create.add_argument("thread_id", metavar="THREAD_ID")
    create.add_argument("--assistant-id", metavar="ID")
    create.add_argument(
        "--strategy",
        type=_lower,
        choices=[m.name.lower() for m in MultitaskStrategy],
        help="multitask strategy when the thread is busy (server default: reject)",
    )
    create.add_argument(
        "--on-disconnect",
        type=_lower,
        choices=[m.name.lower() for m in DisconnectMode],
        help="what an attached waiter going away does (server default: cancel)",
    )
    create.add_argument("--metadata", type=_json_object, metavar="JSON", help="a JSON object")
    create.add_argument("--kwargs", type=_json_object, metavar="JSON", help="a JSON object")
    create.add_argument("--request-id", metavar="ID", help="idempotency key (default: random)")
    create.add_argument(
        "--run-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="deadline after which an unfinished run becomes timeout",
    )

    get = _command(
        commands, "get", "show one run", ["runctl get RUN_ID", "runctl get RUN_ID -o json"]
    )
    get.add_argument("run_id", metavar="RUN_ID")

    listing = _command(
        commands,
        "list",
        "list runs, newest first",
        [
            "runctl list",
            "runctl list --thread thread-1",
            "runctl list --status pending running --limit 20",
            "runctl list -o json | jq -r .run_id",
        ],
    )
    listing.add_argument("--thread", metavar="THREAD_ID", help="only runs of this thread")
    listing.add_argument(
        "--status",
        nargs="+",
        action="extend",
        type=_lower,
        choices=_STATUS_NAMES,
        metavar="STATUS",
        help=f"only runs in these statuses ({', '.join(_STATUS_NAMES)})",
    )
    listing.add_argument("--limit", type=_count, metavar="N", help="print at most N runs")
    listing.add_argument(
        "--page-size", type=_count, metavar="N", help="runs fetched per call (server default)"
    )

    cancel = _command(
        commands,
        "cancel",
        "cancel a run",
        [
            "runctl cancel RUN_ID",
            "runctl cancel RUN_ID --action rollback --reason 'user pressed stop'",
        ],
        "Cancel an active run. Cancelling a run that already finished is not an error:\n"
        "the run is printed unchanged and a note goes to stderr.",
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument(
        "--action",
        type=_lower,
        choices=[m.name.lower() for m in CancelAction],
        help="cancel action (server default: interrupt)",
    )
    cancel.add_argument("--reason", metavar="TEXT")

    status = _command(
        commands,
        "status",
        "move a run to a status (the worker transition)",
        [
            "runctl status RUN_ID running --worker-id w1",
            "runctl status RUN_ID success --worker-id w1",
            "runctl status RUN_ID error --error 'out of memory'",
            "runctl status RUN_ID running --worker-id w2 --expected-mod-revision 7",
        ],
        "Move RUN_ID to STATUS as a worker does: claim it (running), then finish it\n"
        "(success, error, timeout, interrupted). Repeating the transition that already\n"
        f"happened is a no-op. STATUS is one of: {', '.join(_STATUS_NAMES)}.",
    )
    status.add_argument("run_id", metavar="RUN_ID")
    status.add_argument("status", type=_lower, choices=_STATUS_NAMES, metavar="STATUS")
    status.add_argument("--worker-id", metavar="ID")
    status.add_argument("--error", metavar="TEXT", help="error message (for error)")
    status.add_argument(
        "--expected-mod-revision",
        type=_count,
        metavar="N",
        help="only if the run is still at this mod revision (compare-and-set)",
    )

    delete = _command(
        commands,
        "delete",
        "delete a finished run",
        ["runctl delete RUN_ID"],
        "Delete a finished run now (active runs are refused with RUN_ACTIVE).",
    )
    delete.add_argument("run_id", metavar="RUN_ID")

    wait = _command(
        commands,
        "wait",
        "wait until a run finishes",
        [
            "runctl wait RUN_ID",
            'runctl wait RUN_ID --wait-timeout 60; echo "exit $?"',
            "runctl wait RUN_ID --attach   # Ctrl-C cancels the run (on-disconnect cancel)",
        ],
        "Block until RUN_ID is in a terminal status and print it. The exit code says\n"
        "how it ended:\n"
        "  0  success\n"
        "  4  --wait-timeout passed first: the run is still active (printed as it is)\n"
        "  5  the run finished with status error\n"
        "  6  the run finished with status timeout\n"
        "  7  the run finished with status interrupted\n"
        "  3  no such run\n"
        "  1  the server answered with an error or could not be reached",
    )
    wait.add_argument("run_id", metavar="RUN_ID")
    wait.add_argument(
        "--wait-timeout", type=_seconds, metavar="SECONDS", help="give up after this long"
    )
    wait.add_argument(
        "--attach",
        action="store_true",
        help="going away before the end cancels the run if its on-disconnect is cancel",
    )

    watch = _command(
        commands,
        "watch",
        "stream changes to runs until Ctrl-C",
        [
            "runctl watch",
            "runctl watch --thread thread-1 --send-initial",
            "runctl watch --status running --start-revision 42 -o json",
            "runctl watch --run-id RUN_ID --max-events 1",
            "runctl watch --reconnect-timeout 60   # exit 1 if the server is gone for 60s",
        ],
        "Print every change to matching runs as it happens (table: one row per event;\n"
        'json: {"type", "revision", "prev_status", "run"} per line). Stop it with Ctrl-C\n'
        "or --max-events.\n"
        "\n"
        "Table columns have fixed widths: a longer value is cut and ends in '…' (-o json\n"
        "has every value in full). UPDATED is the run's last update as wall-clock time\n"
        "(HH:MM:SS, local time); DETAIL is the run's error and cancel reason, if any.\n"
        "\n"
        "A --run-id that does not exist (yet) is noted once on stderr; the watch goes on\n"
        "and shows the run if it is created later.\n"
        "\n"
        "When the connection is lost, the watch reconnects with backoff and resumes\n"
        "where it stopped, noting 'reconnecting to ADDR (attempt N)' on stderr; it exits\n"
        "1 if it has not reconnected after --reconnect-timeout (default: never).",
    )
    watch.add_argument("--thread", metavar="THREAD_ID", help="only runs of this thread")
    watch.add_argument(
        "--run-id", nargs="+", action="extend", metavar="RUN_ID", help="only these runs"
    )
    watch.add_argument(
        "--status",
        nargs="+",
        action="extend",
        type=_lower,
        choices=_STATUS_NAMES,
        metavar="STATUS",
        help="only runs in these statuses",
    )
    watch.add_argument(
        "--start-revision",
        type=_count,
        default=0,
        metavar="N",
        help="replay history from revision N (default: from now)",
    )
    watch.add_argument(
        "--send-initial",
        action="store_true",
        help="first print the current matching runs as added events",
    )
    watch.add_argument(
        "--max-events",
        type=_count,
        metavar="N",
        help="stop after N events, counted in whole revisions: the revision that reaches N "
        "is printed to its end (the --send-initial set is one revision); 0: never",
    )
    watch.add_argument(
        "--reconnect-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="give up (exit 1) when the server has been unreachable this long "
        "(default: keep trying forever)",
    )

    health = _command(
        commands,
        "health",
        "check whether the server is serving",
        ["runctl health", "runctl health --addr 10.0.0.5:50051 -o json"],
        "Ask the standard gRPC health service. Exits 0 when SERVING, 1 otherwise.",
    )
    health.add_argument(
        "--service", default="", metavar="NAME", help="one service (default: the whole server)"
    )
    return parser


# --- running commands --------------------------------------------------------------------


class _Failure(Exception):
    """A command outcome that ends with a message on stderr and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Context:
    args: argparse.Namespace
    now: Callable[[], datetime]
    security: _auth.ChannelSecurity

    @property
    def output(self) -> str:
        value: str = self.args.output
        return value

    @property
    def call_timeout(self) -> float | None:
        value: float = self.args.timeout
        return value or None


def _out(line: str = "") -> None:
    print(line, flush=True)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_runs(ctx: _Context, runs: Sequence[Run]) -> None:
    if ctx.output == "json":
        for run in runs:
            _out(fmt.run_json(run))
    else:
        for line in fmt.runs_table(runs, ctx.now()):
            _out(line)


def _client(ctx: _Context) -> Client:
    s = ctx.security
    return Client(
        ctx.args.addr,
        timeout=ctx.call_timeout,
        token=s.token,
        root_certificates=s.root_certificates,
        client_certificate=s.client_certificate,
        client_key=s.client_key,
    )


def _security(args: argparse.Namespace) -> _auth.ChannelSecurity:
    """The flags, else the environment variables."""

    def given(value: Any) -> Any:
        return _auth.UNSET if value is None else value

    return _auth.resolve(
        token=given(args.token),
        root_certificates=given(args.tls_ca),
        client_certificate=given(args.tls_cert),
        client_key=given(args.tls_key),
    )


def _cmd_create(ctx: _Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        handle = client.create_run(
            a.thread_id,
            assistant_id=a.assistant_id,
            on_disconnect=DisconnectMode[a.on_disconnect.upper()] if a.on_disconnect else None,
            multitask_strategy=MultitaskStrategy[a.strategy.upper()] if a.strategy else None,
            metadata=a.metadata,
            kwargs=a.kwargs,
            request_id=a.request_id,
            run_timeout=a.run_timeout,
        )
    _print_runs(ctx, [handle.run])
    creation = handle.creation
    if creation is not None:
        if creation.replayed:
            _note("note: replayed: this request_id already created the run")
        if creation.interrupted_runs:
            ids = ", ".join(r.run_id for r in creation.interrupted_runs)
            _note(f"note: interrupted: {ids}")
        if creation.queued_behind_run_ids:
            _note(f"note: queued behind: {', '.join(creation.queued_behind_run_ids)}")
    return EXIT_OK


def _cmd_get(ctx: _Context) -> int:
    with _client(ctx) as client:
        run = client.fetch_run(ctx.args.run_id)
    _print_runs(ctx, [run])
    return EXIT_OK


def _statuses(names: Iterable[str] | None) -> list[RunStatus]:
    return [RunStatus[name.upper()] for name in names or ()]


def _cmd_list(ctx: _Context) -> int:
    a = ctx.args
    limit: int | None = a.limit
    page_size: int | None = a.page_size
    if page_size is None and limit:
        page_size = min(limit, 1000)
    runs: list[Run] = []
    if limit != 0:
        with _client(ctx) as client:
            for run in client.list_runs(
                thread_id=a.thread, statuses=_statuses(a.status), page_size=page_size or 0
            ):
                runs.append(run)
                if limit is not None and len(runs) >= limit:
                    break
    if runs or ctx.output == "table":
        _print_runs(ctx, runs)
    if not runs and ctx.output == "table":
        _note("no runs found")
    return EXIT_OK


def _cmd_cancel(ctx: _Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        run, cancelled = client.cancel_run(
            a.run_id,
            action=CancelAction[a.action.upper()] if a.action else None,
            reason=a.reason,
        )
    _print_runs(ctx, [run])
    if not cancelled:
        _note(f"note: not cancelled by this call: the run is {run.status.name.lower()}")
    return EXIT_OK


def _cmd_status(ctx: _Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        run, changed = client.set_status(
            a.run_id,
            RunStatus[a.status.upper()],
            error=a.error,
            worker_id=a.worker_id,
            expected_mod_revision=a.expected_mod_revision,
        )
    _print_runs(ctx, [run])
    if not changed:
        _note("note: unchanged: the run was already in that state")
    return EXIT_OK


def _cmd_delete(ctx: _Context) -> int:
    with _client(ctx) as client:
        run = client.delete_run(ctx.args.run_id)
    _print_runs(ctx, [run])
    return EXIT_OK


def _cmd_wait(ctx: _Context) -> int:
    a = ctx.args
    with _client(ctx) as client:
        run, done = client.wait_run(a.run_id, timeout=a.wait_timeout, attach=a.attach)
    _print_runs(ctx, [run])
    status = run.status.name.lower()
    if not done:
        raise _Failure(
            f"error: wait timed out: run {run.run_id} is still {status}", EXIT_WAIT_TIMEOUT
        )
    failed = _RUN_FAILED_EXIT.get(run.status)
    if failed is not None:
        detail = " ".join((run.error or run.cancel_reason or "").split())  # one line
        raise _Failure(
            f"error: run {run.run_id} finished {status}" + (f": {detail}" if detail else ""),
            failed,
        )
    return EXIT_OK


def _cmd_health(ctx: _Context) -> int:
    a = ctx.args
    with ctx.security.channel(a.addr, ()) as channel, translated_errors():
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=a.service), timeout=ctx.call_timeout
        )
    status = str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    if ctx.output == "json":
        _out(json.dumps({"address": a.addr, "service": a.service, "status": status}))
    else:
        for line in fmt.align(
            [("ADDRESS", "SERVICE", "STATUS"), (a.addr, a.service or "-", status)]
        ):
            _out(line)
    if status != "SERVING":
        raise _Failure(f"error: server at {a.addr} is {status}")
    return EXIT_OK


async def _wait_connected(channel: grpc.aio.Channel, addr: str, limit: float | None) -> None:
    """Fail fast when nothing listens at `addr` (a watch would otherwise wait forever)."""

    async def connect() -> None:
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise _Failure(f"error: cannot reach runcontrol server at {addr}")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    try:
        async with asyncio.timeout(limit):
            await connect()
    except TimeoutError:
        raise _Failure(
            f"error: cannot reach runcontrol server at {addr} (not connected after {limit:g}s)"
        ) from None


# Reconnect to a server that came back within ~1s instead of gRPC's default of up to
# 120s between connection attempts.
_WATCH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class _Streams:
    """Opens the watch's WatchRuns streams for `resuming_watch` and watches over them.

    * Reconnects: a stream that ended with UNAVAILABLE or without an error means the
      connection was lost; each following open is a reconnect attempt, noted on stderr
      (`resuming_watch` backs off between them, up to 5s). A message received means
      connected again. The streams do not wait for the channel to be ready, so an
      attempt against a server that is gone fails at once and is counted and noted.
    * Give-up: while disconnected, `scope` (an `asyncio.timeout`) is armed to expire
      `reconnect_timeout` seconds after the connection was lost.
    * Revision boundaries: one message holds one revision's events, so `pending` (the
      events of the current message not yet handed to the caller) is 0 at a revision's
      end; the initial set of `send_initial` is one revision spread over messages until
      `end_of_initial_set`, so `in_initial` is True while it is incomplete.
    """

    def __init__(
        self,
        stub: run_control_pb2_grpc.RunControlAsyncStub,
        addr: str,
        reconnect_timeout: float | None,
        call_timeout: float | None,
    ) -> None:
        self._stub = stub
        self._call_timeout = call_timeout
        self._addr = addr
        self._reconnect_timeout = reconnect_timeout
        self.scope: asyncio.Timeout | None = None
        self.progress_interval: float | None = None
        self._lost = False
        self._attempt = 0
        self.pending = 0
        self.in_initial = False

    def disconnected(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._reconnect_timeout is not None and self.scope is not None:
            loop = asyncio.get_running_loop()
            self.scope.reschedule(loop.time() + self._reconnect_timeout)

    def connected(self) -> None:
        if self._lost:
            _note(f"reconnected to {self._addr}")
        self._lost = False
        self._attempt = 0
        if self.scope is not None:
            self.scope.reschedule(None)

    def open(self, request: pb.WatchRunsRequest) -> _Stream:
        if self._lost:
            self._attempt += 1
            _note(f"reconnecting to {self._addr} (attempt {self._attempt})")
        if self.progress_interval is not None:
            # Progress messages while nothing changes: proof of a reconnect in time.
            request.progress_interval.FromNanoseconds(int(self.progress_interval * 1e9))
        call = self._stub.WatchRuns(request, metadata=CALL_METADATA)  # exact payloads
        return _Stream(self, call, request.send_initial)

    async def current_revision(self) -> int:
        response = await self._stub.ListRuns(
            pb.ListRunsRequest(page_size=1), timeout=self._call_timeout, metadata=CALL_METADATA
        )
        revision: int = response.revision
        return revision


class _Stream:
    """One WatchRuns call as `resuming_watch` iterates it, reporting to `_Streams`."""

    def __init__(self, owner: _Streams, call: Any, send_initial: bool) -> None:
        self._owner = owner
        self._call = call
        self._initial = send_initial

    def cancel(self) -> None:
        self._call.cancel()

    async def initial_metadata(self) -> Any:
        """The call's initial metadata (`resuming_watch` reads the store identity)."""
        return await self._call.initial_metadata()

    async def __aiter__(self) -> Any:
        owner = self._owner
        try:
            async for message in self._call:
                owner.connected()
                if self._initial and message.end_of_initial_set:
                    self._initial = False
                owner.in_initial = self._initial
                owner.pending = len(message.events)
                yield message
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                owner.disconnected()
            raise
        owner.disconnected()  # the server ended the stream: `resuming_watch` reconnects


async def _note_missing_runs(client: AsyncClient, run_ids: Sequence[str]) -> None:
    """Say once which of the watched run ids do not exist (yet): the watch goes on."""

    async def exists(run_id: str) -> bool:
        try:
            await client.fetch_run(run_id)
        except RunNotFound:
            return False
        return True

    unique = list(dict.fromkeys(run_ids))
    found = await asyncio.gather(*(exists(run_id) for run_id in unique))
    for run_id, present in zip(unique, found, strict=True):
        if not present:
            _note(f"note: run {run_id} does not exist (yet); watching for it to be created")


async def _watch(ctx: _Context) -> int:
    a = ctx.args
    reconnect_timeout: float | None = a.reconnect_timeout
    options = channel_options(True, _WATCH_CHANNEL_OPTIONS)
    channel = ctx.security.aio_channel(a.addr, options)
    try:
        await _wait_connected(channel, a.addr, ctx.call_timeout)
        client = AsyncClient(channel=channel, timeout=ctx.call_timeout)
        if a.run_id:
            await _note_missing_runs(client, a.run_id)
        streams = _Streams(client.stub, a.addr, reconnect_timeout, ctx.call_timeout)
        if reconnect_timeout is not None:
            streams.progress_interval = min(max(reconnect_timeout / 2, 0.1), 5.0)
        request = pb.WatchRunsRequest(
            thread_id=a.thread or "",
            run_ids=a.run_id or (),
            statuses=[s.value for s in _statuses(a.status)],
            start_revision=a.start_revision,
            send_initial=a.send_initial,
        )
        stream = resuming_watch(streams.open, request, current_revision=streams.current_revision)
        if ctx.output == "table":
            _out(fmt.watch_header())
        seen = 0
        try:
            async with asyncio.timeout(None) as scope:
                streams.scope = scope
                async for item in stream:
                    for line in fmt.watch_item_lines(item, ctx.output):
                        _out(line)
                    if isinstance(item, WatchEvent):
                        seen += 1
                        streams.pending -= 1
                        boundary = streams.pending <= 0 and not streams.in_initial
                    elif isinstance(item, Resynced):
                        seen += 1  # a complete set at one revision
                        boundary = True
                    else:
                        boundary = isinstance(item, Bookmark) and item.end_of_initial_set
                    if a.max_events and seen >= a.max_events and boundary:
                        break
        except TimeoutError:
            raise _Failure(
                f"error: gave up reconnecting to {a.addr}: unreachable for "
                f"{reconnect_timeout:g}s (--reconnect-timeout)"
            ) from None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    finally:
        await channel.close()
    return EXIT_OK


def _cmd_watch(ctx: _Context) -> int:
    return asyncio.run(_watch(ctx))


_COMMANDS: dict[str, Callable[[_Context], int]] = {
    "create": _cmd_create,
    "get": _cmd_get,
    "list": _cmd_list,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "delete": _cmd_delete,
    "wait": _cmd_wait,
    "watch": _cmd_watch,
    "health": _cmd_health,
}


def describe_error(error: RunControlError, addr: str, timeout: float | None) -> str:
    """The stderr line for a failed call: `error: REASON: message`."""
    if error.code is grpc.StatusCode.UNAVAILABLE and not error.reason:
        return f"error: cannot reach runcontrol server at {addr}: {error.message}"
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED and not error.reason:
        within = f" within {timeout:g}s" if timeout else ""
        return f"error: DEADLINE_EXCEEDED: no answer from {addr}{within} (see --timeout)"
    return f"error: {error.reason or error.code.name}: {error.message}"


def _exit_code(error: RunControlError) -> int:
    return EXIT_NOT_FOUND if isinstance(error, RunNotFound) else EXIT_ERROR


def main(argv: list[str] | None = None, *, now: Callable[[], datetime] | None = None) -> int:
    """Run `runctl` with `argv` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        security = _security(args)
    except _auth.SecuritySettingError as error:
        _note(f"error: {error}")
        return EXIT_USAGE
    ctx = _Context(args, now or (lambda: datetime.now(UTC)), security)
    try:
        return _COMMANDS[args.command](ctx)
    except RunControlError as error:
        _note(describe_error(error, args.addr, ctx.call_timeout))
        return _exit_code(error)
    except _Failure as failure:
        _note(str(failure))
        return failure.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`runctl watch | head -1`): stop quietly, and keep the
        # interpreter from complaining when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
