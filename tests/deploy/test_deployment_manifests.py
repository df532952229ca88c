"""deploy/kubernetes/ and the ChaterGpt operator's output, against Kubernetes' own schemas."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from entrypoints.k8s_operator import deployment_for, load_template
from entrypoints.settings import Settings

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.31.0"


def documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.name}#{n}", document)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for n, document in enumerate(yaml.safe_load_all(path.read_text()))
    ]


def crd_schema() -> dict:
    crd = yaml.safe_load((MANIFESTS / "crd.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def example() -> dict:
    return yaml.safe_load((MANIFESTS / "chatergpt-example.yaml").read_text())


@pytest.mark.parametrize(("name", "document"), documents(), ids=[n for n, _ in documents()])
def test_every_manifest_is_valid(name, document):
    if document["kind"] == "ChaterGpt":  # a custom resource: checked against its CRD
        jsonschema.validate(document, crd_schema())
    else:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_worker_deployment_is_probed_limited_and_keeps_secrets_out():
    deployment = load_template()
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A core for its one process: the service scales by replicas (README: Every core).
    assert worker["resources"] == {
        "requests": {"memory": "256Mi", "cpu": "1"},
        "limits": {"memory": "512Mi", "cpu": "1"},
    }
    env = {item["name"]: item for item in worker["env"]}
    # The API key: a file from the Secret, mounted whole (a subPath is never updated).
    assert "OPENAI_API_KEY" not in env
    key_file = env["OPENAI_API_KEY_FILE"]["value"]
    (mount,) = [m for m in worker["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")]
    assert "subPath" not in mount and mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "chater-gpt"
    assert volume["secret"]["items"] == [
        {"key": "OPENAI_API_KEY", "path": key_file.rsplit("/", 1)[1]}
    ]
    assert "value" not in env["SECRET_KEY"] and "value" not in env["DATABASE_URL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # No KAFKA_*_SERVICE_HOST… variables from the namespace's kafka-… Services.
    assert pod["enableServiceLinks"] is False


def test_the_operator_turns_service_links_off_even_with_a_template_of_its_own():
    template = load_template()
    del template["spec"]["template"]["spec"]["enableServiceLinks"]
    deployment = deployment_for("bot", "default", {"bootstrapServer": "kafka:9092"}, template)
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_a_chatergpt_becomes_a_valid_deployment_with_its_settings():
    resource = example()
    deployment = deployment_for(
        resource["metadata"]["name"], resource["metadata"]["namespace"], resource["spec"]
    )
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    assert deployment["metadata"]["namespace"] == "chater"
    assert deployment["spec"]["replicas"] == 3
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert env["BOOTSTRAP_SERVER"] == "kafka.chater.svc:9092"
    assert (env["MODEL"], env["VISION_MODEL"]) == ("gpt-4o-mini", "gpt-4o-latest")
    assert env["CONSUMER_GROUP"] == "chater-gpt-group"
    assert [n for n in env].count("BOOTSTRAP_SERVER") == 1  # replaced, not added twice
    assert env["TOPIC_PARTITIONS"] == "12"  # at least the replicas: every one gets partitions
    assert [n for n in env].count("TOPIC_PARTITIONS") == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the rest is the template's


def test_defaults_apply_and_the_deployment_may_go_to_another_namespace():
    deployment = deployment_for("support-bot", "default", {
        "bootstrapServer": "kafka:9092", "namespace": "bots", "model": "gpt-4.1-mini",
    })
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    assert (deployment["metadata"]["name"], deployment["metadata"]["namespace"]) == ("support-bot", "bots")
    assert deployment["spec"]["replicas"] == 1
    env = {item["name"]: item.get("value") for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MODEL"], env["VISION_MODEL"], env["CONSUMER_GROUP"]) == (
        "gpt-4.1-mini", "gpt-4o-latest", "support-bot-group"
    )


def test_a_chatergpt_without_a_bootstrap_server_is_refused_and_the_template_is_untouched():
    template = load_template()
    before = yaml.safe_dump(template)
    with pytest.raises(ValueError, match="bootstrapServer"):
        deployment_for("x", "chater", {"model": "gpt-4o-mini"}, template)
    deployment_for("x", "chater", {"bootstrapServer": "k:9092", "replicas": 5}, template)
    assert yaml.safe_dump(template) == before
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"apiVersion": "chater.example.com/v1", "kind": "ChaterGpt",
                             "spec": {"replicas": -1, "bootstrapServer": "k"}}, crd_schema())


def test_reconcile_creates_the_deployment_then_patches_it(monkeypatch):
    import kubernetes

    from entrypoints import k8s_operator

    class FakeApps:  # the Kubernetes API, as far as reconcile uses it
        deployments: dict[tuple[str, str], dict] = {}

        def patch_namespaced_deployment(self, name, namespace, body):
            if (namespace, name) not in self.deployments:
                raise kubernetes.client.ApiException(status=404)
            self.deployments[(namespace, name)] = body

        def create_namespaced_deployment(self, namespace, body):
            self.deployments[(namespace, body["metadata"]["name"])] = body

    class Log:
        def info(self, *args):
            pass

    monkeypatch.setattr(kubernetes.client, "AppsV1Api", FakeApps)
    resource = example()
    resource["metadata"]["uid"] = "0b1f-uid"
    arguments = dict(name="chater-gpt", namespace="chater", body=resource, logger=Log())
    assert k8s_operator.reconcile(spec=resource["spec"], **arguments)["replicas"] == 3
    created = FakeApps.deployments[("chater", "chater-gpt")]
    assert created["metadata"]["ownerReferences"][0]["kind"] == "ChaterGpt"  # deleted with it
    k8s_operator.reconcile(spec={**resource["spec"], "replicas": 5}, **arguments)
    assert FakeApps.deployments[("chater", "chater-gpt")]["spec"]["replicas"] == 5


def test_the_manifests_and_the_operator_give_every_replica_partitions():
    """The rule the README states: TOPIC_PARTITIONS = max(12, replicas)."""
    with open(MANIFESTS / "deployment.yaml") as file:
        deployment = yaml.safe_load(file)
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    assert int(env["TOPIC_PARTITIONS"]) == 12 >= deployment["spec"]["replicas"]
    assert Settings.model_fields["TOPIC_PARTITIONS"].default == 12
    for replicas, partitions in [(1, 12), (3, 12), (12, 12), (20, 20)]:
        rendered = deployment_for("bot", "chater", {"bootstrapServer": "k:9092", "replicas": replicas})
        (worker,) = rendered["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in worker["env"]}
        assert int(env["TOPIC_PARTITIONS"]) == partitions >= rendered["spec"]["replicas"]


def test_the_pod_outlives_the_workers_shutdown_timeout():
    """A stopping worker gets SHUTDOWN_TIMEOUT for its model calls and then
    SHUTDOWN_MARGIN to deliver and commit: the termination grace covers both, in
    the manifest and in what the operator renders, also from a template that
    sets a longer SHUTDOWN_TIMEOUT or a shorter grace."""
    from entrypoints.settings import SHUTDOWN_MARGIN

    with open(MANIFESTS / "deployment.yaml") as file:
        deployment = yaml.safe_load(file)
    shutdown = Settings.model_fields["SHUTDOWN_TIMEOUT"].default
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= shutdown + SHUTDOWN_MARGIN
    rendered = deployment_for("bot", "chater", {"bootstrapServer": "k:9092"})
    assert rendered["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace

    template = load_template()
    pod = template["spec"]["template"]["spec"]
    pod["terminationGracePeriodSeconds"] = 10
    pod["containers"][0]["env"].append({"name": "SHUTDOWN_TIMEOUT", "value": "150"})
    rendered = deployment_for("bot", "chater", {"bootstrapServer": "k:9092"}, template)
    assert rendered["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 150 + SHUTDOWN_MARGIN
