"""Secrets never leak: passwords, registry tokens, ACR refresh tokens and Authorization headers.

Known secrets are planted (registry passwords in the environment and in the config, an Entra ID
token), every token the token servers sign is recorded as it is issued, and then scan, plan, sync,
rewrite and migrate run at DEBUG logging on every logger, successful and failing, in process and
as a subprocess with ACR_MIRROR_DEBUG=1.  Every output is searched for every secret: stdout,
stderr, log records (messages, arguments and tracebacks), the reports (JSON and Markdown), the
plan file, the rewritten manifests, the errors of failed images and the text and repr of
exceptions raised by the registry client.  Also: TLS stays verified unless ``insecure`` names the host.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from manifests_rewriter.config import load_config as load_core_config
from mirror import cli
from mirror.azure import identity as identity_module
from mirror.azure.identity import EntraIdTokenProvider
from mirror.engines.registry import RegistryEngine as CopyEngine
from mirror.registry.credentials import credentials_for
from mirror.settings import SECTIONS, settings_of
from tests.support.images import build_image, push
from tests.support.registries import Registry, static_credential

from .conftest import cli_env, write_config

pytestmark = pytest.mark.registry


class Secrets:
    """Every secret of a test, by name; tokens are added as the servers sign them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, name: str, value: str | None) -> None:
        if value:
            self.values[name] = value
            if value.count(".") == 2:  # a JWT: its signature alone identifies it too
                self.values[name + " (signature)"] = value.rsplit(".", 1)[1]

    def basic(self, name: str, username: str, password: str) -> None:
        self.add(name, password)
        self.add(name + " (Authorization: Basic)", base64.b64encode(f"{username}:{password}".encode()).decode())

    def record_tokens(self, server: Any, label: str) -> None:
        sign = server.sign

        def recording_sign(claims: dict[str, Any]) -> str:
            token = sign(claims)
            kind = "refresh" if claims.get("grant_type") == "refresh_token" else "access"
            self.add(f"{label} {kind} token {len(self.values)}", token)
            return token

        server.sign = recording_sign

    def leaks(self, outputs: dict[str, str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for where, text in outputs.items():
            for name, value in self.values.items():
                if value in text:
                    found.setdefault(name, []).append(where)
        return found

    @property
    def planted(self) -> int:
        return len([n for n in self.values if not n.endswith("(signature)")])


def _image(tmp_path: Path, registry: Registry, repo: str, seed: str) -> str:
    image = build_image(tmp_path / "oci", layers=[2048, 1024], seed=seed)
    push(image, registry, repo, "1")
    return f"{registry.host}/{repo}:1"


def _deployment(*images: str) -> str:
    containers = "".join(f"      - name: c{i}\n        image: {ref}\n" for i, ref in enumerate(images))
    return ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: shop}\nspec:\n"
            "  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n"
            f"    spec:\n      containers:\n{containers}")


@pytest.fixture
def world(basic_registry: Registry, token_registry: Registry, acr_registry: Registry, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    secrets = Secrets()
    secrets.basic("basic registry password", basic_registry.username or "", basic_registry.password or "")
    secrets.basic("token registry password", token_registry.username or "", token_registry.password or "")
    secrets.basic("ACR admin password", acr_registry.username or "", acr_registry.password or "")
    secrets.add("Entra ID access token", acr_registry.aad_token)
    assert token_registry.token_server is not None and acr_registry.acr is not None
    secrets.record_tokens(token_registry.token_server, "registry")
    secrets.record_tokens(acr_registry.acr, "ACR")

    one = _image(tmp_path, basic_registry, "app/one", "secrets/one")
    two = _image(tmp_path, token_registry, "app/two", "secrets/two")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "deploy.yaml").write_text(_deployment(one, two))
    env_name = "RELIABILITY_BASIC_PASSWORD"
    monkeypatch.setenv(env_name, basic_registry.password or "")
    config = write_config(tmp_path / "config.yaml", acr_registry.host, {
        basic_registry.host: {"insecure": True, "username": basic_registry.username, "password_env": env_name},
        token_registry.host: {"insecure": True, "username": token_registry.username,
                              "password": token_registry.password},  # in plain text: warned about
        acr_registry.host: {"insecure": True, "auth": "azure"},
        **{h: {"insecure": True} for r in (token_registry, acr_registry) for h in r.hosts[1:]},  # token realms
    })
    monkeypatch.setattr(identity_module, "default_entra_id",
                        lambda: EntraIdTokenProvider(static_credential(acr_registry.aad_token)))
    return {"secrets": secrets, "tree": tree, "config": config, "images": [one, two], "tmp": tmp_path,
            "basic": basic_registry, "token": token_registry, "acr": acr_registry, "env_name": env_name}


