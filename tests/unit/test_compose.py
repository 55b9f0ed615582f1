"""compose.yaml, deploy/nginx.conf and the Dockerfile describe a cluster that can start.

Checks the shape (services, replicas, health checks, start order) and that every command
given to the jobsched image is accepted by the real CLI parser, so a renamed option or an
unknown role fails here instead of in a container restart loop.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"

IMAGE = "jobsched:latest"
ROLES = {"api", "scheduler", "worker"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
API_PORT = 8080
METRICS_PORT = 9100


def _load() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


COMPOSE = _load()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
JOBSCHED = sorted(
    name for name, svc in SERVICES.items() if svc.get("image") == IMAGE or "build" in svc
)


def _argv(svc: dict[str, Any]) -> list[str]:
    command = svc.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _sub_argv(svc: dict[str, Any]) -> list[str]:
    """The command from the subcommand on, past group options such as `--config PATH`."""
    argv = _argv(svc)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if "=" in argv[i] else 2
    return argv[i:]


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _replicas(svc: dict[str, Any]) -> int:
    return int((svc.get("deploy") or {}).get("replicas", svc.get("scale", 1)))


def _option_values(argv: list[str], option: str) -> list[str]:
    """Values of a repeatable long option, as `--opt v` or `--opt=v`."""
    values = []
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _roles(svc: dict[str, Any]) -> set[str]:
    argv = _sub_argv(svc)
    if not argv or argv[0] != "run":
        return set()
    roles: set[str] = set()
    for value in _option_values(argv, "--role"):
        roles |= ROLES if value == "all" else {value}
    return roles


def _long_running(name: str) -> bool:
    return _sub_argv(SERVICES[name])[:1] == ["run"]


def _replicas_of(role: str) -> int:
    return sum(_replicas(svc) for name, svc in SERVICES.items() if role in _roles(svc))


def _depends_on(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = svc.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form with conditions"
    return deps


def _health_test(svc: dict[str, Any]) -> list[str]:
    check = svc.get("healthcheck") or {}
    assert not check.get("disable"), "health check disabled"
    test = check.get("test")
    assert test, "no healthcheck.test"
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return [str(part) for part in test]


# ---- shape --------------------------------------------------------------------------


def test_backing_services_exist() -> None:
    assert SERVICES["postgres"]["image"].startswith("postgres:15")
    assert re.fullmatch(r"rabbitmq:3\.1[23][\w.-]*", SERVICES["rabbitmq"]["image"])
    zk = sorted(n for n, s in SERVICES.items() if str(s.get("image", "")).startswith("zookeeper:"))
    assert zk == ["zk1", "zk2", "zk3"]
    for name in ("postgres", "rabbitmq", *zk):
        _health_test(SERVICES[name])


def test_zookeeper_ensemble_is_consistent() -> None:
    ids = set()
    for name in ("zk1", "zk2", "zk3"):
        env = _env(SERVICES[name])
        ids.add(env["ZOO_MY_ID"])
        servers = dict(entry.split("=", 1) for entry in env["ZOO_SERVERS"].split())
        assert set(servers) == {"server.1", "server.2", "server.3"}
        # server.N must name the node whose ZOO_MY_ID is N.
        for key, spec in servers.items():
            host = spec.split(":", 1)[0]
            assert _env(SERVICES[host])["ZOO_MY_ID"] == key.split(".")[1], (name, key, spec)
    assert ids == {"1", "2", "3"}


def test_roles_and_replicas() -> None:
    assert _replicas_of("api") >= 2
    assert _replicas_of("scheduler") == 3
    assert _replicas_of("worker") >= 2


def test_image_is_built_by_compose() -> None:
    builders = [n for n in JOBSCHED if "build" in SERVICES[n]]
    assert builders, "no jobsched service builds the image"
    for name in JOBSCHED:
        svc = SERVICES[name]
        assert svc.get("image") == IMAGE, name
        if "build" not in svc:
            # Only built, never pulled: there is no registry copy of jobsched:latest.
            assert svc.get("pull_policy") in ("never", "build"), name
            # ... and built before this service starts.
            assert any(b in _depends_on(svc) for b in builders), name
    for name in builders:
        build = SERVICES[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


def test_migrate_runs_once_before_the_roles() -> None:
    migrate = SERVICES["migrate"]
    assert _sub_argv(migrate)[:1] == ["migrate"]
    assert "--create-db" in _sub_argv(migrate)
    assert str(migrate.get("restart", "no")) == "no"
    assert _depends_on(migrate)["postgres"]["condition"] == "service_healthy"
    for name in JOBSCHED:
        if _long_running(name):
            condition = _depends_on(SERVICES[name])["migrate"]["condition"]
            assert condition == "service_completed_successfully", name


@pytest.mark.parametrize("name", JOBSCHED)
def test_jobsched_service_environment(name: str) -> None:
    env = _env(SERVICES[name])
    db = urlsplit(env["JOBSCHED_DATABASE_URL"])
    assert db.scheme in ("postgresql", "postgres") and db.hostname == "postgres"
    assert db.path == "/jobsched"
    if not _long_running(name):
        return
    amqp = urlsplit(env["JOBSCHED_AMQP_URL"])
    assert amqp.scheme == "amqp" and amqp.hostname == "rabbitmq"
    # RabbitMQ's guest user may not connect from another host.
    assert amqp.username and amqp.username != "guest"
    rabbit = _env(SERVICES["rabbitmq"])
    assert (amqp.username, amqp.password) == (
        rabbit["RABBITMQ_DEFAULT_USER"],
        rabbit["RABBITMQ_DEFAULT_PASS"],
    )
    assert env["JOBSCHED_ZOOKEEPER_HOSTS"] == "zk1:2181,zk2:2181,zk3:2181"
    # Reachable from other containers: the settings default to 127.0.0.1.
    assert env.get("JOBSCHED_API_HOST", "0.0.0.0") == "0.0.0.0"
    assert env.get("JOBSCHED_METRICS_HOST", "0.0.0.0") == "0.0.0.0"


@pytest.mark.parametrize("name", [n for n in JOBSCHED if _long_running(n)])
def test_role_health_check_and_start_order(name: str) -> None:
    svc = SERVICES[name]
    test = _health_test(svc)
    text = " ".join(test)
    assert "python" in test[1] and "urllib" in text, test
    match = re.search(r"http://127\.0\.0\.1:(\d+)/(healthz|readyz)\b", text)
    assert match, f"{name}: health check must GET /healthz or /readyz on 127.0.0.1: {test}"
    env = _env(svc)
    argv = _sub_argv(svc)
    if "api" in _roles(svc):
        flag, variable, default = "--api-port", "JOBSCHED_API_PORT", API_PORT
    else:
        flag, variable, default = "--metrics-port", "JOBSCHED_METRICS_PORT", METRICS_PORT
    port = (_option_values(argv, flag) or [env.get(variable, default)])[-1]
    assert int(match.group(1)) == int(port), f"{name}: health check port {match.group(1)} != {port}"
    assert "--log-format" in argv and _option_values(argv, "--log-format")[-1] == "json"

    deps = _depends_on(svc)
    for needed in ("postgres", "rabbitmq", "zk1", "zk2", "zk3"):
        assert deps[needed]["condition"] == "service_healthy", (name, needed)


def test_every_dependency_condition_can_be_met() -> None:
    for name, svc in SERVICES.items():
        for dep, spec in _depends_on(svc).items():
            assert dep in SERVICES, (name, dep)
            assert spec.get("condition") in CONDITIONS, (name, dep, spec)
            if spec["condition"] == "service_healthy":
                _health_test(SERVICES[dep])
            if spec["condition"] == "service_completed_successfully":
                assert not _long_running(dep), (name, dep)


def test_nginx_balances_the_api() -> None:
    nginx = SERVICES["nginx"]
    assert str(nginx["image"]).startswith("nginx:")
    _health_test(nginx)
    published = [str(p) for p in nginx.get("ports", [])]
    assert any(re.fullmatch(r"(?:[\d.]+:)?8080:8080(?:/tcp)?", p) for p in published), published
    assert any(
        str(v).split(":")[0] in ("./deploy/nginx.conf", "deploy/nginx.conf")
        for v in nginx.get("volumes", [])
    )
    api_services = [n for n, s in SERVICES.items() if "api" in _roles(s)]
    for api in api_services:
        assert _depends_on(nginx)[api]["condition"] == "service_healthy"

    conf = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text(encoding="utf-8"))
    upstreams = dict(re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", conf))
    assert upstreams, "no upstream block in deploy/nginx.conf"
    proxied = set(re.findall(r"proxy_pass\s+https?://([^/;\s]+)", conf))
    assert proxied and proxied <= set(upstreams), (proxied, set(upstreams))
    servers = [
        (host, int(port or 80))
        for name in proxied
        for host, port in re.findall(r"\bserver\s+([\w.-]+)(?::(\d+))?", upstreams[name])
    ]
    assert servers, "the upstream has no server"
    assert {host for host, _ in servers} == set(api_services), servers
    assert {port for _, port in servers} == {API_PORT}, servers


# ---- the commands against the real CLI ----------------------------------------------


def _dockerfile_json(instruction: str) -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = re.findall(rf"^{instruction}\s+(\[.*\])\s*$", text, flags=re.MULTILINE)
    assert lines, f"no exec-form {instruction} in the Dockerfile"
    return json.loads(lines[-1])


def test_dockerfile_entrypoint_and_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert _dockerfile_json("ENTRYPOINT") == ["jobsched"]
    assert "python:3.11-slim" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] == "jobsched"
    for service in JOBSCHED:
        assert SERVICES[service].get("entrypoint") in (None, ["jobsched"]), service


SECURITY_DOC = ROOT / "docs" / "security.md"


def _capabilities(values: list[str] | None) -> set[str]:
    return {str(v).upper().removeprefix("CAP_") for v in values or []}


def test_the_worker_has_exactly_the_documented_capabilities() -> None:
    """docs/security.md ("What ships") names the capabilities compose's worker keeps, and
    says why each; compose.yaml must grant those and no others, with the rest of the
    lock-down the paragraph promises."""
    doc = " ".join(SECURITY_DOC.read_text(encoding="utf-8").split())
    listed = re.search(r"`cap_drop: ALL` and back only ([A-Z_, ]+?), `", doc)
    assert listed, "docs/security.md no longer lists the worker's capabilities"
    documented = set(re.findall(r"[A-Z_]{3,}", listed.group(1)))
    why = re.search(r"The capabilities: (.+?)\. ", doc)
    assert why, "docs/security.md no longer says why each capability is kept"
    explained = set(re.findall(r"\b[A-Z][A-Z_]{2,}\b", why.group(1)))
    assert explained == documented, (explained, documented)

    worker = SERVICES["worker"]
    assert _capabilities(worker.get("cap_drop")) == {"ALL"}
    assert _capabilities(worker.get("cap_add")) == documented
    assert "no-new-privileges:true" in (worker.get("security_opt") or [])
    assert worker.get("init") is True
    assert str(worker.get("user")).split(":")[0] in ("0", "root")
    for name in JOBSCHED:  # no other role is given a capability or root
        if name != "worker":
            assert not SERVICES[name].get("cap_add"), name
            assert SERVICES[name].get("user") is None, name


def _parse(main: click.Group, argv: list[str]) -> click.Context:
    """Parse `jobsched ARGV` as the console script would, without running anything."""
    ctx = main.make_context("jobsched", list(argv), resilient_parsing=False)
    # Skip the group's own options (e.g. `--config PATH`) to find the subcommand.
    takes_value = {
        opt
        for param in main.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for opt in param.opts
    }
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in takes_value else 1
    name, command, rest = main.resolve_command(ctx, list(argv[i:]))
    assert command is not None and name is not None, argv
    return command.make_context(name, list(rest), parent=ctx, resilient_parsing=False)


def _commands() -> list[tuple[str, list[str]]]:
    commands = [(name, _argv(SERVICES[name])) for name in JOBSCHED]
    commands.append(("Dockerfile CMD", _dockerfile_json("CMD")))
    return commands


@pytest.mark.parametrize(("where", "argv"), _commands(), ids=[c[0] for c in _commands()])
def test_command_is_a_valid_jobsched_invocation(
    where: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        from jobsched.cli import main
    except ModuleNotFoundError as exc:  # only while the CLI is not written yet
        if exc.name != "jobsched.cli":
            raise
        pytest.skip("jobsched.cli does not exist yet")

    assert argv, f"{where}: no command"
    # Options may also come from the environment (envvar=...): use the service's.
    for key in [k for k in os.environ if k.startswith("JOBSCHED_")]:
        monkeypatch.delenv(key)
    if where in SERVICES:
        for key, value in _env(SERVICES[where]).items():
            monkeypatch.setenv(key, value)

    try:
        _parse(main, argv)
    except click.exceptions.Exit as exc:  # --help/--version: not a service command
        pytest.fail(f"{where}: {argv} exits early ({exc.exit_code}) instead of running")
    except click.ClickException as exc:
        pytest.fail(f"{where}: `jobsched {shlex.join(argv)}` is rejected: {exc.format_message()}")

    if "run" in argv:
        roles = _option_values(argv[argv.index("run") :], "--role")
        assert roles and set(roles) <= ROLES | {"all"}, (where, roles)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--role", "api", "--no-such-option"],
        ["run", "--role", "leader"],
        ["run", "--role", "api", "--log-format", "yaml"],
        ["no-such-command"],
    ],
)
def test_invalid_invocations_are_rejected(argv: list[str]) -> None:
    """The check above can fail: the parser rejects what a container could not run."""
    try:
        from jobsched.cli import main
    except ModuleNotFoundError as exc:
        if exc.name != "jobsched.cli":
            raise
        pytest.skip("jobsched.cli does not exist yet")

    with pytest.raises(click.ClickException):
        _parse(main, argv)
