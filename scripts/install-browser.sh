#!/usr/bin/env bash
# The browser for tests/e2e/test_dashboard.py: Debian's Chromium, driven by Playwright's
# Python package through executable_path (Playwright's own browser download is not used).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q chromium chromium-driver
fi
/usr/bin/chromium --version
