"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against a real
running cluster: sign in, create a cron job through the form, see it fire and its output,
pause it, cancel it. A screenshot of each page goes to artifacts/screenshots/."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import CHROMIUM, LocalCluster
from tests.e2e.tokens import admin_token
from tests.helpers import ROOT

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, expect

pytestmark = pytest.mark.timeout(90)

SHOTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def token(running_cluster: LocalCluster) -> str:
    return admin_token(running_cluster)


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


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-picture
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api_get(cluster: LocalCluster, path: str, token: str) -> Any:
    request = urllib.request.Request(cluster.api + path,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def auth_enforced(cluster: LocalCluster) -> bool:
    try:
        urllib.request.urlopen(cluster.api + "/api/v1/jobs?limit=1", timeout=5).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    return False


def sign_in(page: Page, cluster: LocalCluster, token: str) -> None:
    page.goto(cluster.api + "/")
    expect(page).to_have_url(re.compile(r"#/signin\?next="))
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/jobs$"))
    assert page.evaluate("sessionStorage.getItem('jobsched.token')") == token


def test_sign_in_create_a_cron_job_see_it_fire_pause_and_cancel(
    running_cluster: LocalCluster, page: Page, token: str,
) -> None:
    def api(cluster: LocalCluster, path: str) -> Any:
        return api_get(cluster, path, token)

    bearer: set[str] = set()
    page.on("request", lambda request: bearer.add(request.headers.get("authorization", ""))
            if "/api/v1/" in request.url else None)

    page.goto(running_cluster.api + "/")
    expect(page.locator("#token")).to_be_visible()
    if auth_enforced(running_cluster):
        page.fill("#token", "not-a-real-token")
        page.click("button[type=submit]")
        expect(page.locator(".signin .field-error")).to_have_text("This token was not accepted.")
        bearer.clear()
    shot(page, "01-sign-in")
    sign_in(page, running_cluster, token)
    assert bearer == {f"Bearer {token}"}

    # the form: a schedule that can never fire is flagged while typing
    page.click("text=New job")
    expect(page).to_have_url(re.compile(r"#/new$"))
    page.fill("#f-name", "dash-tick")
    page.fill("#f-schedule", "0 0 30 2 *")
    schedule_error = page.locator("[data-field=schedule] .field-error")
    expect(schedule_error).to_contain_text("never fire")
    page.fill("#f-schedule", "* * * * * *")
    page.fill("#f-timezone", "Europe/Berlin")
    expect(schedule_error).to_be_empty()
    expect(page.locator("#schedule-preview li")).to_have_count(5)
    expect(page.locator("#schedule-preview li").first).to_contain_text(re.compile(r"\+0[12]:00"))
    page.fill("#f-argv", "/bin/sh\n-c\necho tick from the dashboard")
    page.fill("#f-timeout", "-5")  # only the server knows it must be > 0
    page.click("#submit")
    timeout_error = page.locator("[data-field=timeout_s] .field-error")
    expect(timeout_error).to_contain_text("greater than 0")
    expect(page.locator("#form-errors")).to_contain_text("timeout_s")
    shot(page, "02-form-errors")
    page.fill("#f-timeout", "20")
    expect(timeout_error).to_be_empty()
    shot(page, "03-form")
    page.click("#submit")

    # the job page: it fires every second and its output appears
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-title")).to_have_text("dash-tick")
    expect(page.locator("#next-fires li")).to_have_count(5)
    expect(page.locator("#latest-output pre")).to_have_text("tick from the dashboard\n",
                                                             timeout=15_000)
    expect(page.locator("#executions-table tr[data-state=succeeded]").nth(1)).to_be_visible()
    # (the newest row may be a run fired ahead that has not started yet)
    page.locator("#executions-table tr[data-state=succeeded]").first.click()
    expect(page.locator("#executions-table tr.detail pre").first).to_have_text(
        "tick from the dashboard\n")
    expect(page.locator("#duration-chart rect").nth(1)).to_be_visible()
    shot(page, "04-job")
    job = api(running_cluster, f"/api/v1/jobs/{job_id}")
    assert (job["schedule"], job["timezone"], job["timeout_s"]) == (
        "* * * * * *", "Europe/Berlin", 20)

    # pause: no new fires
    page.click("#pause")
    expect(page.locator("#job-state")).to_have_text("paused")
    expect(page.locator("#resume")).to_be_visible()
    assert api(running_cluster, f"/api/v1/jobs/{job_id}")["state"] == "paused"
    fired = len(api(running_cluster, f"/api/v1/jobs/{job_id}/executions?limit=500")["items"])
    page.wait_for_timeout(2500)
    assert len(api(running_cluster,
                   f"/api/v1/jobs/{job_id}/executions?limit=500")["items"]) == fired
    shot(page, "05-job-paused")

    # cancel, confirmed in a second click
    page.click("#cancel")
    expect(page.locator("#cancel")).to_have_text("Confirm cancel")
    page.click("#cancel")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    expect(page.locator("#cancel")).to_have_count(0)
    assert api(running_cluster, f"/api/v1/jobs/{job_id}")["state"] == "cancelled"
    shot(page, "06-job-cancelled")

    # the jobs table finds it by search and shows its state and last outcome
    page.click("nav >> text=Jobs")
    page.fill("#search", "dash-tick")
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    expect(row).to_contain_text("cancelled")
    expect(row).to_contain_text("succeeded")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    page.fill("#search", "")
    shot(page, "07-jobs")

    # the cluster page
    page.click("nav >> text=Cluster")
    expect(page.locator("#leader")).to_contain_text("scheduler-0")
    expect(page.locator("#schedulers")).to_contain_text("leader")
    expect(page.locator("#workers-table")).to_contain_text("worker-1")
    expect(page.locator("#queues")).to_contain_text("executions")
    expect(page.locator("#throughput-chart rect").first).to_be_visible()
    shot(page, "08-cluster")


def test_edit_trigger_resume_and_a_phone_width_screen(
    running_cluster: LocalCluster, browser: Browser, token: str,
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        sign_in(page, running_cluster, token)
        page.click("text=New job")
        page.fill("#f-name", "dash-edit")
        page.select_option("#f-kind", "python")
        page.fill("#f-function", "sample_tasks:add")
        page.fill("#f-args", '{"a": 1, "b": 2}')
        page.fill("#f-schedule", "0 0 1 1 *")
        page.fill("#f-labels", "team=web\nold=yes")
        page.click("#submit")
        expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
        job_id = page.url.rsplit("/", 1)[1]

        page.click("#edit")
        expect(page.locator("#f-name")).to_have_value("dash-edit")
        page.fill("#f-args", '{"a": 40, "b": 2}')
        page.fill("#f-labels", "team=web")
        page.click("#submit")
        expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}$"))
        job = api_get(running_cluster, f"/api/v1/jobs/{job_id}", token)
        assert job["python"]["args"] == {"a": 40, "b": 2}
        assert job["labels"] == {"team": "web"}  # the removed label was sent as null

        page.click("#trigger")
        expect(page.locator("#latest-output pre")).to_have_text('{"sum":42}', timeout=15_000)
        page.click("#pause")
        expect(page.locator("#job-state")).to_have_text("paused")
        page.click("#resume")
        expect(page.locator("#job-state")).to_have_text("active")
        shot(page, "09-phone-job")
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390, f"the job page is {overflow}px wide on a 390px screen"

        page.click("nav >> text=Jobs")
        expect(page.locator(f"#jobs-table tr[data-job-id='{job_id}']")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "10-phone-jobs")
        page.click("nav >> text=New job")
        expect(page.locator("#f-name")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "11-phone-form")
        page.click("nav >> text=Cluster")
        expect(page.locator("#leader")).to_contain_text("scheduler-0")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "12-phone-cluster")
    finally:
        context.close()
    assert errors == [], errors
