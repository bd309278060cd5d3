"""Trust boundaries (issue 11): a hostile registry, a look-alike host or a planted link must get nothing.

Each case drives acr-mirror only through its command line (in process through click, or the console
script as a child process when memory or a hang must be watched) with config files and environment
variables, against small standard-library servers that stand for the hostile side
(tests/support/hostile.py: a registry serving crafted manifests, a token realm that records what it
gets, a server that sees plain HTTP on its TLS port) and real registries as the victim.  The
assertions are on what can be observed from outside: what the hostile server received, what the
real target registry holds afterwards, files on disk, the child's peak RSS, the output text.

Every case records one "trust" try, and one "held" when the safe behaviour was seen.  Cases marked
xfail reproduce a defect of issue 11 that is not fixed yet; the marker goes when the fix lands.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mirror import cli
from tests.support.hostile import (
    OCI_INDEX,
    FakeRegistry,
    HostileServer,
    Reply,
    index_of,
    push_image,
    sha256,
    stream,
    tiny_image,
)

from .conftest import registry_state, write_config

pytestmark = pytest.mark.registry
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")  # raw control characters (tab and newline aside)


def issue11(defect: str) -> pytest.MarkDecorator:
    """Marks a case that fails until issue 11's fix for `defect` lands (then the marker goes)."""
    return pytest.mark.xfail(strict=True, reason=f"issue 11: {defect}")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def no_user_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credential of the person running the tests is in reach of an in-process run."""
    for name in list(os.environ):
        if name.startswith(("ACR_MIRROR_", "DOCKER_", "AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


@pytest.fixture
def servers() -> Iterator[list[HostileServer]]:
    """Hostile servers of a test, stopped at teardown: ``servers.append(FakeRegistry().start())``."""
    started: list[HostileServer] = []
    yield started
    for server in started:
        server.stop()


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """`acr-mirror ARGS...` in process; an exception that escapes the CLI fails the test as a traceback."""
    result = CliRunner().invoke(cli.main, list(args), env=env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"acr-mirror raised {result.exception!r}\n{result.output}") from result.exception
    print(f"$ acr-mirror {' '.join(args)}\nexit {result.exit_code}\n{result.output}")  # shown when the case fails
    return result


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def others_than(state: dict[str, str], repository: str) -> dict[str, str]:
    """The tags of a registry outside `repository` (repository:tag -> digest)."""
    return {k: v for k, v in state.items() if not k.startswith(repository + ":")}


# --------------------------------------------------------------------------- 1. digests from a registry


def _digest_attack_world(tmp_path: Path, target: Any, servers: list[HostileServer],
                         **copy: Any) -> tuple[FakeRegistry, Path, dict[str, str]]:
    """A victim repository in the real target (victim/app:stable), a hostile source, a config."""
    push_image(target.url, "victim/app", tiny_image("victim"), "stable")
    source = FakeRegistry().start()
    servers.append(source)
    config = write_config(tmp_path / "config.yaml", target.host,
                          {source.host: {"insecure": True}, target.host: {"insecure": True}}, **copy)
    return source, config, registry_state(target.url)


# The source image is app/evil:1, mapped to app/evil in the target.  Its path there is
# /v2/app/evil/manifests/REF: three '..' climb out of 'manifests', 'evil' and 'app'.
TRAVERSAL = "../../../victim/app/manifests/prod"


def _victim_untouched(target: Any, before: dict[str, str]) -> None:
    after = registry_state(target.url)
    assert others_than(after, "app/evil") == before, "a write landed outside the mapped repository app/evil"


def test_index_child_digest_cannot_write_outside_the_mapped_repository(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    source, config, before = _digest_attack_world(tmp_path, empty_target, servers)
    payload = index_of([])  # an empty index: a registry accepts it in any repository
    source.add_manifest("victim/app", payload, OCI_INDEX, "prod")  # what GET of the climbed-out path finds
    source.add_manifest("app/evil", index_of([{"mediaType": OCI_INDEX, "digest": TRAVERSAL, "size": len(payload)}]),
                        OCI_INDEX, "1")
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/evil:1", "--config", str(config))
    _victim_untouched(empty_target, before)
    assert result.exit_code == 1, result.output
    [failed] = lines(result.stderr, "failed:")
    assert f"{source.host}/app/evil:1" in failed and re.search(r"(?i)digest", failed), failed
    figures.record("trust", handled=1)


def test_referrer_digest_cannot_write_outside_the_mapped_repository(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    source, config, before = _digest_attack_world(tmp_path, empty_target, servers)
    image = tiny_image("evil")
    source.add_image("app/evil", image, "1")
    payload = index_of([])
    source.add_manifest("victim/app", payload, OCI_INDEX, "prod")

    @source.on
    def referrers(seen: Any) -> Reply | None:
        if seen.path == f"/v2/app/evil/referrers/{image.digest}":
            listing = index_of([{"mediaType": OCI_INDEX, "digest": TRAVERSAL, "size": len(payload),
                                 "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}])
            return Reply(200, {"Content-Type": OCI_INDEX}, listing)
        return None

    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/evil:1", "--config", str(config))
    _victim_untouched(empty_target, before)
    assert "Traceback" not in result.output
    if result.exit_code:  # refusing the image is safe; copying it without the bad referrer too
        [failed] = lines(result.stderr, "failed:")
        assert re.search(r"(?i)digest", failed), failed
    figures.record("trust", handled=1)


DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")  # the OCI digest grammar


def test_announced_digest_is_checked_before_it_is_used(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    """A HEAD announcing a 'digest' that climbs out of the repository: it must never become a URL (the
    source sees no request outside app/evil), nor a digest in the plan."""
    source, config, before = _digest_attack_world(tmp_path, empty_target, servers)
    image = tiny_image("evil-announced")
    source.add_image("app/evil", image, "1")
    source.add_manifest("victim/app", image.manifest, image.media_type, "prod")

    @source.on
    def announce(seen: Any) -> Reply | None:
        if seen.method == "HEAD" and seen.path.endswith("/manifests/1"):
            return Reply(200, {"Content-Type": image.media_type, "Docker-Content-Digest": TRAVERSAL,
                               "Content-Length": str(len(image.manifest))})
        if seen.method == "GET" and "/manifests/" in seen.path:  # no digest header on GET
            return Reply(200, {"Content-Type": image.media_type}, image.manifest)
        return None

    figures.record("trust", tried=1)
    plan = tmp_path / "plan.json"
    run("plan", "--image", f"{source.host}/app/evil:1", "--config", str(config), "--output", str(plan))
    run("sync", "--plan", str(plan), "--config", str(config))
    _victim_untouched(empty_target, before)
    outside = sorted({s.path for s in source.seen if s.path not in ("/v2/", "/v2") and not s.path.startswith("/v2/app/evil/")})
    assert outside == [], f"the source was asked for paths outside app/evil: {outside}"
    digests = [i["digest"] for i in json.loads(plan.read_text())["images"] if i.get("digest")] if plan.exists() else []
    assert all(DIGEST.match(d) for d in digests), digests
    figures.record("trust", handled=1)


@pytest.mark.parametrize("what", ["child manifest", "layer"])
def test_content_fetched_by_digest_must_hash_to_it(
        what: str, empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    """A child manifest or a layer answered with other bytes, the Docker-Content-Digest header lying to
    match: refused whatever the headers say, nothing written (holds today; kept through the reshape)."""
    source, config, before = _digest_attack_world(tmp_path, empty_target, servers, retries=1)
    child = tiny_image("honest-child")
    source.add_image("app/evil", child)
    source.add_manifest("app/evil", index_of([child.descriptor(platform={"os": "linux", "architecture": "amd64"})]),
                        OCI_INDEX, "1")
    layer = max(child.blobs, key=lambda d: len(child.blobs[d]))
    impostor = tiny_image("impostor")

    @source.on
    def substitute(seen: Any) -> Reply | None:
        if what == "child manifest" and seen.path.endswith(f"/manifests/{child.digest}"):
            return Reply(200, {"Content-Type": child.media_type, "Docker-Content-Digest": child.digest},
                         impostor.manifest)
        if what == "layer" and seen.method == "GET" and seen.path.endswith(f"/blobs/{layer}"):
            data = bytes(reversed(child.blobs[layer]))  # same size, other bytes
            return Reply(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": layer}, data)
        return None

    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/evil:1", "--config", str(config))
    assert registry_state(empty_target.url) == before, "something was written from content that lied"
    assert result.exit_code == 1, result.output
    [failed] = lines(result.stderr, "failed:")
    assert re.search(r"(?i)hash|digest", failed), failed
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 2. look-alike hosts


# How the environment names credentials for crazureblue.azurecr.io (README, mirror.registry.credentials).
REAL_ACR = "crazureblue.azurecr.io"
REAL_ACR_ENV = "ACR_MIRROR_CRAZUREBLUE_AZURECR_IO_"


@pytest.mark.parametrize("lookalike", ["crazureblue-azurecr.io", "crazureblue.azurecr-io"])
def test_env_credentials_do_not_reach_a_look_alike_host(
        lookalike: str, empty_target: Any, tmp_path: Path, servers: list[HostileServer],
        monkeypatch: pytest.MonkeyPatch, figures: Any):
    """The pipeline's credentials for the real ACR are in the environment; a manifest names a
    look-alike registry (each host's `endpoint` stands for its DNS: the look-alike's is an attacker's)."""
    password = f"Real-ACR-Passw0rd-{lookalike}"
    monkeypatch.setenv(REAL_ACR_ENV + "USERNAME", "ci-push")
    monkeypatch.setenv(REAL_ACR_ENV + "PASSWORD", password)
    real, hostile = FakeRegistry(challenge='Basic realm="acr"'), FakeRegistry(challenge='Basic realm="look-alike"')
    for server in (real, hostile):
        servers.append(server.start())
        server.add_image("app/x", tiny_image("look-alike"), "1")
    # control: the variables are the ones the real host reads (else this case would prove nothing)
    control = write_config(tmp_path / "control.yaml", empty_target.host, {
        REAL_ACR: {"endpoint": real.url, "insecure": True}, empty_target.host: {"insecure": True}})
    run("sync", "--image", f"{REAL_ACR}/app/x:1", "--config", str(control))
    assert real.carrying(password), f"{REAL_ACR_ENV}* did not reach {REAL_ACR}: update the variable names"
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        lookalike: {"endpoint": hostile.url, "insecure": True}, empty_target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{lookalike}/app/x:1", "--config", str(config))
    assert hostile.requests(), "the look-alike was never asked: nothing was tested"
    assert hostile.carrying(password) == [], f"{lookalike} received the password meant for {REAL_ACR}"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- TLS material for hostile servers


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    """A CA the tests configure (``ca``), a server certificate it signed (127.0.0.1 and localhost), and
    a second certificate from a CA nobody configures (``untrusted_*``)."""
    from tests.support.registries import make_ca, make_server_cert

    ca = make_ca(tmp_path / "ca")
    server = make_server_cert(ca, tmp_path / "server")
    rogue = make_server_cert(make_ca(tmp_path / "rogue-ca", "a CA nobody trusts"), tmp_path / "rogue")
    return {"ca": ca.cert_file, "cert": server.cert_file, "key": server.key_file,
            "untrusted_cert": rogue.cert_file, "untrusted_key": rogue.key_file}


def _token_realm(seen: Any) -> Reply:
    return Reply.json({"token": "realm-token", "access_token": "realm-token", "expires_in": 300})


# --------------------------------------------------------------------------- 3. token realms


@pytest.mark.parametrize("realm_at", ["another port", "the registry's own port"])
def test_basic_credentials_never_go_to_a_plain_http_realm(
        realm_at: str, certs: dict[str, Path], empty_target: Any, tmp_path: Path, servers: list[HostileServer],
        monkeypatch: pytest.MonkeyPatch, figures: Any):
    password = "Basic-Passw0rd-for-the-TLS-registry"
    monkeypatch.setenv("TRUST_SOURCE_PASSWORD", password)
    realm = HostileServer(_token_realm).start()
    servers.append(realm)
    source = FakeRegistry(tls=(certs["cert"], certs["key"])).start()
    servers.append(source)
    realm_url = f"http://{realm.host}/token" if realm_at == "another port" else f"http://{source.host}/token"
    source.challenge = f'Bearer realm="{realm_url}",service="{source.host}"'
    source.on(lambda seen: _token_realm(seen) if seen.path == "/token" else None)
    source.add_image("app/x", tiny_image("tls-source"), "1")
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        source.host: {"ca_file": str(certs["ca"]), "username": "puller", "password_env": "TRUST_SOURCE_PASSWORD"},
        empty_target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config))
    assert source.requests(), "nothing was tested"
    in_clear = [s for s in realm.seen + source.seen if not s.tls and s.carries(password)]
    assert in_clear == [], f"the password went over plain HTTP to {realm_url}"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


