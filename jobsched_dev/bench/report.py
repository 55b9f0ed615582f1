"""Running a scenario R times and turning its results into the tables ``jobsched bench``
prints: medians of the repeated runs, with the machine and versions they ran on."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from jobsched_dev.bench.soak_analysis import FLAT_MB_PER_H, TREND_SPAN_S
from jobsched_dev.bench.stats import (
    LATENCY_HEADERS,
    cpu_table,
    fmt,
    latency_rows,
    median_of_runs,
    table,
)


def environment() -> dict[str, Any]:
    """The machine, the versions and the commit a result was measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for package in ("jobsched", "asyncpg", "aio-pika", "aiohttp", "aiozk", "celery"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    return {"nproc": os.cpu_count(), "memory_gb": round(memory_gb, 1), "cpu_model": model,
            "python": platform.python_version(), "versions": versions, "commit": commit}


async def repeated(run: Callable[[], Awaitable[dict[str, Any]]], repeat: int,
                   echo: Callable[[str], None]) -> dict[str, Any]:
    runs = []
    for n in range(repeat):
        runs.append(await run())
        if repeat > 1:
            echo(f"run {n + 1}/{repeat} done")
    return {"median": median_of_runs(runs), "repeat": repeat, "runs": runs,
            "environment": environment()}


def write_json(path: str, result: dict[str, Any]) -> None:
    Path(path).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2
                                        | orjson.OPT_SERIALIZE_NUMPY))


def _latency(result: dict[str, Any]) -> str:
    return table(LATENCY_HEADERS, latency_rows(result["latency_ms"]))


def _heading(text: str, repeat: int) -> str:
    return f"{text} (median of {repeat} runs)" if repeat > 1 else text


def _task(r: dict[str, Any]) -> str:
    return f"{r.get('task', 'sync')} task"


def render_burn_down(r: dict[str, Any], repeat: int) -> str:
    head = _heading(f"throughput burn-down: {r['jobs']:,} no-op python jobs "
                    f"({_task(r)}), {r['workers']} worker process(es)", repeat)
    rows = [["executions/s (commit -> last finished)", r["executions_per_s"]],
            ["steady executions/s (10 %-90 % of finishes)", r["steady_executions_per_s"]],
            ["drain s", r["drain_s"]], ["finished", r["finished"]],
            ["all drained", r["drained"]]]
    return "\n\n".join([head, table(("", "value"), rows), _latency(r), cpu_table(r["cpu"])])


def render_priority(r: dict[str, Any], repeat: int) -> str:
    head = _heading(f"priority: {r['low']:,} low no-op jobs, then {r['high']:,} high ones "
                    f"({_task(r)}), {r['workers']} worker process(es)", repeat)
    queued, submitted = r["high queued -> started"], r["high submitted -> started"]
    rows = [["high queued -> started p50 ms", queued["p50"]],
            ["high queued -> started p99 ms (target <= 250)", queued["p99"]],
            ["high submitted -> started p99 ms", submitted["p99"]],
            ["high submitted -> queued p50 ms", r["high submitted -> queued"]["p50"]],
            # While high work waited: from the high fires to the last high start.
            ["high waited ms (fired to last high start)", 1000 * r["high_waited_s"]],
            ["runs started while high waited", r["runs_while_high_waited"]],
            ["low share of them % (target >= 5)", 100 * r["low_share_while_high_waited"]],
            # The start burst: from the first high start to the last. One shorter than a
            # claim flush's round trip holds no run of another band, whatever the worker does.
            ["high burst ms (first to last high start)", 1000 * r["burst_s"]],
            ["runs started during the high burst", r["runs_in_burst"]],
            ["low share of them %", 100 * r["low_share_in_burst"]],
            ["low still waiting after the burst", r["low_still_waiting_after_burst"]],
            ["mixed burn-down executions/s", r["executions_per_s"]],
            ["one-priority burn-down executions/s", r["one_priority_executions_per_s"]],
            ["mixed / one priority", r["mixed_vs_one_priority"]],
            ["all drained", r["drained"]]]
    return "\n\n".join([head, table(("", "value"), rows), cpu_table(r["cpu"])])