def _invoke(args: list[str], outputs: dict[str, str], label: str) -> Any:
    result = CliRunner().invoke(cli.main, args, catch_exceptions=True)
    outputs[f"{label}: stdout"] = result.stdout
    outputs[f"{label}: stderr"] = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        outputs[f"{label}: exception"] = f"{result.exception!s} {result.exception!r}"
    return result


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"{record.exc_info[1]!s} {record.exc_info[1]!r}")
    return "\n".join(parts)


def test_no_secret_in_any_output(world: dict[str, Any], caplog: pytest.LogCaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch, figures: Any):
    caplog.set_level(logging.DEBUG)
    secrets: Secrets = world["secrets"]
    tree, config, tmp = str(world["tree"]), str(world["config"]), world["tmp"]
    outputs: dict[str, str] = {}

    # the whole pipeline, successful
    scan = _invoke(["scan", tree, "--config", config, "--format", "json"], outputs, "scan")
    assert scan.exit_code == 1
    plan = _invoke(["plan", tree, "--config", config, "--output", str(tmp / "plan.json")], outputs, "plan")
    assert plan.exit_code == 0, plan.output
    sync = _invoke(["sync", tree, "--config", config, "--report", str(tmp / "report.json")], outputs, "sync")
    assert sync.exit_code == 0, sync.output
    again = _invoke(["sync", "--plan", str(tmp / "plan.json"), "--config", config, "--report", str(tmp / "report.md")],
                    outputs, "sync --plan")
    assert again.exit_code == 0, again.output
    rewrite = _invoke(["rewrite", tree, "--config", config, "--diff"], outputs, "rewrite --diff")
    assert rewrite.exit_code == 0 and "+" in rewrite.stdout, rewrite.output
    done = _invoke(["rewrite", tree, "--config", config], outputs, "rewrite")
    assert done.exit_code == 0 and "rewrote" in done.stderr, done.output
    assert "plain text" in sync.stderr  # the password in the config was warned about, not shown

    # failing runs: wrong passwords, a refused Entra ID token, an image that is not there
    wrong = "Wr0ng-Passw0rd-planted-7f3a9c"
    secrets.basic("wrong password", world["basic"].username, wrong)
    monkeypatch.setenv(world["env_name"], wrong)
    bad_token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.planted-refused-aad-token-sig"
    secrets.add("refused Entra ID token", bad_token)
    monkeypatch.setattr(identity_module, "default_entra_id", lambda: EntraIdTokenProvider(static_credential(bad_token)))
    (world["tree"] / "more.yaml").write_text(_deployment(world["images"][0], world["basic"].host + "/app/none:1",
                                                         world["token"].host + "/app/none:2"))
    failing = _invoke(["sync", tree, "--config", config, "--report", str(tmp / "failed.json")], outputs, "failing sync")
    assert failing.exit_code == 1, failing.output
    migrate = _invoke(["migrate", tree, "--config", config, "--report", str(tmp / "migrate.json")], outputs,
                      "failing migrate")
    assert migrate.exit_code != 0
    for name in ("plan.json", "report.json", "report.md", "failed.json", "migrate.json"):
        if (tmp / name).exists():
            outputs[name] = (tmp / name).read_text()
    for path in world["tree"].iterdir():
        outputs[f"manifest {path.name}"] = path.read_text()

    # the engine and client directly: errors, exceptions, reprs
    loaded = load_core_config(config, sections=SECTIONS)
    settings = settings_of(loaded)
    with CopyEngine(settings) as engine:
        from manifests_rewriter.model import Mapping
        from manifests_rewriter.reference import parse

        for ref in (world["images"][0], world["token"].host + "/app/none:3"):
            source = parse(ref)
            result = engine.copy(Mapping(source, parse(f"{loaded.target_registry}/{source.repository}:x")))
            outputs[f"engine error {ref}"] = f"{result.error} {result!r} {result.as_json()}"
            assert result.status == "failed"
        for host in (world["basic"].host, world["token"].host, world["acr"].host):
            client = engine.client(host)
            try:
                client.repo("app/none").get_manifest("missing")
            except Exception as exc:  # noqa: BLE001 - every exception is searched
                outputs[f"exception from {host}"] = f"{exc!s} {exc!r} {exc.args!r} {getattr(exc, '__dict__', '')}"
            outputs[f"client repr {host}"] = f"{client!r} {client.auth!r} {client.settings!r}"
            outputs[f"credentials repr {host}"] = repr(credentials_for(host, settings.registry(host)))
    outputs["config repr"] = repr(loaded)
    outputs["logs"] = _log_text(caplog)

    figures.record("secrets", tried=secrets.planted)
    assert len([n for n in secrets.values if "token" in n and "signature" not in n]) >= 4  # tokens were issued
    leaks = secrets.leaks(outputs)
    figures.record("secrets", leaked=len(leaks))
    assert leaks == {}, leaks
    figures.record("secrets", handled=secrets.planted)