def test_insecure_registry_does_not_make_its_realm_unverified(
        certs: dict[str, Path], empty_target: Any, tmp_path: Path, servers: list[HostileServer],
        monkeypatch: pytest.MonkeyPatch, figures: Any):
    """A plain-HTTP registry (insecure: true, so far so good) names a realm on another host whose
    certificate nobody can verify: the credentials must not go there."""
    password = "Passw0rd-of-the-insecure-registry"
    monkeypatch.setenv("TRUST_SOURCE_PASSWORD", password)
    realm = HostileServer(_token_realm, tls=(certs["untrusted_cert"], certs["untrusted_key"])).start()
    servers.append(realm)
    source = FakeRegistry(challenge=f'Bearer realm="https://localhost:{realm.port}/token",service="x"').start()
    servers.append(source)
    source.add_image("app/x", tiny_image("insecure-source"), "1")
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        source.host: {"insecure": True, "username": "puller", "password_env": "TRUST_SOURCE_PASSWORD"},
        empty_target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config))
    assert source.requests(), "nothing was tested"
    assert realm.carrying(password) == [], "the password went to a realm whose certificate was not verified"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


def _fake_managed_identity(servers: list[HostileServer], aad_token: str) -> dict[str, str]:
    """An App Service managed-identity endpoint on loopback (what azure-identity's DefaultAzureCredential
    asks when IDENTITY_ENDPOINT and IDENTITY_HEADER are set): it hands out `aad_token`."""
    import time

    def token(seen: Any) -> Reply:
        return Reply.json({"access_token": aad_token, "expires_on": str(int(time.time()) + 3600),
                           "resource": "https://containerregistry.azure.net", "token_type": "Bearer"})

    msi = HostileServer(token).start()
    servers.append(msi)
    return {"IDENTITY_ENDPOINT": f"{msi.url}/msi/token", "IDENTITY_HEADER": "test-identity-header"}