def render_steady(r: dict[str, Any], repeat: int) -> str:
    vacuumed = ("; VACUUM ANALYZE between steps (the server's autovacuum is off)"
                if r.get("vacuumed_between_steps") else "")
    head = _heading(f"throughput steady: {r['workers']} worker process(es), "
                    f"{r['step_s']:g} s per step{vacuumed}", repeat)
    rows = []
    for step in r["steps"]:
        start, finish = step["submit -> started"], step["submit -> finished"]
        cpu = step["cpu"]
        roles = sum(v["cpu_s"] for k, v in cpu.items() if k.startswith(("scheduler", "worker")))
        rows.append([step["offered_per_s"], step["achieved_per_s"], start["p50"], start["p95"],
                     start["p99"], start["max"], finish["p99"], step["drained"],
                     roles, cpu.get("postgresql", {}).get("cpu_s", float("nan"))])
    headers = ("offered/s", "achieved/s", "start p50 ms", "p95", "p99", "max",
               "finish p99 ms", "drained", "roles CPU s", "PG CPU s")
    return "\n\n".join([head, table(headers, rows)])


def render_lateness(r: dict[str, Any], repeat: int) -> str:
    idle = f", {r['idle_schedules']:,} other active schedules" if r["idle_schedules"] else ""
    head = _heading(f"lateness: {r['jobs']:,} every-second cron jobs for {r['seconds']} s "
                    f"({_task(r)}), {r['workers']} worker process(es){idle}", repeat)
    rows = [["expected fires", r["expected_fires"]], ["fires", r["fires"]],
            ["missed", r["missed"]], ["not started", r["not_started"]],
            ["duplicates", r["duplicates"]]]
    return "\n\n".join([head, table(("", "count"), rows), _latency(r), cpu_table(r["cpu"])])


def render_herd(r: dict[str, Any], repeat: int) -> str:
    head = _heading(f"herd: {r['jobs']:,} one-shot jobs due in the same second "
                    f"({_task(r)}), {r['workers']} worker process(es)", repeat)
    rows = [["all started after s", r["all_started_after_s"]],
            ["all started within 5 s", r["target_all_started_within_5s"]],
            ["started", r["started"]], ["missed", r["missed"]],
            ["duplicates", r["duplicates"]]]
    return "\n\n".join([head, table(("", "value"), rows), _latency(r), cpu_table(r["cpu"])])


def render_api(r: dict[str, Any], repeat: int) -> str:
    idle = f", {r['idle_schedules']:,} jobs stored" if r.get("idle_schedules") else ""
    head = _heading(f"api: one api process, concurrency {r['concurrency']}, "
                    f"{r['seconds']:g} s per phase, {r['clients']} client process(es){idle}",
                    repeat)
    rows = []
    for phase, label in (("post", "POST /api/v1/jobs"), ("get", "GET /api/v1/jobs/{id}")):
        p = r[phase]
        lat = p["latency_ms"]
        api_cpu = next((v for k, v in p["cpu"].items() if k.startswith("api")), None)
        rows.append([label, p["per_s"], lat["p50"], lat["p95"], lat["p99"], lat["max"],
                     sum(p["errors"].values()) if p["errors"] else 0,
                     api_cpu["core_share"] * 100 if api_cpu else float("nan"),
                     p.get("api_cpu_us_per_request", float("nan")),
                     p["cpu"]["bench client"]["core_share"] * 100])
    headers = ("", "req/s", "p50 ms", "p95", "p99", "max", "errors", "api % core",
               "api µs/req", "client % core")
    return "\n\n".join([head, table(headers, rows)])


def render_scale(r: dict[str, Any], repeat: int) -> str:
    history, schedules = int(r.get("history", 0)), int(r["schedules"])  # medians: floats
    scaled = f"{schedules:,}" + (f" + {history:,} history" if history else "")
    what = f"{schedules:,} active schedules" + (
        f" and {history:,} executions of history (30 days)" if history else "")
    parts = [_heading(f"scale: {what} vs none", repeat)]
    rows = []
    for label, path in r["compare"].items():
        base, big = path["baseline"], path["scaled"]
        rows.append([label, base, big, big / base if base else float("nan")])
    parts.append(table(("", "none", scaled, "ratio"), rows))
    line = (f"leader RSS with {schedules:,} schedules: "
            f"{fmt(r['leader_rss_mb'])} MB; COPY took {fmt(r['preload_s'])} s")
    if history:
        line += f"; writing the history took {fmt(r.get('history_preload_s', float('nan')))} s"
    parts.append(line)
    return "\n\n".join(parts)


def render_vs_celery(r: dict[str, Any], repeat: int) -> str:
    head = _heading(f"the same burn-down by Celery {r['celery'].get('version', '')} "
                    "(prefork, acks_late, same RabbitMQ)", repeat)
    rows = [["jobsched (every state change in PostgreSQL)", r["executions_per_s"], 1.0],
            ["Celery, PostgreSQL result backend", r["celery_postgresql"]["executions_per_s"],
             r["ratio_vs_celery_postgresql"]],
            ["Celery, no result backend", r["celery"]["executions_per_s"],
             r["ratio_vs_celery"]]]
    return "\n\n".join([head, table(("", "executions/s", "jobsched ÷ this"), rows)])


