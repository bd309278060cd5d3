"""The acr-import engine against the served ARM (tests/support/arm.py: Azure Resource Manager's REST
shapes on loopback, fed a static credential; each import is a real skopeo copy between real local
registries, so verification after an import reads what really arrived).

- `sync --engine acr-import --dry-run` prints the import requests and opens no connection;
- a run imports every image server-side (0 bytes through this process), verifies each digest
  through the registry API, and `migrate` rewrites only verified references;
- ARM's failures (quota, source unauthorized or throttled, a tag NoForce keeps) are one line
  naming the image and what to do; ARM's own 429s are retried;
- another ACR is imported from by resource id; Force overwrites.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mirror.azure import identity
from mirror.cli import main
from tests.support.arm import ArmServer
from tests.support.images import build_image, build_index, inspect_raw, push, sha256
from tests.support.registries import Registry

pytestmark = pytest.mark.registry
pytest.importorskip("azure.mgmt.containerregistry")

RG = "rg-mirror"


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, [*args], catch_exceptions=False, env=env)


def write_config(path: Path, target: str, *, registries: dict[str, str], azure: dict[str, Any],
                 copy: dict[str, Any] | None = None) -> Path:
    escaped = target.replace(".", r"\.")
    lines = [f"target: {{registry: '{target}'}}", f"policy: {{imageRegex: '^{escaped}/.+$'}}", "registries:"]
    lines += [f"  '{host}': {settings}" for host, settings in registries.items()]
    lines.append("azure:")
    lines += [f"  {key}: {json.dumps(value)}" for key, value in azure.items()]
    lines.append("copy:")
    lines += [f"  {key}: {json.dumps(value)}" for key, value in ({"engine": "acr-import"} | (copy or {})).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def deployment(path: Path, images: list[str]) -> Path:
    containers = "".join(f"        - name: c{i}\n          image: {image}\n" for i, image in enumerate(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: shop}\nspec:\n"
                    "  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n"
                    f"    spec:\n      containers:\n{containers}")
    return path


def served_digest(registry: Registry, ref: str) -> str:
    return sha256(inspect_raw(f"{registry.host}/{ref}", registry))


# --------------------------------------------------------------------------- dry run: no network


class ConnectionCounter:
    """A listener every endpoint points at, and a guard on every socket connect of this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.attempts: list[Any] = []
        real = socket.socket.connect

        def connect(sock: socket.socket, address: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.attempts.append(address)
            return real(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)

    def accepted(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


def test_dry_run_prints_each_import_request_and_contacts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    counter = ConnectionCounter(monkeypatch)
    nowhere = f"127.0.0.1:{counter.port}"
    target = "crmirror.azurecr.io"
    registry_id = f"/subscriptions/00000000-0000-4000-8000-0000000000a1/resourceGroups/{RG}/providers/" \
                  "Microsoft.ContainerRegistry/registries/crmirror"
    digest = "sha256:" + "a" * 64
    # Docker Hub credentials in a Docker config: passed along with the import (never printed)
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {
        "auth": "aHVidXNlcjpodWItc2VjcmV0LXZhbHVl"}}}))  # hubuser:hub-secret-value
    config = write_config(tmp_path / "c.yaml", target, registries={
        "docker.io": f"{{endpoint: 'https://{nowhere}'}}", "ghcr.io": f"{{endpoint: 'https://{nowhere}'}}",
        target: f"{{endpoint: 'https://{nowhere}'}}"},
        azure={"arm_endpoint": f"https://{nowhere}", "registry_id": registry_id, "import_mode": "Force"})
    tree = deployment(tmp_path / "k8s" / "app.yaml", ["nginx:1.27", f"ghcr.io/org/tool@{digest}", "quay.io/org/x"])
    result = invoke("sync", str(tree), "--config", str(config), "--engine", "acr-import", "--dry-run",
                    env={"DOCKER_CONFIG": str(docker_config)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"  POST {registry_id}/importImage source docker.io/library/nginx:1.27 targetTags " \
           "[docker.io/library/nginx:1.27] mode Force, credentials of hubuser from docker config (auths)" in lines
    # a digest-only reference gets the tag the registry engine gives it
    assert f"  POST {registry_id}/importImage source ghcr.io/org/tool@{digest} targetTags " \
           f"[ghcr.io/org/tool:sha256-{'a' * 64}] mode Force" in lines
    assert f"  POST {registry_id}/importImage source quay.io/org/x:latest targetTags [quay.io/org/x:latest] " \
           "mode Force" in lines
    assert result.stdout.count("would copy") == 3 and "hub-secret-value" not in result.output
    assert counter.attempts == [] and counter.accepted() == 0  # neither ARM nor any registry was contacted

    # without a resource id the registry is found in ARM at run time; the dry run still asks nothing
    config = write_config(tmp_path / "c2.yaml", target, registries={target: f"{{endpoint: 'https://{nowhere}'}}"},
                          azure={"arm_endpoint": f"https://{nowhere}", "subscription": "s"})
    result = invoke("sync", "--image", "nginx:1.27", "--config", str(config), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"POST (the registry of {target}, found in ARM)/importImage source docker.io/library/nginx:1.27" \
        in result.stdout
    assert counter.attempts == [] and counter.accepted() == 0


# --------------------------------------------------------------------------- real imports


@pytest.fixture
def setup(arm: ArmServer, registry_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A source registry, a private one (basic auth), and an ACR target behind the served ARM."""
    source, private, target = registry_factory(), registry_factory(auth="basic"), registry_factory()
    acr = arm.add_registry("crtarget", target, sku="Standard")
    monkeypatch.setattr(identity, "_default", arm.credential())  # the static test credential
    single = build_image(tmp_path / "img", layers=[2048, 1024], seed="import-single")
    index = build_index(tmp_path / "img", seed="import-index")
    secret = build_image(tmp_path / "img", layers=[1024], seed="import-private")
    pinned = build_image(tmp_path / "img", layers=[512], seed="import-pinned")
    push(single, source, "team/api", "1.0")
    push(index, source, "multi/app", "2.0")
    push(pinned, source, "team/pinned")  # by digest only
    push(secret, private, "secret/app", "3")
    monkeypatch.setenv("PRIVATE_REGISTRY_PASSWORD", private.password or "")
    config = write_config(tmp_path / "c.yaml", target.host, registries={
        source.host: "{insecure: true}", target.host: "{insecure: true}",
        private.host: f"{{insecure: true, username: {private.username}, password_env: PRIVATE_REGISTRY_PASSWORD}}"},
        azure={"arm_endpoint": arm.url, "ca_file": str(arm.ca_file), "subscription": arm.subscription,
               "poll_interval": 0})
    return {"source": source, "private": private, "target": target, "acr": acr, "config": config,
            "single": single, "index": index, "secret": secret, "pinned": pinned}


def test_migrate_imports_server_side_verifies_and_rewrites_only_verified(setup: dict[str, Any], arm: ArmServer,
                                                                        tmp_path: Path):
    source, private, target = setup["source"], setup["private"], setup["target"]
    images = [f"{source.host}/team/api:1.0", f"{source.host}/multi/app:2.0",
              f"{source.host}/team/pinned@{setup['pinned'].manifest_digest}", f"{private.host}/secret/app:3",
              f"{source.host}/team/ghost:0.0"]
    tree = deployment(tmp_path / "k8s" / "app.yaml", images)
    report = tmp_path / "report.json"
    result = invoke("migrate", str(tree), "--config", str(setup["config"]), "--report", str(report))
    assert result.exit_code == 1, result.output  # the ghost cannot be imported: one reference still blocks
    data = json.loads(report.read_text())
    status = {i["source"]: i for i in data["images"]}
    assert {s: i["status"] for s, i in status.items()} == {
        images[0]: "copied", images[1]: "copied", images[2]: "copied", images[3]: "copied", images[4]: "failed"}
    assert sum(i["bytes_moved"] for i in data["images"]) == 0  # nothing passed through this machine
    # the tier (Standard, read through ARM) paced the registry requests; the run says how close it came
    assert f"pacing: {target.host} (ACR Standard): reads peaked at " in result.stderr
    assert "/min of 3,000" in result.stderr and "/min of 500" in result.stderr
    ghost = status[images[4]]["error"]
    assert ghost.startswith(f"HEAD manifest {source.host}/team/ghost:0.0") and "\n" not in ghost

    # every image went through importImage, pinned to the digest verified, NoForce, all platforms
    ops = arm.imports()
    assert len(ops) == 4 and all(op.status == "Succeeded" for op in ops)
    bodies = {op.body["source"]["sourceImage"]: op.body for op in ops}
    assert bodies[f"team/api@{setup['single'].manifest_digest}"]["targetTags"] == [
        f"127.0.0.1-{source.port}/team/api:1.0"]
    assert bodies[f"team/pinned@{setup['pinned'].manifest_digest}"]["targetTags"] == [
        f"127.0.0.1-{source.port}/team/pinned:sha256-{setup['pinned'].manifest_digest[7:]}"]
    assert {b["mode"] for b in bodies.values()} == {"NoForce"}
    passed = bodies[f"secret/app@{setup['secret'].manifest_digest}"]["source"]
    assert passed["registryUri"] == private.host
    assert passed["credentials"] == {"username": private.username, "password": private.password}
    assert private.password not in result.output and private.password not in report.read_text()
    # the target holds the source's digests (every platform of the index)
    assert served_digest(target, f"127.0.0.1-{source.port}/multi/app:2.0") == setup["index"].manifest_digest
    for child in setup["index"].children:
        assert served_digest(target, f"127.0.0.1-{source.port}/multi/app@{child.manifest_digest}") == \
            child.manifest_digest

    text = tree.read_text()
    assert text.count(f"image: {target.host}/") == 4
    assert f"image: {source.host}/team/ghost:0.0\n" in text  # never rewritten to an image that is not there
    assert f"image: {target.host}/127.0.0.1-{source.port}/team/pinned@{setup['pinned'].manifest_digest}\n" in text

    # a second run finds everything present: no import, one HEAD each
    again = tmp_path / "again.json"
    assert invoke("sync", "--image", images[0], "--config", str(setup["config"]), "--report",
                  str(again)).exit_code == 0
    assert json.loads(again.read_text())["images"][0]["status"] == "present" and len(arm.imports()) == 4


def test_an_import_arm_reports_done_but_the_registry_lacks_is_not_rewritten(
        setup: dict[str, Any], arm: ArmServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.support import arm as served

    monkeypatch.setattr(served.ImportJob, "run", lambda self: None)  # ARM says Succeeded, copies nothing
    source, target = setup["source"], setup["target"]
    tree = deployment(tmp_path / "k8s" / "app.yaml", [f"{source.host}/team/api:1.0"])
    result = invoke("migrate", str(tree), "--config", str(setup["config"]))
    assert result.exit_code == 1
    assert f"ARM reported success but the target does not hold {setup['single'].manifest_digest}" in result.stderr
    assert f"image: {source.host}/team/api:1.0\n" in tree.read_text() and target.host not in tree.read_text()


def test_arm_failures_are_one_line_naming_the_image_and_what_to_do(setup: dict[str, Any], arm: ArmServer,
                                                                     tmp_path: Path):
    source, private = setup["source"], setup["private"]

    def sync(image: str) -> dict[str, Any]:
        report = tmp_path / "r.json"
        invoke("sync", "--image", image, "--config", str(setup["config"]), "--report", str(report))
        return json.loads(report.read_text())["images"][0]

    arm.fail_next_import("QuotaExceeded", "Registry storage quota exceeded.")
    quota = sync(f"{source.host}/team/api:1.0")
    assert quota["status"] == "failed"
    assert quota["error"].startswith(f"import {source.host}/team/api@")
    assert "QuotaExceeded: Registry storage quota exceeded.; the registry's quota is reached" in quota["error"]

    arm.fail_next_import("TooManyRequests", "toomanyrequests: the source registry throttled the import")
    throttled = sync(f"{source.host}/team/api:1.0")
    assert f"{source.host} throttled the import: run sync again later" in throttled["error"]

    # the source refuses the import (ACR reaches it without what acr-mirror reads it with), in ACR's words
    arm.fail_next_import("InvalidParameters",
                         'Invalid message Unauthorized Unauthorized {"errors":[{"code":"UNAUTHORIZED"}]}')
    refused = sync(f"{private.host}/secret/app:3")
    assert f"{private.host} refused the import: give acr-mirror credentials for it" in refused["error"]
    assert private.password not in refused["error"]

    # the source lost the image between acr-mirror's look and the import; anything else stays ARM's words
    arm.fail_next_import("InvalidParameters", "Unable to find manifest digest  Repo: team/api Tag: 1.0 Manifest: ")
    assert f"{source.host} has no such image: check the reference" in sync(f"{source.host}/team/api:1.0")["error"]
    arm.fail_next_import("InternalServerError", "Something\nunexpected happened.")
    other = sync(f"{source.host}/team/api:1.0")["error"]
    assert other.endswith("InternalServerError: Something unexpected happened.") and "\n" not in other

    # ARM throttling itself is retried by azure-core (Retry-After honoured)
    arm.throttle(2, retry_after=0)
    assert sync(f"{source.host}/team/api:1.0")["status"] == "copied"


def test_no_force_keeps_a_target_tag_and_force_overwrites(setup: dict[str, Any], arm: ArmServer, tmp_path: Path):
    source, target = setup["source"], setup["target"]
    other = build_image(tmp_path / "img", layers=[256], seed="import-other")
    push(other, target, f"127.0.0.1-{source.port}/team/api", "1.0")  # the target tag holds another image
    report = tmp_path / "r.json"
    args = ("sync", "--image", f"{source.host}/team/api:1.0", "--report", str(report))
    result = invoke(*args, "--config", str(setup["config"]))
    item = json.loads(report.read_text())["images"][0]
    assert result.exit_code == 1 and item["status"] == "failed"
    assert f"the target tag holds {other.manifest_digest}" in item["error"]
    assert "set azure.import_mode: Force to overwrite it" in item["error"]
    assert arm.imports() == []  # refused before asking ARM

    forced = tmp_path / "force.yaml"
    forced.write_text(setup["config"].read_text().replace("azure:\n", 'azure:\n  import_mode: "Force"\n'))
    assert invoke(*args, "--config", str(forced)).exit_code == 0
    assert [op.body["mode"] for op in arm.imports()] == ["Force"]
    assert served_digest(target, f"127.0.0.1-{source.port}/team/api:1.0") == setup["single"].manifest_digest


def test_another_acr_is_imported_from_by_resource_id(arm: ArmServer, registry_factory: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    shared, target = registry_factory(auth="basic"), registry_factory()
    other = arm.add_registry("crshared", shared, resource_group="rg-shared")
    arm.add_registry("crtarget", target)
    monkeypatch.setattr(identity, "_default", arm.credential())
    image = build_image(tmp_path, layers=[1024], seed="by-resource-id")
    push(image, shared, "base/app", "7")
    monkeypatch.setenv("SHARED_PASSWORD", shared.password or "")
    config = write_config(tmp_path / "c.yaml", target.host, registries={
        target.host: "{insecure: true}",
        shared.host: f"{{insecure: true, username: {shared.username}, password_env: SHARED_PASSWORD}}"},
        azure={"arm_endpoint": arm.url, "ca_file": str(arm.ca_file), "subscription": arm.subscription,
               "poll_interval": 0})
    result = invoke("sync", "--image", f"{shared.host}/base/app:7", "--config", str(config))
    assert result.exit_code == 0, result.output
    (op,) = arm.imports()
    assert op.body["source"] == {"resourceId": other.id, "sourceImage": f"base/app@{image.manifest_digest}"}
    assert served_digest(target, f"127.0.0.1-{shared.port}/base/app:7") == image.manifest_digest
    # the client asked tokens for the ARM audience it was pointed at
    assert identity._default.scopes and {s for s in identity._default.scopes} == {(arm.credential_scope,)}


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    for azure, message in [({"import_mode": "Sometimes"}, "azure.import_mode must be NoForce"),
                           ({"registry_id": "/subscriptions/x/crtarget"}, "azure.registry_id must look like"),
                           ({"arm_endpoint": "http://arm.local"}, "azure.arm_endpoint must be an https:// URL"),
                           ({"cache_credentials": {"docker.io": {"username_secret": "u", "password_secret": "p"}}},
                            "must be a Key Vault secret URI")]:
        config = write_config(tmp_path / "c.yaml", "cr.example.io", registries={}, azure=azure)
        result = invoke("sync", "--image", "nginx:1", "--config", str(config), "--dry-run")
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_without_an_azure_section_every_image_says_what_to_configure(setup: dict[str, Any], arm: ArmServer,
                                                                      tmp_path: Path):
    source, target = setup["source"], setup["target"]
    config = write_config(tmp_path / "bare.yaml", target.host, azure={"poll_interval": 0}, registries={
        source.host: "{insecure: true}", target.host: "{insecure: true}"})
    report = tmp_path / "r.json"
    result = invoke("sync", "--image", f"{source.host}/team/api:1.0", "--image", f"{source.host}/multi/app:2.0",
                    "--config", str(config), "--report", str(report))
    assert result.exit_code == 1
    errors = [i["error"] for i in json.loads(report.read_text())["images"]]
    assert len(errors) == 2 and all(f"find registry {target.host}: NotConfigured" in e and
                                    "set azure.registry_id (or azure.subscription" in e for e in errors)
    assert arm.log == [] and "Traceback" not in result.output


def test_imports_in_flight_stay_within_the_bound(setup: dict[str, Any], arm: ArmServer, tmp_path: Path):
    """Six images, eight at a time, at most two imports in flight (azure.import_concurrency: 2)."""
    import threading

    from manifests_rewriter.config import load_config
    from manifests_rewriter.model import Mapping
    from manifests_rewriter.reference import parse
    from mirror.azure.arm import Arm
    from mirror.engines.acr_import import AcrImportEngine
    from mirror.settings import SECTIONS, settings_of

    source, target = setup["source"], setup["target"]
    for i in range(6):
        push(setup["single"], source, f"fan/app{i}", "1")
    setup["config"].write_text(setup["config"].read_text().replace("azure:\n", "azure:\n  import_concurrency: 2\n"))
    settings = settings_of(load_config(setup["config"], sections=SECTIONS))

    class Tracking(Arm):
        def __init__(self) -> None:
            super().__init__(settings.azure)
            self.lock, self.now, self.most = threading.Lock(), 0, 0
            self.two = threading.Barrier(2, timeout=30)  # the first two meet here: the bound is reached

        def import_image(self, *args: Any, **kwargs: Any) -> None:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                if self.most <= 2 and not self.two.broken:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        self.two.wait()
                super().import_image(*args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1

    tracking = Tracking()
    mappings = [Mapping(parse(f"{source.host}/fan/app{i}:1"), parse(f"{target.host}/fan/app{i}:1")) for i in range(6)]
    with AcrImportEngine(settings, arm=tracking) as engine:
        results = engine.copy_all(mappings)
    assert [r.status for r in results] == ["copied"] * 6 and len(arm.imports()) == 6
    assert tracking.most == 2
