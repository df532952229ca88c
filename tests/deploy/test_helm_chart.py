"""deploy/helm/chater-gpt, rendered by helm itself (`helm lint`, `helm template`): every
object valid against Kubernetes' schemas (the ServiceMonitor and PrometheusRule against
the Prometheus Operator's CRDs, the ScaledObject against KEDA's, as the cloudcoil models
generated from them read them), the values schema current with the Settings
class and refusing what the worker would refuse, the alerting rules and the dashboard's
queries checked by promtool. scripts/setup.sh --test fetches both tools into .tools/bin."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel

from entrypoints.chart_schema import SCHEMA, text

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "chater-gpt"
KUBERNETES = "1.31.0"
EVERYTHING = ["--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true,"
              "grafanaDashboard.enabled=true,keda.enabled=true"]


def tool(name: str) -> str:
    found = ROOT / ".tools" / "bin" / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(f"{name} is not installed: scripts/setup.sh --test fetches it into .tools/bin")
    return on_path


def helm(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def render(*args: str, namespace: str = "chater") -> list[dict]:
    out = helm("template", "gpt", str(CHART), "--namespace", namespace,
               "--kube-version", KUBERNETES, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(documents: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in documents}


# Models generated from the CRDs' schemas (Prometheus Operator 0.80, KEDA 2.16).
CUSTOM_RESOURCES: dict[str, type[BaseModel]] = {
    "ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule, "ScaledObject": ScaledObject,
}


def validate_custom_resource(document: dict) -> None:
    """Valid against its CRD's schema: the model reads it (types, enums, required
    fields) and writes back exactly what it read (a field the CRD does not know,
    which the model would silently drop, or a value read as another type, fails)."""
    model = CUSTOM_RESOURCES[document["kind"]]
    read = model.model_validate(document)
    assert read.model_dump(by_alias=True, exclude_unset=True, mode="json") == document, (
        f"{document['kind']} has what its CRD does not know")


def test_the_values_schema_is_generated_from_the_settings_class():
    assert SCHEMA.read_text(encoding="utf-8") == text(), (
        "values.schema.json is not current: run python -m entrypoints.chart_schema")


def test_lint_and_every_object_valid_against_kubernetes():
    lint = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in lint.stdout
    objects = by_kind(render(*EVERYTHING))
    assert sorted(objects) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule",
                               "ScaledObject", "Service", "ServiceMonitor"]
    for kind in ("ConfigMap", "Deployment", "PodDisruptionBudget", "Service"):
        kubernetes_validate.validate(objects[kind], KUBERNETES, strict=True)
    for kind in CUSTOM_RESOURCES:
        validate_custom_resource(objects[kind])
    # Only the workload and its Service by default.
    assert sorted(by_kind(render())) == ["Deployment", "PodDisruptionBudget", "Service"]


def test_the_custom_resources_schemas_refuse_what_their_operators_would():
    objects = by_kind(render(*EVERYTHING))
    monitor, scaled = objects["ServiceMonitor"], objects["ScaledObject"]
    misspelt = {**monitor, "spec": {**monitor["spec"], "endpoints": [
        {**monitor["spec"]["endpoints"][0], "intervall": "30s"}]}}
    with pytest.raises(AssertionError, match="ServiceMonitor has what its CRD does not know"):
        validate_custom_resource(misspelt)
    with pytest.raises(ValueError, match="maxReplicaCount"):
        validate_custom_resource({**scaled, "spec": {**scaled["spec"], "maxReplicaCount": "many"}})
    without_target = {**scaled, "spec": {k: v for k, v in scaled["spec"].items() if k != "scaleTargetRef"}}
    with pytest.raises(ValueError, match="scaleTargetRef"):
        validate_custom_resource(without_target)


def test_the_deployment_starts_slowly_spreads_and_may_recreate():
    deployment = by_kind(render())["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert pod["terminationGracePeriodSeconds"] == 90  # SHUTDOWN_TIMEOUT 60 + SHUTDOWN_MARGIN 30
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["TOPIC_PARTITIONS"] == "12" and env["BOOTSTRAP_SERVER"] == "kafka:9092"
    recreate = by_kind(render("--set", "strategy=Recreate"))["Deployment"]
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}


def test_settings_are_environment_as_the_worker_reads_it(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"settings": {
        "BOOTSTRAP_SERVER": "kafka.prod:9093", "DAILY_TOKEN_LIMIT": 100000000,
        "TEMPERATURE": 0.2, "SHUTDOWN_TIMEOUT": 90.5, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CACHE_ANY_TEMPERATURE": True}}))
    (worker,) = by_kind(render("-f", str(values)))["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["DAILY_TOKEN_LIMIT"] == "100000000"  # not 1e+08
    assert (env["TEMPERATURE"], env["SHUTDOWN_TIMEOUT"]) == ("0.2", "90.5")
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["CACHE_ANY_TEMPERATURE"] == "true"
    assert env["MODEL"] == "gpt-4o-mini"  # the chart's defaults stay beneath


@pytest.mark.parametrize(("args", "complaint"), [
    (["--set", "settings.MODLE=gpt-4o"], "Additional property MODLE is not allowed"),
    (["--set", "settings.MAX_TOKENS=-1"], "settings.MAX_TOKENS: Must be greater than 0"),
    (["--set", "settings.PII_MODE=sometimes"], "settings.PII_MODE"),
    (["--set", "strategy=BlueGreen"], "strategy"),
    (["--set", "keda.enabled=true,keda.maxReplicaCount=20"],
     "keda.maxReplicaCount (20) is more than settings.TOPIC_PARTITIONS (12)"),
    (["--set", "replicaCount=13"], "replicaCount (13) is more than settings.TOPIC_PARTITIONS (12)"),
])
def test_what_the_worker_would_refuse_the_chart_refuses(args, complaint):
    done = helm("template", "gpt", str(CHART), "--kube-version", KUBERNETES, *args, ok=False)
    assert done.returncode != 0 and complaint in done.stderr, done.stderr


def test_keda_scales_on_the_records_not_answered_yet_within_the_partitions():
    scaled = by_kind(render(*EVERYTHING))["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "gpt-chater-gpt"
    assert scaled["spec"]["maxReplicaCount"] == 12
    [trigger] = scaled["spec"]["triggers"]
    assert "chater_gpt_backlog_unfetched" in trigger["metadata"]["query"]
    assert "chater_gpt_backlog_uncommitted" in trigger["metadata"]["query"]
    assert "replicas" not in by_kind(render(*EVERYTHING))["Deployment"]["spec"]  # KEDA's to set


def promtool_check_rules(tmp_path: Path, groups: list[dict]) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    return subprocess.run([tool("promtool"), "check", "rules", str(rules)],
                          capture_output=True, text=True, timeout=60)


def test_the_alerting_rules_pass_promtool(tmp_path):
    rule = by_kind(render(*EVERYTHING))["PrometheusRule"]
    done = promtool_check_rules(tmp_path, rule["spec"]["groups"])
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for r in rule["spec"]["groups"][0]["rules"]}
    assert alerts == {"ChaterGptProviderPaused", "ChaterGptCircuitOpen", "ChaterGptBudgetLow",
                      "ChaterGptErrorRatio", "ChaterGptDeadLettersGrowing", "ChaterGptUnansweredGrowing"}
    # promtool can fail: a rule with broken PromQL does not pass.
    broken = promtool_check_rules(tmp_path, [{"name": "x", "rules": [{"alert": "X", "expr": "sum(("}]}])
    assert broken.returncode != 0


def test_the_dashboard_is_grafana_json_whose_queries_pass_promtool(tmp_path):
    config = by_kind(render(*EVERYTHING))["ConfigMap"]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["chater-gpt.json"])
    assert dashboard["uid"] == "chater-gpt" and isinstance(dashboard["schemaVersion"], int)
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in ("Throughput", "Latency", "Tokens", "Cost", "Budget", "Backlog", "Circuits"):
        assert any(title.startswith(wanted) for title in titles), wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["targets"]
    # Each query is PromQL promtool accepts ($namespace as Grafana fills it in).
    exprs = [target["expr"].replace("$namespace", "chater")
             for panel in dashboard["panels"] for target in panel["targets"]]
    done = promtool_check_rules(tmp_path, [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": expr} for n, expr in enumerate(exprs)]}])
    assert done.returncode == 0, done.stdout + done.stderr
