"""A kopf operator: each `ChaterGpt` resource (chater.example.com/v1) becomes the
worker's Deployment, rendered from deploy/kubernetes/deployment.yaml.

    pip install '.[operator]'
    kopf run -m entrypoints.k8s_operator --all-namespaces

`deployment_for` is the reconcile logic, pure and unit-tested; the handlers
only hand its result to the Kubernetes API (create, or patch when it exists).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml

GROUP, VERSION, PLURAL = "chater.example.com", "v1", "chatergpts"
TEMPLATE = Path(
    os.environ.get(
        "CHATER_GPT_DEPLOYMENT_TEMPLATE",
        Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "deployment.yaml",
    )
)
DEFAULTS = {"model": "gpt-4o-mini", "visionModel": "gpt-4o-latest", "replicas": 1}
# The topics the service creates get this many partitions, and more for more
# replicas: every replica then owns at least one (1, 2, 3, 4, 6 and 12 replicas
# share 12 partitions evenly).
MIN_PARTITIONS = 12


def partitions_for(replicas: int) -> int:
    """TOPIC_PARTITIONS for a service of `replicas` replicas."""
    return max(MIN_PARTITIONS, replicas)


def termination_grace(pod: dict[str, Any]) -> int:
    """terminationGracePeriodSeconds for the pod: what it says, but at least its
    workers' SHUTDOWN_TIMEOUT (their env's, or the default) plus SHUTDOWN_MARGIN,
    so that a stopping worker finishes its model calls before it is killed."""
    from entrypoints.settings import SHUTDOWN_MARGIN, Settings

    needed = 0
    for container in pod["spec"]["containers"]:
        timeout = Settings.model_fields["SHUTDOWN_TIMEOUT"].default
        for item in container.get("env", []):
            if item["name"] == "SHUTDOWN_TIMEOUT" and "value" in item:
                timeout = float(item["value"])
        needed = max(needed, math.ceil(timeout) + SHUTDOWN_MARGIN)
    return max(int(pod["spec"].get("terminationGracePeriodSeconds", 30)), needed)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with open(path) as file:
        return yaml.safe_load(file)


def deployment_for(
    name: str, namespace: str, spec: dict[str, Any], template: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Deployment that a ChaterGpt named `name` in `namespace` asks for."""
    if not spec.get("bootstrapServer"):
        raise ValueError("spec.bootstrapServer is required")
    spec = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    deployment = copy.deepcopy(template if template is not None else load_template())
    labels = {"app.kubernetes.io/name": "chater-gpt", "app.kubernetes.io/instance": name}
    deployment["metadata"].update(
        name=name,
        namespace=spec.get("namespace") or namespace,
        labels={**deployment["metadata"].get("labels", {}), **labels},
    )
    deployment["spec"]["replicas"] = int(spec["replicas"])
    deployment["spec"]["selector"] = {"matchLabels": labels}
    pod = deployment["spec"]["template"]
    pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **labels}
    # Service links would add KAFKA_*_SERVICE_HOST… for the namespace's kafka-… Services
    # (a template of its own may say otherwise).
    pod["spec"].setdefault("enableServiceLinks", False)
    settings = {
        "BOOTSTRAP_SERVER": spec["bootstrapServer"],
        "MODEL": spec["model"],
        "VISION_MODEL": spec["visionModel"],
        # Each ChaterGpt is its own service: its own consumer group.
        "CONSUMER_GROUP": f"{name}-group",
        "TOPIC_PARTITIONS": partitions_for(int(spec["replicas"])),
    }
    for container in pod["spec"]["containers"]:
        env = [item for item in container.get("env", []) if item["name"] not in settings]
        container["env"] = [{"name": k, "value": str(v)} for k, v in settings.items()] + env
    pod["spec"]["terminationGracePeriodSeconds"] = termination_grace(pod)
    return deployment


try:  # the handlers need the `operator` extra; the logic above does not
    import kopf
except ImportError:  # pragma: no cover - imported for deployment_for alone
    kopf = None

if kopf is not None:

    @kopf.on.startup()
    def _connect(**_: Any) -> None:
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()

    @kopf.on.resume(GROUP, VERSION, PLURAL)
    @kopf.on.create(GROUP, VERSION, PLURAL)
    @kopf.on.update(GROUP, VERSION, PLURAL)
    def reconcile(
        spec: Any, name: str, namespace: str, body: Any, logger: Any, **_: Any
    ) -> dict[str, Any]:
        import kubernetes

        deployment = deployment_for(name, namespace, dict(spec))
        target = deployment["metadata"]["namespace"]
        if target == namespace:  # owner references cannot cross namespaces
            kopf.adopt(deployment, owner=body)
        apps = kubernetes.client.AppsV1Api()
        try:
            apps.patch_namespaced_deployment(name, target, deployment)
            action = "updated"
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            apps.create_namespaced_deployment(target, deployment)
            action = "created"
        logger.info("deployment %s/%s %s", target, name, action)
        return {"deployment": f"{target}/{name}", "replicas": deployment["spec"]["replicas"]}
