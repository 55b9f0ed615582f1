"""deploy/kubernetes renders, validates and keeps the promises docs/deploy.md makes.

No cluster runs here, so everything is checked offline: each overlay is rendered by
kustomize (kubectl's built-in, v5), the core objects are validated strictly against the
Kubernetes schemas bundled with kubernetes-validate (unknown fields rejected), the KEDA and
Prometheus Operator objects against models generated from those projects' CRDs, the YAML
is linted, and the invariants below are asserted on the rendered objects: what
`kubectl apply -k` would send.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobsched.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE_FILE = ROOT / "compose.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
ALERTS_FILE = ROOT / "config" / "alerts.yml"
INSTALL_HINT = "scripts/install-test-tools.sh installs it (make test runs that script)"

OVERLAYS = ("dev", "production", "production-shell")
PRODUCTION = ("production", "production-shell")
ROLES = ("api", "scheduler", "worker")
# Oldest Kubernetes release the manifests are meant for, and the newest schema bundled.
MIN_KUBERNETES = "1.30"

# Not in Kubernetes' schemas: checked against the CRD models instead.
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "cloudcoil.models.keda.v1alpha1:ScaledObject",
    ("keda.sh/v1alpha1", "TriggerAuthentication"):
        "cloudcoil.models.keda.v1alpha1:TriggerAuthentication",
    ("monitoring.coreos.com/v1", "ServiceMonitor"):
        "cloudcoil.models.prometheus_operator.v1:ServiceMonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"):
        "cloudcoil.models.prometheus_operator.v1:PrometheusRule",
}
# The capabilities docs/deploy.md and components/shell-runner name for root workers.
SHELL_RUNNER_CAPABILITIES = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID"}
# Environment names that are not Settings fields (docs/security.md, settings.py).
ENV_ONLY = {"JOBSCHED_CONFIG"}
ENV_NAME = re.compile(r"\bJOBSCHED_[A-Z0-9_]*[A-Z0-9]")
# Stand-ins for the production Secret, which is created outside the manifests.
PLACEHOLDER_SECRET = {
    "database-url": "postgresql://jobsched:secret@db1:5432,db2:5432/jobsched",
    "amqp-url": "amqps://jobsched:secret@rabbitmq:5671/",
    "zookeeper-hosts": "zk1:2181,zk2:2181,zk3:2181",
}


# ---- rendering ----------------------------------------------------------------------


@cache
def _renderer() -> tuple[str, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                               capture_output=True, text=True, timeout=60, check=False)
        try:
            version = json.loads(probe.stdout).get("kustomizeVersion", "")
        except ValueError:
            version = ""
        found = re.match(r"v?(\d+)", version)
        if found and int(found.group(1)) >= 5:
            return (kubectl, "kustomize")
    kustomize = shutil.which("kustomize")
    if kustomize:
        return (kustomize, "build")
    pytest.fail(f"no kubectl with kustomize v5 (found: {kubectl or 'none'}) and no "
                f"kustomize on PATH: {INSTALL_HINT}")


@cache
def _render(overlay: str) -> str:
    result = subprocess.run([*_renderer(), str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kustomize failed on {overlay}:\n{result.stderr}"
    return result.stdout


@cache
def _parsed(overlay: str) -> tuple[dict[str, Any], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(d for d in yaml.load_all(_render(overlay), Loader=loader) if d)


def _docs(overlay: str) -> list[dict[str, Any]]:
    """The rendered objects, parsed once: callers copy before they change one."""
    return list(_parsed(overlay))


def _of_kind(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs(overlay) if d["kind"] == kind]


def _named(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _of_kind(overlay, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: {len(found)} {kind} named {name}"
    return found[0]


def _deployment(overlay: str, role: str) -> dict[str, Any]:
    found = [d for d in _of_kind(overlay, "Deployment")
             if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
             == role]
    assert len(found) == 1, f"{overlay}: {len(found)} Deployments for the {role} role"
    return found[0]


def _pod_templates(overlay: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in _docs(overlay):
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, op = labels.get(expression["key"]), expression["operator"]
        if op == "In" and value not in expression["values"]:
            return False
        if op == "NotIn" and value in expression["values"]:
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def _secret_values(overlay: str, name: str) -> dict[str, str]:
    secrets = [d for d in _of_kind(overlay, "Secret") if d["metadata"]["name"] == name]
    if not secrets:  # created by the operator (production): stand-in values
        return PLACEHOLDER_SECRET
    (secret,) = secrets
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def _environment(overlay: str, pod: dict[str, Any], container: dict[str, Any]
                 ) -> dict[str, str]:
    """The container's environment as the kubelet would build it (fieldRefs stand in)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = _named(overlay, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({k: str(v) for k, v in data.items()})
        if "secretRef" in source:
            env.update(_secret_values(overlay, source["secretRef"]["name"]))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = _secret_values(overlay, ref["name"])[ref["key"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = _named(overlay, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            env[item["name"]] = f"{pod['metadata']['labels'].get('app.kubernetes.io/component')}-0"
    return env


def _role_container(overlay: str, role: str) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = _deployment(overlay, role)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return pod, container


def _role_settings(overlay: str, role: str) -> Settings:
    pod, container = _role_container(overlay, role)
    return load_settings({}, environ=_environment(overlay, pod, container), config_path=None)


# ---- validation ---------------------------------------------------------------------


def _kubernetes_validate(text: str, version: str) -> subprocess.CompletedProcess[str]:
    try:
        importlib.import_module("kubernetes_validate")
    except ModuleNotFoundError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[dev]'")
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, "-"],
        input=text, capture_output=True, text=True, timeout=300, check=False)


def _newest_bundled_kubernetes() -> str:
    from kubernetes_validate.utils import latest_version

    return str(latest_version())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str) -> None:
    """`kubectl kustomize OVERLAY | kubernetes-validate --strict`, oldest and newest."""
    docs = _docs(overlay)
    core = {f"{d['kind'].lower()}/{d['metadata']['name']}" for d in docs
            if (d["apiVersion"], d["kind"]) not in CRD_MODELS}
    crds = {d["kind"] for d in docs if (d["apiVersion"], d["kind"]) in CRD_MODELS}
    for version in (MIN_KUBERNETES, _newest_bundled_kubernetes()):
        result = _kubernetes_validate(_render(overlay), version)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{overlay} against {version}:\n{output}"
        passed = set(re.findall(r"^INFO .* passed for resource (\S+) against", output, re.M))
        assert passed == core, f"{overlay} against {version}: not validated: {core - passed}"
        unknown = set(re.findall(r"^WARN .*find schema for kind (\S+) ", output, re.M))
        # Only the custom resources lack a schema here (test_custom_resources_... has them).
        assert unknown == crds, output
        assert "ERROR" not in output, output


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check above can fail: a misspelt field is refused, not ignored."""
    docs = _docs("dev")
    broken = copy.deepcopy(docs)
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    result = _kubernetes_validate(yaml.safe_dump_all(broken), MIN_KUBERNETES)
    assert result.returncode != 0
    assert "livenesProbe" in result.stdout, result.stdout


def _model(api_version: str, kind: str) -> Any:
    module_name, _, name = CRD_MODELS[(api_version, kind)].partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except ModuleNotFoundError:
        pytest.fail(f"{module_name} is not installed: pip install -e '.[dev]'")


def _differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in expected.keys() | actual.keys():
            if key not in actual:
                found.append(f"{path}.{key}: not in the CRD schema")
            elif key not in expected:
                found.append(f"{path}.{key}: added")
            else:
                found += _differences(expected[key], actual[key], f"{path}.{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True))
                for d in _differences(e, a, f"{path}[{i}]")]
    return [] if expected == actual and type(expected) is type(actual) else [
        f"{path}: {expected!r} reads as {actual!r}"]


def _crd_problems(doc: dict[str, Any]) -> list[str]:
    """Validates against the CRD's model; a field the schema lacks, or a value of another
    type, does not survive the round trip, which is what strict validation would refuse."""
    from pydantic import ValidationError

    model = _model(doc["apiVersion"], doc["kind"])
    try:
        parsed = model.model_validate(doc)
    except ValidationError as exc:
        return [str(exc)]
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return _differences(doc, dumped)


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_custom_resources_match_their_crds(overlay: str) -> None:
    docs = [d for d in _docs(overlay) if (d["apiVersion"], d["kind"]) in CRD_MODELS]
    assert {d["kind"] for d in docs} == {kind for _, kind in CRD_MODELS}
    for doc in docs:
        assert _crd_problems(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_crd_validation_can_fail() -> None:
    scaled = copy.deepcopy(_named("production", "ScaledObject", "jobsched-worker"))
    scaled["spec"]["minReplicas"] = 2  # HPA's name, not KEDA's (minReplicaCount)
    assert any("minReplicas" in p for p in _crd_problems(scaled))
    scaled = copy.deepcopy(_named("production", "ScaledObject", "jobsched-worker"))
    scaled["spec"]["maxReplicaCount"] = "many"
    assert _crd_problems(scaled)
    monitor = copy.deepcopy(_named("production", "ServiceMonitor", "jobsched"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # it is `interval`
    assert any("scrapeInterval" in p for p in _crd_problems(monitor))


def test_yaml_is_lint_clean() -> None:
    try:
        importlib.import_module("yamllint")
    except ModuleNotFoundError:
        pytest.fail("yamllint is not installed: pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint.yaml"),
         "deploy", "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the roles ----------------------------------------------------------------------


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"probe names port {port!r}, the container has {named}"
    return int(named[port])


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", ROLES)
def test_role_deployment_runs_the_role_with_probes(overlay: str, role: str) -> None:
    from jobsched.cli import main
    from tests.unit.test_compose import _parse

    pod, container = _role_container(overlay, role)
    argv = [*container.get("command", [])[1:], *container.get("args", [])]
    assert container.get("command") in (None, ["jobsched"]), "the image's entrypoint runs"
    assert argv[:1] == ["run"] and argv[argv.index("--role") + 1] == role, argv
    _parse(main, argv)  # the real CLI accepts it

    settings = _role_settings(overlay, role)
    serving_port = settings.api_port if role == "api" else settings.metrics_port
    host = settings.api_host if role == "api" else settings.metrics_host
    assert host == "0.0.0.0", "probes and Prometheus reach the pod's address"
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container.get(kind)
        assert probe, f"{role}: no {kind}"
        assert probe["httpGet"]["path"] == path, (role, kind)
        assert _probe_port(container, probe) == serving_port, (role, kind)
        # /readyz runs each dependency check with a 2 s timeout (jobsched/health.py).
        assert probe.get("timeoutSeconds", 1) > 2, (role, kind)
    startup = container.get("startupProbe")
    if startup:  # liveness must not be the one that waits for start-up
        assert startup["httpGet"]["path"] == "/healthz"
    assert pod["spec"]["serviceAccountName"] == "jobsched"
    assert pod["spec"].get("automountServiceAccountToken") is False


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", ROLES)
def test_a_disruption_budget_per_role(overlay: str, role: str) -> None:
    deployment = _deployment(overlay, role)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [b for b in _of_kind(overlay, "PodDisruptionBudget")
               if _selects(b["spec"]["selector"], labels)]
    assert len(budgets) == 1, f"{overlay}/{role}: {len(budgets)} PodDisruptionBudgets"
    spec = budgets[0]["spec"]
    replicas = deployment["spec"].get("replicas", 1)
    # The budget must allow draining a node even at one replica.
    if "minAvailable" in spec:
        assert isinstance(spec["minAvailable"], int) and spec["minAvailable"] < replicas
    else:
        assert spec["maxUnavailable"] not in (0, "0%")
    if role == "scheduler":
        assert spec.get("maxUnavailable") == 1, "two schedulers evicted at once"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_outlasts_its_drain(overlay: str) -> None:
    """SIGTERM: in-flight runs get drain_timeout_s, the rest is cancelled and handed back
    (up to 5 s), then connections close; SIGKILL must not come first."""
    pod, _ = _role_container(overlay, "worker")
    drain = _role_settings(overlay, "worker").drain_timeout_s
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + 15, f"grace {grace} s for a {drain} s drain"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources(overlay: str) -> None:
    for where, pod in _pod_templates(overlay):
        for container in _containers(pod):
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            assert {"cpu", "memory"} <= set(requests), (where, container["name"], resources)
            assert "memory" in limits, (where, container["name"], resources)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    for where, pod in _pod_templates(overlay):
        for container in _containers(pod):
            image = container["image"]
            if "@sha256:" in image:
                continue
            tag = image.rpartition("/")[2].partition(":")[2]
            assert tag and tag != "latest", f"{where}: image {image!r} is not pinned"


def _is_root(pod: dict[str, Any], container: dict[str, Any]) -> bool:
    merged = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
    return not (merged.get("runAsNonRoot") is True and merged.get("runAsUser", 1) != 0)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root(overlay: str) -> None:
    """Every pod is non-root with no capabilities, except the shell-runner's workers."""
    root = []
    for where, pod in _pod_templates(overlay):
        assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in _containers(pod):
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            if _is_root(pod, container):
                root.append((where, container))
            else:
                assert not context["capabilities"].get("add"), where

    namespace = _of_kind(overlay, "Namespace")[0]["metadata"]["labels"]
    worker_env = _role_settings(overlay, "worker")
    api_env = _role_settings(overlay, "api")
    if overlay != "production-shell":
        assert root == []
        assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
        # A non-root worker cannot confine shell runs: the kind is off everywhere.
        assert "shell" in worker_env.disabled_kinds and "shell" in api_env.disabled_kinds
        return
    # The documented exception: the worker pool, with only what switching users needs.
    assert [where for where, _ in root] == ["Deployment/jobsched-worker"]
    (_, container), = root
    assert set(container["securityContext"]["capabilities"]["add"]) == SHELL_RUNNER_CAPABILITIES
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert namespace["pod-security.kubernetes.io/enforce"] == "baseline"
    assert "shell" not in worker_env.disabled_kinds and "shell" not in api_env.disabled_kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrate_job(overlay: str) -> None:
    from jobsched.cli import main
    from tests.unit.test_compose import _parse

    jobs = _of_kind(overlay, "Job")
    assert len(jobs) == 1
    pod = jobs[0]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container.get("args", [])[:1] == ["migrate"]
    _parse(main, container["args"])
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    # The database the roles use.
    env = _environment(overlay, pod, container)
    api_pod, api = _role_container(overlay, "api")
    api_env = _environment(overlay, api_pod, api)
    assert env["JOBSCHED_DATABASE_URL"] == api_env["JOBSCHED_DATABASE_URL"]


