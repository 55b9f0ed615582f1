"""The dashboard's dead-letter page in real headless Chromium against a running cluster:
dead executions listed with their job and error, one opened to its attempts, one retried
with its button, two retried at once with Retry selected, and the filter by job."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import CHROMIUM, LocalCluster
from tests.e2e.test_dashboard import shot, sign_in
from tests.e2e.test_dead_letters import _api, dead_job, wait_state
from tests.e2e.tokens import admin_token

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors  # no uncaught exception in the page's scripts


def test_list_inspect_and_retry_dead_executions(running_cluster: LocalCluster,
                                                page: Page) -> None:
    job_id, (first, second, third) = dead_job(running_cluster, "dash-dead", runs=3)
    sign_in(page, running_cluster, admin_token(running_cluster))

    page.click("#nav >> text=Cluster")
    page.click("#dead-queue-link")  # the dead-letter queue's depth leads here too
    expect(page).to_have_url(re.compile(r"#/dead$"))
    expect(page.locator("#nav a.active")).to_have_text("Dead letters")
    rows = page.locator("#dead-table tbody tr[data-state=dead]")
    for execution_id in (first, second, third):
        row = page.locator(f"#dead-table tbody tr[data-execution-id='{execution_id}']")
        expect(row).to_contain_text("dash-dead")
        expect(row).to_contain_text("this task always fails")
    expect(page.locator("#view")).not_to_contain_text("null")
    shot(page, "dead-letters-01-list")

    # inspect: the row opens to its attempts, with the error and the traceback's output
    page.locator(f"tr[data-execution-id='{first}'] td[data-label=Job] div").click()
    detail = page.locator(f"tr[data-execution-detail='{first}']")
    expect(detail).to_contain_text("Attempt 1")
    expect(detail.locator(".attempt-error")).to_contain_text("this task always fails")
    expect(detail.locator("pre.output")).to_be_visible()
    shot(page, "dead-letters-02-attempts")

    # retry one with its button: queued again as attempt 2, then (it fails again) dead
    page.locator(f"tr[data-execution-id='{first}'] button.retry").click()
    expect(page.locator("#toasts")).to_contain_text("Retried: attempt 2 is queued")
    assert wait_state(running_cluster, first, "dead")["attempt"] == 2

    # retry two at once
    page.locator(f"tr[data-execution-id='{second}'] input.select").check()
    page.locator(f"tr[data-execution-id='{third}'] input.select").check()
    expect(page.locator("#retry-selected")).to_have_text("Retry selected (2)")
    shot(page, "dead-letters-03-selected")
    page.click("#retry-selected")
    expect(page.locator("#toasts")).to_contain_text("Retried 2 of 2")
    for execution_id in (second, third):
        assert wait_state(running_cluster, execution_id, "dead")["attempt"] == 2

    # one job's only
    _, (elsewhere,) = dead_job(running_cluster, "dash-dead-other")
    page.goto(f"{running_cluster.api}/#/jobs/{job_id}")
    # The job page draws the link at once and its cards fill in as their requests come
    # back, moving it down: click once they have (a click as the layout moves can land
    # beside the link).
    expect(page.locator("#executions-table tbody tr").first).to_be_visible()
    expect(page.locator("#job-explain")).not_to_contain_text("Loading…")
    expect(page.locator("#next-fires li, #job-details dd").first).to_be_visible()
    page.click("#job-dead-letters")
    expect(page).to_have_url(re.compile(rf"#/dead\?job={job_id}$"))
    expect(page.locator("#dead-filter")).to_contain_text(job_id)
    expect(page.locator(f"tr[data-execution-id='{first}']")).to_have_count(1)
    expect(page.locator(f"tr[data-execution-id='{elsewhere}']")).to_have_count(0)
    expect(rows).to_have_count(3)
    assert _api(running_cluster, "GET", f"/api/v1/dead?job_id={job_id}")["items"]
