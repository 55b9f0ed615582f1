"""``jobsched bench``: options parsed here, each scenario run by
:mod:`jobsched_dev.bench.commands`."""

from __future__ import annotations

import asyncio
from typing import Any

import click


@click.group()
def bench() -> None:
    """Benchmark scenarios; each starts the processes it needs on a fresh database, or
    uses a running deployment (see docs/benchmarks.md)."""


@bench.command("immediate")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True,
              help="Base URL of an api process.")
@click.option("--count", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--kind", type=click.Choice(["python", "shell"]), default="python",
              show_default=True, help="python needs workers started with "
              "--import jobsched_dev.bench.tasks.")
@click.option("--json-out", type=click.Path(dir_okay=False), help="Also write the result here.")
@click.option("--token", envvar="JOBSCHED_TOKEN", help="API token (JOBSCHED_TOKEN).")
def bench_immediate(url: str, count: int, kind: str, json_out: str | None,
                    token: str | None) -> None:
    """Submit -> succeeded latency of `immediate` jobs, one at a time (median of COUNT)."""
    import orjson

    from jobsched_dev.bench.immediate import run_immediate

    result = asyncio.run(run_immediate(url.rstrip("/"), count, kind, token=token))
    click.echo(f"immediate {kind} jobs, n={count}: submit -> succeeded")
    click.echo(f"{'clock':<8}{'median':>10}{'p90':>10}{'min':>10}{'max':>10}  (ms)")
    for clock in ("client", "server"):
        s = result[clock]
        click.echo(f"{clock:<8}{s['median_ms']:>10.1f}{s['p90_ms']:>10.1f}"
                   f"{s['min_ms']:>10.1f}{s['max_ms']:>10.1f}")
    if json_out:
        with open(json_out, "wb") as handle:
            handle.write(orjson.dumps(result, option=orjson.OPT_INDENT_2))


def _option_list(*, soak: bool = False) -> list[Any]:
    """Options every scenario that starts its own deployment shares; the soak (which kills
    and restarts its own processes, once) takes neither a running deployment, nor a
    no-op task, nor repeats."""
    options = [
        click.option("--postgres-url", default="postgresql://postgres@127.0.0.1/",
                     show_default=True, help="PostgreSQL server; each run creates and drops "
                     "a database of its own there."),
        click.option("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/",
                     show_default=True),
        click.option("--zookeeper-hosts", default="127.0.0.1:2181", show_default=True),
    ]
    if not soak:
        options.append(click.option(
            "--database-url", help="Database of a RUNNING deployment: load the jobs "
            "there and start no process (its own scheduler and workers do the work)."))
    options += [
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="A setting for the started roles, e.g. worker_prefetch=512 "
                     "(passed as JOBSCHED_KEY; repeatable)."),
        click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
                     default="INFO", show_default=True, help="Of the started roles."),
        click.option("--keep", is_flag=True, help="Keep the database (for a post-mortem)."),
    ]
    if not soak:
        options += [
            click.option("--task", type=click.Choice(["sync", "async"]), default="sync",
                         show_default=True, help="The no-op task: a plain function (run in "
                         "the worker's thread pool) or a coroutine function (on the worker's "
                         "loop)."),
            click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 50),
                         help="Runs, each on a fresh deployment; the tables show medians."),
        ]
    options.append(click.option(
        "--json-out", type=click.Path(dir_okay=False),
        help="Also write the result here." if soak else
        "Also write every run and the medians here."))
    return options


def _apply(function: Any, options: list[Any]) -> Any:
    for option in reversed(options):
        function = option(function)
    return function


def _bench_options(function: Any) -> Any:
    return _apply(function, _option_list())


def _soak_options(function: Any) -> Any:
    return _apply(function, _option_list(soak=True))