def render_herd_vs_celery(r: dict[str, Any], repeat: int) -> str:
    theirs = r["celery"]
    head = _heading(f"the same herd fired by Celery {theirs.get('version', '')} beat: "
                    f"{theirs['entries']:,} crontab() entries due at one minute boundary, "
                    f"one beat process, prefork worker x{theirs['concurrency']}, acks_late, "
                    "same RabbitMQ", repeat)
    ratio = r["celery_over_jobsched"]
    ours_ms, theirs_ms = r["latency_ms"]["scheduled_for -> started"], \
        theirs["latency_ms"]["due -> started"]

    def ms(seconds: float | None) -> float:
        return float("nan") if seconds is None else seconds * 1000

    rows: list[list[Any]] = [
        ["all started after ms", ms(r["all_started_after_s"]),
         ms(theirs["all_started_after_s"]), ratio["all_started_after_s"]]]
    rows += [[f"due -> started {key} ms", ours_ms[key], theirs_ms[key], ratio[key]]
             for key in ("p50", "p95", "p99", "max")]
    rows += [[label, r[key], theirs[key], ""] for label, key in (
        ("started", "started"), ("missed", "missed"), ("duplicates", "duplicates"))]
    return "\n\n".join([head, table(("", "jobsched", "Celery beat", "Celery ÷ jobsched"),
                                     rows), cpu_table(theirs["cpu"])])


def render_workflow(r: dict[str, Any], repeat: int) -> str:
    chain, fan, large = r["chain"], r["fan_out"], r["large"]
    head = _heading(f"workflow: {chain['nodes']}-node chain x{chain['runs']}, "
                    f"{fan['width']}-wide fan-out + join, {large['nodes']:,}-node create "
                    f"({_task(r)}), {r['workers']} worker process(es)", repeat)
    latency = table(LATENCY_HEADERS, latency_rows({
        "chain: parent finished -> child started": chain["latency_ms"],
        "immediate jobs alone: submitted -> started": fan["bystanders_alone_ms"],
        f"... during the fan-out ({fan.get('priority', 'normal')} band)":
            fan["bystanders_during_ms"]}))
    rows = [["fan-out: root finished -> join finished (s)", fan["all_done_after_root_s"]],
            ["  first child started (ms after root)", fan["first_child_started_ms"]],
            ["  last child started (ms after root)", fan["last_child_started_ms"]],
            ["  last child finished (ms after root)", fan["last_child_finished_ms"]],
            ["  join started after last child (ms)", fan["join_started_after_last_child_ms"]],
            [f"create {large['nodes']:,} nodes through the api (s)", large["create_s"]]]
    targets = table(("target", "value"), [
        ["chain p50 <= 15 ms", chain["latency_ms"]["p50"] <= 15],
        ["chain p99 <= 50 ms", chain["latency_ms"]["p99"] <= 50],
        ["fan-out + join <= 1.5 s", fan["all_done_after_root_s"] <= 1.5],
        ["10,000 nodes stored <= 2 s", large["create_s"] <= 2.0]])
    return "\n\n".join([head, latency, table(("", "value"), rows), targets,
                        cpu_table(r["cpu"])])


# -- soak -------------------------------------------------------------------------------

#: Beyond this many latency windows the table shows only those over a target.
SOAK_WINDOWS_SHOWN = 40


def _ms(seconds: float | None) -> float:
    return float("nan") if seconds is None else seconds * 1000


def _minutes(seconds: float | None) -> float:
    return float("nan") if seconds is None else seconds / 60


