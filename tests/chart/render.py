"""Renders the chart with Helm's own engine (helm-python-sdk).

As a module: `render(values)` returns every object, for the chart tests.
As a script: `render.py VALUES_JSON [NAMESPACE]` prints them as one JSON
array, for tests written in Rust (tests/rbac.rs applies them to a real API
server).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "credsync"
RELEASE = "credsync"
NAMESPACE = "credsync"


def render(values: dict | None, *, namespace: str = NAMESPACE) -> list[dict]:
    """Renders the chart with Helm's engine; returns every object."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objects.append(doc)
    return objects


if __name__ == "__main__":
    values = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    namespace = sys.argv[2] if len(sys.argv) > 2 else NAMESPACE
    json.dump(render(values, namespace=namespace), sys.stdout)