def _bench_setup(params: dict[str, Any]) -> tuple[Any, Any]:
    from jobsched_dev.bench.cluster import Services
    from jobsched_dev.bench.common import Options

    services = Services(params.pop("postgres_url"), params.pop("amqp_url"),
                        params.pop("zookeeper_hosts"))
    settings = []
    for item in params.pop("overrides"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        settings.append((f"JOBSCHED_{key.upper()}", value))
    options = Options(log_level=params.pop("log_level"), keep=params.pop("keep"),
                      settings=tuple(settings), database_url=params.pop("database_url", None),
                      task=params.pop("task", "sync"))
    return services, options


@bench.command("throughput")
@click.option("--vs-commit", "vs_commit", metavar="REF",
              help="Also run this scenario on another commit (exported beside the working "
              "tree), runs alternating, and report the ratios.")
@click.option("--mode", type=click.Choice(["burn-down", "steady", "both"]), default="both",
              show_default=True)
@click.option("--jobs", default=20_000, show_default=True, type=click.IntRange(1),
              help="burn-down: jobs loaded at once.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes.")
@click.option("--rates", default="250,500,1000,2000,4000", show_default=True,
              help="steady: offered jobs/s, one step each, until one cannot be kept up.")
@click.option("--step-seconds", "step_s", default=10.0, show_default=True,
              type=click.FloatRange(0.5))
@click.option("--vs", type=click.Choice(["celery"]),
              help="Also run the burn-down with Celery (needs the 'bench' extra), without "
              "and with a PostgreSQL result backend, and report the ratios.")
@_bench_options
def bench_throughput(**params: Any) -> None:
    """No-op python jobs end to end: burn-down and steady offered load.

    burn-down: a scheduler and WORKERS workers ready, JOBS immediate jobs COPYed into
    PostgreSQL in one transaction (a NOTIFY wakes the scheduler); executions/s until the
    last one finished. steady: RATES jobs/s offered for STEP-SECONDS each. Reports
    submit -> started/finished percentiles and CPU seconds per process. --vs celery runs
    each burn-down again with Celery on the same RabbitMQ, in the same run.
    """
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    if params["vs_commit"]:
        if params["mode"] != "burn-down" or params["vs"]:
            raise click.UsageError("--vs-commit compares --mode burn-down, without --vs")
        commands.throughput_vs_commit(
            services, options, ref=params["vs_commit"], jobs=params["jobs"],
            workers=params["workers"], repeat=params["repeat"], json_out=params["json_out"],
            echo=click.echo)
        return
    params.pop("vs_commit")
    try:
        rates = [int(r) for r in params.pop("rates").split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers",
                                 param_hint="--rates") from None
    commands.throughput(services, options, rates=rates, echo=click.echo, **params)


@bench.command("lateness")
@click.option("--vs-commit", "vs_commit", metavar="REF",
              help="Also run this scenario on another commit (exported beside the working "
              "tree), runs alternating, and report the ratios.")
@click.option("--jobs", default=1000, show_default=True, type=click.IntRange(1),
              help="Cron jobs firing every second.")
@click.option("--seconds", default=30, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@_bench_options
def bench_lateness(**params: Any) -> None:
    """Fire lateness (due -> published, due -> started) of JOBS every-second cron jobs over
    SECONDS seconds; missed and duplicate fires from the executions table."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    if ref := params.pop("vs_commit"):
        commands.lateness_vs_commit(services, options, ref=ref, echo=click.echo, **params)
        return
    commands.lateness(services, options, echo=click.echo, **params)


@bench.command("herd")
@click.option("--vs-commit", "vs_commit", metavar="REF",
              help="Also run this scenario on another commit (exported beside the working "
              "tree), runs alternating, and report the ratios.")
@click.option("--jobs", default=10_000, show_default=True, type=click.IntRange(1),
              help="One-shot jobs due in the same second.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--vs", type=click.Choice(["celery"]),
              help="Also fire the same herd with Celery beat (needs the 'bench' extra): "
              "JOBS crontab() entries due at the next minute boundary; ratios.")
@_bench_options
def bench_herd(**params: Any) -> None:
    """JOBS jobs due in the same second: time until all started, lateness spread.

    --vs celery then runs one celery beat with JOBS entries on crontab() (every minute) and
    a prefork Celery worker on the same RabbitMQ, waits for the first minute boundary after
    beat started (up to ~75 s) and reports both sides and the ratios celery ÷ jobsched.
    """
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    if ref := params.pop("vs_commit"):
        if params.pop("vs"):
            raise click.UsageError("give --vs celery or --vs-commit, not both")
        commands.herd_vs_commit(services, options, ref=ref, echo=click.echo, **params)
        return
    commands.herd(services, options, echo=click.echo, **params)


@bench.command("priority")
@click.option("--low", default=20_000, show_default=True, type=click.IntRange(1),
              help="Low-priority no-op jobs loaded at once (the backlog).")
@click.option("--high", default=200, show_default=True, type=click.IntRange(1),
              help="High-priority no-op jobs loaded once the backlog saturates the workers.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@_bench_options
def bench_priority(**params: Any) -> None:
    """A low backlog, then a high burst: how soon high work starts (p50/p99), the low share
    during the burst, and burn-down at mixed and at one priority."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    commands.priority(services, options, echo=click.echo, **params)


@bench.command("api")
@click.option("--vs-commit", "vs_commit", metavar="REF",
              help="Also measure another commit's api (exported beside the working tree; "
              "its schema, roles and CLI) with this load generator, runs alternating, "
              "and report the ratios.")
@click.option("--url", help="Base URL of a RUNNING api process (else one is started).")
@click.option("--token", help="Bearer token for --url (also JOBSCHED_TOKEN).")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(0.5),
              help="Length of each phase (POST, then GET).")
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Client processes sharing the concurrency.")
@_bench_options
def bench_api(**params: Any) -> None:
    """Job submits/s and GET p50/p99 through one api process at CONCURRENCY."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    if ref := params.pop("vs_commit"):
        if params.pop("url") or params.pop("token"):
            raise click.UsageError("--vs-commit starts both apis itself: no --url/--token")
        commands.api_vs_commit(services, options, ref=ref, echo=click.echo, **params)
        return
    commands.api(services, options, echo=click.echo, **params)


@bench.command("workflow")
@click.option("--chain", "chain_nodes", default=100, show_default=True,
              type=click.IntRange(2, 10_000), help="Nodes of the chain.")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Runs of the chain (after a warm-up run).")
@click.option("--fanout", default=1000, show_default=True, type=click.IntRange(1, 9_998),
              help="Children of the fan-out's root (all joined by one node).")
@click.option("--large", default=10_000, show_default=True, type=click.IntRange(1, 10_000),
              help="Nodes of the workflow created through the api.")
@click.option("--fanout-priority", type=click.Choice(["high", "normal", "low"]),
              default="normal", show_default=True,
              help="Band of the fan-out's nodes (the jobs beside it are normal).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@_bench_options
def bench_workflow(**params: Any) -> None:
    """Workflows: parent finished -> child started along a chain, a fan-out and its join
    (with other jobs' latency beside it), and creating a large workflow."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    commands.workflow(services, options, echo=click.echo, **params)


@bench.command("scale")
@click.option("--schedules", default=1_000_000, show_default=True, type=click.IntRange(0),
              help="Active schedules COPYed before the runs.")
@click.option("--history", default=0, show_default=True, type=click.IntRange(0),
              help="Finished executions (with attempts) written over the last 30 days "
                   "before the scaled runs; adds a burn-down, the api's execution reads "
                   "and a timed retention pass to the comparison.")
@click.option("--jobs", default=1000, show_default=True, type=click.IntRange(1),
              help="lateness: every-second cron jobs.")
@click.option("--seconds", default=20, show_default=True, type=click.IntRange(1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--api-seconds", default=10.0, show_default=True, type=click.FloatRange(0.5))
@click.option("--clients", default=1, show_default=True, type=click.IntRange(1, 16))
@_bench_options
def bench_scale(**params: Any) -> None:
    """lateness and api on an empty database and with SCHEDULES active schedules (and
    HISTORY executions of history) stored."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    commands.scale(services, options, echo=click.echo, **params)


@bench.command("soak")
@click.option("--minutes", default=20.0, show_default=True, type=click.FloatRange(0.1),
              help="Length of the load with kills.")
@click.option("--quiet-minutes", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Then this long with the standby schedulers stopped and no kills.")
@click.option("--kill-every", "kill_every_min", default=5.0, show_default=True,
              type=click.FloatRange(0), help="Minutes between two worker kill -9s, and "
              "between two leader SIGTERMs (half a period after each kill); 0: none.")
@click.option("--schedulers", default=2, show_default=True, type=click.IntRange(1, 8))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--every-second-jobs", default=300, show_default=True,
              type=click.IntRange(1), help="Cron jobs firing every second, spread over "
              "five task kinds (python sync, async, 20 ms; http; shell).")
@click.option("--five-second-jobs", default=20, show_default=True, type=click.IntRange(0),
              help="Shell jobs firing every 5 s.")
@click.option("--submits-per-s", default=20.0, show_default=True, type=click.FloatRange(0),
              help="immediate jobs submitted through the api.")
@click.option("--reads-per-s", default=50.0, show_default=True, type=click.FloatRange(0),
              help="api reads: a job, a job's executions, an execution.")
@click.option("--sample-every", "sample_every_s", default=10.0, show_default=True,
              type=click.FloatRange(0.5), help="Seconds between samples (RSS, history, "
              "deadlocks, the leader's /metrics).")
@click.option("--window", "window_s", default=30.0, show_default=True,
              type=click.FloatRange(1), help="Seconds per latency window.")
@click.option("--warmup-minutes", "warmup_min", default=2.0, show_default=True,
              type=click.FloatRange(0), help="RSS slopes leave out each process's first "
              "minutes.")
@click.option("--settle-seconds", "settle_s", default=120.0, show_default=True,
              type=click.FloatRange(0), help="After the load, how long the fires due "
              "before its end may take to end.")
@click.option("--vacuum-every", "vacuum_every_s", default=60.0, show_default=True,
              type=click.FloatRange(0), help="Seconds between VACUUM ANALYZEs when the "
              "server's autovacuum is off (what autovacuum would do); 0: never.")
@_soak_options
def bench_soak(**params: Any) -> None:
    """Sustained load with kills (issue 21): periodic jobs of five kinds, immediate submits
    and reads through the api, a worker kill -9 and a leader SIGTERM every KILL-EVERY
    minutes. Reports executions by state, dead and duplicate ones, every periodic fire
    accounted for, deadlocks, RSS slopes per process, immediate start and api latency
    against their targets per window, the leader's periodic work against the history size,
    and each take-over. Exits 1 if an invariant (0 dead, 0 duplicates, ...) is broken."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    commands.soak(services, options, echo=click.echo, **params)


@bench.command("webhooks")
@click.option("--rate", default=200, show_default=True, type=click.IntRange(1),
              help="latency: immediate jobs/s offered, each delivered to the endpoint.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(1))
@click.option("--events", default=5000, show_default=True, type=click.IntRange(1),
              help="deliveries/s: events recorded at once.")
@click.option("--jobs", default=20_000, show_default=True, type=click.IntRange(0),
              help="burn-down without an endpoint, with one but nothing sent, and with one "
              "delivering (0: skip).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@_bench_options
def bench_webhooks(**params: Any) -> None:
    """Webhooks: commit -> delivery latency, deliveries/s, and burn-down throughput with one
    subscribed endpoint as a ratio of burn-down without (docs/webhooks.md)."""
    from jobsched_dev.bench import commands

    services, options = _bench_setup(params)
    commands.webhooks(services, options, echo=click.echo, **params)
