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


OWNER = "chater.example.com/owner"  # <namespace>/<name> of the ChaterGpt, on its Deployment


def deployment_for(
    name: str, namespace: str, spec: dict[str, Any], template: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Deployment that a ChaterGpt named `name` in `namespace` asks for.

    Spec fields: `bootstrapServer` (required), `namespace` (of the Deployment),
    `model`, `visionModel`, `replicas`, `image`, `secretName` (the Secret with
    SECRET_KEY, DATABASE_URL and OPENAI_API_KEY), `resources` (the worker
    container's) and `env` (more environment, after the operator's own settings,
    which it cannot override)."""
    if not spec.get("bootstrapServer"):
        raise ValueError("spec.bootstrapServer is required")
    spec = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    deployment = copy.deepcopy(template if template is not None else load_template())
    labels = {"app.kubernetes.io/name": "chater-gpt", "app.kubernetes.io/instance": name}
    deployment["metadata"].update(
        name=name,
        namespace=spec.get("namespace") or namespace,
        labels={**deployment["metadata"].get("labels", {}), **labels},
        annotations={**deployment["metadata"].get("annotations", {}), OWNER: f"{namespace}/{name}"},
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
    extra = [dict(item) for item in spec.get("env") or [] if item.get("name") not in settings]
    extra_names = {item["name"] for item in extra}
    for container in pod["spec"]["containers"]:
        env = [item for item in container.get("env", [])
               if item["name"] not in settings and item["name"] not in extra_names]
        container["env"] = [{"name": k, "value": str(v)} for k, v in settings.items()] + env + extra
        if spec.get("image"):
            container["image"] = spec["image"]
        if spec.get("resources"):
            container["resources"] = copy.deepcopy(spec["resources"])
        if spec.get("secretName"):
            for item in container["env"]:
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and ref.get("name") == TEMPLATE_SECRET:
                    ref["name"] = spec["secretName"]
    if spec.get("secretName"):
        for volume in pod["spec"].get("volumes", []):
            if volume.get("secret", {}).get("secretName") == TEMPLATE_SECRET:
                volume["secret"]["secretName"] = spec["secretName"]
    pod["spec"]["terminationGracePeriodSeconds"] = termination_grace(pod)
    return deployment


TEMPLATE_SECRET = "chater-gpt"  # the Secret the template names


def drifted(wanted: dict[str, Any], live: dict[str, Any]) -> list[str]:
    """What of the operator's Deployment someone changed on the live one, among what
    an operator would edit by hand (replicas, and each container's image, args,
    environment and resources), as paths; empty when the live one is as rendered.
    Fields the API server fills in with defaults are not compared."""
    changed = []
    if live.get("spec", {}).get("replicas") != wanted["spec"]["replicas"]:
        changed.append("spec.replicas")
    live_pod = live.get("spec", {}).get("template", {}).get("spec", {})
    live_containers = {c.get("name"): c for c in live_pod.get("containers", [])}
    for container in wanted["spec"]["template"]["spec"]["containers"]:
        other = live_containers.get(container["name"], {})
        for field in ("image", "args", "env"):
            if _without_nones(other.get(field)) != _without_nones(container.get(field)):
                changed.append(f"containers[{container['name']}].{field}")
        if _quantities(other.get("resources")) != _quantities(container.get("resources")):
            changed.append(f"containers[{container['name']}].resources")
    return changed


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def _quantities(resources: Any) -> dict[str, dict[str, Any]]:
    """Requests and limits as numbers: the API server writes "1000m" back as "1"."""
    from decimal import Decimal

    def amount(text: Any) -> Decimal:
        try:
            from kubernetes.utils import parse_quantity
        except ImportError:  # pragma: no cover - the operator extra has it
            return Decimal(str(text))
        return Decimal(parse_quantity(str(text)))

    return {
        kind: {name: amount(value) for name, value in (resources or {}).get(kind, {}).items()}
        for kind in ("requests", "limits") if (resources or {}).get(kind)
    }


def status_for(generation: int | None, deployment: dict[str, Any] | None,
               error: str | None = None) -> dict[str, Any]:
    """The ChaterGpt's status: its Deployment, replicas wanted and ready, the label
    selector (for the scale subresource), and a Ready condition for `generation`."""
    live = (deployment or {}).get("status") or {}
    spec = (deployment or {}).get("spec") or {}
    wanted = int(spec.get("replicas") or 0)
    ready = int(live.get("readyReplicas") or 0)
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if error is not None:
        condition = ("False", "RenderFailed", error)
    elif deployment is None:
        condition = ("False", "DeploymentMissing", "the Deployment is not there (yet)")
    elif ready >= wanted:
        condition = ("True", "AllReplicasReady", f"{ready} of {wanted} replicas ready")
    else:
        condition = ("False", "ReplicasNotReady", f"{ready} of {wanted} replicas ready")
    status, reason, message = condition
    meta = (deployment or {}).get("metadata") or {}
    return {
        "observedGeneration": generation,
        "deployment": f"{meta.get('namespace')}/{meta.get('name')}" if meta else None,
        "replicas": wanted,
        "readyReplicas": ready,
        "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "conditions": [{
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "observedGeneration": generation,
        }],
    }


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

    def _as_dict(obj: Any) -> dict[str, Any] | None:
        import kubernetes

        if obj is None or isinstance(obj, dict):
            return obj
        return kubernetes.client.ApiClient().sanitize_for_serialization(obj)

    def _apply(deployment: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """Create or patch the Deployment; what the API server answered, and which."""
        import kubernetes

        apps = kubernetes.client.AppsV1Api()
        name, target = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
        try:
            return _as_dict(apps.patch_namespaced_deployment(name, target, deployment)), "updated"
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            return _as_dict(apps.create_namespaced_deployment(target, deployment)), "created"

    @kopf.on.resume(GROUP, VERSION, PLURAL)
    @kopf.on.create(GROUP, VERSION, PLURAL)
    @kopf.on.update(GROUP, VERSION, PLURAL)
    def reconcile(
        spec: Any, name: str, namespace: str, body: Any, logger: Any, patch: Any = None,
        meta: Any = None, **_: Any
    ) -> dict[str, Any]:
        generation = (meta or body.get("metadata", {})).get("generation")
        try:
            deployment = deployment_for(name, namespace, dict(spec))
        except ValueError as error:
            if patch is not None:
                patch.status.update(status_for(generation, None, str(error)))
            raise kopf.PermanentError(str(error)) from None
        target = deployment["metadata"]["namespace"]
        if target == namespace:  # owner references cannot cross namespaces
            kopf.adopt(deployment, owner=body)
        live, action = _apply(deployment)
        logger.info("deployment %s/%s %s", target, name, action)
        if patch is not None:
            patch.status.update(status_for(generation, live or deployment))
        return {"deployment": f"{target}/{name}", "replicas": deployment["spec"]["replicas"]}

    @kopf.on.delete(GROUP, VERSION, PLURAL)
    def remove(spec: Any, name: str, namespace: str, logger: Any, **_: Any) -> None:
        """Its Deployment goes with it, in whatever namespace it is (an owner
        reference can only clean up one in the resource's own namespace)."""
        import kubernetes

        target = dict(spec).get("namespace") or namespace
        try:
            kubernetes.client.AppsV1Api().delete_namespaced_deployment(name, target)
            logger.info("deployment %s/%s deleted", target, name)
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise

    @kopf.on.event("apps", "v1", "deployments", annotations={OWNER: kopf.PRESENT})
    def watch_deployment(body: Any, type: str, logger: Any, **_: Any) -> None:
        """A Deployment of ours changed: undo any drift from what its ChaterGpt
        asks for, and report its readiness in the ChaterGpt's status."""
        import kubernetes

        live = _as_dict(body) or {}
        owner_namespace, _, owner = live["metadata"]["annotations"][OWNER].partition("/")
        objects = kubernetes.client.CustomObjectsApi()
        try:
            resource = _as_dict(objects.get_namespaced_custom_object(
                GROUP, VERSION, owner_namespace, PLURAL, owner))
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return  # its ChaterGpt is being deleted: the delete handler removes it
            raise
        assert resource is not None
        if resource["metadata"].get("deletionTimestamp"):
            return  # being deleted: its Deployment goes with it
        generation = resource["metadata"].get("generation")
        if type == "DELETED":
            wanted = deployment_for(owner, owner_namespace, resource.get("spec", {}))
            if wanted["metadata"]["namespace"] == owner_namespace:
                kopf.adopt(wanted, owner=resource)
            live, _ = _apply(wanted)
            logger.warning("deployment %s/%s was deleted: created again", owner_namespace, owner)
        else:
            wanted = deployment_for(owner, owner_namespace, resource.get("spec", {}))
            changed = drifted(wanted, live)
            if changed:
                if wanted["metadata"]["namespace"] == owner_namespace:
                    kopf.adopt(wanted, owner=resource)
                live, _ = _apply(wanted)
                logger.warning("deployment %s/%s drifted (%s): undone",
                               wanted["metadata"]["namespace"], owner, ", ".join(changed))
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, owner_namespace, PLURAL, owner,
            {"status": status_for(generation, live)},
        )