def test_no_secret_in_a_debug_subprocess(basic_registry: Registry, token_registry: Registry,
                                         target_registry: Registry, tmp_path: Path, figures: Any):
    """The console script's own outputs with ACR_MIRROR_DEBUG=1 (tracebacks on), credentials from the environment."""
    secrets = Secrets()
    secrets.basic("basic registry password", basic_registry.username or "", basic_registry.password or "")
    secrets.basic("token registry password", token_registry.username or "", token_registry.password or "")
    one = _image(tmp_path, basic_registry, "app/one", "secrets/sub-one")
    two = _image(tmp_path, token_registry, "app/two", "secrets/sub-two")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "deploy.yaml").write_text(_deployment(one, two, basic_registry.host + "/app/none:1"))
    config = write_config(tmp_path / "config.yaml", target_registry.host, {
        h: {"insecure": True} for h in (basic_registry.host, *token_registry.hosts, target_registry.host)})
    env = cli_env()
    env["ACR_MIRROR_DEBUG"] = "1"
    for registry in (basic_registry, token_registry):
        prefix = "ACR_MIRROR_" + "".join(c if c.isalnum() else "_" for c in registry.host).upper() + "_"
        env[prefix + "USERNAME"], env[prefix + "PASSWORD"] = registry.username or "", registry.password or ""
    outputs: dict[str, str] = {}
    for label, args in {
        "sync": ["sync", str(tree), "--config", str(config), "--report", str(tmp_path / "r.json")],
        "sync, wrong password": ["sync", str(tree), "--config", str(config)],
    }.items():
        if label == "sync, wrong password":
            wrong = "An0ther-Wr0ng-planted-b1c2"
            secrets.basic("wrong password", basic_registry.username or "", wrong)
            env[next(k for k in env if k.endswith("_PASSWORD") and basic_registry.host.split(":")[1] in k)] = wrong
        run = subprocess.run([sys.executable, "-m", "mirror.cli", *args], capture_output=True, text=True, env=env,
                             timeout=120)
        outputs[f"{label}: stdout"], outputs[f"{label}: stderr"] = run.stdout, run.stderr
        assert run.returncode == 1, run.stderr  # app/none is missing (and then the password is wrong)
    outputs["report"] = (tmp_path / "r.json").read_text()
    figures.record("secrets", tried=secrets.planted)
    leaks = secrets.leaks(outputs)
    figures.record("secrets", leaked=len(leaks))
    assert leaks == {}, leaks
    figures.record("secrets", handled=secrets.planted)


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("settings, ok", [
    ("none", False),
    ("insecure-other-host", False),
    ("ca_file", True),
    ("insecure-this-host", True),
])
def test_tls_is_verified_unless_insecure_names_the_host(tls_registry: Registry, target_registry: Registry,
                                                        tmp_path: Path, settings: str, ok: bool, figures: Any):
    ref = _image(tmp_path, tls_registry, "app/tls", "secrets/tls")
    registries: dict[str, dict[str, Any]] = {target_registry.host: {"insecure": True}}
    if settings == "ca_file":
        registries[tls_registry.host] = {"ca_file": str(tls_registry.ca_file)}
    elif settings == "insecure-this-host":
        registries[tls_registry.host] = {"insecure": True}
    elif settings == "insecure-other-host":
        registries["127.0.0.2:443"] = {"insecure": True}
    config = write_config(tmp_path / "config.yaml", target_registry.host, registries)
    figures.record("hostile", tried=1)
    result = CliRunner().invoke(cli.main, ["sync", "--image", ref, "--config", str(config)])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        lines = sorted({line for line in result.stderr.splitlines() if line.startswith("failed:")})
        assert len(lines) == 1, result.stderr
        failed = lines[0]
        assert tls_registry.host in failed and "certificate" in failed.lower(), failed
        assert "ca_file" in failed and "insecure" in failed, failed  # the way out is named
    figures.record("hostile", handled=1)


def test_insecure_skips_verification_for_that_host_only(tls_registry: Registry, tmp_path: Path):
    """An insecure source does not make the (TLS) target's certificate unverified."""
    assert os.path.exists(tls_registry.ca_file or "")
    config = write_config(tmp_path / "config.yaml", tls_registry.host, {"127.0.0.1:1": {"insecure": True}})
    loaded = settings_of(load_core_config(config, sections=SECTIONS))
    with CopyEngine(loaded) as engine:
        client = engine.client(tls_registry.host)
        with pytest.raises(Exception, match="(?i)certificate"):
            client.ping()
