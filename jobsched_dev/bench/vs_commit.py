"""``--vs-commit REF``: the same scenario on another commit, side by side in one run.

These machines vary by 2x from day to day, so a figure is only comparable with one taken
in the same run. The other commit is exported (``git archive``) beside the working tree,
once per commit, and its own ``jobsched bench`` runs there as a subprocess: its own
loader, schema and roles, the same services. ``api`` is the exception: there the
benchmark's load generator is part of the instrument, so this tree's drives the other
commit's api (its schema, roles and CLI run from the exported tree). Runs alternate
(ours, theirs, theirs, ours, ...) so that a drift of the machine weighs on both sides
alike.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jobsched_dev import SOURCE_ROOT
from jobsched_dev.bench.stats import median_of_runs

#: Processes whose CPU counts as the cost of the executions (not the bench's own client).
COSTED = ("scheduler", "worker", "api", "postgresql", "rabbitmq")


class OtherCommitError(RuntimeError):
    """The other commit could not be exported or its benchmark failed (with its output)."""


def tree_of(ref: str, root: Path = SOURCE_ROOT) -> tuple[str, Path]:
    """(full sha, folder) of ``ref`` exported beside the working tree (reused)."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise OtherCommitError(f"{ref!r} is not a commit of {root}: {exc.stderr.strip()}") \
            from None
    folder = Path(tempfile.gettempdir()) / f"jobsched-at-{sha[:12]}"
    if not (folder / "jobsched" / "__init__.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "-C", str(root), "archive", sha],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise OtherCommitError(f"git archive {sha} failed")
    return sha, folder


def run_at(folder: Path, scenario: str, args: list[str], timeout: float = 1800,
           section: str | None = None) -> dict[str, Any]:
    """One run of ``jobsched bench SCENARIO ARGS`` in the other commit's tree: its median
    (of ``section`` of the result, for scenarios that nest theirs, e.g. ``burn_down``)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = out.name
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBSCHED_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(folder)
    command = [sys.executable, "-m", "jobsched", "bench", scenario, *args, "--repeat", "1",
               "--json-out", path]
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise OtherCommitError(f"the other commit's `{' '.join(command[3:])}` exited "
                                   f"{done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        result = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    if section is not None:
        result = result[section]
    return dict(result.get("median", result))


async def alternate(ours: Callable[[], Awaitable[dict[str, Any]]],
                    theirs: Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]],
                    repeat: int,
                    echo: Callable[[str], None]) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
    """``repeat`` runs of each, in the order ours, theirs, theirs, ours, ..."""
    our_runs: list[dict[str, Any]] = []
    their_runs: list[dict[str, Any]] = []
    for n in range(repeat):
        order = ("ours", "theirs") if n % 2 == 0 else ("theirs", "ours")
        for side in order:
            if side == "ours":
                our_runs.append(await ours())
            else:
                run = theirs()
                their_runs.append(await run if inspect.isawaitable(run) else run)
            echo(f"run {n + 1}/{repeat}: {side} done")
    return our_runs, their_runs


def cpu_ms_per_execution(result: dict[str, Any], executions: float) -> float:
    """CPU of the roles, PostgreSQL and RabbitMQ over the run, per execution."""
    cpu = result.get("cpu") or {}
    total = sum(v.get("cpu_s", 0.0) for k, v in cpu.items() if k.startswith(COSTED))
    return 1000 * total / executions if executions else float("nan")


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]],
            figures: dict[str, Callable[[dict[str, Any]], float]]) -> dict[str, Any]:
    """Medians of each side, and each figure's ratio ours / theirs."""
    mine, other = median_of_runs(ours), median_of_runs(theirs)
    table = {}
    for name, figure in figures.items():
        a, b = figure(mine), figure(other)
        table[name] = {"ours": a, "theirs": b, "ours / theirs": a / b if b else float("nan")}
    return {"ours": mine, "theirs": other, "figures": table}
