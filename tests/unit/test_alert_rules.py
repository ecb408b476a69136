"""deploy/alerts.yml: valid for Prometheus, firing on the series the servers export."""
# ruff: noqa: E501  (promtool series lines in CASES)

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "alerts.yml"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# promtool unit tests: series in, alerts expected out (interval 1m)
CASES = """\
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'gpuproxy_projection_lag_events{{instance="a",job="gpuproxy",projection="balances"}}'
        values: '2000x15'
      - series: 'gpuproxy_projection_lag_events{{instance="b",job="gpuproxy",projection="balances"}}'
        values: '10x15'
      - series: 'up{{instance="a",job="gpuproxy"}}'
        values: '1 1 0x10'
    alert_rule_test:
      - eval_time: 10m
        alertname: GpuProxyProjectionLag
        exp_alerts:
          - exp_labels: {{severity: page, instance: a, projection: balances}}
            exp_annotations:
              summary: "read model balances is 2000 events behind on a"
              description: {GpuProxyProjectionLag}
      - eval_time: 10m
        alertname: GpuProxyReplicaDown
        exp_alerts:
          - exp_labels: {{severity: page, instance: a, job: gpuproxy}}
            exp_annotations:
              summary: "replica a does not answer /metrics"
              description: {GpuProxyReplicaDown}
  - interval: 1m
    input_series:
      - series: 'gpuproxy_http_requests_total{{instance="a",method="GET",route="/api/v1/billing/credits",status="200"}}'
        values: '0+100x20'
      - series: 'gpuproxy_http_requests_total{{instance="a",method="GET",route="/api/v1/billing/credits",status="503"}}'
        values: '0+5x20'
      - series: 'gpuproxy_http_requests_total{{instance="a",method="POST",route="/api/v1/gpu/proxy/{{instance_id}}/{{path}}",status="502"}}'
        values: '0+50x20'
      - series: 'gpuproxy_http_requests_total{{instance="a",method="POST",route="/api/v1/billing/payment",status="402"}}'
        values: '0+1x20'
      - series: 'gpuproxy_http_requests_total{{instance="b",method="GET",route="/api/v1/billing/credits",status="200"}}'
        values: '0+100x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: GpuProxyHigh5xxRate
        exp_alerts:
          - exp_labels: {{severity: page, instance: a}}
            exp_annotations:
              summary: "a: 3.205% of requests answer 5xx"
              description: {GpuProxyHigh5xxRate}
      - eval_time: 15m
        alertname: GpuProxyProviderErrors
        exp_alerts:
          - exp_labels: {{severity: ticket, instance: a}}
            exp_annotations:
              summary: "a: marketplace or instance errors (502/503/504) on /api/v1/gpu"
              description: {GpuProxyProviderErrors}
      - eval_time: 15m
        alertname: GpuProxyPaymentFailures
        exp_alerts:
          - exp_labels: {{severity: ticket, instance: a}}
            exp_annotations:
              summary: "a: 15 failed payment or webhook requests in 15 min"
              description: {GpuProxyPaymentFailures}
      - eval_time: 15m
        alertname: GpuProxyServerErrors
        exp_alerts: []
"""


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool missing (Debian package 'prometheus'; .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return promtool


def test_promtool_accepts_the_rules_and_they_fire(tmp_path: Path) -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    cases = tmp_path / "alerts_test.yml"
    descriptions = {  # static texts, quoted for YAML
        rule["alert"]: json.dumps(rule["annotations"].get("description", ""))
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    cases.write_text(CASES.format(rules=RULES, **descriptions))
    tested = subprocess.run(
        [promtool, "test", "rules", str(cases)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_name_only_metrics_the_servers_export() -> None:
    exported = "\n".join(
        p.read_text() for p in (ROOT / "interfaces").rglob("*.py") if "gpuproxy_" in p.read_text()
    )
    names = set(re.findall(r"\bgpuproxy_[a-z_]+", RULES.read_text()))
    assert names
    for name in names:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in exported, f"{name}: no such metric in interfaces/"
