"""The Grafana dashboard in deploy/grafana: valid JSON whose every query names series
the service exports (service/metrics.py), so the dashboard cannot drift from the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import service.metrics  # noqa: F401 - registers the series

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "omnirec.json"
#: Words in PromQL that are functions, keywords or labels, not series.
NOT_SERIES = {
    "sum", "by", "rate", "histogram_quantile", "max", "le", "grpc_method", "grpc_code",
    "grpc_service", "model_version", "event_type", "outcome", "kind", "cache", "result",
    "experiment", "arm",
}  # fmt: skip


def exported() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_every_panel_queries_series_the_service_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    series = exported()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            text = re.sub(r'"[^"]*"|\[[^\]]*\]', "", target["expr"])
            words = set(re.findall(r"[a-z_][a-z0-9_]*", text)) - NOT_SERIES
            assert words, target["expr"]
            unknown = words - series
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exported"
            queried |= words
    # The contract's series are all on it.
    assert {
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "omnirec_model_info",
    } <= queried
