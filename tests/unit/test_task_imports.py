"""``--import``: task modules are found from the current directory, errors say where."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jobsched.worker.worker import TaskModuleNotFound, import_task_modules


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_module_of_the_current_directory_is_imported(project: Path) -> None:
    (project / "proj_tasks_a.py").write_text("VALUE = 1\n")
    import_task_modules(["proj_tasks_a"])
    assert sys.modules["proj_tasks_a"].VALUE == 1
    assert sys.path[0] == str(project)


def test_a_missing_module_names_the_directory_and_the_fix(project: Path) -> None:
    with pytest.raises(TaskModuleNotFound, match=r"no module named 'nothere'.*current "
                       r"directory .*PYTHONPATH"):
        import_task_modules(["nothere.tasks"])


def test_a_missing_dependency_of_the_module_is_its_own_error(project: Path) -> None:
    (project / "proj_tasks_b.py").write_text("import some_dependency_not_installed\n")
    with pytest.raises(ModuleNotFoundError) as raised:
        import_task_modules(["proj_tasks_b"])
    assert not isinstance(raised.value, TaskModuleNotFound)
    assert raised.value.name == "some_dependency_not_installed"
