"""The deployment files stay valid and agree with the code: docker-compose parses every
compose file, every Kubernetes manifest passes the Kubernetes schemas (offline), every
SWITCHBOARD_* variable they name is a setting, and the parts refer to each other rightly
(the front to the nodes, the nodes to the speech servers, the HPA to the metric)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from switchboard.base.metrics import CALLS_ACTIVE
from switchboard.base.settings import Settings
from telephony.kamailio import CONFIG_TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_DIR = ROOT / "deploy" / "k8s"
ONE_NODE = ROOT / "docker-compose.yml"
CLUSTER = COMPOSE_DIR / "docker-compose.yml"
CLUSTER_GPU = COMPOSE_DIR / "docker-compose.gpu.yml"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
ADAPTER_RULES = K8S_DIR / "prometheus-adapter.yaml"
MANIFESTS = sorted(path for path in K8S_DIR.rglob("*.yaml") if path != KUSTOMIZATION)
DOCS = [ROOT / "deploy" / "README.md", ROOT / "docs" / "operations.md"]

K8S_VERSION = "1.30.0"
"""Kubernetes version the manifests are checked against (schemas inside kubernetes-validate)."""
COMPOSE_SECRETS = {
    "SPEECH_SECRET": "test-speech-secret",
    "RASA_API_TOKEN": "test-rasa-token",
    "POSTGRES_PASSWORD": "testpassword",
}
CLUSTER_SERVICES = {"front", "node-a", "node-b", "speech", "dialog", "migrate", "redis",
                    "postgres"}
COMPOSE_SETUPS = {
    "one-node": ([ONE_NODE], {"switchboard", "postgres", "redis"}),
    "cluster": ([CLUSTER], CLUSTER_SERVICES),
    "cluster-gpu": ([CLUSTER, CLUSTER_GPU], CLUSTER_SERVICES),
}
NODE_COMMAND = ["switchboard", "run"]
IMAGE_COMMAND = NODE_COMMAND
"""The Dockerfile's CMD."""
SETTING = re.compile(r"\bSWITCHBOARD_[A-Z0-9_]+\b")
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)")
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
DRAIN_TIMEOUT_S = Settings.model_fields["drain_timeout_s"].default
INSTALL_HINT = "run `make install-test`, which installs the test tools"


# --- the image ---------------------------------------------------------------------------

def test_the_image_runs_a_node_and_holds_what_the_other_commands_read() -> None:
    """Compose services and pods run the commands below on the repository's image."""
    lines = DOCKERFILE.read_text().splitlines()
    assert [json.loads(line.removeprefix("CMD ")) for line in lines
            if line.startswith("CMD ")] == [IMAGE_COMMAND]
    path = re.search(r"^ENV PATH=([^:\s]+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert path and path.group(1) == "/app/.venv/bin", "`switchboard` must be on the PATH"
    copied = [source for line in lines if line.startswith("COPY ")
              for source in line.split()[1:-1]]
    template = CONFIG_TEMPLATE.relative_to(ROOT)
    assert any(template.is_relative_to(source) for source in copied), (
        f"`switchboard front` renders {template}: COPY it into the image")


# --- docker-compose ---------------------------------------------------------------------

def docker_compose(files: list[Path], env_file: Path, **secrets: str,
                   ) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f FILE... config`` with only ``secrets`` as the variables set."""
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail("docker-compose is not installed (the Debian package docker-compose): "
                    f"{INSTALL_HINT}")
    env = {name: value for name, value in os.environ.items() if name not in COMPOSE_SECRETS}
    command = [executable, "--env-file", str(env_file)]
    for path in files:
        command += ["-f", str(path)]
    return subprocess.run([*command, "config"], capture_output=True, text=True, timeout=60,
                          env={**env, **secrets}, check=False)


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for a deploy/compose/.env an operator may have, so it cannot leak in."""
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def compose_config(empty_env_file: Path) -> Callable[[str], dict[str, Any]]:
    """A setup's configuration as docker-compose resolves it (merged, interpolated)."""
    configs: dict[str, dict[str, Any]] = {}

    def load(setup: str) -> dict[str, Any]:
        if setup not in configs:
            files = COMPOSE_SETUPS[setup][0]
            result = docker_compose(files, empty_env_file, **COMPOSE_SECRETS)
            assert result.returncode == 0, (
                f"docker-compose config failed on {[str(f.relative_to(ROOT)) for f in files]}:"
                f"\n{result.stderr}")
            configs[setup] = yaml.safe_load(result.stdout)
        return configs[setup]

    return load


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in (service.get("environment") or {}).items()}


def command(service: dict[str, Any]) -> list[str]:
    """The service's command; the image's CMD for a service built from the Dockerfile."""
    default = IMAGE_COMMAND if "build" in service else []
    return [str(part) for part in service.get("command") or default]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def seconds(duration: str) -> float:
    """A docker-compose duration (``330s``, ``5m30s``) in seconds."""
    parts = DURATION_PART.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def nodes_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in config["services"].items()
            if command(service) == NODE_COMMAND}


