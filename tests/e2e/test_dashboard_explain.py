"""The job page's "Why / next run" card in real headless Chromium against a running
cluster: an active job due at its next fire with a live worker, then paused (no next
fire, paused since), and a coalesced misfire listed with its reason."""

from __future__ import annotations

import time
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

pytestmark = pytest.mark.timeout(120)

NEVER_SOON = "0 0 1 1 *"


@pytest.fixture(scope="module")
def token(running_cluster: LocalCluster) -> str:
    return admin_token(running_cluster)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert errors == [], errors  # no uncaught exception, no CSP violation


def executions(cluster: LocalCluster, token: str, job_id: str) -> list[dict[str, Any]]:
    return cluster.call("GET", f"/api/v1/jobs/{job_id}/executions?limit=100", token=token)["items"]


def shell_job(schedule: str) -> dict[str, Any]:
    return {"name": "dash-explain", "schedule": schedule, "kind": "shell",
            "shell": {"argv": ["/bin/true"]}}


def test_the_why_card_explains_an_active_then_paused_job(
        running_cluster: LocalCluster, page: Page, token: str) -> None:
    job = running_cluster.call("POST", "/api/v1/jobs", shell_job(NEVER_SOON), token=token)
    sign_in(page, running_cluster, token)
    page.goto(f"{running_cluster.api}/#/jobs/{job['id']}")
    card = page.locator("#job-explain-card")
    expect(card.locator("h2")).to_have_text("Why / next run")
    expect(page.locator("#explain-reason")).to_have_attribute("data-reason", "due")
    expect(page.locator("#explain-summary")).to_contain_text("active: next fire at")
    expect(page.locator("#explain-workers")).not_to_have_text("0")
    expect(card).to_contain_text("No missed, skipped, coalesced or dead runs")
    shot(page, "explain-active")

    page.click("#pause")
    expect(page.locator("#explain-reason")).to_have_attribute("data-reason", "paused")
    expect(card).to_contain_text("Paused since")
    expect(card.locator("dd").first).to_have_text("none")
    expect(page.locator("#job-details")).not_to_contain_text(
        job["next_fire_at"][:4] + "-01-01")  # no stale next fire in the definition
    shot(page, "explain-paused")


def test_the_why_card_lists_a_coalesced_misfire(
        running_cluster: LocalCluster, page: Page, token: str) -> None:
    cluster = running_cluster
    job = cluster.call("POST", "/api/v1/jobs", shell_job("@every 2s"), token=token)
    deadline = time.monotonic() + 20
    while not executions(cluster, token, job["id"]):
        assert time.monotonic() < deadline, "no first run"
        time.sleep(0.3)
    cluster.call("POST", f"/api/v1/jobs/{job['id']}/pause", token=token)
    time.sleep(12)  # several fires fall due while paused, the first > 5 s late
    cluster.call("POST", f"/api/v1/jobs/{job['id']}/resume", token=token)
    deadline = time.monotonic() + 20
    while not any((e.get("reason") or "").startswith("coalesced")
                  for e in executions(cluster, token, job["id"])):
        assert time.monotonic() < deadline, "no catch-up run"
        time.sleep(0.3)
    cluster.call("POST", f"/api/v1/jobs/{job['id']}/pause", token=token)
    sign_in(page, running_cluster, token)
    page.goto(f"{running_cluster.api}/#/jobs/{job['id']}")
    recent = page.locator("#explain-recent tbody tr")
    expect(recent.first).to_be_visible()
    expect(page.locator("#explain-recent")).to_contain_text("misfire=run_once")
    expect(page.locator("#explain-recent")).to_contain_text("coalesced")
    shot(page, "explain-coalesced")
