"""Find hot spots: `python -m bench.profile create|get|list|watch`.

Starts runcontrol in a subprocess with a cProfile profiler that is switched on only
while the load runs (SIGUSR1 on, SIGUSR2 off and write the stats), drives a fixed
load from the load-generator process, then prints the top functions by own time and
by cumulative time. The stats file stays for `python -m pstats` or snakeviz.
With `--py-spy` (when py-spy is on PATH) a flame graph SVG is recorded as well.
With `--echo` the bare echo baseline is profiled under the same load instead (answer
sizes measured on a real server first), to tell grpc's own per-call cost from ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO_ROOT, server_process, worker_process

OPS = ("create", "get", "list", "watch")


async def _serve_profiled(stats_path: Path, echo_sizes: str | None = None) -> None:
    profiler = cProfile.Profile()
    loop = asyncio.get_running_loop()

    def stop_profiling() -> None:
        profiler.disable()
        profiler.dump_stats(stats_path)

    loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
    loop.add_signal_handler(signal.SIGUSR2, stop_profiling)
    if echo_sizes is not None:
        from . import echo_server

        sizes = {str(k): int(v) for k, v in json.loads(echo_sizes).items()}
        await echo_server.serve("127.0.0.1:0", sizes)
        return

    from runcontrol_server.app import configure_logging, serve
    from runcontrol_server.config import parse_settings

    settings = parse_settings(
        ["--listen", "127.0.0.1:0", "--log-level", "WARNING", "--grace-period", "1"]
    )
    configure_logging(settings)
    await serve(settings)


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        time.sleep(0.05)
    return False


def profile(
    op: str, seconds: float, concurrency: int, top: int, py_spy: bool, echo: bool = False
) -> int:
    out_dir = REPO_ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"profile-{op}-echo" if echo else f"profile-{op}"
    stats_path = out_dir / f"{name}.prof"
    stats_path.unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(worker_process())
        args = ["-m", "bench.profile", "--serve", str(stats_path)]
        service = "subject"
        if echo:
            # The real answer sizes (and the load's requests) come from a real server.
            real_args = ["-m", "runcontrol_server", "--listen", "127.0.0.1:0"]
            with server_process([*real_args, "--log-level", "WARNING"]) as real:
                seed = worker.call({"op": "seed", "target": real.address})
            args += ["--echo", json.dumps(seed["sizes"])]
            service = "echo"
        server = stack.enter_context(server_process(args))
        if not echo:
            worker.call({"op": "seed", "target": server.address})
        spy: subprocess.Popen[bytes] | None = None
        if py_spy and shutil.which("py-spy"):
            svg = out_dir / f"{name}.svg"
            spy_cmd = ["py-spy", "record", "-o", str(svg), "--pid", str(server.pid)]
            spy_cmd += ["--duration", str(int(seconds) + 1)]
            spy = subprocess.Popen(spy_cmd)
        elif py_spy:
            print("py-spy is not on PATH; cProfile only", file=sys.stderr)
        os.kill(server.pid, signal.SIGUSR1)
        try:
            if op == "watch":
                result = worker.call(
                    {
                        "op": "fanout",
                        "target": server.address,
                        "service": service,
                        "watchers": 1000,
                        "changes": max(5, int(seconds * 5)),
                        "budget": seconds * 20,
                    },
                    timeout=seconds * 20 + 30,
                )
            else:
                result = worker.call(
                    {
                        "op": "unary",
                        "target": server.address,
                        "service": service,
                        "method": op,
                        "concurrency": concurrency,
                        "duration": seconds,
                        "max_calls": 10_000_000,
                    },
                    timeout=seconds + 60,
                )
        finally:
            os.kill(server.pid, signal.SIGUSR2)
            if spy is not None:
                try:
                    spy.wait(timeout=seconds + 30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
        print(f"load: {result}")
        if not _wait_for(stats_path, 30.0):
            print("the server wrote no profile", file=sys.stderr)
            return 1
    stats = pstats.Stats(str(stats_path))
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        print(f"\n=== top {top} by {key} ({op}, {seconds:.0f}s, concurrency {concurrency}) ===")
        stats.sort_stats(key).print_stats(top)
    print(f"stats: {stats_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--serve"]:
        echo_sizes = argv[3] if argv[2:3] == ["--echo"] else None
        asyncio.run(_serve_profiled(Path(argv[1]), echo_sizes))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("op", choices=OPS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--py-spy", action="store_true", help="also record a py-spy flame graph")
    parser.add_argument(
        "--echo", action="store_true", help="profile the bare echo baseline instead"
    )
    args = parser.parse_args(argv)
    return profile(args.op, args.seconds, args.concurrency, args.top, args.py_spy, args.echo)


if __name__ == "__main__":
    raise SystemExit(main())
