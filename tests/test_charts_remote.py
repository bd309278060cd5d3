"""Chart defaults with charts from the network (issue 10 item 3): a real local HTTP Helm repository
(index.yaml + archive, served here) and an OCI chart pushed into the real local registry, read
through the project's Transport and RegistryClient; cached for offline runs."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mirror.charts import HELM_CONFIG, HELM_LAYER
from mirror.cli import main
from tests.support.hostile import Image, push_image, sha256, tiny_image

CHART_VALUES = """\
image:
  registry: {registry}
  repository: team/web
  tag: ""
metrics:
  enabled: false
  image: {{registry: docker.io, repository: bitnami/nginx-exporter, tag: 0.11.0}}
"""


def chart_archive(registry: str, version: str = "1.2.3") -> bytes:
    files = {
        "web/Chart.yaml": yaml.safe_dump({"apiVersion": "v2", "name": "web", "version": version,
                                          "appVersion": "1.27.0"}),
        "web/values.yaml": CHART_VALUES.format(registry=registry),
        "web/templates/deployment.yaml": "image: {{ .Values.image.registry }}/{{ .Values.image.repository }}\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class HelmRepository:
    """index.yaml and archives on loopback, optionally behind Basic auth; counts requests."""

    def __init__(self, files: dict[str, bytes], auth: tuple[str, str] | None = None) -> None:
        self.files = files
        self.requests: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        repo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                repo.requests[self.path] += 1
                repo.authorizations.append(self.headers.get("Authorization"))
                if auth and self.headers.get("Authorization") != "Basic " + base64.b64encode(
                        f"{auth[0]}:{auth[1]}".encode()).decode():
                    self.send_response(401)
                    self.end_headers()
                    return
                body = repo.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HelmRepository:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def index(versions: list[str]) -> bytes:
    return yaml.safe_dump({"apiVersion": "v1", "entries": {"web": [
        {"name": "web", "version": v, "urls": [f"web-{v}.tgz"]} for v in versions]}}).encode()


def write_config(path: Path, target: str, insecure: list[str], extra: str = "") -> Path:
    hosts = "".join(f"  '{h}': {{insecure: true{extra if h == insecure[0] else ''}}}\n" for h in insecure)
    path.write_text(f"target: {{registry: '{target}'}}\n"
                    f"policy: {{imageRegex: '^{target.replace('.', chr(92) + '.')}/.+$'}}\n"
                    + (f"registries:\n{hosts}" if hosts else ""))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


FLUX = """\
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {{name: charts, namespace: flux-system}}
spec:
  url: {url}
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {{name: web, namespace: apps}}
spec:
  chart:
    spec:
      chart: web
      version: 1.x
      sourceRef: {{kind: HelmRepository, name: charts, namespace: flux-system}}