# ---- settings named in the manifests ------------------------------------------------


def _known_env_name(name: str) -> bool:
    fields = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    return name in fields or name in ENV_ONLY


def test_every_jobsched_variable_is_a_setting() -> None:
    texts = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
             for path in [*sorted(K8S.rglob("*.yaml")), COMPOSE_FILE, DEPLOY_DOC]}
    texts.update({f"rendered {o}": _render(o) for o in OVERLAYS})
    named = {(where, name) for where, text in texts.items() for name in ENV_NAME.findall(text)}
    assert any(name == "JOBSCHED_DATABASE_URL" for _, name in named)
    unknown = sorted((where, name) for where, name in named if not _known_env_name(name))
    assert unknown == [], f"not settings of jobsched.settings.Settings: {unknown}"


def test_the_setting_name_check_can_fail() -> None:
    assert _known_env_name("JOBSCHED_DRAIN_TIMEOUT_S")
    assert not _known_env_name("JOBSCHED_SECRET_API_KEY")  # no longer read (docs/security.md)
    assert not _known_env_name("JOBSCHED_DRAIN_TIMEOUT")
    assert not _known_env_name("JOBSCHED_DATABASE")


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_environment_is_valid_settings(overlay: str, role: str) -> None:
    """The values load too: a bad one would stop the role at start-up."""
    settings = _role_settings(overlay, role)
    assert settings.log_format in ("json", "text")
    pod, container = _role_container(overlay, role)
    env = _environment(overlay, pod, container)
    for name in ("JOBSCHED_DATABASE_URL", "JOBSCHED_AMQP_URL", "JOBSCHED_ZOOKEEPER_HOSTS"):
        assert name in env, f"{overlay}/{role}: {name} not set"


