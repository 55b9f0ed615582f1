"""The shell sessions of README.md and docs/*.md, typed into bash one command at a time
against one fresh cluster started as the docs start it, and docs/client.md's example run
as a script: their output and exit codes are what the docs show (tests/doc_sessions.py
says what is compared and how a session is marked as not runnable)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_sessions import Bindings, Session, compare, parse_sessions
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(90)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALL_SESSIONS = [session for doc in DOCS
                for session in parse_sessions(doc.read_text(), str(doc.relative_to(ROOT)))]
SESSIONS = [session for session in ALL_SESSIONS if session.not_run is None]
#: Sessions marked `<!-- not-run: why -->`, by doc: a new marker is a deliberate change here.
NOT_RUN = {
    "README.md": 1,  # webhooks create: needs JOBSCHED_SECRETS_KEY, prints a new secret
    "docs/operations.md": 2,  # migrate --status one migration behind; cluster purge
    "docs/workflows.md": 1,  # ids shortened; tests/e2e/test_workflow_docs.py runs it
}
#: The api root the docs show; the commands are given this cluster's instead.
DOC_URL = "http://127.0.0.1:8080"
#: The instance name the docs show for the one `--role all` process. By default it is the
#: host's name and the process id, different on every machine: the test's process is given
#: this one, as `--instance` would.
DOC_INSTANCE = "myhost-4021"


@pytest.fixture(scope="module")
def docs_cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
                 template_db: str) -> Iterator[LocalCluster]:
    """The roles as the docs start them: `jobsched run --role all --import examples.tasks`
    from the checkout's root."""
    cluster = _new_cluster(tmp_path_factory.mktemp("docs"), zookeeper, template_db)
    cluster.start("all", extra=("--import", "examples.tasks"), JOBSCHED_INSTANCE=DOC_INSTANCE)
    yield cluster
    _teardown(cluster)


def test_every_session_of_the_docs_is_found() -> None:
    """The docs this module runs, so that a session moved elsewhere is not lost unseen;
    and the sessions it does not run are the known ones, each with its reason."""
    runnable = {session.doc for session in SESSIONS}
    assert {"README.md", "docs/cli.md"} <= runnable, runnable
    not_run: dict[str, int] = {}
    for session in ALL_SESSIONS:
        if session.not_run is not None:
            assert session.not_run.strip(), session.name
            not_run[session.doc] = not_run.get(session.doc, 0) + 1
    assert not_run == NOT_RUN, [(s.name, s.not_run) for s in ALL_SESSIONS if s.not_run]


def _console_script(bin_dir: Path) -> Path:
    """A `jobsched` command as pip installs it (so usage lines name `jobsched`), running
    this checkout's code (the cluster's PYTHONPATH puts it ahead of an installed one)."""
    script = bin_dir / "jobsched"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom jobsched.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    return script


def _bash(command: str, env: dict[str, str], state: Path) -> subprocess.CompletedProcess[str]:
    """One command as typed at a prompt: what earlier commands exported is still exported,
    stderr is interleaved with stdout, stdin is no terminal."""
    script = (f". {shlex.quote(str(state))}\n{command}\n"
              f"status=$?\nexport -p > {shlex.quote(str(state))}\nexit $status\n")
    return subprocess.run(["bash", "-c", script], env=env, cwd=ROOT, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


@pytest.mark.parametrize("session", SESSIONS, ids=[s.name for s in SESSIONS])
def test_session_prints_what_the_doc_shows(session: Session, docs_cluster: LocalCluster,
                                           tmp_path: Path) -> None:
    # A namespace of its own, so that one session's jobs do not show in another's lists.
    namespace = "docs-" + re.sub(r"[^a-z0-9]+", "-", session.name.lower())
    bin_dir = _console_script(tmp_path).parent
    env = docs_cluster.env(JOBSCHED_URL=docs_cluster.api,
                           JOBSCHED_TOKEN=docs_cluster.create_token(namespace))
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)])
    state = tmp_path / "exports.sh"
    state.write_text("")
    bindings = Bindings(fixed={DOC_URL: docs_cluster.api})
    failures = []
    for step in session.steps:
        done = _bash(bindings.command(step.command), env, state)
        diff = compare(step.expected, done.stdout, bindings)
        if done.returncode != 0:
            failures.append(f"{session.doc}:{step.line}: $ {step.command}\nexited "
                            f"{done.returncode} (show it with `; echo \"exit $?\"`)\n"
                            f"{done.stdout}")
        elif diff is not None:
            failures.append(f"{session.doc}:{step.line}: $ {step.command}\n{diff}")
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def _client_example() -> str:
    text = (ROOT / "docs" / "client.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    [example] = [block for block in blocks if "asyncio.run(main())" in block]
    return example


def test_client_example_runs_as_written(docs_cluster: LocalCluster, tmp_path: Path) -> None:
    """docs/client.md's example, its URL and token replaced, run from the checkout's root
    (where `examples.tasks` imports from): the task it imports succeeds, and its invalid
    job prints what the doc's comment says."""
    example = _client_example()
    assert "from examples.tasks import send_report" in example
    [expected_error] = re.findall(r"# (422 .*)", example)
    script = tmp_path / "schedule_report.py"
    script.write_text(example.replace(f'"{DOC_URL}"', repr(docs_cluster.api))
                      .replace('token="…"', f"token={docs_cluster.token!r}"))
    env = docs_cluster.env()
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36} \S+", lines[0]), lines
    assert lines[-3:] == ["succeeded", '{"sent":"billing"}', expected_error], lines
    assert set(lines[1:-2]) <= {"queued", "running", "succeeded"}, lines
