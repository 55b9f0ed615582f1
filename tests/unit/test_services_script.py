"""scripts/services.sh on a machine where PostgreSQL or RabbitMQ is missing or stopped.

The script runs for real in a dry run (JOBSCHED_SERVICES_DRY_RUN=1) with a PATH of its
own: the real tools it reads with (bash, find, awk, ...) and stand-ins for the probes
(`pg_isready`, and `timeout`, through which every TCP check goes) that say whether the
services answer, and for every command that would change the machine (apt-get,
pg_ctlcluster, rabbitmq-server, ...), which only record that they were called. So the
"not installed" and "installed but stopped" branches run here although both services are
installed and running, and nothing on the machine is touched. Also: shellcheck on every
shell script of the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"
#: Real tools the script reads the machine with.
REAL_TOOLS = (
    "bash",
    "env",
    "awk",
    "find",
    "sort",
    "tail",
    "grep",
    "mktemp",
    "rm",
    "date",
    "sleep",
    "dirname",
    "cat",
)
#: Commands that would change the machine: stand-ins that record the call and fail.
MUTATING = (
    "apt-get",
    "pg_ctlcluster",
    "pg_conftool",
    "pg_createcluster",
    "rabbitmq-server",
    "rabbitmqctl",
    "systemctl",
    "sudo",
    "sed",
    "sh",
    "psql",
    "epmd",
)
SYSTEMD = Path("/run/systemd/system").is_dir()


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/bash\n{body}\n", encoding="utf-8")
    path.chmod(0o755)


def _world(tmp_path: Path, *, answering: bool, installed: set[str]) -> tuple[Path, Path]:
    """A bin folder for PATH; returns it and the file the stand-ins record calls in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in REAL_TOOLS:
        real = shutil.which(tool)
        assert real, f"{tool} is needed by the test"
        (bin_dir / tool).symlink_to(real)
    status = 0 if answering else 2
    _stub(bin_dir / "pg_isready", f"exit {status}")
    _stub(bin_dir / "timeout", f"exit {min(status, 1)}")
    for command in MUTATING:
        package = {
            "pg_ctlcluster": "postgresql",
            "pg_conftool": "postgresql",
            "pg_createcluster": "postgresql",
            "psql": "postgresql",
            "rabbitmq-server": "rabbitmq",
            "rabbitmqctl": "rabbitmq",
            "epmd": "rabbitmq",
        }.get(command)
        if package is not None and package not in installed:
            continue
        _stub(bin_dir / command, f'echo "{command} $*" >>"{calls}"; exit 97')
    return bin_dir, calls


def _run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "JOBSCHED_SERVICES_DRY_RUN": "1", "HOME": str(bin_dir)}
    return subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _would_run(stdout: str) -> list[str]:
    return [
        line.split("would run: ", 1)[1].strip()
        for line in stdout.splitlines()
        if "would run: " in line
    ]


def _cluster_version() -> str | None:
    clusters = sorted(Path("/etc/postgresql").glob("*/main/postgresql.conf"))
    return clusters[-1].parts[3] if clusters else None


