#!/usr/bin/env bash
# Re-resolve the development and test dependencies and rewrite requirements/dev.lock.
#
#   scripts/lock.sh        (or: make lock)
#
# A fresh virtual environment gets `pip install -e '.[dev]'` with no constraints, i.e. the
# newest versions pyproject.toml's bounds allow, as a new machine would; `pip freeze` of it
# (without jobsched itself) becomes the lock that `make install`, `make test` and `.ci/run`
# install from (`pip install -c requirements/dev.lock -e '.[dev]'`).
#
# Run it on purpose, then run the suite against the new lock (the installed packages change:
# `make install` first) and commit the lock together with whatever the new versions needed.
# The lock is made with this machine's Python (see its header): make it on the Python and
# platform CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=requirements/dev.lock
venv=$(mktemp -d /tmp/jobsched-lock-XXXXXX)
trap 'rm -rf "$venv"' EXIT

python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[dev]'
mkdir -p "$(dirname "$lock")"
{
    echo "# The development and test dependencies, resolved by scripts/lock.sh (make lock)"
    echo "# in a fresh virtual environment: $("$venv/bin/python" --version), $(uname -m)."
    echo "# Installed with: pip install -c $lock -e '.[dev]'. Do not edit by hand."
    "$venv/bin/python" -m pip freeze --exclude-editable
} >"$lock.tmp"
mv "$lock.tmp" "$lock"
echo "wrote $lock ($(grep -vc '^#' "$lock") packages)"
