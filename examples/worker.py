"""A worker process: claims runs as they are created and works on them until done or
cancelled, as the original registry's worker coroutine did in-process.

    python examples/worker.py --addr 127.0.0.1:50051 --worker-id worker-1 [--max-runs N]

For each PENDING run it sees (WatchRuns), it claims the run (`handle.claimed`: exactly
one worker wins), "streams" chunks until its work is done or the run is cancelled by
anyone. On a ROLLBACK cancel it rolls its work back and leaves a note on the run ("Rolled
back by user"); on exit the block records SUCCESS, or ERROR with the exception's text.
The run's `kwargs` say how many chunks to produce (`{"chunks": N}`).
"""

from __future__ import annotations

import argparse
import asyncio

from runcontrol import (
    AlreadyClaimed,
    AsyncClient,
    CancelAction,
    ClaimedRun,
    EventType,
    RunStatus,
    WatchEvent,
)

CHUNK_PAUSE = 0.02  # simulated work per chunk


async def work(job: ClaimedRun, worker_id: str) -> None:
    chunks = int(job.run.kwargs.get("chunks", 3))
    for index in range(chunks):
        if job.cancelled.is_set():
            break
        print(f"{job.run_id} chunk {index + 1}/{chunks}", flush=True)
        try:
            async with asyncio.timeout(CHUNK_PAUSE):
                await job.wait_cancelled()  # returns early when the run is cancelled
        except TimeoutError:
            pass
    if job.cancelled.is_set():
        action = job.cancel_action.name if job.cancel_action else "-"
        print(f"{job.run_id} cancelled: {action} ({job.cancel_reason})", flush=True)
        if job.cancel_action is CancelAction.ROLLBACK:
            # Undo the work, then say so on the run (kept as its note; still INTERRUPTED).
            await job.handle.set_status(
                RunStatus.ERROR, error="Rolled back by user", worker_id=worker_id
            )
    else:
        print(f"{job.run_id} done", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--worker-id", default="worker-1")
    parser.add_argument("--max-runs", type=int, default=0, help="exit after this many (0: never)")
    args = parser.parse_args()
    handled = 0
    async with AsyncClient(args.addr) as client:
        print("worker ready", flush=True)
        async for item in client.watch(statuses=[RunStatus.PENDING]):
            if not (isinstance(item, WatchEvent) and item.type is EventType.ADDED):
                continue
            handle = await client.get_run(item.run.run_id)
            try:
                async with handle.claimed(args.worker_id) as job:
                    await work(job, args.worker_id)
            except AlreadyClaimed:
                continue  # another worker has it
            handled += 1
            if args.max_runs and handled >= args.max_runs:
                return


if __name__ == "__main__":
    asyncio.run(main())
