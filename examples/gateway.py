"""A gateway process: starts runs, follows them, cancels one with ROLLBACK.

    python examples/gateway.py --addr 127.0.0.1:50051

What the original registry's gateway did in-process, across processes: create a run on
a thread (REJECT while it is busy), follow its status changes as a stream, wait for the
end; then start another and roll it back as soon as a worker has claimed it.
"""

from __future__ import annotations

import argparse
import asyncio

from runcontrol import (
    AsyncClient,
    CancelAction,
    MultitaskStrategy,
    RunStatus,
    ThreadBusy,
    WatchEvent,
)

FOLLOW_LIMIT = 60.0  # seconds a run may take in this example


async def follow(client: AsyncClient, run_id: str, until: set[RunStatus]) -> RunStatus:
    """Print the run's changes until it reaches a status in `until`."""
    async with asyncio.timeout(FOLLOW_LIMIT):
        async for item in client.watch(run_ids=[run_id], send_initial=True):
            if isinstance(item, WatchEvent):
                run = item.run
                note = f" ({run.error})" if run.error else ""
                print(f"{run_id} {run.status.name}{note}", flush=True)
                if run.status in until:
                    return run.status
    raise RuntimeError("the watch ended")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--thread", default="conversation-1")
    args = parser.parse_args()
    terminal = {s for s in RunStatus if s.is_terminal}
    async with AsyncClient(args.addr) as client:
        # 1. A run that a worker finishes; a second create on the busy thread is refused.
        first = await client.create_run(args.thread, kwargs={"chunks": 3})
        try:
            await client.create_run(args.thread, multitask_strategy=MultitaskStrategy.REJECT)
        except ThreadBusy as busy:
            print(f"rejected: thread busy with {', '.join(busy.inflight_run_ids)}", flush=True)
        await follow(client, first.run_id, terminal)

        # 2. A long run, rolled back as soon as a worker has claimed it.
        second = await client.create_run(args.thread, kwargs={"chunks": 10_000})
        await follow(client, second.run_id, {RunStatus.RUNNING})
        await second.cancel(CancelAction.ROLLBACK, reason="user pressed stop")
        # The worker notices, rolls back and leaves its note on the run.
        async with asyncio.timeout(FOLLOW_LIMIT):
            async for item in client.watch(run_ids=[second.run_id], send_initial=True):
                if isinstance(item, WatchEvent) and item.run.error:
                    run = item.run
                    print(
                        f"{second.run_id} {run.status.name} {run.cancel_action.name} ({run.error})",
                        flush=True,
                    )
                    break


if __name__ == "__main__":
    asyncio.run(main())
