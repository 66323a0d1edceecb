"""Turn the raw measurements into metrics (ratio, goal, pass/fail), a table, a chart
and the results block of BENCHMARKS.md."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .common import REPO_ROOT

Metric = dict[str, Any]
START_MARK = "<!-- bench:results:start -->"
END_MARK = "<!-- bench:results:end -->"
METHOD_LABEL = {"create": "CreateRun", "get": "GetRun", "list": "ListRuns(100)"}
# QPS goals (subject / echo) by unary measurement.
QPS_GOALS = {"create_c64": 0.80, "get_c64": 0.90, "list_c64": 0.30, "list_c1": 0.30}
# c1 latency goals apply to the calls whose answer is one run; ListRuns(100) answers
# 100 and has its own (throughput) goal, so its latency is reported for information.
LATENCY_GOAL_METHODS = ("create", "get")
P50_EXTRA_MS = 0.10
P99_FACTOR = 1.5
FANOUT_GOALS = {1000: 0.70}
MANAGER_RATIO_GOAL = 20.0
FLATNESS_GOAL = 0.8
WATCH_RSS_GOAL_MB = 5.0
# PostgreSQL store CreateRun QPS / bare psycopg loop QPS (same cluster, pool, concurrency).
PG_CREATE_GOAL = 0.5
# Watcher scale (`bench.scale`): RSS growth of the server holding the streams, and the
# p99 latency of one change reaching every watcher.
SCALE_RSS_GOAL_MB = 100.0
SCALE_REACH_P99_GOAL_MS = 1000.0
# How it grows (`bench.growth`): bytes a stored finished run with small metadata costs.
GROWTH_BYTES_GOAL = 1536.0


def _metric(
    metric_id: str,
    label: str,
    section: str,
    *,
    subject: float | None = None,
    baseline: float | None = None,
    unit: str = "",
    value: float | None = None,
    value_text: str | None = None,
    goal_op: str | None = None,
    goal: float | None = None,
    goal_text: str = "-",
    passed: bool | None = None,
    note: str = "",
    chart: tuple[float, float | None] | None = None,
) -> Metric:
    if passed is None and goal_op is not None and goal is not None and value is not None:
        passed = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[goal_op]
    if value_text is None:
        value_text = "-" if value is None else f"{value:.2f}"
    return {
        "id": metric_id,
        "label": label,
        "section": section,
        "subject": subject,
        "baseline": baseline,
        "unit": unit,
        "value": value,
        "value_text": value_text,
        "goal_op": goal_op,
        "goal": goal,
        "goal_text": goal_text,
        "passed": passed,
        "note": note,
        # (value, goal) on a ratio scale for the chart (goal None: charted for
        # information, grey, no goal mark); None: not charted.
        "chart": list(chart) if chart else None,
    }


def _unavailable(metric_id: str, label: str, section: str, why: str, goal_text: str) -> Metric:
    return _metric(
        metric_id, label, section, value_text="unavailable", goal_text=goal_text, note=why
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _unary_metrics(unary: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    for key, data in unary.items():
        method, conc = key.split("_c")
        subject, echo = data["subject"], data["echo"]
        name = METHOD_LABEL[method]
        ratio = _ratio(subject["qps"], echo["qps"])
        goal = QPS_GOALS.get(key)
        out.append(
            _metric(
                f"qps_{key}",
                f"{name} QPS c{conc} / echo",
                "unary",
                subject=subject["qps"],
                baseline=echo["qps"],
                unit="calls/s",
                value=ratio,
                goal_op=">=" if goal else None,
                goal=goal,
                goal_text=f">= {goal:.2f}" if goal else "-",
                chart=(ratio, goal) if goal else None,
            )
        )
        parsing = data.get("echo_parse")
        if parsing is not None:
            out.append(
                _metric(
                    f"qps_{key}_parse",
                    f"  echo parsing the request / echo, {name} c{conc}",
                    "unary",
                    subject=parsing["qps"],
                    baseline=echo["qps"],
                    unit="calls/s",
                    value=_ratio(parsing["qps"], echo["qps"]),
                    note="the floor of a Python server of the contract: the request's "
                    "protobuf parse only",
                )
            )
        if conc != "1":
            continue
        has_goal = method in LATENCY_GOAL_METHODS
        diff = subject["p50_ms"] - echo["p50_ms"]
        limit = echo["p50_ms"] + P50_EXTRA_MS
        out.append(
            _metric(
                f"p50_{key}",
                f"{name} p50 c1 - echo p50",
                "unary",
                subject=subject["p50_ms"],
                baseline=echo["p50_ms"],
                unit="ms",
                value=diff,
                value_text=f"{diff:+.3f} ms",
                goal_op="<=" if has_goal else None,
                goal=P50_EXTRA_MS if has_goal else None,
                goal_text=f"<= +{P50_EXTRA_MS:.2f} ms" if has_goal else "-",
                chart=(_ratio(subject["p50_ms"], echo["p50_ms"]), _ratio(limit, echo["p50_ms"]))
                if has_goal
                else None,
            )
        )
        p99 = _ratio(subject["p99_ms"], echo["p99_ms"])
        out.append(
            _metric(
                f"p99_{key}",
                f"{name} p99 c1 / echo p99",
                "unary",
                subject=subject["p99_ms"],
                baseline=echo["p99_ms"],
                unit="ms",
                value=p99,
                goal_op="<=" if has_goal else None,
                goal=P99_FACTOR if has_goal else None,
                goal_text=f"<= {P99_FACTOR:.2f}" if has_goal else "-",
                chart=(p99, P99_FACTOR) if has_goal else None,
            )
        )
    return out


def _fanout_metrics(fanout: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    for key, data in fanout.items():
        watchers = int(key[1:])
        goal = FANOUT_GOALS.get(watchers)
        label = f"WatchRuns fan-out K={watchers} / bare"
        goal_text = f">= {goal:.2f}" if goal else "-"
        if "unavailable" in data:
            why = data["unavailable"]
            out.append(_unavailable(f"fanout_{key}", label, "fanout", why, goal_text))
            continue
        subject, bare = data["subject"], data["echo"]
        ratio = _ratio(subject["rate"], bare["rate"])
        incomplete = [s for s in ("subject", "echo") if not data[s]["complete"]]
        out.append(
            _metric(
                f"fanout_{key}",
                label,
                "fanout",
                subject=subject["rate"],
                baseline=bare["rate"],
                unit="deliveries/s",
                value=ratio,
                goal_op=">=" if goal else None,
                goal=goal,
                goal_text=goal_text,
                note=f"incomplete deliveries: {', '.join(incomplete)}" if incomplete else "",
                chart=(ratio, goal) if goal else None,
            )
        )
    return out


def _scale_metrics(scale: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    n = scale["streams"]
    idle = scale["idle"]
    ours, bare = idle["subject"], idle["echo"]
    growth, bare_growth = ours["growth_mb"], bare["growth_mb"]
    out.append(
        _metric(
            "scale_rss",
            f"RSS growth, {n:,} idle WatchRuns streams",
            "scale",
            subject=growth,
            baseline=bare_growth,
            unit="MB",
            value=growth,
            value_text=f"{growth:.0f} MB",
            goal_op="<",
            goal=SCALE_RSS_GOAL_MB,
            goal_text=f"< {SCALE_RSS_GOAL_MB:.0f} MB",
            note=f"{ours['kib_per_stream']:.1f} KiB per stream; the bare grpc.aio echo "
            f"{bare['kib_per_stream']:.1f} KiB (its growth is the baseline column)",
            chart=(max(growth, 0.01), SCALE_RSS_GOAL_MB),
        )
    )
    ratio = _ratio(growth, bare_growth)
    kept = (ours["rss_closed_kib"] - ours["rss_before_kib"]) / 1024
    bare_kept = (bare["rss_closed_kib"] - bare["rss_before_kib"]) / 1024
    out.append(
        _metric(
            "scale_rss_ratio",
            f"RSS growth, {n:,} idle streams / bare echo's",
            "scale",
            subject=growth,
            baseline=bare_growth,
            unit="MB",
            value=ratio,
            note=f"after closing them: {kept:.0f} MB above the start (echo {bare_kept:.0f} MB)",
            chart=(ratio, None),
        )
    )
    experimental = idle.get("subject_ph2_server")
    if experimental is not None:
        trial = experimental["growth_mb"]
        out.append(
            _metric(
                "scale_rss_ph2",
                f"RSS growth, {n:,} idle streams, GRPC_EXPERIMENTS="
                f"{experimental['grpc_experiments']} / bare echo's",
                "scale",
                subject=trial,
                baseline=bare_growth,
                unit="MB",
                value=_ratio(trial, bare_growth),
                note=f"{trial:.0f} MB, {experimental['kib_per_stream']:.1f} KiB per stream: "
                "grpc's experimental HTTP/2 server transport, not a default (it resets "
                "in-flight calls instead of honouring a graceful stop: BENCHMARKS.md)",
                chart=(_ratio(trial, bare_growth), None),
            )
        )
    cost = _ratio(ours["cpu_per_change_idle_us"], ours["cpu_per_change_none_us"])
    out.append(
        _metric(
            "scale_idle_cost",
            f"server CPU per change, {n:,} idle watchers open / none",
            "scale",
            subject=ours["cpu_per_change_idle_us"],
            baseline=ours["cpu_per_change_none_us"],
            unit="us",
            value=cost,
            note="a CreateRun on a thread nobody watches; echo: "
            f"{bare['cpu_per_change_idle_us']:.0f} vs {bare['cpu_per_change_none_us']:.0f} us",
            chart=(cost, None),
        )
    )
    for key, data in scale["fanout"].items():
        k = int(key)
        subject, echo = data["subject"], data["echo"]
        incomplete = [s for s in ("subject", "echo") if not data[s]["complete"]]
        ratio = _ratio(subject["rate"], echo["rate"])
        out.append(
            _metric(
                f"scale_fanout_{k}",
                f"fan-out K={k:,} of {n:,} open / bare",
                "scale",
                subject=subject["rate"],
                baseline=echo["rate"],
                unit="deliveries/s",
                value=ratio,
                note=f"incomplete deliveries: {', '.join(incomplete)}" if incomplete else "",
                chart=(ratio, None),
            )
        )
        cpu = _ratio(subject["cpu_per_delivery_us"], echo["cpu_per_delivery_us"])
        out.append(
            _metric(
                f"scale_cpu_{k}",
                f"  server CPU per delivery, K={k:,} / bare",
                "scale",
                subject=subject["cpu_per_delivery_us"],
                baseline=echo["cpu_per_delivery_us"],
                unit="us",
                value=cpu,
                chart=(cpu, None),
            )
        )
        reach = data.get("reach_all")
        if reach is None:
            continue
        ours_r, bare_r = reach["subject"], reach["echo"]
        p99 = ours_r["p99_ms"]
        out.append(
            _metric(
                "scale_reach_p99",
                f"one change to all {k:,} watchers: p99 latency",
                "scale",
                subject=p99,
                baseline=bare_r["p99_ms"],
                unit="ms",
                value=p99,
                value_text=f"{p99:.0f} ms",
                goal_op="<",
                goal=SCALE_REACH_P99_GOAL_MS,
                goal_text=f"< {SCALE_REACH_P99_GOAL_MS:.0f} ms",
                note=f"send to arrival, every watcher of {ours_r['changes']} changes; "
                f"p50 {ours_r['p50_ms']:.0f} ms (echo {bare_r['p50_ms']:.0f} ms)",
                chart=(p99 / SCALE_REACH_P99_GOAL_MS, 1.0),
            )
        )
        last = _ratio(ours_r["reach_all_median_ms"], bare_r["reach_all_median_ms"])
        out.append(
            _metric(
                "scale_reach_last",
                f"  until the last of {k:,} watchers has it (median) / bare",
                "scale",
                subject=ours_r["reach_all_median_ms"],
                baseline=bare_r["reach_all_median_ms"],
                unit="ms",
                value=last,
                note=f"max {ours_r['reach_all_max_ms']:.0f} ms (echo "
                f"{bare_r['reach_all_max_ms']:.0f} ms)",
                chart=(last, None),
            )
        )
    return out


def _per_run_rss(growth: dict[str, Any]) -> float:
    """RSS per stored run across the growth servers (largest vs smallest fill)."""
    sizes = growth["sizes"]
    low, high = min(sizes), max(sizes)
    rss = growth["rss_kib"]
    return _ratio((rss[str(high)] - rss[str(low)]) * 1024, high - low)


def _growth_metrics(growth: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    memory = growth["memory"]
    traced = memory["real_traced"]["bytes_per_run"]
    out.append(
        _metric(
            "growth_bytes_per_run",
            "memory per stored finished run (small metadata)",
            "growth",
            subject=traced,
            unit="B",
            value=traced,
            value_text=f"{traced:,.0f} B",
            goal_op="<=",
            goal=GROWTH_BYTES_GOAL,
            goal_text=f"<= {GROWTH_BYTES_GOAL:,.0f} B",
            note=f"Python objects (tracemalloc) per run created, claimed and finished, slope "
            f"over {memory['runs']:,} runs; RSS slope {memory['real_rss']['bytes_per_run']:,.0f} "
            f"B; RSS of the growth servers {_per_run_rss(growth):,.0f} B per run",
            chart=(traced / GROWTH_BYTES_GOAL, 1.0),
        )
    )
    sizes = growth["sizes"]
    smallest = str(min(sizes))
    latency = growth["latency"]
    echo = latency["echo"]
    for method, name in (("create", "CreateRun"), ("get", "GetRun")):
        base = latency[smallest][method]
        for n in sizes:
            side = latency[str(n)][method]
            if str(n) == smallest:
                diff = side["p50_ms"] - echo[method]["p50_ms"]
                out.append(
                    _metric(
                        f"growth_{method}_{n}",
                        f"{name} p50 c1, {n:,} runs stored - echo p50",
                        "growth",
                        subject=side["p50_ms"],
                        baseline=echo[method]["p50_ms"],
                        unit="ms",
                        value=diff,
                        value_text=f"{diff:+.3f} ms",
                    )
                )
                continue
            ratio = _ratio(side["p50_ms"], base["p50_ms"])
            out.append(
                _metric(
                    f"growth_{method}_{n}",
                    f"{name} p50 c1, {n:,} runs stored / {int(smallest):,} stored",
                    "growth",
                    subject=side["p50_ms"],
                    baseline=base["p50_ms"],
                    unit="ms",
                    value=ratio,
                    note=f"p99 {side['p99_ms']:.3f} vs {base['p99_ms']:.3f} ms",
                    chart=(ratio, None),
                )
            )
    return out


def growth_chart(growth: dict[str, Any], path: Path) -> bool:
    """Cost against work: CreateRun/GetRun latency (c1) by runs stored, with the echo
    baseline; memory per stored run with its goal."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted(growth["sizes"])
    latency = growth["latency"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"create": "#1565c0", "get": "#2e7d32"}
    for method, name in (("create", "CreateRun"), ("get", "GetRun")):
        p50 = [latency[str(n)][method]["p50_ms"] for n in sizes]
        p99 = [latency[str(n)][method]["p99_ms"] for n in sizes]
        left.plot(sizes, p50, "o-", color=colors[method], label=f"{name} p50")
        left.plot(sizes, p99, "o--", color=colors[method], alpha=0.6, label=f"{name} p99")
        echo = latency["echo"][method]["p50_ms"]
        left.axhline(echo, color=colors[method], linestyle=":", linewidth=1)
    left.plot([], [], ":", color="grey", label="bare echo p50 (same run)")
    left.set_xscale("log")
    left.set_ylim(bottom=0)
    left.set_xlabel("finished runs stored (in-memory store)")
    left.set_ylabel("latency at concurrency 1 (ms)")
    left.set_title("latency against runs stored")
    left.legend(fontsize=8)
    memory = growth["memory"]
    bars = {
        "Python objects\n(tracemalloc)": memory["real_traced"]["bytes_per_run"],
        "RSS slope\n(in-process)": memory["real_rss"]["bytes_per_run"],
        f"RSS, servers\n{sizes[0]:,} -> {sizes[-1]:,}": _per_run_rss(growth),
    }
    right.bar(list(bars), list(bars.values()), color="#2e7d32", width=0.5)
    for x, value in enumerate(bars.values()):
        right.annotate(f"{value:,.0f} B", (x, value), ha="center", va="bottom", fontsize=9)
    right.axhline(GROWTH_BYTES_GOAL, color="#c62828", linestyle="--", linewidth=1)
    right.annotate("goal 1,536 B", (0, GROWTH_BYTES_GOAL), va="bottom", fontsize=8, color="#c62828")
    right.set_ylim(0, GROWTH_BYTES_GOAL * 1.25)
    right.set_ylabel("bytes per finished run")
    right.set_title("memory per stored run (small metadata)")
    right.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _manager_metrics(manager: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    results = manager["results"]
    largest = max(r["n"] for r in results)
    for result in results:
        n = result["n"]
        ours, seed = result["manager"], result["seed_style"]
        ratio = _ratio(ours["mix"], seed["mix"])
        goal = MANAGER_RATIO_GOAL if n == largest else None
        out.append(
            _metric(
                f"manager_mix_{n}",
                f"manager / seed-style, {n:,} runs (mix)",
                "manager",
                subject=ours["mix"],
                baseline=seed["mix"],
                unit="ops/s",
                value=ratio,
                value_text=f"{ratio:.1f}x",
                goal_op=">=" if goal else None,
                goal=goal,
                goal_text=f">= {goal:.0f}x" if goal else "-",
                chart=(ratio, goal) if goal else None,
            )
        )
    top = next(r for r in results if r["n"] == largest)
    for op in ("create", "get", "inflight", "list"):
        ratio = _ratio(top["manager"][op], top["seed_style"][op])
        out.append(
            _metric(
                f"manager_{op}_{largest}",
                f"  {op}, {largest:,} runs",
                "manager",
                subject=top["manager"][op],
                baseline=top["seed_style"][op],
                unit="ops/s",
                value=ratio,
                value_text=f"{ratio:.1f}x",
            )
        )
    smallest = min(r["n"] for r in results)
    if largest != smallest:
        low = next(r for r in results if r["n"] == smallest)
        for op in ("mix", "create", "get", "inflight", "list"):
            flat = _ratio(top["manager"][op], low["manager"][op])
            is_goal = op == "mix"
            out.append(
                _metric(
                    f"flatness_{op}",
                    f"manager flatness {largest // 1000}k/{smallest // 1000}k ({op})",
                    "manager",
                    subject=top["manager"][op],
                    baseline=low["manager"][op],
                    unit="ops/s",
                    value=flat,
                    goal_op=">=" if is_goal else None,
                    goal=FLATNESS_GOAL if is_goal else None,
                    goal_text=f">= {FLATNESS_GOAL:.2f}" if is_goal else "-",
                    chart=(flat, FLATNESS_GOAL) if is_goal else None,
                )
            )
    return out


def _memory_metrics(raw: dict[str, Any]) -> list[Metric]:
    out: list[Metric] = []
    watch = raw.get("grpc", {}).get("watch_memory")
    if watch is not None:
        label = "RSS growth, watch open/cancel cycles"
        goal_text = f"< {WATCH_RSS_GOAL_MB:.0f} MB"
        if "unavailable" in watch:
            out.append(_unavailable("rss_watch", label, "memory", watch["unavailable"], goal_text))
        else:
            growth = watch["subject"]["growth_mb"]
            cycles = watch["cycles"]
            out.append(
                _metric(
                    "rss_watch",
                    f"{label} ({cycles:,})",
                    "memory",
                    subject=growth,
                    baseline=watch["echo"]["growth_mb"],
                    unit="MB",
                    value=growth,
                    value_text=f"{growth:.2f} MB",
                    goal_op="<",
                    goal=WATCH_RSS_GOAL_MB,
                    goal_text=goal_text,
                    note="" if cycles >= 10_000 else "goal is for 10,000 cycles",
                    chart=(max(growth, 0.01), WATCH_RSS_GOAL_MB),
                )
            )
    expire = raw.get("expire_memory")
    if expire is not None:
        growth = expire["growth_mb"]
        sizes = expire["sizes_after"]
        out.append(
            _metric(
                "rss_expire",
                f"RSS growth, {expire['runs']:,} created-and-expired runs",
                "memory",
                subject=growth,
                unit="MB",
                value=growth,
                value_text=f"{growth:.2f} MB",
                note=f"after: runs={sizes['runs']} threads={sizes['threads']} "
                f"history={sizes['history']}",
            )
        )
    return out


def _busy(side: dict[str, Any], process: str, name: str) -> str:
    cores = side["cpu_cores"]
    return f"{name} {cores[process]:.2f} + postgres {cores['postgres']:.2f}"


def _postgres_metrics(pg: dict[str, Any]) -> list[Metric]:
    if "unavailable" in pg:
        why = pg["unavailable"]
        label = "PostgreSQL CreateRun QPS c64 / bare psycopg"
        return [_unavailable("pg_create", label, "postgres", why, f">= {PG_CREATE_GOAL:.2f}")]
    out: list[Metric] = []
    tp, conc = pg["throughput"], pg["concurrency"]
    server = tp["server"]
    ratio = _ratio(server["qps"], tp["bare"]["qps"])
    out.append(
        _metric(
            "pg_create",
            f"PostgreSQL CreateRun QPS c{conc} / bare psycopg",
            "postgres",
            subject=server["qps"],
            baseline=tp["bare"]["qps"],
            unit="calls/s",
            value=ratio,
            goal_op=">=",
            goal=PG_CREATE_GOAL,
            goal_text=f">= {PG_CREATE_GOAL:.2f}",
            note=f"cores busy: {_busy(server, 'server', 'runcontrol')}; "
            f"{_busy(tp['bare'], 'client', 'bare loop')}",
            chart=(ratio, PG_CREATE_GOAL),
        )
    )
    # (id, label, subject side, baseline side, note)
    pairs = [
        (
            "pg_create_counter",
            f"PostgreSQL CreateRun QPS c{conc} / bare psycopg + counter row",
            "server",
            "bare_counter",
            "",
        ),
        (
            "pg_counter_cost",
            f"bare psycopg + counter row / bare psycopg, QPS c{conc}",
            "bare_counter",
            "bare",
            "one round trip: the row held while the database runs the tail",
        ),
        (
            "pg_counter_cost_tx",
            f"the same with psycopg transaction(), QPS c{conc}",
            "bare_counter_tx",
            "bare_tx",
            "as the store sends it: the row held across a round trip to the client",
        ),
        (
            "pg_tx_cost",
            f"bare psycopg transaction() / one round trip, QPS c{conc}",
            "bare_tx",
            "bare",
            "psycopg syncs at BEGIN, block end and COMMIT in pipeline mode",
        ),
    ]
    for metric_id, label, subject, baseline, note in pairs:
        ratio = _ratio(tp[subject]["qps"], tp[baseline]["qps"])
        busy = _busy(tp[subject], "client", "bare loop") if subject != "server" else ""
        out.append(
            _metric(
                metric_id,
                label,
                "postgres",
                subject=tp[subject]["qps"],
                baseline=tp[baseline]["qps"],
                unit="calls/s",
                value=ratio,
                note="; ".join(filter(None, [note, busy and f"cores busy: {busy}"])),
                chart=(ratio, None),
            )
        )
    latency = pg["latency"]
    cross, same = latency["cross"], latency["same"]
    for pct in ("p50", "p99"):
        ratio = _ratio(cross[f"{pct}_ms"], same[f"{pct}_ms"])
        out.append(
            _metric(
                f"pg_watch_{pct}",
                f"watch delivery {pct}, cross-replica / same replica",
                "postgres",
                subject=cross[f"{pct}_ms"],
                baseline=same[f"{pct}_ms"],
                unit="ms",
                value=ratio,
                note="from the create's answer to the event; from its send: "
                f"{cross[f'send_{pct}_ms']:.2f} vs {same[f'send_{pct}_ms']:.2f} ms",
                chart=(ratio, None),
            )
        )
    return out


# Why a goal is missed, from the profiles (BENCHMARKS.md says how each was measured);
# shown in the note of a missed goal.
MISSED_BECAUSE = {
    "qps_create_c64": "profile: the handler's own Python, ~227k instructions per call "
    "in-process for this request (validation, manager, store, record encoding; the parsing "
    "echo shows the request parse is not it) over grpc.aio's own per call (BENCHMARKS.md, "
    "round 3)",
    "p50_create_c1": "profile: as CreateRun c64 (BENCHMARKS.md, round 3)",
    "qps_get_c64": "profile: the handler path ~26k instructions per call in-process, "
    "the loop that calls it included (parse, wrapper, payload-format header, cached "
    "record) over grpc.aio's own; "
    "within this machine's run-to-run noise of the goal (BENCHMARKS.md, round 3)",
    "p50_get_c1": "profile: as GetRun c64 (BENCHMARKS.md, round 3)",
    "scale_rss": "grpc.aio's own per-stream memory: see the bare echo's growth, and the "
    "experimental transport's row (BENCHMARKS.md, round 3)",
    "scale_reach_p99": "the watcher processes share the 2 cores with the server: the bare "
    "fan-out's p99 in the same run is the floor (BENCHMARKS.md, round 3)",
    "flatness_mix": "instructions per operation are flat (callgrind: 5.8k vs 5.0k per "
    "get at 1k and 100k runs); the working set outgrows the CPU caches (BENCHMARKS.md, "
    "round 3)",
    "pg_create": "CPU-bound on 2 cores (BENCHMARKS.md, PostgreSQL: what limits throughput)",
}


def _explain(metrics: list[Metric]) -> None:
    for metric in metrics:
        why = MISSED_BECAUSE.get(metric["id"])
        if metric["passed"] is False and why:
            metric["note"] = "; ".join(filter(None, [metric["note"], why]))


def build_metrics(raw: dict[str, Any]) -> list[Metric]:
    metrics: list[Metric] = []
    if "grpc" in raw:
        metrics += _unary_metrics(raw["grpc"]["unary"])
        metrics += _fanout_metrics(raw["grpc"]["fanout"])
    if "scale" in raw:
        metrics += _scale_metrics(raw["scale"])
    if "growth" in raw:
        metrics += _growth_metrics(raw["growth"])
    if "manager" in raw:
        metrics += _manager_metrics(raw["manager"])
    metrics += _memory_metrics(raw)
    if "postgres" in raw:
        metrics += _postgres_metrics(raw["postgres"])
    _explain(metrics)
    return metrics


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "MB":
        return f"{value:.2f} MB"
    if unit == "us":
        return f"{value:.1f} us"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f}"


