#!/usr/bin/env bash
# Run the whole system locally: install what is missing, start the services, migrate,
# start every role in one process, and create a demo job (a python task) whose runs are
# printed as they fire.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -c 'import jobsched' 2>/dev/null || python3 -m pip install -q -c requirements/dev.lock -e '.[dev]'
scripts/services.sh

export JOBSCHED_DATABASE_URL="${JOBSCHED_DATABASE_URL:-postgresql://postgres@127.0.0.1/jobsched}"
export JOBSCHED_AMQP_URL="${JOBSCHED_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
export JOBSCHED_ZOOKEEPER_HOSTS="${JOBSCHED_ZOOKEEPER_HOSTS:-127.0.0.1:2181}"
port="${JOBSCHED_API_PORT:-8080}"

python3 -m jobsched migrate --create-db
# Auth is on, as in production: an admin token for this run (stored hashed, shown once).
token=$(python3 -m jobsched token create --namespace default --role admin --name "make run" \
        --expires-in 7d)
log=$(mktemp /tmp/jobsched-local.XXXXXX.log)
# From the checkout root: the demo job's task is examples.tasks:hello.
python3 -m jobsched run --role all --import examples.tasks >"$log" 2>&1 &
roles=$!
trap 'kill -TERM $roles 2>/dev/null; wait $roles 2>/dev/null; echo "stopped (log: $log)"' EXIT INT TERM
echo "jobsched running (api http://127.0.0.1:$port, log $log)"
echo "API token (admin of namespace 'default', valid 7 days; the dashboard asks for it):"
echo "  export JOBSCHED_TOKEN=$token"
echo "  curl -H \"Authorization: Bearer \$JOBSCHED_TOKEN\" http://127.0.0.1:$port/api/v1/jobs"
JOBSCHED_TOKEN="$token" python3 scripts/demo.py "http://127.0.0.1:$port"
