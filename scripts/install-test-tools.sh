#!/usr/bin/env bash
# Debian packages the test suite drives for real: Prometheus (promtool and a scraping
# server for the monitoring tests) and, when present, the browser install of the
# dashboard tests (scripts/install-browser.sh). Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
    echo "install-test-tools.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ -x scripts/install-browser.sh ]]; then
    scripts/install-browser.sh
fi
echo "install-test-tools.sh: test tools present"