def render_soak(r: dict[str, Any]) -> str:
    """The soak's tables: what must hold, then what was measured against the targets."""
    plan, load = r["plan"], r["load"]
    kills = (f"a worker kill -9 and a leader SIGTERM every {plan['kill_every_min']:g} min"
             if plan["kill_every_min"] else "no kills")
    quiet = f" + {plan['quiet_minutes']:g} min with one leader, no kills" \
        if plan["quiet_minutes"] else ""
    settled = (f"every execution due before its end had ended {load['settled_after_s']:.1f} s "
               "after it" if load["settled_after_s"] is not None else
               f"executions due before its end were still not ended {plan['settle_s']:g} s "
               "after it")
    cpu = r.get("cpu") or {}
    machine = ""
    if cpu:
        machine = (f" The machine was {100 * cpu['machine_busy']:.0f} % busy (all cores): "
                   + ", ".join(f"{name} {100 * share:.0f} %" for name, share in cpu.items()
                               if name != "machine_busy") + ".")
    lead = r["leadership"]
    parts = [
        f"soak: {plan['minutes']:g} min{quiet}; {plan['every_second_jobs']:,} every-second "
        f"jobs (python sync/async/20 ms, http, shell) + {plan['five_second_jobs']:,} "
        f"every-5-s shell jobs; {plan['submits_per_s']:g} immediate submits/s and "
        f"{plan['reads_per_s']:g} reads/s through the api; {plan['schedulers']} schedulers, "
        f"{plan['workers']} workers, 1 api; {kills}. Load {load['seconds']:.0f} s; "
        f"{settled}.{machine} Leadership terms begun: {lead['terms_begun']} "
        f"({lead['terms_that_fired']} fired; {lead['sigterms']} leader SIGTERMs).",
        table(("invariant", "count", "holds"),
              [[k, v, v == 0] for k, v in r["invariants"].items()]),
    ]
    ex = r["executions"]
    rows: list[list[Any]] = [[f"executions {state} (due before the end)", n]
                             for state, n in sorted(ex["by_state"].items())]
    rows += [[f"their attempts {outcome}", n]
             for outcome, n in sorted(ex["attempts_by_outcome"].items())]
    rows += [["executions of one fire beyond the first",
              r["duplicates"]["executions_of_one_fire"]],
             ["attempts overlapping another of their execution",
              r["duplicates"]["overlapping_attempts"]],
             ["executions succeeded twice (re-run after a lost attempt)",
              r["duplicates"]["executions_succeeded_twice"]],
             ["deadlocks (pg_stat_database)", r["deadlocks"]],
             ["executions rows at the end (all)", ex["history_rows_at_end"]],
             ["http target hits", ex["http_target_hits"]]]
    parts.append(table(("", "count"), rows))
    if ex["not_succeeded"]:
        parts.append(table(("job", "state", "reason", "count"),
                           [[x["name"], x["state"], x["why"][:60], x["n"]]
                            for x in ex["not_succeeded"]]))
    if ex["lost_attempts"]:
        parts.append(table(("attempts lost with worker", "execution ended", "count"),
                           [[x["worker"], x["state"], x["n"]] for x in ex["lost_attempts"]]))
    fires = r["fires"]
    parts.append(table(
        ("periodic fires", "jobs", "due", "executions", "explained by a reason", "missing"),
        [[kind, f["jobs"], f["expected"], f["executions"], f["explained_by_reason"],
          f["unexplained"]] for kind, f in sorted(fires["by_kind"].items())]
        + [["all", fires["jobs"], fires["expected"], fires["executions"],
            fires["explained_by_reason"], fires["unexplained"]]]))
    if r["events"]:
        parts.append(table(
            ("at min", "event", "process", "exit", "stopped s", "back ready s"),
            [[_minutes(e["t_s"]), e["what"], e.get("instance", e["process"]),
              e.get("exit_code"),
              e.get("stopped_s", float("nan")), e.get("restarted_ready_s", float("nan"))]
             for e in r["events"]]))
    if r["takeovers"]:
        parts.append(table(
            ("take-over at min", "epoch", "new leader", "epoch changed after ms",
             "first fire after ms"),
            [[_minutes(t["t_s"]), f"{t['old_epoch']} -> {t['new_epoch']}",
              t["new_holder"] or "-", _ms(t["epoch_changed_after_s"]),
              _ms(t["first_fire_after_s"])] for t in r["takeovers"]]))
    parts.append(_render_memory(r))
    parts.append(_render_latency(r))
    parts.append(_render_windows(r))
    parts.append(_render_periodic(r))
    parts.append(f"role logs: {r['deployment']['log_dir']}")
    return "\n\n".join(parts)