def test_acr_refresh_token_goes_only_to_its_acr_host(
        certs: dict[str, Path], empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    """An ACR host (Entra ID exchange served by the test ACR token server) whose challenge names a realm on
    another host, reached over verified TLS: Basic credentials may go there, the ACR refresh token not."""
    import httpx

    from tests.support.cliproc import clean_env, run_cli
    from tests.support.registries import AcrTokenServer

    acr = AcrTokenServer(tmp_path / "acr").start()
    try:
        aad = acr.new_aad_token()
        realm = HostileServer(_token_realm, tls=(certs["cert"], certs["key"])).start()
        servers.append(realm)
        front = HostileServer(tls=(certs["cert"], certs["key"])).start()
        servers.append(front)
        issued: list[str] = []

        @front.on
        def acr_host(seen: Any) -> Reply:
            if seen.method == "POST" and seen.path == "/oauth2/exchange":  # the real exchange
                answer = httpx.post(acr.url + "/oauth2/exchange", content=seen.body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
                if answer.status_code == 200:
                    issued.append(answer.json()["refresh_token"])
                return Reply(answer.status_code, {"Content-Type": "application/json"}, answer.content)
            challenge = f'Bearer realm="https://localhost:{realm.port}/oauth2/token",service="{front.host}"'
            return Reply.error(401, "UNAUTHORIZED", "authentication required", **{"WWW-Authenticate": challenge})

        config = write_config(tmp_path / "config.yaml", empty_target.host, {
            front.host: {"auth": "azure", "ca_file": str(certs["ca"])},
            f"localhost:{realm.port}": {"ca_file": str(certs["ca"])},
            empty_target.host: {"insecure": True}})
        env = clean_env(_fake_managed_identity(servers, aad), home=tmp_path / "home")
        figures.record("trust", tried=1)
        proc = run_cli(["sync", "--image", f"{front.host}/app/x:1", "--config", str(config)], env=env, timeout=120)
        print(proc.output)
        # either a refresh token was issued (and must not travel), or acr-mirror refused the realm before
        # even exchanging (nothing to leak), saying why: either way the case was exercised
        refused = "a refresh token goes only to the registry it was issued for" in proc.output
        assert issued or refused, f"no refresh token was issued and nothing refused: nothing was tested\n{proc.output}"
        leaked = [s for s in realm.seen if any(s.carries(t) for t in issued) or "refresh_token" in s.form]
        assert leaked == [], f"the ACR refresh token issued for {front.host} went to localhost:{realm.port}"
        assert realm.carrying(aad) == []
        assert "Traceback" not in proc.output
        figures.record("trust", handled=1)
    finally:
        acr.stop()


# --------------------------------------------------------------------------- 4. redirects and next URLs


def _tls_source_with_basic(certs: dict[str, Path], servers: list[HostileServer], tmp_path: Path, target: Any,
                           monkeypatch: pytest.MonkeyPatch, password: str) -> tuple[FakeRegistry, Path]:
    monkeypatch.setenv("TRUST_SOURCE_PASSWORD", password)
    source = FakeRegistry(tls=(certs["cert"], certs["key"]), challenge='Basic realm="tls-source"').start()
    servers.append(source)
    config = write_config(tmp_path / "config.yaml", target.host, {
        source.host: {"ca_file": str(certs["ca"]), "username": "puller", "password_env": "TRUST_SOURCE_PASSWORD"},
        target.host: {"insecure": True}})
    return source, config


def _sent_in_clear(server: HostileServer, password: str) -> list[str]:
    return [f"{s.method} {s.target}" for s in server.seen if not s.tls and s.carries(password)]


@pytest.mark.parametrize("storage", [
    "http, same host and port",  # a scheme change is another origin (transport.origin)
    "http, same host, another port",
])
def test_blob_redirect_to_another_origin_drops_the_credentials(
        storage: str, certs: dict[str, Path], empty_target: Any, tmp_path: Path, servers: list[HostileServer],
        monkeypatch: pytest.MonkeyPatch, figures: Any):
    password = "Passw0rd-that-must-stay-with-the-registry"
    source, config = _tls_source_with_basic(certs, servers, tmp_path, empty_target, monkeypatch, password)
    image = tiny_image("downgrade")
    source.add_image("app/x", image, "1")
    other = HostileServer().start()
    servers.append(other)
    where = f"http://{source.host}" if storage.endswith("same host and port") else other.url

    def serve_storage(seen: Any) -> Reply | None:
        if seen.path.startswith("/storage/"):
            return Reply(200, {"Content-Type": "application/octet-stream"}, image.blobs[seen.path.rsplit("/", 1)[1]])
        return None

    other.on(serve_storage)

    @source.on
    def redirect(seen: Any) -> Reply | None:
        if seen.tls and seen.method == "GET" and "/blobs/" in seen.path and seen.authorization:
            return Reply(307, {"Location": f"{where}/storage/{seen.path.rsplit('/', 1)[1]}"})
        return serve_storage(seen) if not seen.tls else None

    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config))
    storage_requests = [s for s in source.seen + other.seen if s.path.startswith("/storage/")]
    assert storage_requests, "the redirect was never followed: nothing was tested"
    assert [f"{s.method} {s.target}" for s in storage_requests if s.carries(password)] == []
    assert _sent_in_clear(source, password) == []
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