def test_not_installed_installs_configures_and_starts_both(tmp_path: Path) -> None:
    bin_dir, calls = _world(tmp_path, answering=False, installed=set())
    result = _run(bin_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists(), f"a dry run ran: {calls.read_text()}"
    commands = _would_run(result.stdout)
    assert commands[-1].endswith("/scripts/zookeeper.sh start"), commands
    commands = commands[:-1]
    text = "\n".join(commands)
    installs = [c for c in commands if " install -y " in c]
    assert [c.rsplit(" ", 1)[1] for c in installs] == ["postgresql", "rabbitmq-server"], text
    assert all(c.startswith("env DEBIAN_FRONTEND=noninteractive apt-get ") for c in installs)
    assert text.count("apt-get -qq -o DPkg::Lock::Timeout=300 update") == 2

    # PostgreSQL: configured on localhost:5432 with trust from this host, then (re)started.
    version = re.search(r"pg_conftool (\S+) main set listen_addresses localhost", text)
    assert version, text
    v = version.group(1)
    assert f"pg_conftool {v} main set port 5432" in text
    hba = next(c for c in commands if c.endswith(f"/etc/postgresql/{v}/main/pg_hba.conf"))
    assert hba.startswith("sed -i 1i") and "127.0.0.1/32\\ trust" in hba, hba
    start = (
        f"systemctl restart postgresql@{v}-main"
        if SYSTEMD
        else f"pg_ctlcluster --skip-systemctl-redirect {v} main restart"
    )
    assert start in commands, text
    assert commands.index(start) > commands.index(hba)
    assert "would wait until PostgreSQL answers on 127.0.0.1:5432" in result.stdout

    # RabbitMQ: whatever the package started is stopped, then it is configured local-only
    # under the name rabbit@localhost (reachable through an epmd on 127.0.0.1), then started.
    rabbit = commands[
        next(
            i for i, c in enumerate(commands) if c.endswith(" rabbitmq-server") and " install " in c
        )
        + 1 :
    ]
    assert rabbit[:2] == ["rabbitmqctl -q stop", "epmd -kill"], text
    env_conf = [c for c in rabbit if c.endswith(" /etc/rabbitmq/rabbitmq-env.conf")]
    for line in (
        "NODENAME=rabbit@localhost",
        "NODE_IP_ADDRESS=127.0.0.1",
        "ERL_EPMD_ADDRESS=127.0.0.1",
        "inet_dist_use_interface",
    ):
        assert any(line in c for c in env_conf), (line, text)
    assert rabbit[2 : 2 + len(env_conf)] == env_conf, text
    start = (
        "systemctl restart rabbitmq-server"
        if SYSTEMD
        else "env RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached"
    )
    assert rabbit[2 + len(env_conf) :] == [start], text
    assert "would wait until RabbitMQ answers on 127.0.0.1:5672" in result.stdout
    assert "nothing was installed, configured or started" in result.stdout


def test_installed_but_stopped_starts_without_installing_or_reconfiguring(tmp_path: Path) -> None:
    version = _cluster_version()
    if version is None:
        pytest.skip("no PostgreSQL cluster under /etc/postgresql on this machine")
    bin_dir, calls = _world(tmp_path, answering=False, installed={"postgresql", "rabbitmq"})
    result = _run(bin_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists(), f"a dry run ran: {calls.read_text()}"
    commands = _would_run(result.stdout)
    text = "\n".join(commands)
    assert not [
        c
        for c in commands
        if "apt-get" in c or "pg_conftool" in c or "pg_hba" in c or "rabbitmq-env.conf" in c
    ], text
    if SYSTEMD:
        assert commands[:2] == [
            f"systemctl start postgresql@{version}-main",
            "systemctl restart rabbitmq-server",
        ], text
    else:
        assert commands[:2] == [
            f"pg_ctlcluster --skip-systemctl-redirect {version} main start",
            "env RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached",
        ], text


def test_answering_services_are_left_alone(tmp_path: Path) -> None:
    bin_dir, calls = _world(tmp_path, answering=True, installed=set())
    result = _run(bin_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not calls.exists()
    assert "PostgreSQL answers on 127.0.0.1:5432" in result.stdout
    assert "RabbitMQ answers on 127.0.0.1:5672" in result.stdout
    assert [c for c in _would_run(result.stdout) if "zookeeper.sh" not in c] == []


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (scripts/install-test-tools.sh installs it)"
    scripts = [*sorted(str(p) for p in (ROOT / "scripts").glob("*.sh")), str(ROOT / ".ci/run")]
    result = subprocess.run(
        [shellcheck, "--shell=bash", *scripts],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SHELLCHECK_OPTS": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr
