"""The dashboard's webhook pages in real headless Chromium against a running cluster: create
an endpoint (its secret shown once), see a real run's delivery arrive signed and listed
succeeded, redeliver it, disable and enable the endpoint, rotate its secret."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from standardwebhooks import Webhook

from jobsched.crypto import new_key
from tests.e2e.conftest import LocalCluster, _new_cluster, _teardown
from tests.e2e.test_dashboard import shot, sign_in
from tests.e2e.tokens import admin_token

pytestmark = pytest.mark.timeout(120)


class Received:
    """A receiver on a thread (the test drives a synchronous browser)."""

    def __init__(self) -> None:
        self.items: list[tuple[dict[str, str], bytes]] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.items.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, zookeeper: str,
            template_db: str) -> Iterator[LocalCluster]:
    deployment = _new_cluster(tmp_path_factory.mktemp("dash-webhooks"), zookeeper, template_db)
    env = {"JOBSCHED_SECRETS_KEY": new_key(), "JOBSCHED_HTTP_ALLOW_CIDRS": "127.0.0.0/8",
           "JOBSCHED_WEBHOOK_POLL_S": "0.2"}
    deployment.start("scheduler", **env)
    deployment.start("worker", extra=("--import", "sample_tasks"), **env)
    deployment.start("api", **env)
    yield deployment
    _teardown(deployment)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors


def _post_job(cluster: LocalCluster, token: str, labels: dict[str, str]) -> dict[str, Any]:
    job = {"name": "dash-hooked", "schedule": "immediate", "kind": "python",
           "python": {"function": "sample_tasks:noop"}, "labels": labels}
    request = urllib.request.Request(cluster.api + "/api/v1/jobs", data=json.dumps(job).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        created: dict[str, Any] = json.loads(response.read())
    return created


def test_create_an_endpoint_see_a_delivery_redeliver_disable_and_rotate(
        cluster: LocalCluster, page: Page) -> None:
    token = admin_token(cluster)
    receiver = Received()
    run = uuid.uuid4().hex[:10]
    sign_in(page, cluster, token)

    page.click("#nav >> text=Webhooks")
    expect(page).to_have_url(re.compile(r"#/webhooks$"))
    page.fill("#w-url", receiver.url)
    page.check("#w-events input[value='execution.succeeded']")
    page.uncheck("#w-events input[value='execution.dead']")
    page.fill("#w-labels", f"run={run}")
    page.fill("#w-description", "from the dashboard test")
    page.click("#w-submit")
    secret_box = page.locator("#webhook-secret code")
    expect(secret_box).to_have_text(re.compile(r"^whsec_"))
    secret = secret_box.inner_text()
    expect(page.locator("#webhooks-table tbody tr").first).to_contain_text(receiver.url)
    shot(page, "webhooks-01-created")

    page.click("text=Open the endpoint")
    expect(page).to_have_url(re.compile(r"#/webhooks/[0-9a-f-]{36}$"))
    expect(page.locator("#webhook-title")).to_have_text(receiver.url)
    expect(page.locator("#webhook-state")).to_contain_text("enabled")
    assert secret not in page.content()  # the endpoint page never shows it

    _post_job(cluster, token, {"run": run})
    row = page.locator("#deliveries-table tbody tr[data-state=succeeded]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("execution.succeeded")
    expect(row).to_contain_text("204")
    headers, body = receiver.items[0]
    assert Webhook(secret).verify(body, headers)["data"]["labels"] == {"run": run}
    shot(page, "webhooks-02-delivered")

    row.locator("button.redeliver").click()
    expect(page.locator("#toasts")).to_contain_text("Queued again")
    expect(page.locator("#deliveries-table tbody tr[data-state=succeeded]")).to_have_count(1)
    for _ in range(50):
        if len(receiver.items) >= 2:
            break
        page.wait_for_timeout(100)
    assert len(receiver.items) == 2 and receiver.items[1][0]["webhook-id"] == \
        receiver.items[0][0]["webhook-id"]

    page.click("#disable")
    expect(page.locator("#webhook-state")).to_contain_text("disabled")
    expect(page.locator("button.redeliver").first).to_be_disabled()
    page.click("#enable")
    expect(page.locator("#webhook-state")).to_contain_text("enabled")

    page.click("#rotate")
    page.click("#rotate")  # confirm
    expect(page.locator("#webhook-secret code")).to_have_text(re.compile(r"^whsec_"))
    assert page.locator("#webhook-secret code").inner_text() != secret
    expect(page.locator("#webhook-details")).to_contain_text("also signs until")
    shot(page, "webhooks-03-endpoint")
    receiver.server.shutdown()