def test_upload_location_on_plain_http_drops_the_credentials(
        certs: dict[str, Path], tmp_path: Path, servers: list[HostileServer], monkeypatch: pytest.MonkeyPatch,
        figures: Any):
    """The target (TLS, push credentials) answers the upload POST with an http:// Location on its own host."""
    password = "Push-Passw0rd-that-must-stay-in-TLS"
    monkeypatch.setenv("TRUST_TARGET_PASSWORD", password)
    source = FakeRegistry().start()
    servers.append(source)
    source.add_image("app/x", tiny_image("upload-downgrade"), "1")
    target = FakeRegistry(tls=(certs["cert"], certs["key"]), challenge='Basic realm="tls-target"').start()
    servers.append(target)

    @target.on
    def downgrade(seen: Any) -> Reply | None:
        if seen.tls and seen.method == "POST" and seen.path.endswith("/blobs/uploads/") and seen.authorization:
            reply = target.default(seen)  # a real upload session...
            reply.headers["Location"] = f"http://{target.host}{reply.headers['Location']}"  # ...on plain http
            return reply
        return None

    config = write_config(tmp_path / "config.yaml", target.host, {
        source.host: {"insecure": True},
        target.host: {"ca_file": str(certs["ca"]), "username": "pusher", "password_env": "TRUST_TARGET_PASSWORD"}})
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config))
    assert target.requests("POST"), "nothing was tested"
    assert _sent_in_clear(target, password) == []
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


def test_tag_list_next_link_on_plain_http_drops_the_credentials(
        certs: dict[str, Path], empty_target: Any, tmp_path: Path, servers: list[HostileServer],
        monkeypatch: pytest.MonkeyPatch, figures: Any):
    password = "Passw0rd-for-tag-pages"
    source, config = _tls_source_with_basic(certs, servers, tmp_path, empty_target, monkeypatch, password)
    source.add_image("app/x", tiny_image("tag-pages"), "1")

    @source.on
    def next_page(seen: Any) -> Reply | None:
        if seen.path == "/v2/app/x/tags/list" and seen.authorization:
            if seen.tls:
                link = f'<http://{source.host}/v2/app/x/tags/list?n=1000&last=1>; rel="next"'
                return Reply.json({"name": "app/x", "tags": ["1"]}, Link=link)
            return Reply.json({"name": "app/x", "tags": []})
        return None

    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config))
    assert source.requests("GET", "/tags/list"), "nothing was tested (tags are listed for signatures)"
    assert _sent_in_clear(source, password) == []
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 5. plain-HTTP endpoints


def test_plain_http_endpoint_without_insecure_sends_no_credentials(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], monkeypatch: pytest.MonkeyPatch,
        figures: Any):
    password = "Docker-Hub-PAT-never-in-clear"
    monkeypatch.setenv("TRUST_HUB_PAT", password)
    mirror = FakeRegistry(challenge='Basic realm="pull-through"').start()
    servers.append(mirror)
    mirror.add_image("library/nginx", tiny_image("hub"), "1.27")
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        "docker.io": {"endpoint": mirror.url, "username": "me", "password_env": "TRUST_HUB_PAT"},
        empty_target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    result = run("sync", "--image", "docker.io/library/nginx:1.27", "--config", str(config))
    assert mirror.carrying(password) == [], "the Docker Hub token went over plain HTTP"
    assert result.exit_code == 1, result.output
    [failed] = lines(result.stderr, "failed:")
    assert "insecure" in failed and "docker.io" in failed, failed  # the way out is named
    figures.record("trust", handled=1)


