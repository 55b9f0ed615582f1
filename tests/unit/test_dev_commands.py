"""``jobsched bench`` and ``jobsched dev`` come from ``jobsched_dev``, which a source
checkout has and an installed wheel does not: the CLI finds it beside the package, or says
in one line what is missing; the distribution and the image never carry it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from jobsched.cli import source_checkout
from tests.helpers import ROOT

# Runs the CLI in a fresh interpreter where ``jobsched_dev`` cannot be imported, as in a
# virtual environment that installed the wheel.
WITHOUT_DEV_TOOLS = """
import sys
from importlib.abc import MetaPathFinder

class NoDevTools(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "jobsched_dev" or name.startswith("jobsched_dev."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoDevTools())
from jobsched.cli import main
main(sys.argv[1:], prog_name="jobsched")
"""


def test_a_checkout_is_the_parent_of_the_package_with_the_tools_beside_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "jobsched").mkdir()
    assert source_checkout(tmp_path / "jobsched") is None  # an installed package
    (tmp_path / "jobsched_dev").mkdir()
    (tmp_path / "jobsched_dev" / "__init__.py").touch()
    assert source_checkout(tmp_path / "jobsched") == tmp_path
    assert source_checkout(ROOT / "jobsched") == ROOT


@pytest.mark.parametrize("argv", [["bench", "herd", "--jobs", "1"], ["bench", "--help"],
                                  ["dev", "cluster"]])
def test_without_the_tools_the_commands_say_what_they_need(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_DEV_TOOLS, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"jobsched: the {argv[0]} commands need a source checkout installed with "
        "pip install -e '.[dev]'"]


def test_without_the_tools_the_other_commands_work_and_help_hides_them() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_DEV_TOOLS, "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = {line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines()
                if line.strip()}
    assert {"run", "migrate", "jobs", "token"} <= commands
    assert not commands & {"bench", "dev"}


def test_from_a_checkout_the_commands_are_there() -> None:
    done = subprocess.run([sys.executable, "-m", "jobsched", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "bench " in done.stdout and "dev " in done.stdout


def test_the_distribution_and_the_image_hold_the_runtime_package_alone() -> None:
    """setuptools' package discovery keeps the packages one of these patterns matches."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(".".join(init.parent.relative_to(ROOT).parts)
                      for top in ("jobsched", "jobsched_dev")
                      for init in (ROOT / top).rglob("__init__.py"))
    shipped = [p for p in packages if any(fnmatchcase(p, pattern) for pattern in include)]
    assert "jobsched" in shipped and "jobsched.api" in shipped
    assert [p for p in packages if p not in shipped] == ["jobsched_dev", "jobsched_dev.bench"]
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "jobsched_dev" in ignored


def test_test_modules_have_unique_basenames() -> None:
    """The tiers are not packages, so pytest imports each test module by its basename:
    two tiers with one name stop the whole collection (``import file mismatch``)."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
