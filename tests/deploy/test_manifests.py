"""deploy/ checked offline: the manifests against the Kubernetes schemas, the custom resources
and chart values by their required keys, the dashboard's and scalers' queries against the
metrics the services register, and every `loraroute` command, flag, port and probe path against
the services' real ones.

Nothing here needs a Docker engine or a cluster; `kubernetes-validate` ships the schemas.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import make_wsgi_app

from loraroute import natsauth
from schemas.config import load_config
from services.classifier.batch_queue import LANES
from services.classifier.metrics import WorkerMetrics
from services.common.subjects import Subjects
from services.dispatcher.metrics import DispatcherMetrics
from services.ingress.metrics import IngressMetrics
from services.ingress.routes import ADMIN_ROUTES, PUBLIC_ROUTES
from services.jobs.metrics import JobsMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
#: The services the image runs, by the first argument.
SERVICES = ("ingress", "classifier", "dispatcher", "jobs")
WORKERS = ("classifier", "dispatcher", "jobs")
#: The Kubernetes release whose schemas the manifests must pass.
K8S_VERSION = kubernetes_validate.latest_version()
#: The custom resources' required keys (their schemas are not in Kubernetes' own).
KEDA_TRIGGER_KEYS = {
    "nats-jetstream": {"natsServerMonitoringEndpoint", "stream", "consumer", "lagThreshold"},
    "prometheus": {"serverAddress", "query", "threshold"},
}


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def _yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/kubernetes (kustomizations are not objects)."""
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in _documents(path):
                yield path, doc


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _flags(args: list[str]) -> dict[str, str]:
    """`--name=value` / `--name value` arguments as {name: value}."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                name, value = arg, args[i + 1]
                i += 1
            else:
                name, value = arg, ""
            flags[name] = value
        i += 1
    return flags


@cache
def _help(*command: str) -> str:
    """`loraroute <command> --help`, run from the repository root; fails when the command fails."""
    done = subprocess.run(
        [sys.executable, "-m", "loraroute", *command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"loraroute {' '.join(command)} --help: {done.stderr}"
    return done.stdout


def _known_flags(*command: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", _help(*command)))


def _exported_metrics() -> set[str]:
    """The sample names every service's metrics module registers on a fresh registry."""
    registry = CollectorRegistry()
    IngressMetrics(registry, lambda: 0.0, lambda: 0.0)
    WorkerMetrics(registry).watch_spelling(lambda: (0, 0))
    DispatcherMetrics(registry)
    JobsMetrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bloraroute_[a-z_]+\b", expr))


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "loraroute.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def _keda_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "keda").glob("*.yaml")) for doc in _documents(path)]


def _keda_queries() -> list[str]:
    return [
        trigger["metadata"]["query"]
        for scaled in _keda_objects()
        for trigger in scaled["spec"]["triggers"]
        if trigger["type"] == "prometheus"
    ]


def _config_text(configmap: Path) -> str:
    (doc,) = _documents(configmap)
    return doc["data"]["config.yaml"]  # type: ignore[no-any-return]


# --- (a) every file parses; the manifests pass the Kubernetes schemas --------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert _documents(path), f"{path} holds no document"


