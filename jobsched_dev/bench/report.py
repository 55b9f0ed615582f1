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
            ["runs started during the high burst", r["runs_in_burst"]],
            ["low share of them (target >= 5 %)", 100 * r["low_share_in_burst"]],
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
                     p["cpu"]["bench client"]["core_share"] * 100])
    headers = ("", "req/s", "p50 ms", "p95", "p99", "max", "errors", "api % core",
               "client % core")
    return "\n\n".join([head, table(headers, rows)])


def render_scale(r: dict[str, Any], repeat: int) -> str:
    parts = [_heading(f"scale: {r['schedules']:,} active schedules vs none", repeat)]
    rows = []
    for label, path in r["compare"].items():
        base, big = path["baseline"], path["scaled"]
        rows.append([label, base, big, big / base if base else float("nan")])
    parts.append(table(("", "none", f"{r['schedules']:,}", "ratio"), rows))
    parts.append(f"leader RSS with {r['schedules']:,} schedules: "
                 f"{fmt(r['leader_rss_mb'])} MB; COPY took {fmt(r['preload_s'])} s")
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