@pytest.mark.parametrize("setup", list(COMPOSE_SETUPS))
def test_compose_files_parse_into_the_expected_services(
    compose_config: Callable[[str], dict[str, Any]], setup: str
) -> None:
    assert set(compose_config(setup)["services"]) == COMPOSE_SETUPS[setup][1]


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_cluster_compose_refuses_to_run_without_each_secret(
    empty_env_file: Path, missing: str
) -> None:
    given = {name: value for name, value in COMPOSE_SECRETS.items() if name != missing}
    result = docker_compose([CLUSTER], empty_env_file, **given)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_cluster_nodes_share_the_speech_dialog_and_state_tiers(
    compose_config: Callable[[str], dict[str, Any]]
) -> None:
    services = compose_config("cluster")["services"]
    nodes = nodes_of(compose_config("cluster"))
    assert set(nodes) == {"node-a", "node-b"}
    speech, dialog = environment(services["speech"]), environment(services["dialog"])
    speech_bind = urlsplit(option(command(services["speech"]), "--bind"))
    assert command(services["dialog"]) == ["switchboard", "dialog", "serve"]
    node_ids = set()
    for name, service in nodes.items():
        env = environment(service)
        node_ids.add(env["SWITCHBOARD_NODE_ID"])
        assert env["SWITCHBOARD_RASA_MANAGED"] == "false", name
        rasa = urlsplit(env["SWITCHBOARD_RASA_URL"])
        assert (rasa.hostname, rasa.port) == ("dialog", Settings.model_fields["rasa_port"].default)
        assert env["SWITCHBOARD_RASA_API_TOKEN"] == dialog["SWITCHBOARD_RASA_API_TOKEN"]
        servers = [urlsplit(url) for url in env["SWITCHBOARD_SPEECH_SERVERS"].split(",")]
        assert [(s.scheme, s.hostname, s.port) for s in servers] == [
            ("tcp", "speech", speech_bind.port)]
        assert env["SWITCHBOARD_SPEECH_SECRET"] == speech["SWITCHBOARD_SPEECH_SECRET"] != ""
        assert env["SWITCHBOARD_REDIS_URL"] == dialog["SWITCHBOARD_REDIS_URL"]
        assert urlsplit(env["SWITCHBOARD_REDIS_URL"]).hostname == "redis"
        assert env["SWITCHBOARD_DATABASE_URL"] == dialog["SWITCHBOARD_DATABASE_URL"]
        assert urlsplit(env["SWITCHBOARD_DATABASE_URL"]).hostname == "postgres"
        assert urlsplit(env["SWITCHBOARD_CELERY_BROKER_URL"]).hostname == "redis"
    assert len(node_ids) == len(nodes), "every node needs an id of its own"


def test_cluster_front_dispatches_to_every_node(
    compose_config: Callable[[str], dict[str, Any]]
) -> None:
    config = compose_config("cluster")
    front = command(config["services"]["front"])
    assert front[:2] == ["switchboard", "front"]
    sip_port = Settings.model_fields["sip_port"].default
    expected = {f"{name}:{environment(node).get('SWITCHBOARD_SIP_PORT', sip_port)}"
                for name, node in nodes_of(config).items()}
    assert set(option(front, "--nodes").split(",")) == expected


@pytest.mark.parametrize("setup", list(COMPOSE_SETUPS))
def test_compose_nodes_have_time_to_drain(
    compose_config: Callable[[str], dict[str, Any]], setup: str
) -> None:
    nodes = nodes_of(compose_config(setup))
    assert nodes
    for name, node in nodes.items():
        drain = float(environment(node).get("SWITCHBOARD_DRAIN_TIMEOUT_S", DRAIN_TIMEOUT_S))
        grace = seconds(str(node.get("stop_grace_period", "10s")))
        assert grace > drain, f"{name}: stop_grace_period {grace:.0f} s, drain {drain:.0f} s"


def test_gpu_compose_puts_whisper_on_a_gpu(compose_config: Callable[[str], dict[str, Any]]) -> None:
    speech = compose_config("cluster-gpu")["services"]["speech"]
    assert environment(speech)["SWITCHBOARD_STT_DEVICE"] == "cuda"
    devices = speech["deploy"]["resources"]["reservations"]["devices"]
    assert [d["capabilities"] for d in devices] == [["gpu"]]


# --- settings named anywhere in the deployment files ------------------------------------

@pytest.mark.parametrize(
    "path", [ONE_NODE, CLUSTER, CLUSTER_GPU, *MANIFESTS, *DOCS],
    ids=lambda path: str(path.relative_to(ROOT)))
def test_every_switchboard_variable_named_is_a_setting(path: Path) -> None:
    named = set(SETTING.findall(path.read_text()))
    unknown = sorted(name for name in named
                     if name.removeprefix("SWITCHBOARD_").lower() not in Settings.model_fields)
    assert not unknown, (f"{path.relative_to(ROOT)} names variables that are no setting "
                         f"(switchboard/base/settings.py): {', '.join(unknown)}")


# --- Kubernetes ---------------------------------------------------------------------------

def kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {INSTALL_HINT} (pyproject.toml, "
                    "extras `test`)")
    return kubernetes_validate


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object of deploy/k8s by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(resources: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for (kind, _), doc in resources.items()
            if kind in ("Deployment", "StatefulSet", "DaemonSet")]


def env_value(container: dict[str, Any], name: str) -> Any:
    for var in container.get("env", []):
        if var["name"] == name:
            return var.get("value", var.get("valueFrom"))
    raise AssertionError(f"{container['name']} does not set {name}")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_passes_the_kubernetes_schemas(path: Path) -> None:
    validator = kubernetes_validate()
    docs = documents(path)
    assert docs, f"{path.name} holds no object"
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            validator.validate(doc, K8S_VERSION, strict=True)
        except validator.ValidationError as exc:
            errors.append(f"{name} at {'.'.join(map(str, exc.path))}: {exc.message}")
        except validator.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, f"{path.name} fails the Kubernetes {K8S_VERSION} schemas:\n" + "\n".join(
        errors)


def test_kustomization_applies_every_manifest_of_the_namespace() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    listed = {K8S_DIR / name for name in kustomization["resources"]}
    assert listed == set(MANIFESTS) - {ADAPTER_RULES}
    assert all(doc["metadata"]["namespace"] != kustomization["namespace"]
               for doc in documents(ADAPTER_RULES))


def test_node_id_is_the_pod_name_and_a_node_has_time_to_drain(
    resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    nodes = resources[("StatefulSet", "switchboard-node")]
    [node] = containers(nodes)
    assert node["command"] == NODE_COMMAND
    assert env_value(node, "SWITCHBOARD_NODE_ID") == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_value(node, "SWITCHBOARD_RASA_MANAGED") == "false"
    grace = nodes["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    assert grace > DRAIN_TIMEOUT_S, f"{grace} s to stop, the drain may take {DRAIN_TIMEOUT_S} s"


def test_nodes_name_every_speech_server_which_gets_a_gpu(
    resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    speech = resources[("StatefulSet", "switchboard-speech")]
    [server] = containers(speech)
    assert env_value(server, "SWITCHBOARD_STT_DEVICE") == "cuda"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    port = urlsplit(option(server["command"], "--bind")).port
    name, service = speech["metadata"]["name"], speech["spec"]["serviceName"]
    expected = [f"tcp://{name}-{index}.{service}:{port}"
                for index in range(speech["spec"]["replicas"])]
    [node] = containers(resources[("StatefulSet", "switchboard-node")])
    assert env_value(node, "SWITCHBOARD_SPEECH_SERVERS").split(",") == expected
    assert env_value(node, "SWITCHBOARD_SPEECH_SECRET") == env_value(
        server, "SWITCHBOARD_SPEECH_SECRET")


def test_hpa_scales_the_nodes_on_calls_active_through_the_adapter(
    resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    metric = CALLS_ACTIVE.describe()[0].name
    hpa = resources[("HorizontalPodAutoscaler", "switchboard-node")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in resources
    assert [(m["type"], m["pods"]["metric"]["name"]) for m in hpa["spec"]["metrics"]] == [
        ("Pods", metric)]
    [adapter] = documents(ADAPTER_RULES)
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert any(rule["name"]["as"] == metric and metric in rule["seriesQuery"]
               for rule in rules)
    front_nodes = resources[("ConfigMap", "switchboard-front")]["data"]["nodes"].split(",")
    assert hpa["spec"]["maxReplicas"] == len(front_nodes), (
        "one node per media host: the front lists as many hosts as the HPA may start nodes")


def test_services_select_pods_and_ports_that_exist(
    resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    for (kind, name), service in resources.items():
        if kind != "Service":
            continue
        selector = service["spec"]["selector"]
        matches = [w for w in workloads(resources)
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert matches, f"Service {name} selects no pods"
        ports = {port["name"] for w in matches for c in containers(w)
                 for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no port {port['targetPort']}"


def test_secrets_and_config_maps_referenced_exist(
    resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    def keys(kind: str, name: str) -> set[str]:
        doc = resources.get((kind, name), {})
        return set(doc.get("stringData", {})) | set(doc.get("data", {}))

    for workload in workloads(resources):
        for container in containers(workload):
            for var in container.get("env", []):
                source = var.get("valueFrom", {})
                for ref, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if ref in source:
                        wanted = source[ref]
                        assert wanted["key"] in keys(kind, wanted["name"]), (
                            f"{container['name']}: {kind} {wanted['name']} has no "
                            f"{wanted['key']}")


def test_variables_are_defined_before_use(
    resources: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """Kubernetes leaves an unknown ``$(NAME)`` as it is, which fails only at run time."""
    for workload in workloads(resources):
        for container in containers(workload):
            defined: list[str] = []
            for var in container.get("env", []):
                for used in ENV_REFERENCE.findall(var.get("value", "")):
                    assert used in defined, f"{container['name']}: {var['name']} uses {used}"
                defined.append(var["name"])
            for part in [*container.get("command", []), *container.get("args", [])]:
                for used in ENV_REFERENCE.findall(part):
                    assert used in defined, f"{container['name']}: its command uses {used}"
