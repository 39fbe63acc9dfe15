"""deployments/k8s/, checked without a cluster: the built-in kinds against Kubernetes' own JSON
schemas (kubernetes-validate ships them), KEDA's kinds against the fields of KEDA's CRDs that we
use, and everything against the Procfile, the queues and .env.example."""

import re
import shlex
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from apps.tasks.queues import TaskQueue
from tests.deployments.support import (
    K8S_DIR,
    PROCFILE_NAME,
    env_example_documented,
    load_yaml,
    load_yaml_documents,
    makefile_migrate_commands,
)
from tests.support.processes import procfile

# The oldest and the newest Kubernetes minor versions that the manifests are checked against.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
KEDA_API = "keda.sh/v1alpha1"

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _NAME, "labels": {"type": "object"}},
}
# KEDA 2.x's ScaledObject and TriggerAuthentication (keda.sh/v1alpha1), the fields we use, with the
# types of KEDA's CRDs and the RabbitMQ scaler's documented metadata.
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": _NAME,
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"behavior": {"type": "object"}, "name": _NAME},
                            },
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"const": "rabbitmq"},
                                "metadata": {
                                    "type": "object",
                                    "required": ["queueName", "mode", "value"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "protocol": {"enum": ["auto", "http", "amqp"]},
                                        "queueName": {"type": "string"},
                                        "mode": {"enum": ["QueueLength", "MessageRate"]},
                                        # CRD metadata is a map of strings.
                                        "value": {"type": "string", "pattern": r"^[0-9.]+$"},
                                        "activationValue": {"type": "string"},
                                        "vhostName": {"type": "string"},
                                    },
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {"name": _NAME, "kind": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"enum": ["host", "username", "password"]},
                                "name": _NAME,
                                "key": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
}


def manifests() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    return [
        doc for name in kustomization["resources"] for doc in load_yaml_documents(K8S_DIR / name)
    ]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return found


def shell_command(container: dict[str, Any]) -> str:
    command = container["command"]
    assert command[:2] == ["sh", "-c"], command
    text: str = command[2]
    return text.removeprefix("exec ")


def test_the_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    on_disk = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    assert kustomization["namespace"] == "taskflow"
    assert [image["name"] for image in kustomization["images"]] == ["taskflow"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_are_valid_against_the_kubernetes_schemas(version):
    checked = 0
    for doc in manifests():
        if doc["apiVersion"] == KEDA_API:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 10


def test_the_kubernetes_schema_check_catches_a_typo():
    deployment = of_kind("Deployment")["worker"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_keda_kinds_are_valid_against_their_schema():
    keda = [doc for doc in manifests() if doc["apiVersion"] == KEDA_API]
    assert {doc["kind"] for doc in keda} == set(KEDA_SCHEMAS)
    for doc in keda:
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])


def test_the_keda_schema_catches_a_misspelt_trigger_field():
    scaled = of_kind("ScaledObject")["worker-io"]
    trigger = {**scaled["spec"]["triggers"][0]}
    trigger["metadata"] = {**trigger["metadata"], "queue": "io"}
    broken = {**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, KEDA_SCHEMAS["ScaledObject"])


def consumed_queues(deployment: dict[str, Any]) -> set[str]:
    words = shlex.split(shell_command(containers(deployment)[0]))
    return set(words[words.index("--queues") + 1].split(","))


def test_workers_scale_on_the_depth_of_the_queues_they_consume():
    deployments = of_kind("Deployment")
    authentications = of_kind("TriggerAuthentication")
    scaled = of_kind("ScaledObject")
    assert set(scaled) == {"worker", "worker-io"}
    for name, scaled_object in scaled.items():
        target = deployments[scaled_object["spec"]["scaleTargetRef"]["name"]]
        assert target["metadata"]["name"] == name
        # KEDA owns the replica count: a fixed one in the Deployment would fight it.
        assert "replicas" not in target["spec"]
        spec = scaled_object["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            queue = trigger["metadata"]["queueName"]
            assert queue in {q.value for q in TaskQueue}
            assert queue in consumed_queues(target), f"{name} scales on {queue} it does not read"
            # http counts unacknowledged (running) messages too; AMQP only the waiting ones.
            assert trigger["metadata"]["protocol"] == "http"
            assert trigger["authenticationRef"]["name"] in authentications
    scaled_queues = {
        t["metadata"]["queueName"] for s in scaled.values() for t in s["spec"]["triggers"]
    }
    assert scaled_queues == {TaskQueue.DEFAULT, TaskQueue.IO, TaskQueue.CPU}


@pytest.mark.parametrize("name", sorted(PROCFILE_NAME))
def test_each_deployment_runs_the_procfiles_command(name):
    deployment = of_kind("Deployment")[name]
    assert shell_command(containers(deployment)[0]) == procfile()[PROCFILE_NAME[name]]


def test_the_migrate_job_does_what_make_migrate_does():
    job = of_kind("Job")["migrate"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"]
    assert command[2].split(" && ") == makefile_migrate_commands(deployed=True)


def test_exactly_one_beat_and_no_autoscaler_on_it():
    beat = of_kind("Deployment")["beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in of_kind("ScaledObject").values()]
    targets += [
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind("HorizontalPodAutoscaler").values()
    ]
    assert "beat" not in targets


def test_every_workload_runs_unprivileged_with_resources_and_probes():
    workloads = [*of_kind("Deployment").values(), *of_kind("Job").values()]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]["memory"]
            assert container["resources"]["limits"]["memory"]
            assert container["image"] == "taskflow"
            if workload["kind"] == "Deployment":
                assert "livenessProbe" in container, workload["metadata"]["name"]


def test_worker_probes_ping_the_node_names_of_the_procfile():
    for name in ("worker", "worker-io"):
        probe = containers(of_kind("Deployment")[name])[0]["livenessProbe"]["exec"]["command"]
        assert probe == ["python", "deployments/healthcheck.py", "worker", name]


def test_the_api_probes_send_a_host_that_allowed_hosts_accepts():
    config = of_kind("ConfigMap")["taskflow-config"]["data"]
    container = containers(of_kind("Deployment")["api"])[0]
    for probe in ("readinessProbe", "livenessProbe"):
        headers = {h["name"]: h["value"] for h in container[probe]["httpGet"]["httpHeaders"]}
        assert headers["Host"] in config["ALLOWED_HOSTS"].split(",")


def test_settings_and_secrets_are_documented():
    documented = env_example_documented()
    config = of_kind("ConfigMap")["taskflow-config"]["data"]
    assert set(config) <= documented, set(config) - documented
    secret_keys = set(
        re.findall(r"^([A-Z_]+)=", (K8S_DIR / "secrets.env.example").read_text(), re.M)
    )
    assert secret_keys - {"RABBITMQ_MANAGEMENT_URL"} <= documented
    referenced = {
        ref["key"]
        for auth in of_kind("TriggerAuthentication").values()
        for ref in auth["spec"]["secretTargetRef"]
    }
    assert referenced <= secret_keys
    for workload in [*of_kind("Deployment").values(), *of_kind("Job").values()]:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            sources = {
                next(iter(source)): next(iter(source.values()))["name"]
                for source in container["envFrom"]
            }
            assert sources == {"configMapRef": "taskflow-config", "secretRef": "taskflow-secrets"}