"""


def test_http_helm_repository_then_offline_from_the_cache(tmp_path: Path) -> None:
    archive = chart_archive("quay.io")
    with HelmRepository({"/charts/index.yaml": index(["1.0.0", "1.2.3", "2.0.0"]),
                         "/charts/web-1.2.3.tgz": archive}, auth=("reader", "s3cret")) as repo:
        tree = tmp_path / "k8s"
        tree.mkdir()
        (tree / "web.yaml").write_text(FLUX.format(url=f"http://{repo.host}/charts"))
        config = write_config(tmp_path / "c.yaml", "crazureblue.azurecr.io", [repo.host],
                              extra=", username: reader, password: s3cret")
        cache = tmp_path / "cache"
        result = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(cache), "--format", "json")
        data = json.loads(result.stdout)
        assert [(f["line"], f["path"], f["image"], f["name"], f["namespace"]) for f in data["findings"]] == [
            (13, "/spec/values/image", "quay.io/team/web:1.27.0", "web", "apps")]
        assert "chart default (web 1.2.3" in data["findings"][0]["reason"]
        assert data["unchecked"] == [] and result.exit_code == 1
        assert (cache / "web-1.2.3.tgz").read_bytes() == archive
        assert repo.requests == {"/charts/index.yaml": 1, "/charts/web-1.2.3.tgz": 1}
        assert all(a and a.startswith("Basic ") for a in repo.authorizations)
    # air-gapped: the server is gone, the cache answers
    again = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(cache), "--offline-charts",
                   "--format", "json")
    assert [f["image"] for f in json.loads(again.stdout)["findings"]] == ["quay.io/team/web:1.27.0"]
    # rewrite inserts the override, offline too; then nothing is left
    rewritten = invoke("rewrite", str(tree), "--config", str(config), "--chart-dir", str(cache), "--offline-charts",
                       "--no-verify")
    assert rewritten.exit_code == 0, rewritten.output
    assert (tree / "web.yaml").read_text() == FLUX.format(url=f"http://{repo.host}/charts") + (
        "  values:\n    image:\n      registry: crazureblue.azurecr.io\n      repository: quay.io/team/web\n")
    clean = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(cache), "--offline-charts")
    assert clean.exit_code == 0, clean.output


def test_charts_that_cannot_be_fetched_are_warnings_naming_them(tmp_path: Path) -> None:
    with HelmRepository({"/charts/index.yaml": index(["1.2.3"])}) as repo:
        tree = tmp_path / "k8s"
        tree.mkdir()
        (tree / "web.yaml").write_text(FLUX.format(url=f"http://{repo.host}/charts"))
        config = write_config(tmp_path / "c.yaml", "crazureblue.azurecr.io", [])  # not marked insecure
        result = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(tmp_path / "cache"))
        assert "warning: " in result.output and "HelmRelease apps/web: chart defaults not checked: chart web from " \
               f"http://{repo.host}/charts 1.x" in result.output and "plain HTTP" in result.output
        assert sum(repo.requests.values()) == 0  # nothing sent in clear
        config = write_config(tmp_path / "c.yaml", "crazureblue.azurecr.io", [repo.host])
        result = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(tmp_path / "cache"))
        assert "/charts/web-1.2.3.tgz: HTTP 404" in result.output
        offline = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(tmp_path / "none"),
                         "--offline-charts")
        assert "offline, so not downloaded" in offline.output


def push_chart(registry: Any, repository: str, tag: str, archive: bytes) -> str:
    config = json.dumps({"name": "web", "version": tag, "apiVersion": "v2"}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": HELM_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": HELM_LAYER, "digest": sha256(archive), "size": len(archive)}],
    }).encode()
    return push_image(registry.url, repository, Image(manifest, {sha256(config): config, sha256(archive): archive}),
                      tag)


@pytest.mark.registry
def test_oci_chart_in_the_local_registry_plan_sync_and_migrate(source_registry: Any, target_registry: Any,
                                                               tmp_path: Path) -> None:
    """An Argo CD Application of an OCI chart whose default image lives in the source registry:
    plan and sync mirror it, migrate adds the override, nothing is left."""
    push_image(source_registry.url, "team/web", tiny_image("web"), "1.27.0")
    for version in ("1.2.3", "1.3.0"):
        push_chart(source_registry, "charts/web", version, chart_archive(source_registry.host, version))
    tree = tmp_path / "apps"
    tree.mkdir()
    app = ("apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web, namespace: argocd}\n"
           "spec:\n  destination: {namespace: shop}\n  source:\n"
           f"    repoURL: {source_registry.host}/charts\n    chart: web\n    targetRevision: 1.2.x\n")
    (tree / "app.yaml").write_text(app)
    config = write_config(tmp_path / "c.yaml", target_registry.host, [source_registry.host, target_registry.host])
    cache = tmp_path / "cache"
    plan = invoke("plan", str(tree), "--config", str(config), "--chart-dir", str(cache), "--output",
                  str(tmp_path / "plan.json"))
    assert plan.exit_code == 0, plan.output
    entries = json.loads((tmp_path / "plan.json").read_text())["images"]
    assert [e["source"] for e in entries] == [f"{source_registry.host}/team/web:1.27.0"]
    assert (cache / "web-1.2.3.tgz").is_file() and not (cache / "web-1.3.0.tgz").exists()
    migrate = invoke("migrate", str(tree), "--config", str(config), "--chart-dir", str(cache))
    assert migrate.exit_code == 0, migrate.output
    target = f"127.0.0.1-{source_registry.port}/team/web"
    assert (tree / "app.yaml").read_text() == app + (
        f"    helm:\n      valuesObject:\n        image:\n          registry: {target_registry.host}\n"
        f"          repository: {target}\n")
    rescan = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(cache), "--offline-charts")
    assert rescan.exit_code == 0, rescan.output


@pytest.mark.registry
def test_oci_reference_that_is_not_a_chart(source_registry: Any, tmp_path: Path) -> None:
    push_image(source_registry.url, "charts/web", tiny_image("not-a-chart"), "1.2.3")
    tree = tmp_path / "apps"
    tree.mkdir()
    (tree / "kustomization.yaml").write_text(
        f"helmCharts:\n- name: web\n  repo: oci://{source_registry.host}/charts\n  version: 1.2.3\n")
    config = write_config(tmp_path / "c.yaml", "crazureblue.azurecr.io", [source_registry.host])
    result = invoke("scan", str(tree), "--config", str(config), "--chart-dir", str(tmp_path / "cache"))
    assert f"oci://{source_registry.host}/charts/web 1.2.3: oci://{source_registry.host}/charts/web:1.2.3 is not " \
           f"a Helm chart" in result.output