def test_plain_http_endpoint_without_insecure_sends_no_entra_id_token(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    from tests.support.cliproc import clean_env, run_cli

    aad = "eyJhbGciOiJIUzI1NiJ9.eyJ0aWQiOiJ0ZW5hbnQifQ.Entra-ID-token-never-in-clear"
    env = clean_env(_fake_managed_identity(servers, aad), home=tmp_path / "home")
    challenge = 'Bearer realm="/oauth2/token",service="crmirror.azurecr.io"'
    # control: asked for explicitly (insecure: true), the token does go there, so the case tests something
    allowed = FakeRegistry(challenge=challenge).start()
    servers.append(allowed)
    control = write_config(tmp_path / "control.yaml", empty_target.host, {
        "crmirror.azurecr.io": {"endpoint": allowed.url, "insecure": True}, empty_target.host: {"insecure": True}})
    run_cli(["sync", "--image", "crmirror.azurecr.io/app/x:1", "--config", str(control)], env=env, timeout=120)
    assert allowed.carrying(aad), "no Entra ID token was obtained: nothing would be tested"
    proxy = FakeRegistry(challenge=challenge).start()
    servers.append(proxy)
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        "crmirror.azurecr.io": {"endpoint": proxy.url},  # a private endpoint, written with http by mistake
        empty_target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    proc = run_cli(["sync", "--image", "crmirror.azurecr.io/app/x:1", "--config", str(config)], env=env, timeout=120)
    print(proc.output)
    assert proxy.carrying(aad) == [], "the Entra ID access token went over plain HTTP"
    assert proc.returncode == 1 and "Traceback" not in proc.output
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 6. output files and planted links


AUTHORIZED_KEYS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwnersOwnKey owner@workstation\n"


def _one_image_world(tmp_path: Path, target: Any, servers: list[HostileServer]) -> tuple[FakeRegistry, Path]:
    source = FakeRegistry().start()
    servers.append(source)
    source.add_image("app/x", tiny_image("outputs"), "1")
    config = write_config(tmp_path / "config.yaml", target.host,
                          {source.host: {"insecure": True}, target.host: {"insecure": True}})
    return source, config


@issue11("--report/--output write through a planted symlink")
@pytest.mark.parametrize("output", ["sync --report x.json", "sync --report x.md", "plan --output x.json"])
def test_outputs_never_write_through_a_planted_symlink(
        output: str, empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    """A shared directory holds a link named like the report, pointing at the user's authorized_keys."""
    source, config = _one_image_world(tmp_path, empty_target, servers)
    victim = tmp_path / "home" / ".ssh" / "authorized_keys"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(AUTHORIZED_KEYS)
    shared = tmp_path / "shared"
    shared.mkdir()
    command, option, name = output.split()
    (shared / name).symlink_to(victim)
    image = f"{source.host}/app/x:1"
    args = [command, "--image", image, "--config", str(config), option, str(shared / name)]
    if command == "plan":
        args.append("--no-resolve")
    figures.record("trust", tried=1)
    result = run(*args)
    assert victim.read_bytes() == AUTHORIZED_KEYS, f"{victim} was replaced through the link {shared / name}"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


@issue11("the Markdown report copies raw registry error text (newlines included)")
def test_markdown_report_escapes_registry_text(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    source, config = _one_image_world(tmp_path, empty_target, servers)
    planted = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlantedByTheRegistry attacker@evil"

    @source.on
    def deny(seen: Any) -> Reply | None:
        if seen.method == "HEAD" and "/manifests/" in seen.path:
            return Reply(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})  # no digest: GET it
        if seen.method == "GET" and "/manifests/" in seen.path:
            return Reply.error(403, "DENIED", f"denied\n\n{planted}\n\x1b]0;owned\x07| forged | row |")
        return None

    report = tmp_path / "report.md"
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config), "--report", str(report))
    assert result.exit_code == 1, result.output
    text = report.read_text()
    print(text)
    assert [line for line in text.splitlines() if line.startswith("ssh-")] == [], "a registry wrote a line of its own"
    assert not CONTROL.search(text), "raw control characters from the registry in the report"
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 7. links in the tree


POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
HOOK_CONFIG = "target: {registry: crazureblue.azurecr.io}\npolicy:\n  imageRegex: '^crazureblue\\.azurecr\\.io/.+$'\n"


@issue11("symlinks named on the command line are followed outside the tree")
@pytest.mark.parametrize("named", ["a link to a file", "a link to a directory"])
def test_rewrite_does_not_follow_a_named_link_out_of_the_tree(named: str, tmp_path: Path, figures: Any):
    """`rewrite repo/deploy.yaml` (as a CI job or the hook passes file names) where the checkout planted
    deploy.yaml -> a file elsewhere: the file elsewhere stays as it is."""
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    secret = outside / "cluster.yaml"
    secret.write_text(POD.format(image="redis:7"))
    if named == "a link to a file":
        (repo / "deploy.yaml").symlink_to(secret)
        argument = repo / "deploy.yaml"
    else:
        (repo / "k8s").symlink_to(outside, target_is_directory=True)
        argument = repo / "k8s"
    config = tmp_path / "config.yaml"
    config.write_text(HOOK_CONFIG)
    figures.record("trust", tried=1)
    result = run("rewrite", str(argument), "--no-verify", "--config", str(config))
    assert secret.read_text() == POD.format(image="redis:7"), f"{secret} was rewritten through {argument}"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


