"""Run a small cluster under load with a real Prometheus scraping it, then screenshot
Prometheus graphs of jobsched's metrics (docs/images/monitoring-*.png).

Usage: python3 scripts/monitoring_screenshot.py [--seconds 120]
Needs: the services (scripts/services.sh), Debian's prometheus and chromium, playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, body: object | None = None, token: str = "") -> dict:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--out", default=str(ROOT / "docs/images"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jobsched-monitoring-"))
    db = f"jobsched_monitoring_{uuid.uuid4().hex[:8]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JOBSCHED_")},
           "JOBSCHED_DATABASE_URL": f"{PG}/{db}", "JOBSCHED_CLUSTER": db.replace("_", "-"),
           "JOBSCHED_ZOOKEEPER_HOSTS": "127.0.0.1:2181",
           "PYTHONPATH": str(ROOT / "tests/e2e")}
    subprocess.run([sys.executable, "-m", "jobsched", "migrate", "--create-db"], env=env,
                   check=True)
    token = ""
    made = subprocess.run([sys.executable, "-m", "jobsched", "token", "create", "--namespace",
                           "default", "--role", "admin"], env=env, capture_output=True,
                          text=True)
    if made.returncode == 0:
        token = made.stdout.strip().splitlines()[0]
    procs = []
    ports = {}
    for role in ("scheduler", "worker", "api"):
        port = free_port()
        ports[role] = port
        role_env = {**env, "JOBSCHED_INSTANCE": role,
                    ("JOBSCHED_API_PORT" if role == "api" else "JOBSCHED_METRICS_PORT"): str(port)}
        extra = ["--import", "sample_tasks"] if role == "worker" else []
        log = (work / f"{role}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "jobsched", "run", "--role", role,
                                       *extra], env=role_env, stdout=log, stderr=log))
    prom_port = free_port()
    (work / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{"job_name": "jobsched", "static_configs": [
            {"targets": [f"127.0.0.1:{p}" for p in ports.values()]}]}]}))
    prom_log = (work / "prometheus.log").open("wb")
    procs.append(subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=prom_log))
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        for _ in range(100):
            try:
                call(f"{api}/api/v1/cluster", token=token)
                break
            except OSError:
                time.sleep(0.2)
        for i in range(200):
            call(f"{api}/api/v1/jobs", {"name": f"tick-{i}", "schedule": "* * * * * *",
                                        "kind": "python",
                                        "python": {"function": "sample_tasks:noop"}}, token)
        for i in range(5):
            call(f"{api}/api/v1/jobs", {"name": f"flaky-{i}", "schedule": "*/10 * * * * *",
                                        "kind": "python", "retry": {"max_attempts": 2,
                                                                    "backoff_s": 1},
                                        "python": {"function": "sample_tasks:always_fails"}},
                 token)
        print(f"load running for {args.seconds}s; Prometheus at http://127.0.0.1:{prom_port}")
        time.sleep(args.seconds)
        shoot(f"http://127.0.0.1:{prom_port}", Path(args.out))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.run(_drop(db))


async def _drop(db: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await conn.close()


GRAPHS = {
    "monitoring-lateness.png": [
        "histogram_quantile(0.99, sum by (le) "
        "(rate(jobsched_scheduler_fire_lateness_seconds_bucket[30s])))",
        "histogram_quantile(0.99, sum by (le) "
        "(rate(jobsched_worker_start_lateness_seconds_bucket[30s])))"],
    "monitoring-outcomes.png": [
        "sum by (outcome) (rate(jobsched_worker_executions_total[30s]))"],
}


def shoot(prometheus: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        for name, exprs in GRAPHS.items():
            params = {}
            for i, expr in enumerate(exprs):
                params.update({f"g{i}.expr": expr, f"g{i}.tab": "0",
                               f"g{i}.range_input": "2m"})
            page.goto(f"{prometheus}/graph?{urllib.parse.urlencode(params)}")
            page.wait_for_timeout(3000)
            page.screenshot(path=str(out / name))
            print(f"wrote {out / name}")
        browser.close()


if __name__ == "__main__":
    main()
