"""The Helm chart's values schema (deploy/helm/chater-gpt/values.schema.json), generated
from the Settings class: `settings:` takes exactly the worker's settings, with their
types, bounds and descriptions (and any KAFKA_* librdkafka property), so that
`helm install` refuses a misspelt or invalid one before a pod starts.

    python -m entrypoints.chart_schema           # write it
    python -m entrypoints.chart_schema --check   # exit 1 when it is not current
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from entrypoints.settings import Settings

SCHEMA = (Path(__file__).resolve().parent.parent / "deploy" / "helm" / "chater-gpt"
          / "values.schema.json")
# Set by the chart itself (from the Secret, or fixed), or not a plain value.
NOT_SETTINGS = {"KAFKA", "OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "SECRET_KEY",
                "SECRET_KEY_PREVIOUS", "DATABASE_URL", "HEALTH_PORT"}
SCALAR = {"type": ["string", "number", "boolean"]}


def settings_schema() -> dict[str, Any]:
    properties = {}
    for name, schema in Settings.model_json_schema()["properties"].items():
        if name in NOT_SETTINGS:
            continue
        schema = copy.deepcopy(schema)
        schema.pop("title", None)
        properties[name] = schema
    return {
        "type": "object",
        "description": "the worker's settings, as in the README's Configuration table",
        "properties": dict(sorted(properties.items())),
        "patternProperties": {"^KAFKA_[A-Z0-9_]+$": {
            **SCALAR, "description": "a librdkafka property: KAFKA_ + its name upper-cased, "
            "dots as underscores"}},
        "additionalProperties": False,
        "required": ["BOOTSTRAP_SERVER"],
    }


def values_schema() -> dict[str, Any]:
    def flag(description: str) -> dict[str, Any]:
        return {"type": "boolean", "description": description}

    def labels() -> dict[str, Any]:
        return {"type": "object", "additionalProperties": {"type": "string"}}

    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "chater-gpt chart values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "image": {"type": "object", "additionalProperties": False, "properties": {
                "repository": {"type": "string", "minLength": 1},
                "tag": {"type": "string", "description": "default: the chart's appVersion"},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            }},
            "replicaCount": {"type": "integer", "minimum": 0,
                             "description": "at most settings.TOPIC_PARTITIONS"},
            "secretName": {"type": "string", "minLength": 1, "description":
                           "the Secret with SECRET_KEY, DATABASE_URL and OPENAI_API_KEY"},
            "settings": settings_schema(),
            "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            "resources": {"type": "object"},
            "strategy": {"enum": ["RollingUpdate", "Recreate"], "description":
                         "Recreate for an upgrade that adds event types"},
            "startupProbe": {"type": "object", "additionalProperties": False, "properties": {
                "periodSeconds": {"type": "integer", "minimum": 1},
                "failureThreshold": {"type": "integer", "minimum": 1},
            }},
            "topologySpread": {"type": "object", "additionalProperties": False,
                               "properties": {"enabled": flag("spread over nodes and zones")}},
            "podDisruptionBudget": {"type": "object", "additionalProperties": False, "properties": {
                "enabled": flag("a PodDisruptionBudget"),
                "maxUnavailable": {"type": ["integer", "string"]},
            }},
            "serviceMonitor": {"type": "object", "additionalProperties": False, "properties": {
                "enabled": flag("a ServiceMonitor (Prometheus Operator)"),
                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                "labels": labels(),
            }},
            "prometheusRule": {"type": "object", "additionalProperties": False, "properties": {
                "enabled": flag("a PrometheusRule (Prometheus Operator)"),
                "labels": labels(),
                "errorRatio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "budgetRemainingShare": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "unansweredRecords": {"type": "integer", "minimum": 0},
            }},
            "grafanaDashboard": {"type": "object", "additionalProperties": False, "properties": {
                "enabled": flag("a ConfigMap with the Grafana dashboard"),
                "labels": labels(),
            }},
            "keda": {"type": "object", "additionalProperties": False, "properties": {
                "enabled": flag("a KEDA ScaledObject on the records not answered yet"),
                "prometheusServer": {"type": "string", "minLength": 1},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1,
                                    "description": "at most settings.TOPIC_PARTITIONS"},
                "unansweredPerReplica": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
            }},
        },
    }


def text() -> str:
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        current = SCHEMA.exists() and SCHEMA.read_text(encoding="utf-8") == text()
        if not current:
            print(f"{SCHEMA} is not current: run python -m entrypoints.chart_schema",
                  file=sys.stderr)
        return 0 if current else 1
    SCHEMA.write_text(text(), encoding="utf-8")
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
