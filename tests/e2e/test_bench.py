"""Each ``jobsched bench`` scenario once at a tiny size, through the CLI, so the harness
cannot rot. These prove the harness works; they measure nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobsched.cli import main
from tests.helpers import AMQP_URL, PG_ADMIN_URL

pytestmark = pytest.mark.timeout(60)

SERVER_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/"


def bench(zookeeper: str, tmp_path: Path, *args: str, side_by_side: bool = False) -> dict:
    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, [
        "bench", *args, "--postgres-url", SERVER_URL, "--amqp-url", AMQP_URL,
        "--zookeeper-hosts", zookeeper, "--log-level", "WARNING", "--json-out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    if not side_by_side:  # (--vs-commit reports "medians of 1 run(s) each")
        assert "median" not in result.output  # one run: no "median of" heading
    return json.loads(out.read_text())


def test_throughput_burn_down_and_steady(zookeeper: str, tmp_path: Path) -> None:
    # 1,000 jobs: the worker's CPU is read in clock ticks (10 ms), and 50 no-op runs now
    # cost it less than one (CI once read 0.0 s).
    result = bench(zookeeper, tmp_path, "throughput", "--jobs", "1000", "--rates", "50",
                   "--step-seconds", "1")
    burn = result["burn_down"]["median"]
    assert burn["finished"] == 1000 and burn["states"] == {"succeeded": 1000}
    assert burn["cpu"]["worker-1"]["cpu_s"] > 0
    step = result["steady"]["median"]["steps"][0]
    assert step["drained"] and step["finished"] == step["submitted"] == 50


@pytest.mark.parametrize("task", ["sync", "async"])
def test_lateness_counts_every_fire(zookeeper: str, tmp_path: Path, task: str) -> None:
    result = bench(zookeeper, tmp_path, "lateness", "--jobs", "5", "--seconds", "2",
                   "--task", task)["median"]
    assert result["task"] == task and result["expected_fires"] == 10
    assert result["states"] == {"succeeded": 10}
    assert result["missed"] == 0 and result["duplicates"] == 0 and result["not_started"] == 0
    assert result["latency_ms"]["scheduled_for -> started"]["n"] == 10


def test_herd_starts_all(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "herd", "--jobs", "100")["median"]
    assert result["started"] == 100 and result["target_all_started_within_5s"]


def test_api_submits_and_reads(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "api", "--concurrency", "4", "--seconds", "0.5")
    median = result["median"]
    assert median["post"]["requests"] > 0 and median["get"]["requests"] > 0
    assert not median["post"]["errors"] and not median["get"]["errors"]


def test_api_vs_commit_drives_the_other_commits_api_with_this_load_generator(
        zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "api", "--concurrency", "4", "--seconds", "0.5",
                   "--vs-commit", "HEAD", "--repeat", "1", side_by_side=True)
    ours, theirs = result["runs"]["ours"][0], result["runs"]["theirs"][0]
    exported = f"jobsched-at-{result['vs_commit'][:12]}"
    # Read from /proc of each api process: the other side's ran in the exported tree,
    # with it first on its path; ours did not.
    assert theirs["api_process"]["cwd"].endswith(exported)
    assert theirs["api_process"]["path"].split(":")[0].endswith(exported)
    assert exported not in ours["api_process"]["cwd"] + ours["api_process"]["path"]
    for run in (ours, theirs):
        for phase in ("post", "get"):
            assert run[phase]["requests"] > 0 and not run[phase]["errors"]
            assert run[phase]["api_cpu_us_per_request"] > 0
    assert result["figures"]["submits/s"]["theirs"] > 0


def test_burn_down_vs_celery(zookeeper: str, tmp_path: Path) -> None:
    pytest.importorskip("celery")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg2")
    result = bench(zookeeper, tmp_path, "throughput", "--mode", "burn-down", "--jobs", "20",
                   "--vs", "celery")["burn_down"]["median"]
    assert result["celery"]["drained"] and result["celery_postgresql"]["drained"]
    assert result["ratio_vs_celery_postgresql"] > 0


@pytest.mark.timeout(180)  # waits for a minute boundary: 30-90 s
def test_herd_vs_celery_beat(zookeeper: str, tmp_path: Path) -> None:
    pytest.importorskip("celery")
    result = bench(zookeeper, tmp_path, "herd", "--jobs", "20", "--vs", "celery")["median"]
    assert result["started"] == 20 and result["missed"] == 0
    celery = result["celery"]
    assert celery["entries"] == 20 and celery["started"] == 20 and celery["missed"] == 0
    assert celery["latency_ms"]["due -> started"]["n"] == 20
    assert result["celery_over_jobsched"]["p99"] > 0


def test_scale_compares_both_cases(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "scale", "--schedules", "200", "--jobs", "5",
                   "--seconds", "2", "--concurrency", "4", "--api-seconds", "0.5")["median"]
    assert result["schedules"] == 200
    compare = result["compare"]
    assert compare["missed fires"] == {"baseline": 0, "scaled": 0}
    assert compare["submits/s"]["baseline"] > 0 and compare["submits/s"]["scaled"] > 0


@pytest.mark.timeout(180)  # six clusters: lateness, api and a burn-down, twice
def test_scale_with_history_reads_it_and_drops_its_oldest_days(zookeeper: str,
                                                              tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "scale", "--schedules", "0", "--history", "3000",
                   "--jobs", "5", "--seconds", "2", "--concurrency", "4",
                   "--api-seconds", "0.5")["median"]
    assert result["history"] == 3000
    compare = result["compare"]
    assert compare["missed fires"] == {"baseline": 0, "scaled": 0}
    for read in ("GET execution p50 ms", "list executions p50 ms", "burn-down executions/s"):
        assert compare[read]["baseline"] > 0 and compare[read]["scaled"] > 0, read
    # 30 days written, 29 kept: the oldest day (or two, across midnight) is dropped whole
    assert compare["partitions dropped"]["scaled"] >= 1
    assert 0 < compare["retention pass s"]["scaled"] < 5
    history = result["runs"]["scaled"]["lateness"]
    assert history["history"] == 3000 and history["retention"]["rows_deleted"] == 0
    assert result["runs"]["scaled"]["api"]["get-execution"]["errors"] == {}


def test_vs_celery_without_celery_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobsched_dev.bench import commands

    monkeypatch.setattr(commands, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["bench", "herd", "--jobs", "1", "--vs", "celery"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --vs celery needs celery: pip install '.[bench]'"]


@pytest.mark.timeout(240)  # 30 s of load, kills and restarts included, then the read-back
@pytest.mark.serial  # kills on a 12-s schedule: each take-over must fire before the next
def test_soak_survives_its_kills_with_nothing_lost(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "soak", "--minutes", "0.5", "--kill-every", "0.2",
                   "--every-second-jobs", "10", "--five-second-jobs", "2",
                   "--submits-per-s", "2", "--reads-per-s", "5", "--sample-every", "2",
                   "--window", "10", "--set", "worker_lease_s=5")
    assert result["invariants_hold"], result["invariants"]
    executions = result["executions"]
    assert executions["dead"] == 0 and executions["not_ended"] == 0
    assert set(executions["by_state"]) == {"succeeded"}
    assert result["duplicates"] == {"executions_of_one_fire": 0, "overlapping_attempts": 0,
                                    "executions_succeeded_twice": 0}
    fires = result["fires"]
    assert fires["unexplained"] == 0 and fires["expected"] > 0
    assert set(fires["by_kind"]) == {"python-sync", "python-async", "python-sleep", "http",
                                     "shell", "shell-5s"}
    assert [e["what"] for e in result["events"]] == ["worker kill -9", "leader SIGTERM"] * 2
    assert all(t["new_epoch"] > t["old_epoch"] and t["first_fire_after_s"] is not None
               for t in result["takeovers"])
    # every process of the run, the restarted ones too, was sampled
    assert {m["instance"] for m in result["memory"]} >= {
        "scheduler-1", "scheduler-2", "worker-1", "worker-2", "api-1", "worker-1-r1",
        "worker-2-r1"}
    assert result["immediate"]["started"] == result["immediate"]["jobs"] > 0
    assert result["api"]["requests"] > 0 and not result["api"]["errors"]
    assert executions["http_target_hits"] > 0


def test_webhooks_latency_rate_and_burn_down_ratio(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "webhooks", "--rate", "20", "--seconds", "1",
                   "--events", "30", "--jobs", "30")["median"]
    latency = result["latency"]
    assert latency["executions"] == latency["delivered"] == 20 and latency["all_delivered"]
    assert latency["commit_to_delivery_ms"]["n"] == 20
    assert latency["burst_delivered"] == 30 and latency["deliveries_per_s"] > 0
    burn = result["burn_down"]
    assert burn["without"]["states"] == burn["with_endpoint"]["states"] == {"succeeded": 30}
    assert burn["outbox_only"]["states"] == {"succeeded": 30}
    assert burn["outbox_only"]["outbox_rows"] == 30 and burn["without"]["outbox_rows"] == 0
    assert burn["with_endpoint"]["all_delivered"] and burn["ratio"] > 0


def test_workflow_chain_fan_out_and_large(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "workflow", "--chain", "5", "--runs", "1",
                   "--fanout", "10", "--large", "50")["median"]
    assert result["chain"]["edges"] == 4 and result["chain"]["latency_ms"]["n"] == 4
    fan = result["fan_out"]
    assert fan["width"] == 10 and fan["all_done_after_root_s"] > 0
    assert fan["bystanders_during_ms"]["n"] > 0
    assert result["large"]["nodes"] == 50 and result["large"]["create_s"] > 0


def test_priority_reports_high_latency_and_low_share(zookeeper: str, tmp_path: Path) -> None:
    result = bench(zookeeper, tmp_path, "priority", "--low", "400", "--high", "20")["median"]
    assert result["drained"] and result["states"] == {"succeeded": 420}
    assert result["high queued -> started"]["n"] == 20
    # The span while high waited holds the start burst, and both count runs they saw.
    assert result["high_waited_s"] >= result["burst_s"] >= 0
    assert result["runs_while_high_waited"] >= result["runs_in_burst"] >= 20
    assert 0 <= result["low_share_while_high_waited"] <= 1
    assert result["mixed_vs_one_priority"] > 0
