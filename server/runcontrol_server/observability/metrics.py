"""Prometheus metrics: RPC counts and latencies, and the server's state read at scrape time.

Two kinds, for cost reasons:

* per call (`RpcMetrics`, a `CallSink`): one counter and one histogram sample, their
  label children looked up once per (method, code) and kept, so a call pays two
  increments and no label handling;
* state (`StateCollector`): read from the manager's plain numbers only when Prometheus
  scrapes, so keeping them costs calls nothing. The scrape runs on the listener's
  thread; it only reads ints, lengths and floats the event loop writes (each read is
  atomic under the GIL).

Every replica reports the store-wide numbers it sees through its change feed (runs by
status, revisions): with several replicas, aggregate them with max(), not sum().
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ..domain.manager import RunManager
from .interceptor import Method
from .protocol import ProtocolOf
from .run_counts import RunCounts

# Unary calls answer in well under a millisecond to tens of milliseconds (PostgreSQL);
# WaitRun waits up to its timeout, hence the long tail.
RPC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Streams (WatchRuns) live for seconds to days.
STREAM_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


def new_registry() -> CollectorRegistry:
    """A registry of this server's own (not prometheus_client's process-wide default,
    so several servers in one process, as in tests, never clash), with the standard
    process, platform and garbage-collector metrics."""
    # No `_created` series beside every counter and histogram: in the text format
    # Prometheus stores each as one more series. (A process-wide switch.)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class RpcMetrics:
    """`runcontrol_rpcs_total` and the duration histograms, fed by `CallObserver`,
    labelled with the protocol the call came in (grpc, connect, grpc-web)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._calls = Counter(
            "runcontrol_rpcs",
            "Calls handled, by method and final status code.",
            ("service", "method", "code", "protocol"),
            registry=registry,
        )
        self._durations = Histogram(
            "runcontrol_rpc_duration_seconds",
            "Time from handler start to answer of unary calls (WaitRun includes its wait).",
            ("service", "method", "protocol"),
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self._streams = Histogram(
            "runcontrol_stream_duration_seconds",
            "Lifetime of server streams (WatchRuns, Health/Watch), recorded when they end.",
            ("service", "method", "protocol"),
            buckets=STREAM_BUCKETS,
            registry=registry,
        )
        # (service, method, code, protocol) -> (counter child, histogram child): labels()
        # resolved once. Keyed by strings, whose hashes Python caches: cheaper than the Method.
        self._children: dict[tuple[str, str, grpc.StatusCode, str], tuple[Any, Any]] = {}
        # The `protocol` label: grpc, connect or grpc-web.
        self._protocol_of = ProtocolOf()

    def __call__(
        self,
        method: Method,
        code: grpc.StatusCode,
        seconds: float,
        request: Any,
        context: Any,
        response: Any,
    ) -> None:
        protocol = self._protocol_of(context)
        key = (method.service, method.name, code, protocol)
        children = self._children.get(key)
        if children is None:
            histogram = self._streams if method.streaming else self._durations
            children = (
                self._calls.labels(method.service, method.name, code.name, protocol),
                histogram.labels(method.service, method.name, protocol),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class StateCollector:
    """Gauges read from the manager at scrape time (a prometheus_client collector)."""

    def __init__(self, manager: RunManager, run_counts: RunCounts) -> None:
        self._manager = manager
        self._run_counts = run_counts

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        history = manager.feed.history
        counts = self._run_counts.counts()
        if counts is not None:  # None until the first count of the store is in
            runs = GaugeMetricFamily(
                "runcontrol_runs", "Runs in the store by status.", labels=("status",)
            )
            for status, count in counts.items():
                runs.add_metric((status.name,), count)
            yield runs
        yield GaugeMetricFamily(
            "runcontrol_watchers", "Open WatchRuns streams.", value=manager.watch_hub.count
        )
        yield GaugeMetricFamily(
            "runcontrol_waiters",
            "WaitRun calls waiting for a run to finish.",
            value=manager.waiters.waiter_count,
        )
        yield GaugeMetricFamily(
            "runcontrol_revision",
            "Newest store revision this process has seen (its change-feed cache's head).",
            value=history.head_revision,
        )
        yield GaugeMetricFamily(
            "runcontrol_compacted_revision",
            "Newest revision no longer kept for watch resumes (compacted).",
            value=history.compact_revision,
        )
        yield GaugeMetricFamily(
            "runcontrol_history_changes",
            "Change sets kept in this process's change-feed cache.",
            value=len(history),
        )
        yield GaugeMetricFamily(
            "runcontrol_janitor_lag_seconds",
            "How late the janitor is: past the due time of its coming round, else how "
            "late its last round began.",
            value=manager.janitor.lag,
        )
        yield CounterMetricFamily(
            "runcontrol_janitor_rounds",
            "Janitor rounds completed (deadlines, leases, retention, compaction).",
            value=manager.janitor.rounds,
        )
        yield CounterMetricFamily(
            "runcontrol_feed_resyncs",
            "Times this process's change-feed cache restarted past changes it never saw.",
            value=manager.feed.resyncs,
        )
