"""Shared helpers: subprocess servers bound to 127.0.0.1, RSS, statistics, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def load_summary(
    latencies: Sequence[float], errors: Sequence[str], elapsed: float
) -> dict[str, Any]:
    """One load round's figures, the same for every driver: calls, QPS, p50/p99 (ms)."""
    return {
        "calls": len(latencies),
        "elapsed": elapsed,
        "qps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


async def serve_commands(target: Any, fixed: Mapping[str, dict[str, Any]] | None = None) -> None:
    """A load process's command loop: one JSON command per stdin line, `{"op": NAME,
    **kwargs}`, answered with one JSON line, the result of `await target.NAME(**kwargs)`
    (or `fixed[NAME]`; an exception becomes `{"error": ...}`). "quit" or the end of
    stdin ends it; `await target.close()` always runs."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command: dict[str, Any] = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                return
            try:
                if fixed is not None and op in fixed:
                    result = fixed[op]
                else:
                    result = await getattr(target, op)(**command)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)
    finally:
        await target.close()


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    # The repo root on the path so `python -m bench.*` works from any directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    # grpc core's INFO lines (e.g. a GOAWAY per connection when a server stops) would
    # bury the bench's own log; errors still show.
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    return env


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, waiting at most `timeout` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"pid {proc.pid}: no output within {timeout:.0f}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"pid {proc.pid} exited (code {proc.poll()}) before answering")
    return line


def stop_process(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; by pid only."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class Server:
    """A server subprocess that prints `listening on HOST:PORT` as its first line."""

    def __init__(self, proc: subprocess.Popen[str], address: str) -> None:
        self.proc = proc
        self.address = address

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)


def server_command() -> list[str]:
    """How the bench starts runcontrol: the `runcontrol-server` entry point that the
    install put next to this interpreter (what `make serve` and a user run), with its
    defaults (`--loop auto`); `python -m runcontrol_server` only when there is none."""
    script = Path(sys.executable).with_name("runcontrol-server")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "runcontrol_server"]


def event_loop_of(pid: int) -> str:
    """The event loop a bench process runs: "uvloop" when uvloop's extension module is
    mapped into it (the server, the echo and the load generator import uvloop only to
    run on it: `eventloop.loop_factory`), else "asyncio". Linux /proc."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            mapped = maps.read()
    except OSError:
        return "unknown"
    return "uvloop" if "/uvloop/loop." in mapped else "asyncio"


def install_info() -> dict[str, Any]:
    """What the install brings: how the installed runcontrol declares uvloop (a regular
    dependency, or the extras that bring it, e.g. `server`) and the uvloop installed."""
    import re
    from importlib import metadata

    # Relative to the checkout: results are committed, and must not name this machine.
    command = " ".join(server_command()).replace(str(REPO_ROOT) + os.sep, "")
    info: dict[str, Any] = {"server_command": command}
    try:
        requires = metadata.requires("runcontrol") or []
        info["runcontrol"] = metadata.version("runcontrol")
    except metadata.PackageNotFoundError:
        requires = []
    uvloop = [r for r in requires if re.match(r"uvloop\b", r)]
    info["uvloop_requirement"] = next((r for r in uvloop if "extra ==" not in r), None)
    info["uvloop_extras"] = sorted(
        {m.group(1) for r in uvloop if (m := re.search(r'extra == "([^"]+)"', r))}
    )
    try:
        info["uvloop"] = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        info["uvloop"] = None
    return info


@contextlib.contextmanager
def server_process(
    args: Sequence[str],
    *,
    start_timeout: float = 30.0,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """Start `python <args>` (or `<command> <args>`), with `env` added to the bench's
    environment, learn its address, stop it (by pid) on exit."""
    proc = subprocess.Popen(
        [*(command if command is not None else [sys.executable]), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env={**_subprocess_env(), **(env or {})},
        cwd=REPO_ROOT,
    )
    try:
        line = _readline(proc, start_timeout).strip()
        prefix = "listening on "
        if not line.startswith(prefix):
            raise RuntimeError(f"unexpected first line from {args}: {line!r}")
        address = line[len(prefix) :]
        if not address.startswith(LOCALHOST + ":"):
            raise RuntimeError(f"server is not on {LOCALHOST}: {address}")
        yield Server(proc, address)
    finally:
        stop_process(proc)


class Worker:
    """A `python -m bench.load` subprocess answering one JSON line per JSON command."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def call(self, command: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        self.send(command)
        return self.receive(command, timeout)

    def send(self, command: dict[str, Any]) -> None:
        """Send a command without waiting (`receive` takes its answer)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def receive(self, command: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(_readline(self.proc, timeout))
        if "error" in answer:
            raise RuntimeError(f"load worker failed on {command.get('op')}: {answer['error']}")
        return answer


@contextlib.contextmanager
def worker_process(module: str = "bench.load", args: Sequence[str] = ()) -> Iterator[Worker]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
        cwd=REPO_ROOT,
    )
    try:
        yield Worker(proc)
    finally:
        stop_process(proc)


def run_json_module(module: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run `python -m module args` to completion; its last stdout line is JSON."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
        cwd=REPO_ROOT,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import google.protobuf
    import grpc
    from google.protobuf.internal import api_implementation

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "protobuf_backend": api_implementation.Type(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the results table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process (and of its reaped children), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            raw = stat.read()
    except OSError:
        return 0
    fields = raw[raw.rfind(")") + 2 :].split()
    return sum(int(field) for field in fields[11:15])


def _child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc)."""
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{name}/stat", encoding="ascii") as stat:
                    raw = stat.read()
                if int(raw[raw.rfind(")") + 2 :].split()[1]) == pid:
                    found.append(int(name))
    return found


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """CPU time (user + system) a process has used so far; with its live children (e.g.
    a PostgreSQL postmaster and its backends) when asked. Linux /proc; 0.0 elsewhere."""
    pids = [pid, *(_child_pids(pid) if with_children else [])]
    return sum(_cpu_ticks(p) for p in pids) / os.sysconf("SC_CLK_TCK")


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
