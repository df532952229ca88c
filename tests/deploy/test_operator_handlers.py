"""The ChaterGpt operator manages its Deployment: more spec fields, a status with
conditions and ready replicas, a scale subresource, the Deployment removed with the
resource in any namespace, and drift undone. No Kubernetes API server can run here
(none is installable offline), so the handlers run against a stand-in of the two
API classes they use, and what they render is validated against Kubernetes' schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import kubernetes
import kubernetes_validate
import pytest
import yaml

from entrypoints import k8s_operator
from entrypoints.k8s_operator import OWNER, deployment_for, drifted, status_for

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.31.0"
SPEC = {"bootstrapServer": "kafka:9092", "namespace": "bots", "replicas": 3,
        "image": "registry.example/chater-gpt:1.2.3", "secretName": "gpt-secrets",
        "resources": {"requests": {"cpu": "500m", "memory": "300Mi"},
                      "limits": {"cpu": "1000m", "memory": "600Mi"}},
        "env": [{"name": "REDIS_URL", "value": "redis://redis:6379/0"},
                {"name": "MODEL", "value": "not-this-one"},  # the operator's own wins
                {"name": "DAILY_TOKEN_LIMIT", "value": "5000000"}]}


def env_of(deployment: dict) -> dict:
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in worker["env"]}


def test_image_secret_resources_and_more_environment_come_from_the_spec():
    deployment = deployment_for("support", "chater", SPEC)
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == "registry.example/chater-gpt:1.2.3"
    assert worker["resources"] == SPEC["resources"]
    env = env_of(deployment)
    assert env["REDIS_URL"] == "redis://redis:6379/0" and env["DAILY_TOKEN_LIMIT"] == "5000000"
    assert env["MODEL"] == "gpt-4o-mini"  # not overridden by spec.env
    assert [item["name"] for item in worker["env"]].count("MODEL") == 1
    assert env["SECRET_KEY"]["secretKeyRef"]["name"] == "gpt-secrets"
    [secret] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert secret["secret"]["secretName"] == "gpt-secrets"
    assert deployment["metadata"]["annotations"][OWNER] == "chater/support"


def test_the_crd_takes_the_new_fields_and_has_a_scale_subresource():
    crd = yaml.safe_load((MANIFESTS / "crd.yaml").read_text())
    kubernetes_validate.validate(crd, KUBERNETES, strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    import jsonschema

    jsonschema.validate({"spec": SPEC}, version["schema"]["openAPIV3Schema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {**SPEC, "env": [{"value": "no name"}]}},
                            version["schema"]["openAPIV3Schema"])


def test_the_status_says_what_is_ready_for_which_generation():
    deployment = deployment_for("support", "chater", SPEC)
    waiting = status_for(4, {**deployment, "status": {"readyReplicas": 1}})
    assert waiting["observedGeneration"] == 4 and (waiting["replicas"], waiting["readyReplicas"]) == (3, 1)
    assert waiting["selector"] == "app.kubernetes.io/instance=support,app.kubernetes.io/name=chater-gpt"
    [condition] = waiting["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Ready", "False", "ReplicasNotReady")
    ready = status_for(4, {**deployment, "status": {"readyReplicas": 3}})["conditions"][0]
    assert (ready["status"], ready["message"]) == ("True", "3 of 3 replicas ready")
    failed = status_for(5, None, "spec.bootstrapServer is required")["conditions"][0]
    assert (failed["reason"], failed["observedGeneration"]) == ("RenderFailed", 5)


def as_the_api_server_returns_it(deployment: dict) -> dict:
    """With what the API server adds and rewrites: defaults, and quantities normalised."""
    live = copy.deepcopy(deployment)
    (worker,) = live["spec"]["template"]["spec"]["containers"]
    worker.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    worker["resources"]["limits"]["cpu"] = "1"  # it was "1000m"
    live["spec"].update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
    live["status"] = {"readyReplicas": 3}
    return live


def test_drift_is_what_someone_changed_not_what_the_api_server_filled_in():
    wanted = deployment_for("support", "chater", SPEC)
    live = as_the_api_server_returns_it(wanted)
    assert drifted(wanted, live) == []
    live["spec"]["replicas"] = 7
    (worker,) = live["spec"]["template"]["spec"]["containers"]
    worker["image"] = "someone/else:latest"
    worker["env"].append({"name": "LOG_LEVEL", "value": "DEBUG"})
    worker["resources"]["limits"]["memory"] = "2Gi"
    assert drifted(wanted, live) == ["spec.replicas", "containers[worker].image",
                                     "containers[worker].env", "containers[worker].resources"]


class Cluster:
    """The API as far as the handlers use it: Deployments and ChaterGpt objects."""

    def __init__(self) -> None:
        self.deployments: dict[tuple[str, str], dict] = {}
        self.resources: dict[tuple[str, str], dict] = {}
        self.statuses: dict[tuple[str, str], dict] = {}
        self.calls: list[str] = []
        cluster = self

        class Apps:
            def patch_namespaced_deployment(self, name, namespace, body):
                cluster.calls.append(f"patch {namespace}/{name}")
                if (namespace, name) not in cluster.deployments:
                    raise kubernetes.client.ApiException(status=404)
                cluster.deployments[(namespace, name)] = as_the_api_server_returns_it(body)
                return cluster.deployments[(namespace, name)]

            def create_namespaced_deployment(self, namespace, body):
                name = body["metadata"]["name"]
                cluster.calls.append(f"create {namespace}/{name}")
                cluster.deployments[(namespace, name)] = as_the_api_server_returns_it(body)
                return cluster.deployments[(namespace, name)]

            def delete_namespaced_deployment(self, name, namespace):
                cluster.calls.append(f"delete {namespace}/{name}")
                if cluster.deployments.pop((namespace, name), None) is None:
                    raise kubernetes.client.ApiException(status=404)

        class Objects:
            def get_namespaced_custom_object(self, group, version, namespace, plural, name):
                if (namespace, name) not in cluster.resources:
                    raise kubernetes.client.ApiException(status=404)
                return cluster.resources[(namespace, name)]

            def patch_namespaced_custom_object_status(self, group, version, namespace, plural,
                                                      name, body):
                cluster.statuses[(namespace, name)] = body["status"]

        self.apps, self.objects = Apps, Objects


@pytest.fixture
def cluster(monkeypatch) -> Cluster:
    cluster = Cluster()
    monkeypatch.setattr(kubernetes.client, "AppsV1Api", cluster.apps)
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", cluster.objects)
    return cluster


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text, *args):
        self.lines.append(text % args)

    warning = info


def resource(generation: int = 1, **spec) -> dict:
    return {"apiVersion": "chater.example.com/v1", "kind": "ChaterGpt",
            "metadata": {"name": "support", "namespace": "chater", "uid": "u-1",
                         "generation": generation},
            "spec": {**SPEC, **spec}}


def test_reconcile_reports_status_for_the_generation(cluster):
    body = resource(generation=2)
    patch = SimpleNamespace(status={})
    k8s_operator.reconcile(spec=body["spec"], name="support", namespace="chater", body=body,
                           logger=Log(), patch=patch, meta=body["metadata"])
    assert ("bots", "support") in cluster.deployments  # in its spec's namespace
    assert patch.status["observedGeneration"] == 2 and patch.status["deployment"] == "bots/support"
    assert patch.status["conditions"][0]["reason"] == "AllReplicasReady"

    broken = SimpleNamespace(status={})
    with pytest.raises(k8s_operator.kopf.PermanentError):
        k8s_operator.reconcile(spec={"replicas": 1}, name="support", namespace="chater",
                               body=body, logger=Log(), patch=broken, meta={"generation": 3})
    assert broken.status["conditions"][0]["reason"] == "RenderFailed"


def test_a_deleted_chatergpt_takes_its_deployment_from_another_namespace(cluster):
    body = resource()
    k8s_operator.reconcile(spec=body["spec"], name="support", namespace="chater", body=body,
                           logger=Log())
    k8s_operator.remove(spec=body["spec"], name="support", namespace="chater", logger=Log())
    assert cluster.deployments == {} and cluster.calls[-1] == "delete bots/support"
    k8s_operator.remove(spec=body["spec"], name="support", namespace="chater", logger=Log())  # gone: fine


def test_drift_is_undone_and_a_deleted_deployment_comes_back(cluster):
    body = resource(generation=6)
    cluster.resources[("chater", "support")] = body
    k8s_operator.reconcile(spec=body["spec"], name="support", namespace="chater", body=body,
                           logger=Log())
    live = cluster.deployments[("bots", "support")]
    edited = copy.deepcopy(live)
    edited["spec"]["replicas"] = 9
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:latest"
    log = Log()
    k8s_operator.watch_deployment(body=edited, type="MODIFIED", logger=log)
    restored = cluster.deployments[("bots", "support")]
    assert restored["spec"]["replicas"] == 3
    assert restored["spec"]["template"]["spec"]["containers"][0]["image"] == SPEC["image"]
    assert "drifted (spec.replicas, containers[worker].image): undone" in log.lines[-1]
    assert cluster.statuses[("chater", "support")]["observedGeneration"] == 6

    calls = len(cluster.calls)  # as rendered: nothing to undo, only the status
    k8s_operator.watch_deployment(body=restored, type="MODIFIED", logger=Log())
    assert len(cluster.calls) == calls
    assert cluster.statuses[("chater", "support")]["readyReplicas"] == 3

    del cluster.deployments[("bots", "support")]
    k8s_operator.watch_deployment(body=restored, type="DELETED", logger=Log())
    assert ("bots", "support") in cluster.deployments and cluster.calls[-1] == "create bots/support"


def test_a_deployment_whose_chatergpt_is_going_is_left_to_go(cluster):
    body = resource()
    k8s_operator.reconcile(spec=body["spec"], name="support", namespace="chater", body=body,
                           logger=Log())
    live = cluster.deployments[("bots", "support")]
    calls = len(cluster.calls)
    k8s_operator.watch_deployment(body=live, type="DELETED", logger=Log())  # no ChaterGpt
    body["metadata"]["deletionTimestamp"] = "2026-12-02T15:00:00Z"
    cluster.resources[("chater", "support")] = body
    k8s_operator.watch_deployment(body=live, type="DELETED", logger=Log())
    assert len(cluster.calls) == calls and cluster.statuses == {}