# ---- shapes of the overlays ---------------------------------------------------------


def test_dev_runs_everything_in_the_cluster_once() -> None:
    for doc in [*_of_kind("dev", "Deployment"), *_of_kind("dev", "StatefulSet")]:
        assert doc["spec"].get("replicas", 1) == 1, doc["metadata"]["name"]
    services = {s["metadata"]["name"]: s for s in _of_kind("dev", "Service")}
    settings = _role_settings("dev", "worker")
    # Every address the roles are given is a Service of the overlay, on a port it serves.
    addresses = [re.sub(r"^\w+://([^@/]*@)?", "", settings.database_url).split("/")[0],
                 re.sub(r"^\w+://([^@/]*@)?", "", settings.amqp_url).split("/")[0],
                 *settings.zookeeper_hosts.split(",")]
    for address in addresses:
        host, _, port = address.partition(":")
        assert host in services, f"{address}: no such Service in dev"
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, address
    for name in ("postgres", "rabbitmq", "zookeeper"):
        _named("dev", "StatefulSet", name)


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_production_shape(overlay: str) -> None:
    assert _deployment(overlay, "api")["spec"]["replicas"] >= 2
    scheduler = _deployment(overlay, "scheduler")
    assert scheduler["spec"]["replicas"] == 3
    pod = scheduler["spec"]["template"]
    terms = pod["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname"
               and _selects(t["labelSelector"], pod["metadata"]["labels"]) for t in terms)
    # Workers: the autoscaler owns the count, so re-applying does not reset it.
    worker = _deployment(overlay, "worker")
    assert "replicas" not in worker["spec"]
    scalers = [s["spec"]["scaleTargetRef"]["name"] for s in _of_kind(overlay, "ScaledObject")]
    scalers += [h["spec"]["scaleTargetRef"]["name"]
                for h in _of_kind(overlay, "HorizontalPodAutoscaler")]
    assert scalers == [worker["metadata"]["name"]]
    # Nothing in the cluster stands in for the external services.
    assert _of_kind(overlay, "StatefulSet") == [] and _of_kind(overlay, "Secret") == []


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_workers_scale_on_queued_executions(overlay: str) -> None:
    scaled = _named(overlay, "ScaledObject", "jobsched-worker")
    spec = scaled["spec"]
    assert spec["minReplicaCount"] >= 1 and spec["maxReplicaCount"] > spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"
    query = " ".join(trigger["metadata"]["query"].split())
    assert re.fullmatch(r"SELECT count\(\*\) FROM executions WHERE state IN \(([^)]*)\)", query)
    states = set(re.findall(r"'(\w+)'", query))
    assert "queued" in states and states <= {"queued", "running"}, states
    assert float(trigger["metadata"]["targetQueryValue"]) > 0
    # The connection comes from the Secret the roles read the database URL from.
    auth = _named(overlay, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert (ref["parameter"], ref["name"], ref["key"]) == (
        "connection", "jobsched-connections", "database-url")


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_prometheus_rule_is_config_alerts(overlay: str) -> None:
    alerts = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    rule = _named(overlay, "PrometheusRule", "jobsched")
    assert rule["spec"]["groups"] == alerts["groups"], (
        "run python3 scripts/k8s-prometheusrule.py")


@pytest.mark.parametrize("overlay", PRODUCTION)
def test_service_monitor_scrapes_every_role(overlay: str) -> None:
    """Each role's /metrics port is scraped, under a job name the alerts expect."""
    alerts = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    expressions = [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    job_pattern = next(m for e in expressions for m in re.findall(r'job=~"([^"]+)"', e))
    monitor = _named(overlay, "ServiceMonitor", "jobsched")
    ports = {e["port"] for e in monitor["spec"]["endpoints"] if e.get("path") == "/metrics"}
    for role in ROLES:
        pod, container = _role_container(overlay, role)
        settings = _role_settings(overlay, role)
        metrics_port = settings.api_port if role == "api" else settings.metrics_port
        services = [s for s in _of_kind(overlay, "Service")
                    if _selects({"matchLabels": s["spec"]["selector"]},
                                pod["metadata"]["labels"])
                    and _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert len(services) == 1, f"{role}: {len(services)} monitored Services"
        service = services[0]
        # The job label is the Service's name (no jobLabel set).
        assert "jobLabel" not in monitor["spec"]
        assert re.fullmatch(job_pattern, service["metadata"]["name"]), service["metadata"]
        scraped = [p for p in service["spec"]["ports"] if p["name"] in ports]
        assert scraped, f"{role}: no Service port named as a ServiceMonitor endpoint"
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        target = scraped[0]["targetPort"]
        assert named.get(target, target) == metrics_port, role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    policies = _of_kind(overlay, "NetworkPolicy")

    def applying(role: str, direction: str) -> list[dict[str, Any]]:
        labels = _deployment(overlay, role)["spec"]["template"]["metadata"]["labels"]
        return [p for p in policies if direction in p["spec"]["policyTypes"]
                and _selects(p["spec"]["podSelector"], labels)]

    def open_ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
        return {(p.get("protocol", "TCP"), p["port"]) for r in rules for p in r.get("ports", [])}

    for role in ROLES:
        ingress = [r for p in applying(role, "Ingress") for r in p["spec"].get("ingress", [])]
        egress = [r for p in applying(role, "Egress") for r in p["spec"].get("egress", [])]
        assert any(not p["spec"].get("ingress") for p in applying(role, "Ingress")), role
        settings = _role_settings(overlay, role)
        serving = settings.api_port if role == "api" else settings.metrics_port
        assert open_ports(ingress) == {("TCP", serving)}, role
        if role != "api":  # metrics and health: only from the monitoring namespace
            assert all(r.get("from") and all("namespaceSelector" in f for f in r["from"])
                       for r in ingress), role
        needed = {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 5672), ("TCP", 2181)}
        assert needed <= open_ports(egress), role
    worker_to = [t for p in applying("worker", "Egress")
                 for r in p["spec"].get("egress", []) for t in r.get("to", [])]
    blocks = [t["ipBlock"] for t in worker_to if "ipBlock" in t]
    assert any(b["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" in b.get("except", [])
               for b in blocks), "workers may reach the cloud metadata address"
    for role in ("api", "scheduler"):
        assert not any(r.get("to") for p in applying(role, "Egress")
                       for r in p["spec"].get("egress", [])), f"{role} has open egress"


# ---- ZooKeeper's tick ---------------------------------------------------------------


def _zookeeper_ticks() -> dict[str, int]:
    """tickTime of every ZooKeeper server the repository starts: compose and dev."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    ticks = {f"compose {name}": int(svc["environment"].get("ZOO_TICK_TIME", 2000))
             for name, svc in compose["services"].items()
             if str(svc.get("image", "")).startswith("zookeeper:")}
    for doc in _of_kind("dev", "StatefulSet"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("zookeeper:"):
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                ticks[f"dev {doc['metadata']['name']}"] = int(env.get("ZOO_TICK_TIME", 2000))
    return ticks


def _taken_over_in_time(tick_ms: float, session_ms: float) -> bool:
    """A server grants a session between 2 and 20 ticks and ends it up to one tick after
    its timeout; a standby notices within about a second more. For a leader's kill -9 to
    be taken over within 5 s, the session asked for must be granted as it is, and session
    + one tick must stay within 4 s."""
    return 2 * tick_ms <= session_ms <= 20 * tick_ms and session_ms + tick_ms <= 4000


def test_the_tick_check_can_fail() -> None:
    # The stock tick raises a 3 s session to 4 s, which ends up to 6 s after the kill.
    assert not _taken_over_in_time(2000, 3000)
    assert not _taken_over_in_time(1000, 5000)
    assert _taken_over_in_time(1000, 3000)


def test_zookeeper_grants_the_session_the_roles_ask_for() -> None:
    ticks = _zookeeper_ticks()
    assert len([n for n in ticks if n.startswith("compose")]) == 3, ticks
    assert any(n.startswith("dev") for n in ticks), ticks
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    asked = {
        # ${NAME:-default} as compose reads it with NAME unset
        "compose": load_settings({}, environ={
            k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
            for k, v in compose["x-jobsched-env"].items()}, config_path=None),
        "dev": _role_settings("dev", "scheduler"),
    }
    # Production asks for the same session as dev; its ensemble is configured outside
    # (docs/deploy.md says tickTime=1000).
    for production in PRODUCTION:
        assert _role_settings(production, "scheduler").zookeeper_session_timeout_s == (
            asked["dev"].zookeeper_session_timeout_s)
    for where, tick_ms in ticks.items():
        session_ms = asked[where.split()[0]].zookeeper_session_timeout_s * 1000
        assert _taken_over_in_time(tick_ms, session_ms), (
            f"{where}: tickTime {tick_ms} ms, session {session_ms:.0f} ms")