@issue11("a directory swapped for a symlink during the walk lets files outside the tree be rewritten")
def test_directory_swapped_for_a_link_mid_run_is_not_written_through(
        tmp_path: Path, servers: list[HostileServer], figures: Any):
    """The files are read, then acr-mirror asks the registries whether the image is there; while it
    waits, someone swaps tree/app for a link to a directory outside holding a file with the same bytes.
    The registry itself makes the swap when the first question arrives, so no timing is involved."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "app").mkdir(parents=True)
    outside.mkdir()
    registry = FakeRegistry().start()
    servers.append(registry)
    image = tiny_image("swap")
    registry.add_image("app/x", image, "1")
    source_ref = f"localhost:{registry.port}/app/x:1"  # the same server under two names: source and target
    content = POD.format(image=source_ref)
    (tree / "app" / "pod.yaml").write_text(content)
    (outside / "pod.yaml").write_text(content)  # e.g. a shared file the attacker knows the bytes of
    swapped: list[bool] = []

    @registry.on
    def swap_on_first_question(seen: Any) -> Reply | None:
        if "/manifests/" in seen.path and not swapped:
            (tree / "app").rename(tree / ".app-moved")
            (tree / "app").symlink_to(outside, target_is_directory=True)
            swapped.append(True)
        return None

    config = write_config(tmp_path / "config.yaml", registry.host,
                          {registry.host: {"insecure": True}, f"localhost:{registry.port}": {"insecure": True}})
    figures.record("trust", tried=1)
    result = run("rewrite", str(tree), "--config", str(config))
    assert swapped, "the swap never happened: nothing was tested"
    assert (outside / "pod.yaml").read_text() == content, "a file outside the tree was rewritten through the swapped link"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 9. remote text on the terminal


FORGED = "\x1b]0;owned\x07\x1b[2K\rerror: forged line from the registry\nok: everything is fine"


def test_plan_escapes_registry_error_text(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    source, config = _one_image_world(tmp_path, empty_target, servers)

    @source.on
    def deny(seen: Any) -> Reply | None:
        if seen.method == "HEAD" and "/manifests/" in seen.path:
            return Reply(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if seen.method == "GET" and "/manifests/" in seen.path:
            return Reply.error(403, "DENIED", FORGED)
        return None

    figures.record("trust", tried=1)
    result = run("plan", "--image", f"{source.host}/app/x:1", "--config", str(config))
    assert "DENIED" in result.output, "the registry's error was not shown at all: nothing was tested"
    assert not CONTROL.search(result.output), "raw control characters from the registry reached the terminal"
    assert lines(result.output, "error: forged") == [] and lines(result.output, "ok: everything") == []
    figures.record("trust", handled=1)


@issue11("audit prints cluster event messages unescaped")
def test_audit_escapes_cluster_event_text(tmp_path: Path, figures: Any):
    from tests.support.kubeapi import KubeAPI, container, denial_message, event, replicaset

    rs = replicaset("web-1", "shop", [container("app", "nginx:1.27")])
    hostile = denial_message("constraint\x1b[8m", "nginx:1.27\x1b]0;owned\x07", "app") + "\n" + FORGED
    objects = [rs, event(rs, "FailedCreate", f"Error creating: {hostile}")]
    figures.record("trust", tried=1)
    with KubeAPI(objects) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        result = run("audit", "--cluster", "--kubeconfig", str(kubeconfig))
    assert "web-1" in result.output, "the event was not reported at all: nothing was tested"
    assert not CONTROL.search(result.output), "raw control characters from an event reached the terminal"
    assert lines(result.output, "error: forged") == [] and lines(result.output, "ok: everything") == []
    figures.record("trust", handled=1)


def test_endpoint_userinfo_never_shown(empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    secret = "Us3rinfo-Passw0rd-in-endpoint"
    refusing = HostileServer(lambda seen: Reply.error(403, "DENIED", "go away")).start()
    servers.append(refusing)
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        "mirror.example": {"endpoint": f"http://robot:{secret}@{refusing.host}", "insecure": True},
        empty_target.host: {"insecure": True}})
    report = tmp_path / "report.json"
    figures.record("trust", tried=1)
    result = run("sync", "--image", "mirror.example/app/x:1", "--config", str(config), "--report", str(report))
    assert result.exit_code == 1, result.output
    assert secret not in result.output, "the endpoint's password was shown"
    assert secret not in report.read_text(), "the endpoint's password is in the report"
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 8. unbounded reads


PAGE_GUARD = 2_500  # the test's own stop: a client that is still paging here never stops by itself


def test_tag_list_pagination_stops_by_itself(
        empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    """Every page of the tag list links to a next one (signatures are looked for in the tag list)."""
    source, config = _one_image_world(tmp_path, empty_target, servers)
    pages: list[int] = []

    @source.on
    def endless(seen: Any) -> Reply | None:
        if seen.path != "/v2/app/x/tags/list":
            return None
        pages.append(len(pages))
        if len(pages) > PAGE_GUARD:
            return Reply.error(404, "NAME_UNKNOWN", "the test's guard: no more pages")
        page = len(pages)
        return Reply.json({"name": "app/x", "tags": [f"t{page:06d}"]},
                          Link=f'</v2/app/x/tags/list?n=1000&last=t{page:06d}>; rel="next"')

    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/x:1", "--config", str(config))
    assert pages, "the tag list was never asked for: nothing was tested"
    assert len(pages) <= PAGE_GUARD, f"{len(pages)} pages followed: the listing has no cap"
    assert "Traceback" not in result.output
    figures.record("trust", handled=1)


HUGE = 300 << 20
RSS_BOUND_MIB = 256  # acr-mirror syncing one small image peaks near 70 MiB; a body read whole adds 300+


def _huge_json(prefix: bytes, suffix: bytes) -> Any:
    """A valid JSON document of HUGE bytes, generated as it is sent (no Content-Length: chunked)."""
    yield prefix
    yield from stream(HUGE - len(prefix) - len(suffix))
    yield suffix


@pytest.mark.parametrize("where", ["referrers", "tag list", "error body"])
def test_bodies_from_a_registry_are_capped(
        where: str, empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    from tests.support.cliproc import clean_env, run_cli

    source, config = _one_image_world(tmp_path, empty_target, servers)
    sent: list[Any] = []

    @source.on
    def huge(seen: Any) -> Reply | None:
        if where == "referrers" and "/referrers/" in seen.path:
            body = _huge_json(b'{"schemaVersion":2,"mediaType":"' + OCI_INDEX.encode() + b'","manifests":[', b"]}")
            reply = Reply(200, {"Content-Type": OCI_INDEX}, body)
        elif where == "tag list" and seen.path.endswith("/tags/list"):
            reply = Reply(200, {"Content-Type": "application/json"}, _huge_json(b'{"name":"app/x","tags":["1"', b"]}"))
        elif where == "error body" and seen.method == "GET" and "/manifests/" in seen.path:
            reply = Reply(403, {"Content-Type": "application/json"},
                          _huge_json(b'{"errors":[{"code":"DENIED","message":"', b'"}]}'))
        else:
            return None
        sent.append(seen)
        return reply

    figures.record("trust", tried=1)
    proc = run_cli(["sync", "--image", f"{source.host}/app/x:1", "--config", str(config)],
                   env=clean_env(home=tmp_path / "home"), timeout=180, rss_limit_mib=RSS_BOUND_MIB)
    print(proc.output[-2000:], f"peak RSS {proc.peak_rss_mib:.0f} MiB, killed: {proc.killed}")
    assert sent, f"the {where} was never asked for: nothing was tested"
    assert proc.killed is None, f"killed ({proc.killed}): peak RSS {proc.peak_rss_mib:.0f} MiB reading a {where}"
    assert max(s.sent for s in sent) < 64 << 20, f"the client read {max(s.sent for s in sent):,} bytes of a {where}"
    assert "Traceback" not in proc.output
    figures.record("trust", handled=1)


def test_index_nesting_depth_is_capped(empty_target: Any, tmp_path: Path, servers: list[HostileServer], figures: Any):
    from tests.support.cliproc import clean_env, run_cli

    source = FakeRegistry().start()
    servers.append(source)
    bottom = tiny_image("deep")
    source.add_image("app/x", bottom)
    child = bottom.descriptor()
    levels = 600
    for level in range(levels):
        raw = index_of([child])
        digest = source.add_manifest("app/x", raw, OCI_INDEX, *(["1"] if level == levels - 1 else []))
        child = {"mediaType": OCI_INDEX, "digest": digest, "size": len(raw)}
    config = write_config(tmp_path / "config.yaml", empty_target.host,
                          {source.host: {"insecure": True}, empty_target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    proc = run_cli(["sync", "--image", f"{source.host}/app/x:1", "--config", str(config)],
                   env=clean_env(home=tmp_path / "home"), timeout=180)
    print(proc.output[-3000:])
    gets = source.requests("GET", "/manifests/")
    assert len(gets) <= 64, f"{len(gets)} nested indexes fetched before giving up"
    assert proc.returncode == 1 and "Traceback" not in proc.output, proc.output[-2000:]
    [failed] = sorted(set(lines(proc.stderr, "failed:")))
    assert f"{source.host}/app/x:1" in failed and re.search(r"(?i)nest|deep|depth|level", failed), failed
    assert registry_state(empty_target.url) == {}
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 10. huge manifests


SCAN_RSS_BOUND_MIB = 256  # a scan of a small tree peaks near 40 MiB


def _huge_pod(path: Path, containers: int) -> int:
    """One Pod with `containers` containers, each refused by the policy; returns the file's size."""
    with path.open("w") as out:
        out.write("apiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec:\n  containers:\n")
        block = []
        for i in range(containers):
            block.append(f"  - name: c{i}\n    image: nginx:1.{i % 30}\n")
            if len(block) == 10_000:
                out.write("".join(block))
                block = []
        out.write("".join(block))
    return path.stat().st_size


