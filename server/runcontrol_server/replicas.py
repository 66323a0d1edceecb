"""`make serve-replicas`: a throwaway PostgreSQL and two server replicas sharing it.

For trying the multi-replica setup on one machine: the database runs in a temporary
directory on 127.0.0.1 at a free port; the replicas listen on 127.0.0.1:50051 and
127.0.0.1:50052 (`--first-port`). Ctrl-C (or SIGTERM) stops the replicas, then the
database, which is deleted.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading

from .pgserver import LocalPostgres


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runcontrol_server.replicas")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--first-port", type=int, default=50051)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with LocalPostgres() as database:
        url = database.create_database("runcontrol")
        print(f"database: {url}", flush=True)
        replicas = []
        try:
            for index in range(args.replicas):
                listen = f"127.0.0.1:{args.first_port + index}"
                command = [sys.executable, "-m", "runcontrol_server"]
                command += ["--listen", listen, "--store", url]
                replicas.append(subprocess.Popen(command))
                print(f"replica {index + 1}: {listen}", flush=True)
            print("Ctrl-C stops the replicas and the database", flush=True)
            while not stop.wait(0.5):
                if any(proc.poll() is not None for proc in replicas):
                    print("a replica exited; stopping", file=sys.stderr)
                    return 1
        finally:
            for proc in replicas:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in replicas:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