def test_the_manifests_pass_the_kubernetes_schemas() -> None:
    failures = []
    kinds = set()
    for path, doc in _manifests():
        kinds.add(doc["kind"])
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{path.relative_to(DEPLOY)} {doc['kind']}: {error.message}")
    assert not failures, "\n".join(failures)
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_a_broken_manifest_fails_the_schemas() -> None:
    (deployment, *_) = _of_kind("Deployment")
    _container(deployment)["livenessProbe"]["httpGet"]["port"] = {"name": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("folder", [KUBERNETES, KUBERNETES / "gpu"], ids=["cpu", "gpu"])
def test_kustomizations_name_files_that_exist(folder: Path) -> None:
    (kustomization,) = _documents(folder / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    for resource in kustomization["resources"]:
        target = folder / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
    listed = {(folder / r).resolve() for r in kustomization["resources"]}
    own = {p.resolve() for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert own <= listed, f"not in {folder.name}/kustomization.yaml: {own - listed}"


def test_every_service_has_a_deployment_with_probes_resources_and_a_budget() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    budgets = {b["metadata"]["name"]: b for b in _of_kind("PodDisruptionBudget")}
    for service in SERVICES:
        name = f"loraroute-{service}"
        assert name in deployments, f"no Deployment {name}"
    for name, deployment in deployments.items():
        container = _container(deployment)
        for probe in ("readinessProbe", "livenessProbe"):
            assert "httpGet" in container[probe], f"{name}: {probe} is not HTTP"
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert {"cpu", "memory"} <= set(resources["limits"]), name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == labels, name
        assert name in budgets, f"no PodDisruptionBudget for {name}"
        assert budgets[name]["spec"]["selector"]["matchLabels"] == labels, name
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True, name


def test_deployment_selectors_do_not_overlap() -> None:
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in _of_kind("Deployment")
    ]
    assert len(selectors) == len(set(selectors))


def test_services_select_pods_and_ports_that_exist() -> None:
    pods = [
        (d["spec"]["template"]["metadata"]["labels"], _container(d)) for d in _of_kind("Deployment")
    ]
    for service in _of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [c for labels, c in pods if selector.items() <= labels.items()]
        assert matched, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for container in matched:
                names = {p["name"] for p in container["ports"]}
                assert port["targetPort"] in names, service["metadata"]["name"]


def test_the_gpu_classifier_asks_for_a_gpu_and_runs_the_gpu_image() -> None:
    (gpu,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"].endswith("-gpu")]
    container = _container(gpu)
    assert container["args"][0] == "classifier"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-gpu")
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == "loraroute-config-gpu"


@pytest.mark.parametrize(
    "configmap", [KUBERNETES / "configmap.yaml", KUBERNETES / "gpu" / "configmap-gpu.yaml"]
)
def test_the_configmaps_hold_valid_configs(configmap: Path, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config_text(configmap))
    config, _ = load_config(str(path))
    assert config.ingress.host == "0.0.0.0"
    assert config.jobs.replicas == 3
    assert config.classifier.category_model.use_cpu is (configmap.name == "configmap.yaml")


def test_the_gpu_config_differs_only_in_the_classifier_lines() -> None:
    cpu = _config_text(KUBERNETES / "configmap.yaml").splitlines()
    gpu = _config_text(KUBERNETES / "gpu" / "configmap-gpu.yaml").splitlines()
    assert len(cpu) == len(gpu)
    differ = {a.split(":")[0].strip() for a, b in zip(cpu, gpu, strict=True) if a != b}
    assert differ == {"use_cpu", "intra_op_threads"}


# --- custom resources and chart values: required keys ------------------------------------------


def test_keda_scaled_objects_have_their_required_fields() -> None:
    deployments = {d["metadata"]["name"] for d in _of_kind("Deployment")}
    subjects = Subjects("loraroute")
    targets = set()
    for scaled in _keda_objects():
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["kind"] == "ScaledObject"
        assert scaled["metadata"]["name"]
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        targets.add(spec["scaleTargetRef"]["name"])
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            metadata = trigger["metadata"]
            assert KEDA_TRIGGER_KEYS[trigger["type"]] <= set(metadata), trigger
            assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata are strings"
            if trigger["type"] == "nats-jetstream":
                assert metadata["stream"] == subjects.lines_stream
                assert metadata["consumer"] == subjects.line_consumer
    assert targets == {f"loraroute-{s}" for s in WORKERS}


def test_nats_values_ask_for_a_three_node_jetstream_cluster_on_files() -> None:
    (values,) = _documents(DEPLOY / "helm" / "nats-values.yaml")
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["monitor"]["enabled"] is True  # KEDA's nats-jetstream scaler reads it
    (configmap,) = _documents(KUBERNETES / "configmap.yaml")
    assert yaml.safe_load(configmap["data"]["config.yaml"])["jobs"]["replicas"] == 3
    assert config["merge"]["max_payload"] >= 4 * 1024 * 1024 + 64 * 1024


def test_nats_values_give_each_kind_the_permissions_of_loraroute_up(tmp_path: Path) -> None:
    """The chart's users are `loraroute.natsauth`'s table for the deployed config, each with its
    password from the Secret, and each deployment connects as its own kind."""
    (values,) = _documents(DEPLOY / "helm" / "nats-values.yaml")
    (configmap,) = _documents(KUBERNETES / "configmap.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    config, _ = load_config(path)
    expire_s = 10 + max(
        config.ingress.request_timeout_s,
        config.ingress.classify_timeout_s,
        config.jobs.line_timeout_s,
    )
    subjects = Subjects(config.nats.subject_prefix)
    users = values["config"]["merge"]["authorization"]["users"]
    assert [u["user"] for u in users] == list(natsauth.KINDS)
    env = values["container"]["env"]
    for user in users:
        kind = user["user"]
        assert user["permissions"] == natsauth.permissions(kind, subjects, expire_s), kind
        variable = f"{kind.upper()}_PASSWORD"
        assert user["password"] == f"<< ${variable} >>"
        assert env[variable]["valueFrom"]["secretKeyRef"] == {
            "name": "loraroute-nats-users",
            "key": kind,
        }
    deployments = _of_kind("Deployment")
    assert len(deployments) == 5  # the four services and the GPU classifier
    for deployment in deployments:
        container = _container(deployment)
        kind = container["args"][0]
        variables = {e["name"]: e for e in container["env"]}
        assert variables["LORAROUTE_NATS_USER"]["value"] == kind
        secret = variables["LORAROUTE_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "loraroute-nats-users", "key": kind}


# --- (b) queries name metrics the services register --------------------------------------------


def test_the_dashboard_and_the_scalers_query_only_exported_metrics() -> None:
    exported = _exported_metrics()
    queries = _dashboard_queries() + _keda_queries()
    assert len(queries) > 10
    for expr in queries:
        names = _metric_names(expr)
        assert names, f"no loraroute metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {names - exported}, not exported"
        for lane in re.findall(r'lane="([^"]*)"', expr):
            assert lane in LANES, expr


def test_the_dashboard_covers_every_service() -> None:
    used = set().union(*map(_metric_names, _dashboard_queries()))
    for prefix in ("ingress", "classifier", "dispatch", "jobs"):
        assert any(n.startswith(f"loraroute_{prefix}_") for n in used), prefix


def test_an_unknown_metric_is_caught() -> None:
    assert not _metric_names("sum(rate(loraroute_classifier_queue_size[5m]))") <= (
        _exported_metrics()
    )


# --- (c) commands, flags, ports and probe paths are the services' real ones --------------------


def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_the_image_enters_at_loraroute() -> None:
    assert 'ENTRYPOINT ["loraroute"]' in _dockerfile()


def test_every_loraroute_command_in_the_dockerfile_exists() -> None:
    text = _dockerfile().replace("\\\n", " ")
    commands = [json.loads(m) for m in re.findall(r"^CMD (\[.*\])$", text, re.M)]
    for line in text.splitlines():
        if line.startswith("RUN "):
            for step in line.removeprefix("RUN ").split("&&"):
                program, *words = step.split()
                if program == "loraroute":
                    commands.append(words)
    assert len(commands) >= 2, "the model build and the default command"
    for command in commands:
        words = [w for w in command if not w.startswith("-")]
        subcommand = words[: 2 if words[0] == "model" else 1]
        flags = {w.split("=")[0] for w in command if w.startswith("--")}
        assert flags <= _known_flags(*subcommand), (command, flags - _known_flags(*subcommand))


def test_every_deployment_runs_a_real_command_with_real_flags() -> None:
    for deployment in _of_kind("Deployment"):
        container = _container(deployment)
        assert "command" not in container, "the image's entrypoint picks `loraroute`"
        service, *args = container["args"]
        assert service in SERVICES
        unknown = set(_flags(args)) - _known_flags(service)
        assert not unknown, f"{deployment['metadata']['name']}: {unknown}"
        flags = _flags(args)
        assert flags["--config"].startswith("/etc/loraroute/")
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(flags["--config"]).parent) in mounts


def _probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    }


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number  # type: ignore[no-any-return]


def test_ingress_ports_and_probe_paths_are_its_own(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_config_text(KUBERNETES / "configmap.yaml"))
    admin = load_config(str(path))[0].ingress.admin
    assert admin.host == "0.0.0.0" and admin.port is not None, "else the kubelet cannot reach it"
    public = {route.path for route in PUBLIC_ROUTES}
    admin_paths = {route.path for route in ADMIN_ROUTES}
    (ingress,) = [d for d in _of_kind("Deployment") if _container(d)["args"][0] == "ingress"]
    container = _container(ingress)
    flags = _flags(container["args"][1:])
    assert flags["--host"] == "0.0.0.0"
    probes = _probes(container)
    liveness, readiness = probes["livenessProbe"], probes["readinessProbe"]
    assert liveness["path"] == "/health" and liveness["path"] in public
    assert _port_number(container, liveness["port"]) == int(flags["--port"])
    assert readiness["path"] == "/ready" and readiness["path"] in admin_paths
    assert _port_number(container, readiness["port"]) == admin.port
    annotations = ingress["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in admin_paths
    assert int(annotations["prometheus.io/port"]) == admin.port


def test_worker_ports_and_probe_paths_are_their_metrics_server() -> None:
    workers = [d for d in _of_kind("Deployment") if _container(d)["args"][0] in WORKERS]
    assert {_container(d)["args"][0] for d in workers} == set(WORKERS)
    for deployment in workers:
        container = _container(deployment)
        flags = _flags(container["args"][1:])
        assert flags["--metrics-host"] == "0.0.0.0", "else the kubelet cannot reach it"
        port = int(flags["--metrics-port"])
        probes = _probes(container)
        assert {"readinessProbe", "livenessProbe"} <= set(probes)
        for probe in probes.values():
            assert _port_number(container, probe["port"]) == port
            assert _metrics_server_answers(probe["path"])
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == port


def _metrics_server_answers(path: str) -> bool:
    """Whether the server `--metrics-port` starts (prometheus_client's) serves the metrics at
    `path`."""
    registry = CollectorRegistry()
    Gauge("loraroute_probe_check", "A metric to find in the answer.", registry=registry)
    statuses: list[str] = []
    body = make_wsgi_app(registry)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""},
        lambda status, headers: statuses.append(status),
    )
    return statuses == ["200 OK"] and b"loraroute_probe_check" in b"".join(body)


def test_the_image_health_check_urls_match_the_probes() -> None:
    for deployment in _of_kind("Deployment"):
        container = _container(deployment)
        (url,) = [e["value"] for e in container["env"] if e["name"] == "LORAROUTE_HEALTH_URL"]
        liveness = container["livenessProbe"]["httpGet"]
        port = _port_number(container, liveness["port"])
        assert url == f"http://127.0.0.1:{port}{liveness['path']}"
    assert "LORAROUTE_HEALTH_URL=http://127.0.0.1:8080/health" in _dockerfile()
