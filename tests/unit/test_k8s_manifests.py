"""deploy/k8s: valid Kubernetes (kubeconform -strict, offline schemas) and wired to the processor's probes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chipq_pipelines.events.config import ENV_VARS
from chipq_pipelines.events.health_endpoint import LIVENESS_PATH, READINESS_PATH
from chipq_pipelines.paths import ChipqHome

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: files in deploy/k8s that are not Kubernetes objects
NOT_MANIFESTS = ("kustomization.yaml", "dagster-values.yaml")


def _makefile_setting(name: str) -> str:
    match = re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile sets no {name}"
    return match.group(1)


def _kubeconform(*paths: Path) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict against the schemas `make kubeconform` made from Kubernetes' OpenAPI spec."""
    tools = ChipqHome.from_env().root / "tools"
    binary, schemas = tools / "gobin" / "kubeconform", tools / "k8s-schemas"
    version = _makefile_setting("K8S_SCHEMA_VERSION")
    if not binary.exists() or not (schemas / f"v{version}-standalone-strict").is_dir():
        pytest.fail("kubeconform or its Kubernetes schemas are missing: run `make kubeconform` (needs Go)")
    ignored = [arg for name in NOT_MANIFESTS for arg in ("-ignore-filename-pattern", re.escape(name) + "$")]
    command = [str(binary), "-strict", "-summary", "-output", "json", "-verbose", "-kubernetes-version", version]
    command += ["-schema-location", str(schemas), *ignored, *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name not in NOT_MANIFESTS:
            for doc in _documents(path):
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_every_manifest_is_valid_kubernetes() -> None:
    result = _kubeconform(K8S)
    report = json.loads(result.stdout)
    statuses = {(r["kind"], r["name"]): r["status"] for r in report["resources"]}
    assert result.returncode == 0, result.stdout + result.stderr
    # nothing skipped for want of a schema: every object in the folder was checked and is valid
    assert statuses == {key: "statusValid" for key in _manifests()}
    assert {"Deployment", "ConfigMap", "Secret", "PodDisruptionBudget", "PersistentVolumeClaim"} <= {
        kind for kind, _name in statuses
    }


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("  replicas: 3", "  replica: 3"), "additional properties 'replica' not allowed"),  # misspelt: -strict
        (("  replicas: 3", '  replicas: "3"'), "/spec/replicas"),  # wrong type
        (("      containers:", "      container:"), "missing property 'containers'"),  # a required field gone
    ],
)
def test_kubeconform_fails_on_a_broken_manifest(tmp_path: Path, change: tuple[str, str], complaint: str) -> None:
    text = (K8S / "event-processor-deployment.yaml").read_text()
    assert change[0] in text
    broken = tmp_path / "event-processor-deployment.yaml"
    broken.write_text(text.replace(change[0], change[1], 1))
    result = _kubeconform(broken)
    assert result.returncode == 1, result.stdout
    assert complaint in result.stdout, result.stdout


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml") if p.name not in NOT_MANIFESTS}
    assert set(kustomization["resources"]) == {m for m in manifests if not m.endswith(".example.yaml")}
    assert kustomization["namespace"] == "chipq"


def test_processor_deployment_runs_three_replicas_probed_by_its_health_endpoint() -> None:
    manifests = _manifests()
    deployment = manifests[("Deployment", "event-processor")]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["chipq", "processor"]
    port = int(command[command.index("--health-port") + 1])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", LIVENESS_PATH), ("readinessProbe", READINESS_PATH)):
        get = container[probe]["httpGet"]
        assert get["path"] == path and named[get["port"]] == port, probe
        # the endpoint answers within ~10 s at worst (loop 5 s + Kafka check): the kubelet must wait that long
        assert container[probe]["timeoutSeconds"] >= (6 if probe == "livenessProbe" else 10)
    assert pod["terminationGracePeriodSeconds"] > 30  # consumers take up to 30 s to commit and leave
    assert manifests[("PodDisruptionBudget", "event-processor")]["spec"]["minAvailable"] == 2


def test_kafka_credentials_come_from_a_secret_and_settings_from_the_configmap() -> None:
    manifests = _manifests()
    (container,) = manifests[("Deployment", "event-processor")]["spec"]["template"]["spec"]["containers"]
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    secret = manifests[("Secret", "chipq-kafka")]
    for variable, key in (("KAFKA_SASL_USERNAME", "username"), ("KAFKA_SASL_PASSWORD", "password")):
        assert secret_refs[variable] == {"name": "chipq-kafka", "key": key}
        assert key in secret["stringData"]
    assert all("value" not in e for e in container["env"] if "PASSWORD" in e["name"] or "WEBHOOK" in e["name"])
    (config_ref,) = container["envFrom"]
    configmap = manifests[("ConfigMap", config_ref["configMapRef"]["name"])]
    # every setting is one the events library reads (a misspelt name would be ignored silently)
    assert set(configmap["data"]) <= set(ENV_VARS.values())
    assert not {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} & set(configmap["data"])
    ca_mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-ca")
    assert configmap["data"]["KAFKA_SSL_CA_LOCATION"] == f"{ca_mount['mountPath']}/ca.crt"


def test_dagster_values_use_postgresql_k8s_run_launcher_and_the_project_image() -> None:
    """The Helm values are not rendered (no chart here); their chipq-specific choices are checked."""
    values = yaml.safe_load((K8S / "dagster-values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["concurrency"] == {"enabled": True, "pools": {"defaultLimit": 1, "opGranularityRunBuffer": 1}}
    (code,) = values["dagster-user-deployments"]["deployments"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert code["image"]["repository"] == kustomization["images"][0]["newName"]
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    assert code["dagsterApiGrpcArgs"] == ["-m", workspace["load_from"][0]["python_module"]["module_name"]]
    assert code["includeConfigInLaunchedRuns"]["enabled"] is True
    claim = next(v for v in code["volumes"] if v["name"] == "warehouse")["persistentVolumeClaim"]["claimName"]
    pvc = _manifests()[("PersistentVolumeClaim", claim)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # run pods land on any node