def _render_memory(r: dict[str, Any]) -> str:
    rows = []
    for m in r["memory"]:
        share = m["leader_share"]
        rows.append([m["instance"], _minutes(m["from_s"]), _minutes(m["to_s"]),
                     m["ended_by"] or "-", "-" if share is None else f"{100 * share:.0f} %",
                     m["rss_start_mb"], m["rss_end_mb"], m["slope_mb_per_h"],
                     m["first_two_thirds_mb_per_h"], m["last_third_mb_per_h"],
                     m["verdict"]])
    head = (f"RSS per process (MB; slopes in MB/h by least squares over the samples after "
            f"its first {r['plan']['warmup_min']:g} min; a verdict from "
            f"{TREND_SPAN_S / 60:g} min of them: flat within {FLAT_MB_PER_H:g} MB/h, levels "
            "off when the last third is flat or grows at most half as fast as the first two; "
            "'as leader': a scheduler that took over during its life, over its latest term, "
            "the warm-up counted from the take-over)")
    return head + "\n\n" + table(
        ("process", "from min", "to min", "ended by", "leader", "start", "end", "slope",
         "first 2/3", "last 1/3", "verdict"),
        [[("-" if v is None else v) for v in row] for row in rows])


def _render_latency(r: dict[str, Any]) -> str:
    imm, api = r["immediate"], r["api"]
    rows: list[list[Any]] = []
    for label, d, target in (
            ("immediate submitted -> started", imm["submitted -> started"],
             imm["target_p99_ms"]),
            ("  submitted -> queued", imm["submitted -> queued"], None),
            ("  queued -> started", imm["queued -> started"], None),
            ("api, every request", api["overall"], api["target_p99_ms"])):
        rows.append([label, d["p50"], d["p99"], d["max"], int(d["n"]),
                     "" if target is None else f"<= {target:g}",
                     "" if target is None else d["p99"] <= target])
    for route, d in api["by_route"].items():
        rows.append([f"  {route}", d["p50"], d["p99"], d["max"], int(d["n"]), "", ""])
    text = table(("(ms)", "p50", "p99", "max", "n", "p99 target", "met"), rows)
    notes = []
    if imm["not_started"]:
        notes.append(f"{imm['not_started']:,} immediate jobs never started")
    if api["errors"]:
        notes.append("api errors: " + ", ".join(f"{k} x{v}" for k, v in api["errors"].items()))
    if api["shed"]:
        notes.append(f"{api['shed']:,} requests not sent: {api['shed']} already in flight")
    return text + ("\n" + "\n".join(notes) if notes else "")


def _render_windows(r: dict[str, Any]) -> str:
    imm = {w["from_s"]: w for w in r["immediate"]["windows"]}
    api = {w["from_s"]: w for w in r["api"]["windows"]}
    imm_target, api_target = r["immediate"]["target_p99_ms"], r["api"]["target_p99_ms"]
    rows, over = [], 0
    for start in sorted(set(imm) | set(api)):
        i, a = imm.get(start), api.get(start)
        missed = (i is not None and i["p99"] > imm_target) or \
            (a is not None and a["p99"] > api_target)
        over += missed
        rows.append((missed, [start, *((i["p50"], i["p99"], i["max"]) if i else ("-",) * 3),
                              *((a["p99"], a["max"]) if a else ("-",) * 2),
                              ", ".join((i or a or {}).get("events", [])) or ""]))
    shown = [row for missed, row in rows if missed or len(rows) <= SOAK_WINDOWS_SHOWN]
    head = (f"per {r['plan']['window_s']:g}-s window (ms): {over} of {len(rows)} windows over "
            f"a target (immediate p99 <= {imm_target:g}, api p99 <= {api_target:g})")
    if len(rows) > SOAK_WINDOWS_SHOWN:
        head += "; only those are shown"
    return head + "\n\n" + table(
        ("from s", "immediate p50", "p99", "max", "api p99", "max", "events"), shown)


def _render_periodic(r: dict[str, Any]) -> str:
    p = r["periodic_work"]
    rows = [[f"{name} third", _minutes(t["from_s"]), t["history_rows"], t["ticks"],
             t["tick_mean_ms"], t["tick_p99_bound_ms"], t["retention_passes"],
             t["retention_mean_ms"], t["retention_slowest_ms"]]
            for name, t in zip(("first", "middle", "last"), p["thirds"], strict=True)]
    text = table(("leader's periodic work", "from min", "history rows", "ticks",
                  "tick mean ms", "tick p99 <= ms", "retention passes", "mean ms",
                  "slowest ms"), rows)
    vacuums = p.get("vacuums") or {}
    return (text + f"\nlast / first third: history x{fmt(p['history_ratio'], 2)}, tick mean "
            f"x{fmt(p['tick_mean_ratio'], 2)}, retention pass x"
            f"{fmt(p['retention_mean_ratio'], 2)}"
            + (f"\nVACUUM ANALYZE (the server's autovacuum is off): {vacuums['count']} runs, "
               f"{fmt(vacuums['total_s'])} s" if vacuums.get("count") else ""))
