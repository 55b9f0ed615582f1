"""What each ``jobsched bench`` subcommand does once its options are parsed: run the
scenario (repeatedly), print its tables and write the JSON."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import click

from jobsched_dev.bench import report
from jobsched_dev.bench.cluster import Services
from jobsched_dev.bench.common import Options

Echo = Callable[[str], None]


def _finish(result: dict[str, Any], text: str, json_out: str | None, echo: Echo) -> None:
    echo(text)
    env = result["environment"]
    echo(f"\n{env['nproc']} CPUs ({env['cpu_model']}), {env['memory_gb']} GB, "
         f"Python {env['python']}, commit {env['commit'] or '?'}")
    if json_out:
        report.write_json(json_out, result)


def _require_celery(*modules: str) -> None:
    """Fail in one line, before anything starts, when the 'bench' extra is missing."""
    missing = [m for m in ("celery", *modules) if find_spec(m) is None]
    if missing:
        raise click.ClickException(f"--vs celery needs {', '.join(missing)}: "
                                   "pip install '.[bench]'")


async def _burn_down_vs_celery(services: Services, options: Options, jobs: int,
                              workers: int) -> dict[str, Any]:
    """One burn-down by jobsched, then the same by Celery without and with results."""
    from jobsched_dev.bench import throughput as scenario
    from jobsched_dev.bench.celery_peer import run_celery_burn_down

    ours = await scenario.burn_down(services, jobs, workers, options)
    bare = await run_celery_burn_down(services, jobs, with_results=False)
    stored = await run_celery_burn_down(services, jobs, with_results=True)
    rate = ours["executions_per_s"]
    return {**ours, "celery": bare, "celery_postgresql": stored,
            "ratio_vs_celery": rate / bare["executions_per_s"],
            "ratio_vs_celery_postgresql": rate / stored["executions_per_s"]}


def throughput(services: Services, options: Options, *, mode: str, jobs: int, workers: int,
               rates: list[int], step_s: float, vs: str | None, repeat: int,
               json_out: str | None, echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench import throughput as scenario

    if vs == "celery" and mode in ("burn-down", "both"):
        _require_celery("sqlalchemy", "psycopg2")
    out: dict[str, Any] = {"scenario": "throughput"}
    texts = []
    if mode in ("burn-down", "both"):
        def burn_down() -> Any:
            if vs == "celery":
                return _burn_down_vs_celery(services, options, jobs, workers)
            return scenario.burn_down(services, jobs, workers, options)

        out["burn_down"] = asyncio.run(report.repeated(burn_down, repeat, echo))
        texts.append(report.render_burn_down(out["burn_down"]["median"], repeat))
        if vs == "celery":
            texts.append(report.render_vs_celery(out["burn_down"]["median"], repeat))
    if mode in ("steady", "both"):
        out["steady"] = asyncio.run(report.repeated(
            lambda: scenario.steady(services, rates, step_s, workers, options), repeat, echo))
        texts.append(report.render_steady(out["steady"]["median"], repeat))
    out["environment"] = report.environment()
    _finish(out, "\n\n".join(texts), json_out, echo)
    return out


def lateness(services: Services, options: Options, *, jobs: int, seconds: int, workers: int,
             repeat: int, json_out: str | None, echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.lateness import run_lateness

    result = asyncio.run(report.repeated(
        lambda: run_lateness(services, jobs, seconds, workers, options), repeat, echo))
    _finish(result, report.render_lateness(result["median"], repeat), json_out, echo)
    return result


def _ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or denominator is None or denominator == 0:
        return math.nan
    return numerator / denominator


async def _herd_vs_celery(services: Services, options: Options, jobs: int,
                          workers: int) -> dict[str, Any]:
    """The herd by jobsched, then the same herd fired by Celery beat; celery ÷ jobsched."""
    from jobsched_dev.bench.celery_peer import run_celery_herd
    from jobsched_dev.bench.lateness import run_herd

    ours = await run_herd(services, jobs, workers, options)
    theirs = await run_celery_herd(services, jobs)
    mine, other = ours["latency_ms"]["scheduled_for -> started"], \
        theirs["latency_ms"]["due -> started"]
    ratios = {"all_started_after_s": _ratio(theirs["all_started_after_s"],
                                            ours["all_started_after_s"])}
    ratios.update({key: _ratio(other[key], mine[key]) for key in ("p50", "p95", "p99", "max")})
    return {**ours, "celery": theirs, "celery_over_jobsched": ratios}


def herd(services: Services, options: Options, *, jobs: int, workers: int, vs: str | None,
         repeat: int, json_out: str | None, echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.lateness import run_herd

    if vs == "celery":
        _require_celery()

    def run() -> Any:
        if vs == "celery":
            return _herd_vs_celery(services, options, jobs, workers)
        return run_herd(services, jobs, workers, options)

    result = asyncio.run(report.repeated(run, repeat, echo))
    text = report.render_herd(result["median"], repeat)
    if vs == "celery":
        text += "\n\n" + report.render_herd_vs_celery(result["median"], repeat)
    _finish(result, text, json_out, echo)
    return result


def priority(services: Services, options: Options, *, low: int, high: int, workers: int,
             repeat: int, json_out: str | None, echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.priority import run_both

    result = asyncio.run(report.repeated(
        lambda: run_both(services, low, high, workers, options), repeat, echo))
    _finish(result, report.render_priority(result["median"], repeat), json_out, echo)
    return result


def api(services: Services, options: Options, *, url: str | None, token: str | None,
        concurrency: int, seconds: float, clients: int, repeat: int, json_out: str | None,
        echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.api import run_api, run_api_at

    if url:
        def run() -> Any:
            return run_api_at(url, concurrency, seconds, clients, token)
    else:
        def run() -> Any:
            return run_api(services, concurrency, seconds, clients, options)
    result = asyncio.run(report.repeated(run, repeat, echo))
    _finish(result, report.render_api(result["median"], repeat), json_out, echo)
    return result


def scale(services: Services, options: Options, *, schedules: int, jobs: int, seconds: int,
          workers: int, concurrency: int, api_seconds: float, clients: int, repeat: int,
          json_out: str | None, echo: Echo, history: int = 0) -> dict[str, Any]:
    from jobsched_dev.bench.scale import history_templates, run_scale

    async def repeated() -> dict[str, Any]:
        async with history_templates(services, schedules, history) as templates:
            return await report.repeated(
                lambda: run_scale(services, schedules, jobs, seconds, workers, concurrency,
                                  api_seconds, clients, options, history, templates),
                repeat, echo)

    result = asyncio.run(repeated())
    _finish(result, report.render_scale(result["median"], repeat), json_out, echo)
    return result


def soak(services: Services, options: Options, *, json_out: str | None, echo: Echo,
         **plan: Any) -> dict[str, Any]:
    """The soak once (it is long: no repeats); exits 1 when an invariant is broken, after
    the tables and the JSON, so that a scripted soak fails where it should."""
    from jobsched_dev.bench.soak import SoakPlan, run_soak
    from jobsched_dev.processes import ProcessFailed

    if find_spec("prometheus_client") is None:
        raise click.ClickException("soak reads the leader's /metrics with prometheus_client: "
                                   "pip install '.[bench]'")
    try:
        result = asyncio.run(run_soak(services, SoakPlan(**plan), options))
    except asyncio.CancelledError:
        raise click.ClickException("soak stopped by SIGTERM; its processes were stopped "
                                   "and its database dropped") from None
    except ProcessFailed as exc:  # a role died or hung: its log says why, not a traceback
        raise click.ClickException(f"soak failed: {exc}") from None
    result["environment"] = report.environment()
    _finish(result, report.render_soak(result), json_out, echo)
    if not result["invariants_hold"]:
        broken = ", ".join(f"{k}: {v}" for k, v in result["invariants"].items() if v)
        raise click.ClickException(f"soak invariants broken: {broken}")
    return result


# --- --vs-commit: the same scenario on another commit, in the same run --------------------


def _service_args(services: Services) -> list[str]:
    return ["--postgres-url", services.postgres_url, "--amqp-url", services.amqp_url,
            "--zookeeper-hosts", services.zookeeper_hosts]


def vs_commit(ref: str, scenario: str, args: list[str], ours: Callable[[], Any],
              figures: dict[str, Callable[[dict[str, Any]], float]], repeat: int,
              json_out: str | None, echo: Echo, section: str | None = None,
              theirs: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """``theirs``: how to run the other commit, given its tree (default: its own
    ``jobsched bench SCENARIO ARGS`` there)."""
    from jobsched_dev.bench import vs_commit as other

    sha, folder = other.tree_of(ref)
    echo(f"{scenario}: this tree against {ref} ({sha[:12]}, exported to {folder}), "
         f"{repeat} run(s) each, alternating")
    run = theirs or (lambda tree: other.run_at(tree, scenario, args, section=section))
    ours_runs, their_runs = asyncio.run(other.alternate(ours, lambda: run(folder), repeat,
                                                        echo))
    result = other.compare(ours_runs, their_runs, figures)
    result.update({"scenario": scenario, "vs_commit": sha, "repeat": repeat,
                   "runs": {"ours": ours_runs, "theirs": their_runs},
                   "environment": report.environment()})
    rows = [[name, f["ours"], f["theirs"], f["ours / theirs"]]
            for name, f in result["figures"].items()]
    text = (f"{scenario}: medians of {repeat} run(s) each, side by side with {sha[:12]}\n\n"
            + report.table(("", "this tree", sha[:12], "ratio"), rows))
    _finish(result, text, json_out, echo)
    return result


def throughput_vs_commit(services: Services, options: Options, *, ref: str, jobs: int,
                         workers: int, repeat: int, json_out: str | None,
                         echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench import throughput as scenario
    from jobsched_dev.bench.vs_commit import cpu_ms_per_execution

    args = ["--mode", "burn-down", "--jobs", str(jobs), "--workers", str(workers),
            "--task", options.task, "--log-level", options.log_level, *_service_args(services)]
    return vs_commit(
        ref, "throughput", args, lambda: scenario.burn_down(services, jobs, workers, options),
        {"executions/s": lambda r: r["executions_per_s"],
         "CPU ms per execution": lambda r: cpu_ms_per_execution(r, r["finished"]),
         "submit -> started p99 ms":
             lambda r: r["latency_ms"]["submitted_at -> started"]["p99"]},
        repeat, json_out, echo, section="burn_down")


def herd_vs_commit(services: Services, options: Options, *, ref: str, jobs: int,
                   workers: int, repeat: int, json_out: str | None,
                   echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.lateness import run_herd
    from jobsched_dev.bench.vs_commit import cpu_ms_per_execution

    args = ["--jobs", str(jobs), "--workers", str(workers), "--task", options.task,
            "--log-level", options.log_level, *_service_args(services)]
    return vs_commit(
        ref, "herd", args, lambda: run_herd(services, jobs, workers, options),
        {"all started after s": lambda r: r["all_started_after_s"] or float("nan"),
         "CPU ms per execution": lambda r: cpu_ms_per_execution(r, r["fires"]),
         "due -> started p99 ms": lambda r: r["latency_ms"]["scheduled_for -> started"]["p99"]},
        repeat, json_out, echo)


def api_vs_commit(services: Services, options: Options, *, ref: str, concurrency: int,
                  seconds: float, clients: int, repeat: int, json_out: str | None,
                  echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.api import run_api

    args = ["--concurrency", str(concurrency), "--seconds", str(seconds), "--clients",
            str(clients), "--log-level", options.log_level, *_service_args(services)]
    # One load generator, this tree's, drives both apis: the other commit's own would
    # cost differently and share the same cores.
    return vs_commit(
        ref, "api", args, lambda: run_api(services, concurrency, seconds, clients, options),
        {"submits/s": lambda r: r["post"]["per_s"],
         "POST p99 ms": lambda r: r["post"]["latency_ms"]["p99"],
         "api CPU µs per submit": lambda r: r["post"].get("api_cpu_us_per_request",
                                                          math.nan),
         "GET/s": lambda r: r["get"]["per_s"],
         "GET p99 ms": lambda r: r["get"]["latency_ms"]["p99"]},
        repeat, json_out, echo,
        theirs=lambda folder: run_api(services, concurrency, seconds, clients, options,
                                      source=folder))


def lateness_vs_commit(services: Services, options: Options, *, ref: str, jobs: int,
                       seconds: int, workers: int, repeat: int, json_out: str | None,
                       echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.lateness import run_lateness

    args = ["--jobs", str(jobs), "--seconds", str(seconds), "--workers", str(workers),
            "--task", options.task, "--log-level", options.log_level,
            *_service_args(services)]
    return vs_commit(
        ref, "lateness", args, lambda: run_lateness(services, jobs, seconds, workers, options),
        {"due -> started p99 ms": lambda r: r["latency_ms"]["scheduled_for -> started"]["p99"],
         "due -> started p50 ms": lambda r: r["latency_ms"]["scheduled_for -> started"]["p50"],
         "missed": lambda r: float(r["missed"])},
        repeat, json_out, echo)


def workflow(services: Services, options: Options, *, chain_nodes: int, runs: int, fanout: int,
             large: int, workers: int, fanout_priority: str, repeat: int,
             json_out: str | None, echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.workflow import run_workflow

    result = asyncio.run(report.repeated(
        lambda: run_workflow(services, options, chain_nodes=chain_nodes, runs=runs,
                             fanout=fanout, large=large, workers=workers,
                             fanout_priority=fanout_priority), repeat, echo))
    _finish(result, report.render_workflow(result["median"], repeat), json_out, echo)
    return result


def webhooks(services: Services, options: Options, *, rate: int, seconds: float, events: int,
             jobs: int, workers: int, repeat: int, json_out: str | None,
             echo: Echo) -> dict[str, Any]:
    from jobsched_dev.bench.webhooks import render, run_webhooks

    result = asyncio.run(report.repeated(
        lambda: run_webhooks(services, options, rate=rate, seconds=seconds, events=events,
                             jobs=jobs, workers=workers), repeat, echo))
    _finish(result, render(result["median"], repeat), json_out, echo)
    return result
