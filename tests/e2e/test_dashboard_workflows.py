"""The dashboard's workflow pages in real headless Chromium against a running cluster: the
list, a workflow, a run drawn as its graph (nodes coloured by state, edges), a node's
execution and return value, and retry of a failed run from the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import CHROMIUM, LocalCluster
from tests.e2e.test_dashboard import shot, sign_in
from tests.e2e.tokens import admin_token

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors  # no uncaught exception in the page's scripts


@pytest.fixture(scope="module")
def token(running_cluster: LocalCluster) -> str:
    return admin_token(running_cluster)


def py(key: str, function: str, *parents: str, **args: Any) -> dict[str, Any]:
    return {"key": key, "depends_on": list(parents), "kind": "python",
            "python": {"function": f"sample_tasks:{function}", "args": args}}


def test_a_run_is_drawn_as_its_graph(running_cluster: LocalCluster, page: Page,
                                     token: str) -> None:
    workflow = running_cluster.call("POST", "/api/v1/workflows", token=token, body={
        "name": "dash-diamond", "nodes": [
            py("numbers", "numbers", count=3), py("double", "scale", "numbers", factor=2),
            py("triple", "scale", "numbers", factor=3), py("total", "total", "double", "triple"),
            py("flaky", "fails_first_attempt", "total"), py("after", "upstream_keys", "flaky")]})
    sign_in(page, running_cluster, token)
    page.click("nav >> text=Workflows")
    row = page.locator(f"#workflows-table tr[data-workflow-id='{workflow['id']}']")
    expect(row).to_contain_text("dash-diamond")
    expect(row).to_contain_text("never run")
    shot(page, "20-workflows")
    row.locator("a").click()
    expect(page.locator("#workflow-title")).to_have_text("dash-diamond")
    expect(page.locator("#nodes-table tbody tr")).to_have_count(6)

    page.click("#run-now")
    expect(page).to_have_url(re.compile(r"#/runs/[0-9a-f-]{36}$"))
    graph = page.locator("#run-graph svg")
    expect(graph.locator("g.node")).to_have_count(6)
    expect(graph.locator("path.edge")).to_have_count(6)
    # flaky fails its first attempt: the run fails, its child is upstream_failed
    expect(page.locator("#run-state")).to_have_text("failed", timeout=20_000)
    expect(graph.locator("g.node[data-key=total]")).to_have_attribute("data-state", "succeeded")
    expect(graph.locator("g.node[data-key=flaky]")).to_have_attribute("data-state", "failed")
    expect(graph.locator("g.node[data-key=after]")).to_have_attribute("data-state",
                                                                      "upstream_failed")
    # columns by depth: each child is right of its parents
    def x(key: str) -> float:
        box = graph.locator(f"g.node[data-key={key}]").bounding_box()
        assert box is not None
        return box["x"]

    assert x("numbers") < x("double") == x("triple") < x("total") < x("flaky") < x("after")
    graph.locator("g.node[data-key=total]").click()
    expect(page.locator("#node-result")).to_contain_text('"total": 15')
    shot(page, "21-run-failed")
    graph.locator("g.node[data-key=after]").click()
    expect(page.locator("#node-detail")).to_contain_text("did not run")

    page.click("#retry-run")
    expect(page.locator("#run-state")).to_have_text("succeeded", timeout=20_000)
    expect(graph.locator("g.node[data-state=succeeded]")).to_have_count(6)
    graph.locator("g.node[data-key=flaky]").click()
    expect(page.locator("#node-detail")).to_contain_text("Attempt 2")
    expect(page.locator("#run-legend")).to_contain_text("succeeded 6")
    shot(page, "22-run-retried")
    page.click("#run-crumbs a")
    expect(page.locator("#runs-table tbody tr")).to_have_count(1)
    expect(page.locator("#runs-table")).to_contain_text("retried")