def _result(metric: Metric) -> str:
    if metric["value_text"] == "unavailable":
        return "unavailable"
    return {True: "PASS", False: "FAIL", None: "info"}[metric["passed"]]


def rows(metrics: list[Metric]) -> list[list[str]]:
    return [
        [
            m["label"],
            _num(m["subject"], m["unit"]),
            _num(m["baseline"], m["unit"]),
            m["value_text"],
            m["goal_text"],
            _result(m),
            m["note"],
        ]
        for m in metrics
    ]


HEADER = ["measure", "runcontrol", "baseline", "ratio", "goal", "result", "note"]


def table(metrics: list[Metric]) -> str:
    body = rows(metrics)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [HEADER, ["-" * w for w in widths], *body]
    ]
    goals = [m for m in metrics if m["passed"] is not None]
    passed = sum(1 for m in goals if m["passed"])
    lines.append(f"\n{passed}/{len(goals)} goals met")
    return "\n".join(lines)


def markdown_table(metrics: list[Metric]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows(metrics):
        row[5] = {"PASS": "**pass**", "FAIL": "**FAIL**"}.get(row[5], row[5])
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    return "\n".join(lines)


def chart(metrics: list[Metric], path: Path, *, title: str) -> bool:
    """Horizontal bars of each goal's measured ratio with its goal marked (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    charted = [m for m in metrics if m["chart"] is not None]
    if not charted:
        return False
    labels = [m["label"] + (" (MB)" if m["unit"] == "MB" else "") for m in charted]
    values = [max(m["chart"][0], 0.01) for m in charted]
    goals: list[float | None] = [m["chart"][1] for m in charted]
    colors = [{True: "#2e7d32", False: "#c62828", None: "#9e9e9e"}[m["passed"]] for m in charted]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(charted) + 1.6))
    positions = list(range(len(charted)))[::-1]
    ax.barh(positions, values, color=colors, height=0.6)
    marked = [(g, y) for g, y in zip(goals, positions, strict=True) if g is not None]
    if marked:
        ax.scatter(
            [g for g, _ in marked],
            [y for _, y in marked],
            marker="|",
            s=600,
            color="black",
            zorder=3,
        )
    for y, metric, value in zip(positions, charted, values, strict=True):
        text = "info" if metric["goal"] is None else f"goal {metric['goal_text']}"
        ax.annotate(f" {metric['value_text']} ({text})", (value, y), va="center", fontsize=8)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    # Room on the right for the value labels.
    scale = [*values, *(g for g in goals if g is not None)]
    ax.set_xlim(min(scale) / 2, max(scale) * 30)
    ax.set_xlabel("measured / baseline (log scale); green = goal met, grey = info, | = goal")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _machine_lines(raw: dict[str, Any]) -> list[str]:
    m = raw["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    return [
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['os']}",
        f"- Python {m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']} "
        f"(backend `{m['protobuf_backend']}`)",
        f"- load average when the run started: {load} (other work on the machine adds noise)",
        *_loop_lines(raw),
        *_postgres_lines(raw),
    ]


def _loop_lines(raw: dict[str, Any]) -> list[str]:
    """Which event loop each side ran on, and what the install brings."""
    install = raw.get("install") or {}
    lines = []
    if install:
        requirement = install.get("uvloop_requirement")
        extras = [e for e in install.get("uvloop_extras", []) if e not in ("uvloop", "bench")]
        version = install.get("runcontrol", "?")
        if requirement:
            declared = f"a regular dependency of runcontrol {version} (`{requirement}`)"
        elif extras:
            names = ", ".join(f"`{e}`" for e in extras)
            declared = f"brought by runcontrol {version}'s {names} extra (the server's install)"
        else:
            declared = f"NOT declared by the installed runcontrol {version} for the server"
        lines.append(
            f"- install: server started as `{install['server_command']}` with its default "
            f"`--loop auto`; uvloop {install.get('uvloop') or 'not installed'}, {declared}"
        )
    loops = raw.get("grpc", {}).get("loops")
    if loops:
        same = loops["server"] == loops["echo"]
        lines.append(
            f"- event loops: runcontrol server **{loops['server']}**, echo baseline "
            f"**{loops['echo']}**, load generator **{loops['load']}**"
            + ("" if same else " (server and echo differ: the unary ratios are not comparable)")
            + " (server and echo read from the uvloop module mapped into each process)"
        )
    scale = raw.get("scale")
    if scale and "loops" in scale:
        sl = scale["loops"]
        lines.append(
            f"- watcher scale section: server **{sl['server']}**, echo **{sl['echo']}**, "
            f"{sl['holders']} watcher-holding processes **{sl['holder']}**"
        )
    return lines


def _postgres_lines(raw: dict[str, Any]) -> list[str]:
    pg = raw.get("postgres")
    if pg is None or "unavailable" in pg:
        return []
    settings = pg["settings"]
    version = " ".join(settings["version"].split()[:2])
    mode = "durable" if pg["durable"] else "not durable, as in the tests"
    return [
        f"- {version} (one local cluster for the section, a fresh database per side), "
        f"fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']} "
        f"({mode}; both sides alike); pool {pg['pool_size']} connections on both sides, "
        f"bare loop on {pg['bare_loop']}",
    ]


def results_block(raw: dict[str, Any], metrics: list[Metric], chart_path: Path | None) -> str:
    plan = raw["plan"]
    lines = [
        START_MARK,
        "## Latest results",
        "",
        f"Generated by `python -m bench{' --quick' if plan['mode'] == 'quick' else ''}` "
        f"on {raw['date']} ({plan['mode']} run, {plan['rounds']} rounds after a warm-up, "
        f"medians; {raw['elapsed_seconds']:.0f} s). Raw numbers: `bench/results/latest.json`.",
        "",
        *_machine_lines(raw),
        "",
        markdown_table(metrics),
        "",
    ]
    if chart_path is not None:
        rel = os.path.relpath(chart_path, REPO_ROOT)
        lines += [f"![ratios against their goals]({rel})", ""]
    if raw.get("growth_chart"):
        lines += [f"![latency and memory against runs stored]({raw['growth_chart']})", ""]
    lines.append(END_MARK)
    return "\n".join(lines)


DEFAULT_DOC = (
    f"# Benchmarks\n\nRun `make bench` (or `make bench QUICK=1`).\n\n{START_MARK}\n{END_MARK}\n"
)


def write_markdown(
    path: Path, raw: dict[str, Any], metrics: list[Metric], chart_path: Path | None
) -> None:
    """Replace the results block of `path` (between the markers); the rest is kept."""
    text = path.read_text() if path.exists() else DEFAULT_DOC
    if START_MARK not in text or END_MARK not in text:
        text = text.rstrip("\n") + f"\n\n{START_MARK}\n{END_MARK}\n"
    head, rest = text.split(START_MARK, 1)
    _, tail = rest.split(END_MARK, 1)
    path.write_text(head + results_block(raw, metrics, chart_path) + tail)
