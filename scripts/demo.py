"""Create the demo job (examples.tasks:hello every 5 seconds) and print each run as it ends.

The roles must import ``examples.tasks`` (scripts/run-local.sh starts them so). A python
task, not a shell command: a worker that is not root refuses shell jobs, and the demo must
fire for whoever runs it. The API token comes from $JOBSCHED_TOKEN.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

API = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
TOKEN = os.environ.get("JOBSCHED_TOKEN", "")


def call(method: str, path: str, body: object | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        problem = json.loads(exc.read() or b"{}")
        sys.exit(f"demo: {method} {path}: {exc.code} {problem.get('detail', exc.reason)}")


if not TOKEN:
    sys.exit("demo: set JOBSCHED_TOKEN (jobsched token create --namespace default "
             "--role admin)")
for _ in range(300):
    try:
        with urllib.request.urlopen(API + "/healthz", timeout=2):
            break
    except OSError:
        time.sleep(0.2)

# A previous `make run` left its demo job behind: cancel it so only one fires.
for old in call("GET", "/api/v1/jobs?name=demo-every-5s&state=active")["items"]:
    call("DELETE", f"/api/v1/jobs/{old['id']}")

job = call("POST", "/api/v1/jobs", {
    "name": "demo-every-5s",
    "schedule": "*/5 * * * * *",
    "kind": "python",
    "python": {"function": "examples.tasks:hello"},
})
print(f"created job {job['id']} ({job['schedule']}); next fire {job['next_fire_at']}", flush=True)
print("each run below is read back from the API; Ctrl-C stops everything", flush=True)
seen: set[str] = set()
try:
    while True:
        for execution in reversed(call("GET", f"/api/v1/jobs/{job['id']}/executions")["items"]):
            if execution["id"] in seen or execution["state"] in ("queued", "running"):
                continue
            seen.add(execution["id"])
            output = execution["output"] or execution["error"] or ""
            try:  # a python task's output is its return value as JSON: show a string as is
                output = str(json.loads(output)) if output.startswith('"') else output
            except ValueError:
                pass
            print(f"{execution['scheduled_for']}  {execution['state']:<9}  {output}", flush=True)
        time.sleep(0.5)
except KeyboardInterrupt:
    pass
except OSError as exc:  # Ctrl-C stopped the roles first
    print(f"the api stopped answering ({exc}); demo ends", flush=True)