@issue11("a 15 MiB manifest with 389k containers takes minutes and 1.5 GB to scan")
def test_huge_manifest_is_refused_early_in_bounded_memory(tmp_path: Path, figures: Any):
    """Chosen behaviour: refuse the file early with one line naming it and the limit to raise, keep
    scanning the rest, and never hold the whole document's nodes (bounded RSS). A manifest of
    hundreds of thousands of containers is no workload anyone deploys; refusing it is cheap,
    predictable, and the same answer the scan already gives a YAML bomb or a file over
    scan.max_file_bytes."""
    from tests.support.cliproc import clean_env, run_cli

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.yaml").write_text(POD.format(image="redis:7"))
    size = _huge_pod(tree / "huge.yaml", 389_000)
    assert 15 << 20 > size > 14 << 20  # under the 16 MiB scan.max_file_bytes default
    config = tmp_path / "config.yaml"
    config.write_text(HOOK_CONFIG)
    figures.record("trust", tried=1)
    proc = run_cli(["scan", str(tree), "--config", str(config)], env=clean_env(home=tmp_path / "home"),
                   timeout=300, rss_limit_mib=SCAN_RSS_BOUND_MIB)
    print(proc.output[-2000:], f"peak RSS {proc.peak_rss_mib:.0f} MiB, killed: {proc.killed}")
    assert proc.killed is None, f"killed ({proc.killed}) at a peak RSS of {proc.peak_rss_mib:.0f} MiB"
    assert proc.returncode == 1 and "Traceback" not in proc.output
    errors = lines(proc.output, "error:")
    assert len(errors) == 1 and str(tree / "huge.yaml") in errors[0], errors
    assert re.search(r"(?i)refused|limit", errors[0]), errors[0]
    assert "redis:7" in proc.stdout, "the rest of the tree was not scanned"
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 11. untrusted checkouts


def _git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")})


MECHANISMS = ["post-checkout", "pre-commit", "commit-msg", "post-commit", "reference-transaction",
              "core.hooksPath", "core.fsmonitor", "clean filter"]


