"""The Kubernetes manifests: valid against the Kubernetes API schemas (vendored by the
`kubernetes-validate` package, so no cluster is needed) and true to the connector they run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from connector.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def deployment() -> dict[str, Any]:
    (doc,) = documents("deployment.yaml")
    return doc


def container() -> dict[str, Any]:
    (found,) = deployment()["spec"]["template"]["spec"]["containers"]
    return dict(found)


def kustomized() -> list[str]:
    (kustomization,) = documents("kustomization.yaml")
    return list(kustomization["resources"])


@pytest.mark.parametrize("name", kustomized())
def test_each_manifest_is_valid_for_kubernetes(name: str) -> None:
    for doc in documents(name):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_rejects_a_broken_manifest() -> None:
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_manifest_of_the_folder_is_applied() -> None:
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert files == set(kustomized())


def connector_config(tmp_path: Path) -> Any:
    (configmap,) = documents("configmap.yaml")
    text = configmap["data"]["connector.yaml"]
    secret = tmp_path / "client_secret"
    secret.write_text("from-the-mounted-secret")
    secret.chmod(0o400)
    config = tmp_path / "connector.yaml"
    config.write_text(text.replace("/var/run/secrets/connector/client_secret", str(secret)))
    return load_settings(config, {})


def test_the_configmap_holds_a_config_the_connector_accepts(tmp_path: Path) -> None:
    settings = connector_config(tmp_path)
    assert settings.sink.client_secret is not None
    assert settings.sink.client_secret.get_secret_value() == "from-the-mounted-secret"


def test_probes_and_port_match_the_connector(tmp_path: Path) -> None:
    settings = connector_config(tmp_path)
    main = container()
    (port,) = main["ports"]
    assert port["containerPort"] == settings.metrics.port
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics.port)


def test_the_grace_period_outlasts_the_drain(tmp_path: Path) -> None:
    settings = connector_config(tmp_path)
    grace = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.pipeline.shutdown_grace_seconds


def test_the_pod_runs_as_the_image_user_without_privileges() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    pod = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user.group(1)), int(user.group(2)))
    assert pod["runAsNonRoot"] is True
    own = container()["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def test_memory_fits_the_measured_peak_with_headroom() -> None:
    # the benchmark's peak RSS under a 1,000,000-event backlog is ~100 MB (README), and the
    # design bound is 200 MB: the limit must hold the bound, the request the steady state
    resources = container()["resources"]
    assert _mebibytes(resources["limits"]["memory"]) >= 200
    assert 64 <= _mebibytes(resources["requests"]["memory"]) <= 200
