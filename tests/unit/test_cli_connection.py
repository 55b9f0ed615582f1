"""``--url`` and ``--token`` that cannot work: one line, exit 2, the fix; a URL under
which every route is 404 is told apart from a job that does not exist."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from jobsched.cli import main
from jobsched.client import Client, check_base_url, check_token

JOB = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(("url", "reason"), [
    ("127.0.0.1:8080", "did you mean http://127.0.0.1:8080"),
    ("localhost:8080", "did you mean http://localhost:8080"),
    ("", "the URL is empty"),
    ("   ", "the URL is empty"),
    ("http://", "names no host"),
    ("ftp://host", "not an http:// or https:// URL"),
    ("http://host:99999", "port that is not a number"),
    ("http://host:8080\n", "control characters"),
    ("http://host:8080/?x=1", "query or fragment"),
])
def test_a_url_that_cannot_be_an_api_root_is_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_base_url(url)
    with pytest.raises(ValueError, match=reason):
        Client(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://jobs.example.com/",
                                 "http://[::1]:8080", "https://proxy.example.com/jobsched"])
def test_root_urls_are_accepted(url: str) -> None:
    assert check_base_url(url) == url.rstrip("/")


@pytest.mark.parametrize(("token", "reason"), [
    ("jsk_abc\n", "a line break"), ("jsk_abc\r\n", "a line break"),
    ("jsk abc", "a space"), ("jsk_abc\t", "a space"), ("jsk_é", "not printable ASCII"),
])
def test_a_token_with_a_line_break_or_space_is_refused(token: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_token(token)
    check_token("jsk_2uifAkSMSCe_fW4VA8lf-OBTAbQEb03Lp2fB8KXgkFw")
    check_token(None)


def _usage_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobsched: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.mark.parametrize(("args", "says"), [
    (["--url", "127.0.0.1:8080"], "--url (JOBSCHED_URL): '127.0.0.1:8080' is not an http://"),
    (["--url", ""], "--url (JOBSCHED_URL): the URL is empty"),
    (["--url", "http://"], "names no host"),
    (["--url", "http://127.0.0.1:9", "--token", "jsk_abc\n"], "--token (JOBSCHED_TOKEN): the "
                                                              "token holds a line break"),
])
def test_the_cli_says_it_in_one_line_with_exit_2(args: list[str], says: str) -> None:
    assert says in _usage_error(["jobs", "get", JOB, *args])


class _Api(BaseHTTPRequestHandler):
    """404 on every path but the OpenAPI document at ``root``."""

    root = ""

    def do_GET(self) -> None:
        found = self.path == f"{self.root}/api/v1/openapi.json"
        body = b"{}" if found else b'{"title": "Not found", "status": 404}'
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_with_a_path_every_route_misses_says_use_the_root(api: str) -> None:
    said = _usage_error(["jobs", "get", JOB, "--url", f"{api}/api/v1"])
    assert f"{api}/api/v1 answers 404 to every API route" in said
    assert f"the api server's root, e.g. {api}," in said


def test_a_missing_job_under_the_right_url_is_not_found(api: str) -> None:
    result = CliRunner().invoke(main, ["jobs", "get", JOB, "--url", api])
    assert result.exit_code == 3, result.output
    assert result.output.strip() == f"jobsched: job {JOB} not found"
