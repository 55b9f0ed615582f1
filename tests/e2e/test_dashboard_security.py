"""The dashboard's own defences, in real headless Chromium against a real cluster: its
Content-Security-Policy holds (and the pages run under it), no other site can frame it,
the token lives in the tab's sessionStorage only, and the edit form keeps secret
references as references."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

# (importing test_dashboard skips this module too where Chromium is missing)
from tests.e2e.conftest import LocalCluster
from tests.e2e.test_dashboard import api_get, sign_in
from tests.e2e.tokens import admin_token

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def token(running_cluster: LocalCluster) -> str:
    return admin_token(running_cluster)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def headers_of(url: str) -> dict[str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return dict(response.headers)
    except urllib.error.HTTPError as exc:
        return dict(exc.headers)


def post(cluster: LocalCluster, path: str, token: str, body: Any) -> Any:
    request = urllib.request.Request(cluster.api + path, data=json.dumps(body).encode(),
                                     method="POST", headers={
                                         "Authorization": f"Bearer {token}",
                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_every_response_carries_the_security_headers(running_cluster: LocalCluster) -> None:
    for path in ("/", "/ui/app.js", "/ui/style.css"):
        headers = headers_of(running_cluster.api + path)
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/api/v1/jobs", "/healthz"):  # data: it loads nothing, is framed by no one
        headers = headers_of(running_cluster.api + path)
        assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert headers["X-Frame-Options"] == "DENY"


def test_the_pages_run_under_the_policy_which_blocks_injected_script(
    running_cluster: LocalCluster, page: Page, token: str
) -> None:
    violations: list[str] = []
    errors: list[str] = []
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text or "Trusted" in m.text else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, running_cluster, token)
    for link, ready in (("New job", "#f-name"), ("Cluster", "#leader"), ("Jobs", "#search")):
        page.click(f"nav >> text={link}")
        expect(page.locator(ready)).to_be_visible()
    expect(page.locator("#schedule-preview, #jobs-table").first).to_be_attached()
    assert violations == [] and errors == [], (violations, errors)

    # what an injection would try: an inline handler, an HTML string, inline script
    outcome = page.evaluate("""async () => {
        const refused = [];
        const attempts = [
            () => {
                const img = document.createElement("img");
                img.setAttribute("onerror", "window.pwned = 'handler'");
                img.src = "/nope.png";
                document.body.append(img);
            },
            () => document.body.insertAdjacentHTML(
                "beforeend", "<img src=/nope.png onerror=\\"window.pwned = 'html'\\">"),
            () => {
                const s = document.createElement("script");
                s.textContent = "window.pwned = 'script'";
                document.body.append(s);
            },
            () => {
                const s = document.createElement("script");
                s.append(document.createTextNode("window.pwned = 'text node'"));
                document.body.append(s);
            },
        ];
        for (const attempt of attempts) {
            try { attempt(); refused.push(null); } catch (e) { refused.push(e.name); }
        }
        await new Promise((r) => setTimeout(r, 300));
        return { pwned: window.pwned || null, refused };
    }""")
    assert outcome["pwned"] is None, outcome
    assert outcome["refused"][:3] == ["TypeError"] * 3, outcome  # Trusted Types
    # the text-node script got past Trusted Types' sinks: script-src stopped it
    # the script built from a text node passed every sink but was still not run
    assert outcome["refused"][3] is None
    assert sum("TrustedScript" in v for v in violations) >= 3, violations


def test_no_other_site_can_frame_the_dashboard(
    running_cluster: LocalCluster, page: Page
) -> None:
    refused: list[ConsoleMessage] = []
    page.on("console", lambda m: refused.append(m) if "frame-ancestors" in m.text else None)
    page.set_content(f'<iframe id="victim" src="{running_cluster.api}/"></iframe>')
    page.wait_for_timeout(1500)
    assert refused, "the browser should refuse to show the dashboard in a frame"
    frame = page.frame_locator("#victim")
    expect(frame.locator("#view")).to_have_count(0)


def test_the_token_lives_in_this_tab_only(
    running_cluster: LocalCluster, page: Page, token: str
) -> None:
    page.goto(running_cluster.api + "/")
    page.evaluate("localStorage.setItem('jobsched.token', 'left-by-an-older-version')")
    page.reload()
    assert page.evaluate("localStorage.getItem('jobsched.token')") is None
    sign_in(page, running_cluster, token)
    assert page.evaluate("sessionStorage.getItem('jobsched.token')") == token
    assert page.evaluate("localStorage.length") == 0
    other_tab = page.context.new_page()
    other_tab.goto(running_cluster.api + "/#/jobs")
    expect(other_tab).to_have_url(re.compile(r"#/signin\?next="))
    other_tab.close()


def test_secret_references_survive_an_edit(
    running_cluster: LocalCluster, page: Page, token: str
) -> None:
    shell = post(running_cluster, "/api/v1/jobs", token, {
        "name": "uses-secrets", "schedule": "0 0 1 1 *", "kind": "shell",
        "shell": {"argv": ["/usr/bin/env"],
                  "env": {"API_TOKEN": {"secret": "API_TOKEN"}, "PLAIN": "x=1"}}})
    http = post(running_cluster, "/api/v1/jobs", token, {
        "name": "hook", "schedule": "0 0 1 1 *", "kind": "http",
        "http": {"url": "https://example.org/hook",
                 "headers": {"Authorization": {"secret": "HOOK_TOKEN"}, "X-Plain": "v"}}})
    sign_in(page, running_cluster, token)

    page.goto(f"{running_cluster.api}/#/jobs/{shell['id']}/edit")
    expect(page.locator("#f-env")).not_to_have_value("")
    lines = page.locator("#f-env").input_value().splitlines()  # (jsonb orders the keys)
    assert sorted(lines) == ['API_TOKEN={"secret": "API_TOKEN"}', "PLAIN=x=1"], lines
    page.fill("#f-timeout", "42")
    page.fill("#f-env", 'API_TOKEN={"secret": "API_TOKEN"}\nPLAIN=x=1\n'
                        'OTHER={"secret": "OTHER_SECRET"}')
    page.click("#submit")
    expect(page).to_have_url(re.compile(rf"#/jobs/{shell['id']}$"))
    saved = api_get(running_cluster, f"/api/v1/jobs/{shell['id']}", token)
    assert saved["timeout_s"] == 42
    assert saved["shell"]["env"] == {"API_TOKEN": {"secret": "API_TOKEN"}, "PLAIN": "x=1",
                                     "OTHER": {"secret": "OTHER_SECRET"}}

    page.goto(f"{running_cluster.api}/#/jobs/{http['id']}/edit")
    expect(page.locator("#f-headers")).not_to_have_value("")
    lines = page.locator("#f-headers").input_value().splitlines()
    assert sorted(lines) == ['Authorization: {"secret": "HOOK_TOKEN"}', "X-Plain: v"], lines
    page.fill("#f-timeout", "7")
    page.click("#submit")
    expect(page).to_have_url(re.compile(rf"#/jobs/{http['id']}$"))
    saved = api_get(running_cluster, f"/api/v1/jobs/{http['id']}", token)
    assert saved["timeout_s"] == 7
    assert saved["http"]["headers"] == {"Authorization": {"secret": "HOOK_TOKEN"},
                                        "X-Plain": "v"}