@issue11("rewrite --git runs the checkout's hooks and config-driven commands")
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_rewrite_git_runs_no_code_from_the_checkout(mechanism: str, tmp_path: Path, figures: Any):
    """Someone else's repository, cloned for a bulk update, plants code in .git/hooks or .git/config;
    `acr-mirror rewrite --git` must not run it (each mechanism writes a marker file if run)."""
    repo, markers = tmp_path / "repo", tmp_path / "markers"
    repo.mkdir()
    markers.mkdir()
    marker = markers / mechanism.replace(" ", "-")
    script = f"#!/bin/sh\ntouch '{marker}'\ncat >/dev/null 2>&1 <&- || true\nexit 0\n"
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Repo Owner")
    _git(repo, "config", "user.email", "owner@example.com")
    (repo / "deploy.yaml").write_text(POD.format(image="nginx:1.25"))
    if mechanism == "clean filter":
        (repo / ".gitattributes").write_text("*.yaml filter=planted\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    # planted after the commit, as a cloned repository's own config and hooks would be
    if mechanism in ("core.hooksPath", "core.fsmonitor"):
        planted = tmp_path / "elsewhere" / "hook"
        planted.parent.mkdir()
        for name in ("post-checkout", "pre-commit", "commit-msg", "post-commit", "reference-transaction"):
            (planted.parent / name).write_text(script)
            (planted.parent / name).chmod(0o755)
        planted.write_text(script)
        planted.chmod(0o755)
        if mechanism == "core.hooksPath":
            _git(repo, "config", "core.hooksPath", str(planted.parent))
        else:
            _git(repo, "config", "core.fsmonitor", str(planted))
    elif mechanism == "clean filter":
        _git(repo, "config", "filter.planted.clean", f"touch '{marker}'; cat")
    else:
        hook = repo / ".git" / "hooks" / mechanism
        hook.write_text(script)
        hook.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text(HOOK_CONFIG)
    figures.record("trust", tried=1)
    result = run("rewrite", "--git", str(repo), "--no-verify", "--config", str(config))
    assert str(repo) in result.output and "Traceback" not in result.output, "the checkout was not handled"
    assert not marker.exists(), f"the checkout's {mechanism} ran"
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 12. plans


@issue11("sync --plan never checks the plan's targets against the configured registry and naming")
@pytest.mark.parametrize("tamper", ["another repository of the target", "another registry"])
def test_tampered_plan_is_refused(tamper: str, empty_target: Any, target_registry: Any, tmp_path: Path,
                                  servers: list[HostileServer], figures: Any):
    """A reviewed plan is edited before `sync --plan` runs it: the target moves to victim/app:prod, or to
    another registry the run's credentials reach. Nothing may be written there."""
    other = target_registry  # a second real registry, known to the config (as a source, say)
    source = FakeRegistry().start()
    servers.append(source)
    source.add_image("app/x", tiny_image("plan"), "1")
    config = write_config(tmp_path / "config.yaml", empty_target.host, {
        source.host: {"insecure": True}, empty_target.host: {"insecure": True}, other.host: {"insecure": True}})
    plan = tmp_path / "plan.json"
    made = run("plan", "--image", f"{source.host}/app/x:1", "--config", str(config), "--output", str(plan))
    assert made.exit_code == 0, made.output
    data = json.loads(plan.read_text())
    victim_registry = empty_target if tamper == "another repository of the target" else other
    tampered = f"{victim_registry.host}/victim/app:prod"
    data["images"][0]["target"] = tampered
    plan.write_text(json.dumps(data, indent=2))
    figures.record("trust", tried=1)
    result = run("sync", "--plan", str(plan), "--config", str(config))
    assert "victim/app:prod" not in registry_state(victim_registry.url), f"the tampered plan pushed {tampered}"
    assert result.exit_code != 0 and str(plan) in result.output, result.output
    figures.record("trust", handled=1)


# --------------------------------------------------------------------------- 13. sizes and deadlines


def _schema1(layers: dict[str, bytes]) -> bytes:
    """An unsigned Docker schema 1 manifest: its layers carry no size."""
    return json.dumps({"schemaVersion": 1, "name": "app/old", "tag": "1", "architecture": "amd64",
                       "fsLayers": [{"blobSum": d} for d in layers],
                       "history": [{"v1Compatibility": "{}"} for _ in layers]}, indent=3).encode()


def test_blob_of_unknown_size_sent_chunked_is_copied_once(tmp_path: Path, servers: list[HostileServer], figures: Any):
    source, target = FakeRegistry().start(), FakeRegistry().start()
    servers += [source, target]
    layers = {sha256(data): data for data in (b"layer one " * 3000, b"layer two " * 5000)}
    source.blobs.update(layers)
    source.add_manifest("app/old", _schema1(layers), "application/vnd.docker.distribution.manifest.v1+json", "1")

    @source.on
    def chunked(seen: Any) -> Reply | None:
        digest = seen.path.rsplit("/", 1)[-1]
        if seen.method == "GET" and "/blobs/" in seen.path and digest in layers:
            return Reply(200, {"Content-Type": "application/octet-stream"}, iter([layers[digest]]))  # no length
        return None

    config = write_config(tmp_path / "config.yaml", target.host,
                          {source.host: {"insecure": True}, target.host: {"insecure": True}})
    figures.record("trust", tried=1)
    result = run("sync", "--image", f"{source.host}/app/old:1", "--config", str(config))
    gets = source.requests("GET", "/blobs/")
    print(f"{len(gets)} blob GETs for {len(layers)} layers")
    assert result.exit_code == 0, result.output
    assert set(layers) <= set(target.blobs), "the layers did not arrive"
    assert len(gets) == len(layers), f"{len(gets)} blob GETs for {len(layers)} layers: retried"
    figures.record("trust", handled=1)


def _drip(data: bytes, every: float) -> Any:
    import time

    for i in range(len(data)):
        time.sleep(every)
        yield data[i:i + 1]


@pytest.mark.slow
def test_a_dripping_source_is_given_up_on(empty_target: Any, tmp_path: Path, servers: list[HostileServer],
                                         figures: Any):
    """A 1 MiB layer sent at 4 bytes a second (never idle long enough for a read timeout). With
    copy.timeout 10 and one retry, the run must give up by itself well within the 150 s hang guard."""
    from tests.support.cliproc import clean_env, run_cli

    source = FakeRegistry().start()
    servers.append(source)
    image = tiny_image("drip", layer_bytes=1 << 20)
    source.add_image("app/x", image, "1")
    layer = max(image.blobs, key=lambda d: len(image.blobs[d]))

    @source.on
    def drip(seen: Any) -> Reply | None:
        if seen.method == "GET" and seen.path.endswith(layer):
            return Reply(200, {"Content-Type": "application/octet-stream"}, _drip(image.blobs[layer], 0.25),
                         length=len(image.blobs[layer]))
        return None

    config = write_config(tmp_path / "config.yaml", empty_target.host,
                          {source.host: {"insecure": True}, empty_target.host: {"insecure": True}},
                          timeout=10, retries=1)
    figures.record("trust", tried=1)
    proc = run_cli(["sync", "--image", f"{source.host}/app/x:1", "--config", str(config)],
                   env=clean_env(home=tmp_path / "home"), timeout=150)
    print(proc.output[-2000:], f"killed: {proc.killed}")
    assert proc.killed is None, "still copying the dripping layer at the hang guard"
    assert proc.returncode == 1 and "Traceback" not in proc.output
    [failed] = sorted(set(lines(proc.stderr, "failed:")))
    assert f"{source.host}/app/x:1" in failed, failed
    figures.record("trust", handled=1)
