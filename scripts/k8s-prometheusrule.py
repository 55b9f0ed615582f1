#!/usr/bin/env python3
"""Write the PrometheusRule of deploy/kubernetes from config/alerts.yml.

The alert rules live once, in config/alerts.yml (what compose's Prometheus loads); the
Kubernetes copy is generated so that the two cannot drift apart unnoticed:
tests/unit/test_kubernetes.py fails when they differ. Run after changing the alerts:

    python3 scripts/k8s-prometheusrule.py            # rewrite the manifest
    python3 scripts/k8s-prometheusrule.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "config" / "alerts.yml"
MANIFEST = ROOT / "deploy" / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from config/alerts.yml by scripts/k8s-prometheusrule.py: do not edit here.
# Change config/alerts.yml and run `python3 scripts/k8s-prometheusrule.py`.
"""


class _Dumper(yaml.SafeDumper):
    """Reads like alerts.yml: sequences indented under their key (as yamllint's default
    wants) and multi-line PromQL as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "jobsched", "labels": {"app.kubernetes.io/name": "jobsched"}},
        "spec": {"groups": alerts["groups"]},
    }


def render() -> str:
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    body = yaml.dump(prometheus_rule(alerts), Dumper=_Dumper, sort_keys=False, width=96,
                     default_flow_style=False)
    return HEADER + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only report whether the manifest is up to date")
    args = parser.parse_args()
    text = render()
    current = MANIFEST.read_text(encoding="utf-8") if MANIFEST.exists() else ""
    if args.check:
        if current != text:
            print(f"{MANIFEST.relative_to(ROOT)} is out of date: run "
                  "python3 scripts/k8s-prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        MANIFEST.write_text(text, encoding="utf-8")
        print(f"wrote {MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
