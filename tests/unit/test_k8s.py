"""infra/k8s: the Kubernetes manifests, read and checked structurally (no cluster needed).

Each manifest is checked against the parts of its kind's schema the deployment depends on, and
the manifests against each other (selectors, probe ports, referenced ConfigMaps and Secrets).
The settings every Deployment must receive are derived from `Settings`, so a new setting fails
here until the manifests provide it. When `kubernetes-validate` is installed, every object is
also validated (strictly: no unknown fields) against the real Kubernetes JSON schemas.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from services.cli.main import SERVICES as CLI_SERVICES
from shared.policy import parse_policy
from shared.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
POLICY_FILE = ROOT / "infra" / "policy.yaml"

NAMESPACE = "modelreg"
IMAGE = "ghcr.io/modelreg/modelreg"
SERVICES = ("ingest", "validation", "promotion", "archival", "audit", "webhooks", "api")
CONSUMERS = tuple(s for s in SERVICES if s != "api")

# Settings a Deployment need not receive from the manifests:
# - MODELREG_TOPIC_PREFIX: namespaces topics and groups for tests and shared clusters; a
#   deployment owns its cluster, and the default (no prefix) is right.
# - MODELREG_ARTIFACT_ROOTS: `file://` artifacts need a directory shared with the pipelines;
#   in a cluster artifacts come from S3, and the default (none) refuses `file://`.
# - MODELREG_ALLOWED_BUCKETS: defaults to the registry's own bucket, which is the safe choice;
#   add pipelines' buckets deliberately.
# - OTEL_SERVICE_NAME: differs per Deployment, so it is set in each one's `env` (checked below)
#   and must not be in the shared ConfigMap.
# - MODELREG_DB_ROLE: each service acts as its own PostgreSQL role, modelreg_<service>, by
#   default; a shared ConfigMap could only give them all the same one.
# - MODELREG_WEBHOOKS_ALLOW_NETWORKS: empty, webhook endpoints reach public addresses only,
#   which is the safe choice; allow inside networks deliberately.
NOT_REQUIRED = {"MODELREG_TOPIC_PREFIX", "MODELREG_ARTIFACT_ROOTS", "MODELREG_ALLOWED_BUCKETS",
                "OTEL_SERVICE_NAME", "MODELREG_DB_ROLE", "MODELREG_WEBHOOKS_ALLOW_NETWORKS"}
VARIABLES = sorted(str(f.validation_alias) for f in Settings.model_fields.values() if f.validation_alias)
REQUIRED_VARIABLES = [v for v in VARIABLES if v not in NOT_REQUIRED]
# Settings typed SecretStr (or SecretStr | None) are credentials: they come from a Secret.
SECRET_VARIABLES = sorted(
    str(f.validation_alias) for f in Settings.model_fields.values()
    if f.validation_alias and (f.annotation is SecretStr or SecretStr in getattr(f.annotation, "__args__", ()))
)

API_VERSIONS = {
    "Namespace": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1",
    "Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
NOT_NAMESPACED = {"Namespace", "Kustomization"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


# --- loading ---------------------------------------------------------------------------------

def _load() -> list[tuple[str, dict[str, Any]]]:
    assert K8S.is_dir(), f"{K8S} is missing"
    documents = []
    for path in sorted(K8S.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


DOCUMENTS = _load()
OBJECTS = [d for _, d in DOCUMENTS if isinstance(d, dict) and d.get("kind") != "Kustomization"]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in OBJECTS if d.get("kind") == kind}


def only(kind: str, name: str) -> dict[str, Any]:
    found = of_kind(kind).get(name)
    assert found is not None, f"no {kind} named {name!r} in infra/k8s"
    return found


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: expected one container"
    return containers[0]


def deployment_for(service: str) -> dict[str, Any]:
    found = [d for d in of_kind("Deployment").values() if container(d).get("args") == ["run", service]]
    assert len(found) == 1, f"{len(found)} Deployments run {service!r} (args ['run', {service!r}])"
    return found[0]


def selected_deployments(selector: dict[str, str]) -> list[str]:
    """Deployments whose pods a label selector picks."""
    return [name for name, d in of_kind("Deployment").items()
            if selector and selector.items() <= pod_labels(d).items()]


def port_refers_to_container(port: Any, ctr: dict[str, Any]) -> bool:
    declared = ctr.get("ports") or []
    if isinstance(port, str) and not port.isdigit():
        return port in {p.get("name") for p in declared}
    return int(port) in {p.get("containerPort") for p in declared}


def container_port(ctr: dict[str, Any], name: str) -> int:
    ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports") or []}
    assert name in ports, f"{ctr['name']}: no containerPort named {name!r}"
    return ports[name]


_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity (100m, 1, "2", 512Mi, 1Gi) as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in _UNITS, f"not a resource quantity: {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def environment(deployment: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """The container's environment as Kubernetes builds it: name -> (source, value).

    source is "configmap", "secret" or "env" (a literal value). `envFrom` entries in order,
    later ones winning, then `env`, which wins over all of them.
    """
    ctr = container(deployment)
    configmaps, secrets = of_kind("ConfigMap"), of_kind("Secret")
    out: dict[str, tuple[str, str | None]] = {}
    for source in ctr.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = configmaps[source["configMapRef"]["name"]].get("data") or {}
            out.update({prefix + k: ("configmap", v) for k, v in data.items()})
        elif "secretRef" in source:
            secret = secrets[source["secretRef"]["name"]]
            data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
            out.update({prefix + k: ("secret", v) for k, v in data.items()})
        else:
            pytest.fail(f"{deployment['metadata']['name']}: envFrom entry {source} has no ref")
    for item in ctr.get("env") or []:
        ref = item.get("valueFrom") or {}
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            secret = secrets[key["name"]]
            data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
            out[item["name"]] = ("secret", data[key["key"]])
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            out[item["name"]] = ("configmap", configmaps[key["name"]]["data"][key["key"]])
        else:
            out[item["name"]] = ("env", item.get("value"))
    return out


# --- every document ----------------------------------------------------------------------------

def test_the_manifests_are_there():
    kinds = Counter(d.get("kind") for d in OBJECTS)
    assert kinds["Deployment"] >= len(SERVICES) and kinds["Namespace"] == 1, kinds


def test_the_derivations_from_settings_are_not_empty():
    # Guards the derivations themselves: empty lists would make the per-Deployment checks vacuous.
    assert {"KAFKA_BOOTSTRAP_SERVERS", "S3_BUCKET", "MODELREG_POLICY_FILE"} <= set(REQUIRED_VARIABLES)
    assert {"DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(SECRET_VARIABLES)
    assert "AWS_REGION" not in SECRET_VARIABLES
    assert NOT_REQUIRED <= set(VARIABLES), "an exclusion names a setting that no longer exists"


def test_the_services_are_the_ones_the_cli_runs():
    assert set(CLI_SERVICES) <= set(SERVICES), "a service the CLI runs has no Deployment here"


@pytest.mark.parametrize("index", range(len(DOCUMENTS)),
                         ids=[f"{f}:{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
                              if isinstance(d, dict) else f for f, d in DOCUMENTS])
def test_every_document_is_a_known_object_with_a_name(index):
    file, document = DOCUMENTS[index]
    assert isinstance(document, dict), f"{file}: a document is not a mapping"
    kind = document.get("kind")
    assert kind in API_VERSIONS, f"{file}: unexpected kind {kind!r}"
    assert document.get("apiVersion") == API_VERSIONS[kind], f"{file}: {kind} needs {API_VERSIONS[kind]}"
    metadata = document.get("metadata")
    assert isinstance(metadata, dict), f"{file}: {kind} has no metadata"
    name = metadata.get("name")
    assert isinstance(name, str) and DNS_1123.match(name) and len(name) <= 63, f"{file}: bad name {name!r}"
    if kind in NOT_NAMESPACED:
        assert "namespace" not in metadata or kind == "Kustomization"
    else:
        assert metadata.get("namespace") == NAMESPACE, f"{file}: {kind}/{name} is not in {NAMESPACE}"
    for field in ("labels", "annotations"):
        for key, value in (metadata.get(field) or {}).items():
            assert isinstance(value, str), f"{file}: {kind}/{name} {field} {key} must be a string"


def test_names_are_unique_per_kind():
    counts = Counter((d["kind"], d["metadata"]["name"]) for d in OBJECTS)
    assert [k for k, n in counts.items() if n > 1] == []


def test_the_namespace_exists():
    only("Namespace", NAMESPACE)


def test_the_kustomization_lists_every_manifest():
    path = K8S / "kustomization.yaml"
    assert path.is_file(), "infra/k8s/kustomization.yaml is missing"
    kustomization = yaml.safe_load(path.read_text())
    assert kustomization.get("kind") == "Kustomization"
    resources = kustomization.get("resources") or []
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    manifests = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert set(resources) == manifests, (
        f"not listed: {sorted(manifests - set(resources))}; missing: {sorted(set(resources) - manifests)}")
    assert resources[0] == "namespace.yaml", "the Namespace comes first"
    assert kustomization.get("namespace") in (None, NAMESPACE)


# --- ConfigMaps and the Secret -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(of_kind("ConfigMap")))
def test_configmap_values_are_strings(name):
    data = only("ConfigMap", name).get("data") or {}
    assert data, f"ConfigMap {name} is empty"
    for key, value in data.items():
        assert ENV_NAME.match(key) or re.fullmatch(r"[-._a-zA-Z0-9]+", key), key
        assert isinstance(value, str), f"ConfigMap {name}: {key} is {type(value).__name__}; quote it"


@pytest.mark.parametrize("name", sorted(of_kind("Secret")))
def test_secret_holds_only_placeholders(name):
    secret = only("Secret", name)
    assert secret.get("type", "Opaque") == "Opaque"
    data = secret.get("stringData") or {}
    assert data and not secret.get("data"), f"Secret {name}: use stringData with placeholder values"
    for key, value in data.items():
        assert isinstance(value, str), f"Secret {name}: {key} must be a string"
        assert "change-me" in value, f"Secret {name}: {key} is not an obvious placeholder"


def test_secrets_come_from_the_secret_never_the_configmap():
    for name, configmap in of_kind("ConfigMap").items():
        leaked = set(SECRET_VARIABLES) & set(configmap.get("data") or {})
        assert not leaked, f"ConfigMap {name} holds {sorted(leaked)}"
    for name in SERVICES:
        env = environment(deployment_for(name))
        for variable in SECRET_VARIABLES:
            assert env.get(variable, ("secret",))[0] == "secret", f"{name}: {variable} is not from a Secret"


def test_otel_service_name_is_not_shared():
    for name, configmap in of_kind("ConfigMap").items():
        assert "OTEL_SERVICE_NAME" not in (configmap.get("data") or {}), name


def test_policy_configmap_is_infra_policy():
    data = only("ConfigMap", "modelreg-policy")["data"]
    assert set(data) == {"policy.yaml"}
    policy = parse_policy(data["policy.yaml"], "infra/k8s/policy.yaml")
    assert policy.rules
    expected = parse_policy(POLICY_FILE.read_text(), str(POLICY_FILE))
    assert policy.revision == expected.revision, "infra/k8s/policy.yaml differs from infra/policy.yaml"


# --- Deployments -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(of_kind("Deployment")))
def test_deployment_structure(name):
    deployment = only("Deployment", name)
    spec = deployment["spec"]
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    assert selector, f"{name}: no spec.selector.matchLabels"
    labels = pod_labels(deployment)
    assert selector.items() <= labels.items(), f"{name}: the selector does not match the pod labels"
    assert selected_deployments(selector) == [name], f"{name}'s selector also picks other Deployments' pods"
    pod = spec["template"]["spec"]
    assert pod.get("containers"), f"{name}: no containers"
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for ctr in pod["containers"]:
        assert ctr.get("name") and ctr.get("image"), f"{name}: a container lacks name or image"
        ports = ctr.get("ports") or []
        assert len({p["name"] for p in ports}) == len(ports), f"{name}: port names repeat"
        for port in ports:
            assert isinstance(port.get("containerPort"), int) and len(port["name"]) <= 15
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = ctr.get(probe_name)
            if probe is None:
                continue
            http = probe.get("httpGet") or {}
            assert str(http.get("path", "")).startswith("/"), f"{name}: {probe_name} has no httpGet path"
            assert "port" in http and port_refers_to_container(http["port"], ctr), (
                f"{name}: {probe_name} port {http.get('port')!r} is no declared containerPort")
        for mount in ctr.get("volumeMounts") or []:
            assert mount["name"] in volumes, f"{name}: mounts undeclared volume {mount['name']!r}"
        configmaps, secrets = of_kind("ConfigMap"), of_kind("Secret")
        for source in ctr.get("envFrom") or []:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps, f"{name}: {source} does not exist"
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, f"{name}: {source} does not exist"
        for item in ctr.get("env") or []:
            assert ENV_NAME.match(item["name"])
            assert "value" not in item or isinstance(item["value"], str), f"{name}: {item['name']} not a string"
    for volume in volumes.values():
        if "configMap" in volume:
            configmap = only("ConfigMap", volume["configMap"]["name"])
            for item in volume["configMap"].get("items") or []:
                assert item["key"] in configmap["data"], f"{name}: volume {volume['name']} key {item['key']}"
        if "secret" in volume:
            only("Secret", volume["secret"]["secretName"])
    annotations = spec["template"]["metadata"].get("annotations") or {}
    assert annotations.get("prometheus.io/scrape") == "true", f"{name}: not scraped"
    assert annotations.get("prometheus.io/path") == "/metrics"
    assert port_refers_to_container(annotations.get("prometheus.io/port", "x"), container(deployment))


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_own_deployment(service):
    deployment = deployment_for(service)
    ctr = container(deployment)
    assert ctr["image"].rsplit(":", 1)[0] == IMAGE
    tag = ctr["image"].rsplit(":", 1)[1] if ":" in ctr["image"] else ""
    assert tag and tag != "latest", f"{service}: pin the image tag"
    assert not ctr.get("command"), f"{service}: keep the image's entrypoint (modelreg)"
    assert ctr["args"] == ["run", service]
    assert pod_labels(deployment).get("app.kubernetes.io/component") == service


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_gets_every_setting(service, monkeypatch):
    deployment = deployment_for(service)
    env = environment(deployment)
    missing = [v for v in REQUIRED_VARIABLES if v not in env]
    assert not missing, f"{service} does not receive {missing}"
    assert env.get("OTEL_SERVICE_NAME") == ("env", f"modelreg-{service}")

    # The values are ones the service accepts.
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for key, (_, value) in env.items():
        monkeypatch.setenv(key, value or "")
    settings = load_settings()
    assert settings.policy_file is not None

    ctr = container(deployment)
    health = env.get("MODELREG_HEALTH_PORT", ("", ""))[1]
    assert health == str(container_port(ctr, "health")), f"{service}: MODELREG_HEALTH_PORT vs port 'health'"
    if service == "api":
        api_port = env.get("MODELREG_API_PORT", ("", ""))[1]
        assert api_port == str(container_port(ctr, "http")), "api: MODELREG_API_PORT vs port 'http'"


def test_api_deployment_gets_every_api_setting(monkeypatch):
    # The API reads its own settings beside the shared ones (services/api/settings.py).
    from services.api import settings as api_settings  # a product module: failing to import it fails
    fields = api_settings.ApiSettings.model_fields.values()
    variables = sorted(str(f.validation_alias) for f in fields if f.validation_alias)
    assert "MODELREG_API_PORT" in variables
    env = environment(deployment_for("api"))
    missing = [v for v in variables if v not in env]
    assert not missing, f"api does not receive {missing}"
    for variable in variables:
        monkeypatch.delenv(variable, raising=False)
    for key, (_, value) in env.items():
        monkeypatch.setenv(key, value or "")
    settings = api_settings.load_api_settings()
    assert settings.host == "0.0.0.0", "the API must listen on every interface in a pod"
    assert settings.port == container_port(container(deployment_for("api")), "http")


def test_deployments_share_one_configuration():
    def shape(deployment: dict[str, Any]) -> tuple:
        ctr = container(deployment)
        return ctr["image"], repr(ctr.get("envFrom"))
    shapes = {name: shape(deployment_for(name)) for name in SERVICES}
    assert len(set(shapes.values())) == 1, shapes


@pytest.mark.parametrize("service", SERVICES)
def test_policy_file_is_mounted_read_only_from_the_policy_configmap(service):
    deployment = deployment_for(service)
    target = environment(deployment)["MODELREG_POLICY_FILE"][1]
    directory, filename = posixpath.split(target)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for mount in container(deployment).get("volumeMounts") or []:
        if mount["mountPath"].rstrip("/") == directory:
            assert mount.get("readOnly") is True, f"{service} mounts the policy writable"
            source = volumes[mount["name"]].get("configMap")
            assert source and source["name"] == "modelreg-policy", f"{service}: {directory} is not the policy"
            keys = ({i["path"]: i["key"] for i in source.get("items") or []}
                    or {k: k for k in only("ConfigMap", "modelreg-policy")["data"]})
            assert filename in keys, f"{service}: {target} is not in the policy ConfigMap"
            parse_policy(only("ConfigMap", "modelreg-policy")["data"][keys[filename]], target)
            return
    pytest.fail(f"{service} mounts nothing at {directory}")


@pytest.mark.parametrize("service", SERVICES)
def test_probes(service):
    ctr = container(deployment_for(service))
    port = "http" if service == "api" else "health"
    for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = (ctr.get(probe_name) or {}).get("httpGet") or {}
        assert http.get("path") == path, f"{service}: {probe_name} must GET {path}"
        assert http.get("port") in (port, container_port(ctr, port)), f"{service}: {probe_name} not on {port}"
    assert container_port(ctr, "health") == 8081
    if service == "api":
        assert container_port(ctr, "http") == 8080


@pytest.mark.parametrize("service", SERVICES)
def test_resources_and_lifecycle(service):
    deployment = deployment_for(service)
    pod = deployment["spec"]["template"]["spec"]
    assert pod.get("terminationGracePeriodSeconds") == 45, f"{service}: in-flight batches need 45 s"
    assert deployment["spec"].get("replicas") == 2
    resources = container(deployment).get("resources") or {}
    for key in ("cpu", "memory"):
        request = (resources.get("requests") or {}).get(key)
        limit = (resources.get("limits") or {}).get(key)
        assert request and limit, f"{service}: set requests and limits for {key}"
        assert quantity(request) <= quantity(limit), f"{service}: {key} request above its limit"
    assert quantity(resources["requests"]["memory"]) >= 128 * 2**20
    assert quantity(resources["limits"]["memory"]) >= 512 * 2**20


@pytest.mark.parametrize("service", SERVICES)
def test_security_context(service):
    deployment = deployment_for(service)
    pod = deployment["spec"]["template"]["spec"]
    ctr = container(deployment)
    pod_sc, ctr_sc = pod.get("securityContext") or {}, ctr.get("securityContext") or {}
    assert ctr_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{service} may run as root"
    assert ctr_sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
    assert ctr_sc.get("allowPrivilegeEscalation") is False
    assert "ALL" in ((ctr_sc.get("capabilities") or {}).get("drop") or [])
    assert ctr_sc.get("readOnlyRootFilesystem") is True, f"{service}: make the root filesystem read-only"
    # ...with a writable /tmp (validation spools pickles there to scan them).
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    tmp = [m for m in ctr.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]] and not tmp[0].get("readOnly"), (
        f"{service}: mount an emptyDir at /tmp")


def test_consumer_replicas_are_explained():
    for service in CONSUMERS:
        deployment = deployment_for(service)
        text = next(f for f, d in DOCUMENTS if d is deployment)
        assert "partition" in (K8S / text).read_text(), f"{service}: say how partitions bound replicas"


# --- Services, disruption budgets, autoscaling -------------------------------------------------

@pytest.mark.parametrize("name", sorted(of_kind("Service")))
def test_service_selects_one_deployment_and_its_ports(name):
    service = only("Service", name)
    selector = service["spec"].get("selector") or {}
    targets = selected_deployments(selector)
    assert len(targets) == 1, f"Service {name} selects {targets}"
    ctr = container(only("Deployment", targets[0]))
    ports = service["spec"].get("ports") or []
    assert ports, f"Service {name} has no ports"
    for port in ports:
        assert port.get("name") and isinstance(port.get("port"), int)
        assert port_refers_to_container(port.get("targetPort", port["port"]), ctr), (
            f"Service {name}: targetPort {port.get('targetPort')!r} is not a port of {targets[0]}")


def test_the_api_service_maps_80_to_8080():
    api = deployment_for("api")
    services = [s for s in of_kind("Service").values()
                if selected_deployments(s["spec"].get("selector") or {}) == [api["metadata"]["name"]]]
    ctr = container(api)
    mapped = [p for s in services for p in s["spec"]["ports"] if p["port"] == 80]
    assert mapped, "no Service exposes the api on port 80"
    target = mapped[0].get("targetPort")
    assert target in ("http", 8080) and container_port(ctr, "http") == 8080


@pytest.mark.parametrize("service", CONSUMERS)
def test_consumer_health_port_is_exposed(service):
    deployment = deployment_for(service)
    ports = [p for s in of_kind("Service").values()
             if selected_deployments(s["spec"].get("selector") or {}) == [deployment["metadata"]["name"]]
             for p in s["spec"]["ports"]]
    assert any(p.get("targetPort") in ("health", 8081) for p in ports), f"{service}: no Service for its health port"


@pytest.mark.parametrize("name", sorted(of_kind("PodDisruptionBudget")))
def test_pdb_targets_a_deployment(name):
    spec = only("PodDisruptionBudget", name)["spec"]
    assert ("minAvailable" in spec) != ("maxUnavailable" in spec), f"PDB {name}: one of minAvailable/maxUnavailable"
    assert len(selected_deployments(spec["selector"].get("matchLabels") or {})) == 1, f"PDB {name}"


@pytest.mark.parametrize("service", CONSUMERS)
def test_every_consumer_has_a_pdb(service):
    deployment = deployment_for(service)
    pdbs = [p for p in of_kind("PodDisruptionBudget").values()
            if selected_deployments(p["spec"]["selector"].get("matchLabels") or {}) == [deployment["metadata"]["name"]]]
    assert len(pdbs) == 1, f"{service}: {len(pdbs)} PodDisruptionBudgets"
    assert pdbs[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("name", sorted(of_kind("HorizontalPodAutoscaler")))
def test_hpa_targets_a_deployment(name):
    spec = only("HorizontalPodAutoscaler", name)["spec"]
    ref = spec["scaleTargetRef"]
    assert (ref.get("apiVersion"), ref.get("kind")) == ("apps/v1", "Deployment")
    target = only("Deployment", ref["name"])
    assert 1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"]
    for metric in spec.get("metrics") or []:
        if metric["type"] == "Resource" and metric["resource"]["target"]["type"] == "Utilization":
            resource = metric["resource"]["name"]
            assert (container(target).get("resources") or {}).get("requests", {}).get(resource), (
                f"HPA {name} scales on {resource} utilisation but {ref['name']} requests none")


def test_the_api_autoscales_on_cpu():
    api = deployment_for("api")["metadata"]["name"]
    hpas = [h for h in of_kind("HorizontalPodAutoscaler").values() if h["spec"]["scaleTargetRef"]["name"] == api]
    assert len(hpas) == 1
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpas[0]["spec"]["metrics"])
    assert hpas[0]["spec"].get("minReplicas", 1) >= 2
    for service in CONSUMERS:  # consumers are bounded by partitions: no autoscaler
        name = deployment_for(service)["metadata"]["name"]
        assert not any(h["spec"]["scaleTargetRef"]["name"] == name for h in of_kind("HorizontalPodAutoscaler").values())


# --- the real schemas, when available ------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(OBJECTS)),
                         ids=[f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}" for d in OBJECTS])
def test_matches_the_kubernetes_schema(index):
    import kubernetes_validate  # a declared test dependency (pyproject's `test` extra): missing fails
    try:
        kubernetes_validate.validate(OBJECTS[index], "1.30", strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{OBJECTS[index]['kind']}/{OBJECTS[index]['metadata']['name']}: {exc}")
