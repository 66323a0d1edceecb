"""`runctl`: the RunControl command-line client, in the style of etcdctl and the temporal CLI.

::

    runctl create thread-1 --metadata '{"user": "ada"}'
    runctl list --thread thread-1 -o json
    runctl watch --thread thread-1

Every command talks to one server (`--addr`, else `$RUNCONTROL_ADDR`, else
127.0.0.1:50051) with a per-call deadline (`--timeout`), and prints a table or one
JSON object per line (`-o json`). This module holds the command line itself: the global
options and the table of commands (`_COMMANDS`, one row per command: its name, help,
arguments and examples, and the function that runs it), the parser built from them,
and `main`, which maps outcomes to exit codes. What each command does lives in
`_cli_commands`; formatting in `_cli_format` (pure functions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from . import _auth
from . import _cli_commands as commands
from ._cli_commands import EXIT_ERROR as EXIT_ERROR
from ._cli_commands import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from ._cli_commands import EXIT_NOT_FOUND as EXIT_NOT_FOUND
from ._cli_commands import EXIT_OK as EXIT_OK
from ._cli_commands import EXIT_RUN_ERROR as EXIT_RUN_ERROR
from ._cli_commands import EXIT_RUN_INTERRUPTED as EXIT_RUN_INTERRUPTED
from ._cli_commands import EXIT_RUN_TIMEOUT as EXIT_RUN_TIMEOUT
from ._cli_commands import EXIT_USAGE as EXIT_USAGE
from ._cli_commands import EXIT_WAIT_TIMEOUT as EXIT_WAIT_TIMEOUT
from ._cli_commands import Context, Failure, note
from ._models import CancelAction, DisconnectMode, MultitaskStrategy, RunStatus
from ._requests import MAX_DURATION_SECONDS, payload_json
from .errors import RunControlError, RunNotFound

PROG = "runctl"
ADDR_ENV = "RUNCONTROL_ADDR"
DEFAULT_PORT = 50051
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CALL_TIMEOUT = 10.0


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
    try:  # what the client would refuse before sending (NaN, unpaired surrogates)
        payload_json("the object", value)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    if value > MAX_DURATION_SECONDS:  # what a protobuf Duration holds
        raise argparse.ArgumentTypeError(
            f"must be at most {MAX_DURATION_SECONDS} (10,000 years): {text!r}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _field(bits: int) -> Callable[[str], int]:
    """A whole number >= 0 sent in a signed `bits`-bit protobuf field (a larger one
    cannot be serialized at all)."""
    limit = 2 ** (bits - 1) - 1

    def parse(text: str) -> int:
        value = _count(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}: {text!r}")
        return value

    return parse


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


# --- the command line: global options and the table of commands ---------------------------


@dataclass(frozen=True)
class _Arg:
    """One argument of a command: `add_argument(*names, **settings)`."""

    names: tuple[str, ...]
    settings: dict[str, Any]


def _arg(*names: str, **settings: Any) -> _Arg:
    return _Arg(names, settings)


@dataclass(frozen=True)
class _Command:
    """One row of the table: a subcommand of `runctl`."""

    name: str
    help: str
    run: Callable[[Context], int]  # returns the exit code
    args: tuple[_Arg, ...]
    examples: tuple[str, ...]
    description: str = ""  # the help's first paragraph (default: `help`)


def _global_args() -> tuple[_Arg, ...]:
    """The options every command takes, before or after the command's name. Built per
    parser: the default address reads the environment."""
    pem = {"type": _pem_file, "default": None, "metavar": "FILE"}
    return (
        _arg(
            "--addr",
            type=address,
            default=os.environ.get(ADDR_ENV) or DEFAULT_ADDR,
            metavar="HOST[:PORT]",
            help=f"server address; the port defaults to {DEFAULT_PORT} "
            f"(default: ${ADDR_ENV}, else {DEFAULT_ADDR})",
        ),
        _arg(
            "-o",
            "--output",
            choices=("table", "json"),
            type=_lower,
            default="table",
            help="output format (default: table)",
        ),
        _arg(
            "--timeout",
            type=_seconds,
            default=DEFAULT_CALL_TIMEOUT,
            metavar="SECONDS",
            help=f"deadline of each call, 0 for none (default: {DEFAULT_CALL_TIMEOUT:g})",
        ),
        # Security: a flag wins over its environment variable (read by `_auth.resolve`).
        _arg(
            "--token",
            default=None,
            help=f"bearer token sent with every call (default: ${_auth.TOKEN_ENV}); "
            "the variable keeps it out of the process list",
        ),
        _arg(
            "--tls-ca",
            **pem,
            help=f"use TLS, trusting the CA in this PEM file (${_auth.TLS_CA_ENV})",
        ),
        _arg(
            "--tls-cert",
            **pem,
            help=f"client certificate (mutual TLS), PEM (${_auth.TLS_CLIENT_CERT_ENV})",
        ),
        _arg(
            "--tls-key",
            **pem,
            help=f"the client certificate's key, PEM (${_auth.TLS_CLIENT_KEY_ENV})",
        ),
    )


def _names(enum: Iterable[Any]) -> list[str]:
    return [member.name.lower() for member in enum]


_RUN_ID = _arg("run_id", metavar="RUN_ID")
_THREAD_FILTER = _arg("--thread", metavar="THREAD_ID", help="only runs of this thread")


def _status_filter(help_text: str) -> _Arg:
    return _arg(
        "--status",
        nargs="+",
        action="extend",
        type=_lower,
        choices=_STATUS_NAMES,
        metavar="STATUS",
        help=help_text,
    )


_COMMANDS: tuple[_Command, ...] = (
    _Command(
        "create",
        "create a run on a thread",
        commands.create_run,
        args=(
            _arg("thread_id", metavar="THREAD_ID"),
            _arg("--assistant-id", metavar="ID"),
            _arg(
                "--strategy",
                type=_lower,
                choices=_names(MultitaskStrategy),
                help="multitask strategy when the thread is busy (server default: reject)",
            ),
            _arg(
                "--on-disconnect",
                type=_lower,
                choices=_names(DisconnectMode),
                help="what an attached waiter going away does (server default: cancel)",
            ),
            _arg("--metadata", type=_json_object, metavar="JSON", help="a JSON object"),
            _arg("--kwargs", type=_json_object, metavar="JSON", help="a JSON object"),
            _arg("--request-id", metavar="ID", help="idempotency key (default: random)"),
            _arg(
                "--run-timeout",
                type=_seconds,
                metavar="SECONDS",
                help="deadline after which an unfinished run becomes timeout",
            ),
        ),
        examples=(
            "runctl create thread-1",
            "runctl create thread-1 --strategy interrupt --assistant-id agent",
            """runctl create thread-1 --metadata '{"user": "ada"}' --kwargs '{"n": 3}'""",
            "runctl create thread-1 --request-id job-42 --run-timeout 300 -o json",
        ),
        description=(
            "Create a PENDING run on THREAD_ID. --strategy decides what happens when the\n"
            "thread already has an active run; --request-id makes a retried create safe."
        ),
    ),
    _Command(
        "get",
        "show one run",
        commands.get_run,
        args=(_RUN_ID,),
        examples=("runctl get RUN_ID", "runctl get RUN_ID -o json"),
    ),
    _Command(
        "list",
        "list runs, newest first",
        commands.list_runs,
        args=(
            _THREAD_FILTER,
            _status_filter(f"only runs in these statuses ({', '.join(_STATUS_NAMES)})"),
            _arg("--limit", type=_count, metavar="N", help="print at most N runs"),
            _arg(
                "--page-size",
                type=_field(32),
                metavar="N",
                help="runs fetched per call (server default)",
            ),
        ),
        examples=(
            "runctl list",
            "runctl list --thread thread-1",
            "runctl list --status pending running --limit 20",
            "runctl list -o json | jq -r .run_id",
        ),
    ),
    _Command(
        "cancel",
        "cancel a run",
        commands.cancel_run,
        args=(
            _RUN_ID,
            _arg(
                "--action",
                type=_lower,
                choices=_names(CancelAction),
                help="cancel action (server default: interrupt)",
            ),
            _arg("--reason", metavar="TEXT"),
        ),
        examples=(
            "runctl cancel RUN_ID",
            "runctl cancel RUN_ID --action rollback --reason 'user pressed stop'",
        ),
        description=(
            "Cancel an active run. Cancelling a run that already finished is not an error:\n"
            "the run is printed unchanged and a note goes to stderr."
        ),
    ),
    _Command(
        "status",
        "move a run to a status (the worker transition)",
        commands.set_status,
        args=(
            _RUN_ID,
            _arg("status", type=_lower, choices=_STATUS_NAMES, metavar="STATUS"),
            _arg("--worker-id", metavar="ID"),
            _arg("--error", metavar="TEXT", help="error message (for error)"),
            _arg(
                "--expected-mod-revision",
                type=_field(64),
                metavar="N",
                help="only if the run is still at this mod revision (compare-and-set)",
            ),
        ),
        examples=(
            "runctl status RUN_ID running --worker-id w1",
            "runctl status RUN_ID success --worker-id w1",
            "runctl status RUN_ID error --error 'out of memory'",
            "runctl status RUN_ID running --worker-id w2 --expected-mod-revision 7",
        ),
        description=(
            "Move RUN_ID to STATUS as a worker does: claim it (running), then finish it\n"
            "(success, error, timeout, interrupted). Repeating the transition that already\n"
            f"happened is a no-op. STATUS is one of: {', '.join(_STATUS_NAMES)}."
        ),
    ),
    _Command(
        "delete",
        "delete a finished run",
        commands.delete_run,
        args=(_RUN_ID,),
        examples=("runctl delete RUN_ID",),
        description="Delete a finished run now (active runs are refused with RUN_ACTIVE).",
    ),
    _Command(
        "wait",
        "wait until a run finishes",
        commands.wait_run,
        args=(
            _RUN_ID,
            _arg(
                "--wait-timeout",
                type=_seconds,
                metavar="SECONDS",
                help="give up after this long",
            ),
            _arg(
                "--attach",
                action="store_true",
                help="going away before the end cancels the run if its on-disconnect is cancel",
            ),
        ),
        examples=(
            "runctl wait RUN_ID",
            'runctl wait RUN_ID --wait-timeout 60; echo "exit $?"',
            "runctl wait RUN_ID --attach   # Ctrl-C cancels the run (on-disconnect cancel)",
        ),
        description=(
            "Block until RUN_ID is in a terminal status and print it. The exit code says\n"
            "how it ended:\n"
            "  0  success\n"
            "  4  --wait-timeout passed first: the run is still active (printed as it is)\n"
            "  5  the run finished with status error\n"
            "  6  the run finished with status timeout\n"
            "  7  the run finished with status interrupted\n"
            "  3  no such run\n"
            "  1  the server answered with an error or could not be reached"
        ),
    ),
    _Command(
        "watch",
        "stream changes to runs until Ctrl-C",
        commands.watch_runs,
        args=(
            _THREAD_FILTER,
            _arg("--run-id", nargs="+", action="extend", metavar="RUN_ID", help="only these runs"),
            _status_filter("only runs in these statuses"),
            _arg(
                "--start-revision",
                type=_field(64),
                default=0,
                metavar="N",
                help="replay history from revision N (default: from now)",
            ),
            _arg(
                "--send-initial",
                action="store_true",
                help="first print the current matching runs as added events",
            ),
            _arg(
                "--max-events",
                type=_count,
                metavar="N",
                help="stop after N events, counted in whole revisions: the revision that "
                "reaches N is printed to its end (the --send-initial set is one revision); "
                "0: never",
            ),
            _arg(
                "--reconnect-timeout",
                type=_seconds,
                metavar="SECONDS",
                help="give up (exit 1) when the server has been unreachable this long "
                "(default: keep trying forever)",
            ),
        ),
        examples=(
            "runctl watch",
            "runctl watch --thread thread-1 --send-initial",
            "runctl watch --status running --start-revision 42 -o json",
            "runctl watch --run-id RUN_ID --max-events 1",
            "runctl watch --reconnect-timeout 60   # exit 1 if the server is gone for 60s",
        ),
        description=(
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
            "1 if it has not reconnected after --reconnect-timeout (default: never)."
        ),
    ),
    _Command(
        "health",
        "check whether the server is serving",
        commands.check_health,
        args=(
            _arg(
                "--service",
                default="",
                metavar="NAME",
                help="one service (default: the whole server)",
            ),
        ),
        examples=("runctl health", "runctl health --addr 10.0.0.5:50051 -o json"),
        description="Ask the standard gRPC health service. Exits 0 when SERVING, 1 otherwise.",
    ),
)
_BY_NAME = {command.name: command for command in _COMMANDS}


def _add(
    parser: argparse.ArgumentParser, args: Iterable[_Arg], *, group: str | None = None
) -> None:
    target = parser if group is None else parser.add_argument_group(group)
    for one in args:
        target.add_argument(*one.names, **one.settings)


def build_parser() -> argparse.ArgumentParser:
    """`runctl`'s parser: the global options, then one subparser per row of `_COMMANDS`.

    A subcommand repeats the global options (so they may follow the command) with
    SUPPRESS as their default, so they never overwrite a value given before it."""
    options = _global_args()
    after_command = [
        _arg(*o.names, **(o.settings | {"default": argparse.SUPPRESS})) for o in options
    ]
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_MAIN_DESCRIPTION,
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add(parser, options, group="global options")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            epilog="Examples:\n" + "\n".join(f"  {line}" for line in command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add(sub, after_command, group="global options")
        _add(sub, command.args)
    return parser


# --- running a command ---------------------------------------------------------------------


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


def _check_utf8(parser: argparse.ArgumentParser, arg: str) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape),
    which no gRPC string field can carry: a usage error, not a traceback."""
    try:
        arg.encode()
    except UnicodeEncodeError:
        shown = arg.encode(errors="surrogateescape").decode(errors="backslashreplace")
        parser.error(f"argument is not valid UTF-8: '{shown}'")


def main(argv: list[str] | None = None, *, now: Callable[[], datetime] | None = None) -> int:
    """Run `runctl` with `argv` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    try:
        for arg in sys.argv[1:] if argv is None else argv:
            _check_utf8(parser, arg)
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        security = _security(args)
    except _auth.SecuritySettingError as error:
        note(f"error: {error}")
        return EXIT_USAGE
    ctx = Context(args, now or (lambda: datetime.now(UTC)), security)
    try:
        return _BY_NAME[args.command].run(ctx)
    except RunControlError as error:
        note(describe_error(error, args.addr, ctx.call_timeout))
        return _exit_code(error)
    except Failure as failure:
        note(str(failure))
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
