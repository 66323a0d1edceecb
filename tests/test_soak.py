"""A short soak (`bench.soak.run_soak`): mixed load from a client process, then the
server must come back to exactly where it started.

The server runs in this test's event loop, the load in a child process over gRPC for
a few seconds: creates under every strategy, claims with and without leases (some
abandoned), transitions, cancels, deletes, reads, WaitRun calls (some attached, some
cancelled mid-way) and WatchRuns streams that disconnect at random. Every run has a
deadline of a few seconds and the retention is 1 s, so once the load stops the janitor
ends and deletes everything. `run_soak` waits (bounded) for that; this test then
checks the counts exactly: tasks, watchers, waiters, stored runs, the change history
and every index of the store at their baseline. RSS growth is reported and held to a
generous bound only (allocators keep what they grew; a noisy machine must not fail it).
"""

from __future__ import annotations

import random

import pytest

from bench.soak import OPS, run_soak, summary_lines, table_header, table_row

LOAD_SECONDS = 6.0
SETTLE_TIMEOUT = 45.0
RSS_GROWTH_BOUND_MIB = 256


@pytest.mark.timeout(150)
async def test_after_a_short_soak_the_server_returns_to_its_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = random.randrange(1 << 32)
    result = await run_soak(
        LOAD_SECONDS, seed=seed, interval=0.5, settle_timeout=SETTLE_TIMEOUT, actors=16
    )
    summary = summary_lines(result)
    rows = map(table_row, result.samples)
    report = "\n".join([f"soak seed {seed}", table_header(), *rows, *summary])
    with capsys.disabled():  # the figures, for the record: load, RSS, peaks
        print(f"\nshort soak (seed {seed}): " + "; ".join([summary[0], *summary[3:5]]))

    load = result.load
    assert load["unexpected"] == 0, report
    assert all(load["ops"].get(op, 0) > 0 for op in OPS), report
    assert result.final.revision > 0, report
    # Back to the baseline, exactly (run_soak waited for it, bounded).
    assert result.settled, report
    base, final = result.baseline, result.final
    assert (final.tasks, final.watchers, final.waiters, final.waited_runs) == (
        base.tasks,
        0,
        0,
        0,
    ), report
    assert (final.runs, final.history) == (0, 0), report
    assert not any(result.sizes.values()), result.sizes
    assert result.rss_growth_kib < RSS_GROWTH_BOUND_MIB * 1024, report
