"""The test registries are real: what the fixtures promise, checked with skopeo and plain HTTP."""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path

import httpx
import pytest

from tests.support.images import build_image, build_index, inspect_raw, push, seed_standard_set, skopeo
from tests.support.registries import Registry, RegistryStartError, static_credential

pytestmark = pytest.mark.registry


# distribution 2.8 answers 404 for an OCI manifest asked for by tag without this Accept.
OCI_ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def challenge(response: httpx.Response) -> dict[str, str]:
    scheme, _, params = response.headers["WWW-Authenticate"].partition(" ")
    fields = dict(part.split("=", 1) for part in params.split(","))
    return {"scheme": scheme, **{k: v.strip('"') for k, v in fields.items()}}


def test_plain_push_and_inspect(source_registry: Registry, target_registry: Registry, tmp_path: Path) -> None:
    assert source_registry.host != target_registry.host
    image = build_image(tmp_path, layers=[2048, b"hello"], seed="plain")
    digest = push(image, source_registry, "team/app", "1.0")
    raw = inspect_raw("team/app:1.0", source_registry)
    assert digest == image.manifest_digest == digest_of(raw)
    assert raw == image.manifest
    # The target is a separate, empty registry.
    assert httpx.get(f"{target_registry.url}/v2/team/app/manifests/1.0", headers=OCI_ACCEPT).status_code == 404


def test_same_seed_same_digest(tmp_path: Path) -> None:
    first = build_image(tmp_path / "a", layers=[4096, 1024], seed="s")
    again = build_image(tmp_path / "b", layers=[4096, 1024], seed="s")
    other = build_image(tmp_path / "c", layers=[4096, 1024], seed="t")
    assert first.manifest_digest == again.manifest_digest
    assert not set(first.layer_digests) & set(other.layer_digests)
    assert first.total_bytes > 4096 + 1024  # random bytes do not compress


def test_wipe_empties_a_running_registry(source_registry: Registry, tmp_path: Path) -> None:
    push(build_image(tmp_path, layers=[512]), source_registry, "wiped", "1")
    url = f"{source_registry.url}/v2/wiped/manifests/1"
    assert httpx.head(url, headers=OCI_ACCEPT).status_code == 200
    source_registry.wipe()
    assert httpx.head(url, headers=OCI_ACCEPT).status_code == 404
    push(build_image(tmp_path, layers=[512]), source_registry, "wiped", "1")  # still usable
    assert httpx.head(url, headers=OCI_ACCEPT).status_code == 200


def test_basic_auth(basic_registry: Registry, tmp_path: Path) -> None:
    anonymous = httpx.get(f"{basic_registry.url}/v2/")
    assert anonymous.status_code == 401
    assert challenge(anonymous)["scheme"] == "Basic"
    assert httpx.get(f"{basic_registry.url}/v2/", auth=(basic_registry.username, "wrong")).status_code == 401
    assert httpx.get(f"{basic_registry.url}/v2/", auth=basic_registry.credentials).status_code == 200
    image = build_image(tmp_path, layers=[1024])
    assert push(image, basic_registry, "private/app", "1") == digest_of(inspect_raw("private/app:1", basic_registry))


def test_token_auth(token_registry: Registry, tmp_path: Path) -> None:
    server = token_registry.token_server
    assert server is not None
    first = challenge(httpx.get(f"{token_registry.url}/v2/"))
    assert first["scheme"] == "Bearer" and first["realm"] == token_registry.token_url == server.realm
    params = {"service": first["service"], "scope": "repository:team/app:pull,push"}
    upload = f"{token_registry.url}/v2/team/app/blobs/uploads/"

    # Anonymous clients get a token without actions: the registry refuses the push.
    anonymous = httpx.get(server.realm, params=params).json()["token"]
    assert httpx.post(upload, headers={"Authorization": f"Bearer {anonymous}"}).status_code == 401
    assert httpx.get(server.realm, params=params, auth=("tester", "wrong")).status_code == 401

    # GET with Basic credentials, and the OAuth2 POST forms (password, then refresh_token).
    token = httpx.get(server.realm, params=params, auth=token_registry.credentials).json()["token"]
    assert httpx.post(upload, headers={"Authorization": f"Bearer {token}"}).status_code == 202
    form = {
        "grant_type": "password",
        "username": token_registry.username,
        "password": token_registry.password,
        "service": first["service"],
        "scope": params["scope"],
        "access_type": "offline",
        "client_id": "t",
    }
    oauth = httpx.post(server.realm, data=form).json()
    refreshed = httpx.post(
        server.realm,
        data={
            "grant_type": "refresh_token",
            "refresh_token": oauth["refresh_token"],
            "service": first["service"],
            "scope": params["scope"],
        },
    ).json()
    assert httpx.post(upload, headers={"Authorization": f"Bearer {refreshed['access_token']}"}).status_code == 202

    before = server.requests[server.realm_path]
    image = build_image(tmp_path, layers=[1024])
    assert push(image, token_registry, "team/app", "1") == digest_of(inspect_raw("team/app:1", token_registry))
    assert server.requests[server.realm_path] > before
    assert any(e.subject == token_registry.username and e.status == 200 for e in server.log)


def test_anonymous_skopeo_push_is_refused(token_registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path, layers=[256])
    result = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        image.oci_ref,
        f"docker://{token_registry.ref('team/app:1')}",
        check=False,
    )
    assert result.returncode != 0
    assert b"denied" in result.stderr or b"unauthorized" in result.stderr


def test_tls(tls_registry: Registry, tmp_path: Path) -> None:
    assert tls_registry.url.startswith("https://") and tls_registry.ca_file is not None
    assert (
        httpx.get(f"{tls_registry.url}/v2/", verify=ssl.create_default_context(cafile=tls_registry.ca_file)).status_code
        == 200
    )
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_registry.url}/v2/")
    image = build_image(tmp_path, layers=[1024])
    assert push(image, tls_registry, "secure/app", "1") == digest_of(inspect_raw("secure/app:1", tls_registry))
    unverified = skopeo("inspect", "--raw", f"docker://{tls_registry.ref('secure/app:1')}", check=False)
    assert unverified.returncode != 0 and b"x509" in unverified.stderr


def test_acr_exchange_and_token(acr_registry: Registry, tmp_path: Path) -> None:
    acr = acr_registry.acr
    assert acr is not None and acr_registry.aad_token
    # What an ACR client does: challenge → /oauth2/exchange (beside the realm) → /oauth2/token.
    first = challenge(httpx.get(f"{acr_registry.url}/v2/"))
    assert first["realm"].endswith("/oauth2/token")
    exchange_url = first["realm"].removesuffix("/token") + "/exchange"
    aad = static_credential(acr_registry.aad_token).get_token("https://containerregistry.azure.net/.default").token
    refused = httpx.post(
        exchange_url,
        data={
            "grant_type": "access_token",
            "service": first["service"],
            "tenant": "t",
            "access_token": "not-a-valid-aad-token",
        },
    )
    assert refused.status_code == 401
    exchanged = httpx.post(
        exchange_url,
        data={"grant_type": "access_token", "service": first["service"], "tenant": "t", "access_token": aad},
    )
    assert exchanged.status_code == 200
    refresh = exchanged.json()["refresh_token"]
    scope = "repository:acr/app:pull,push"
    answer = httpx.post(
        first["realm"],
        data={"grant_type": "refresh_token", "service": first["service"], "scope": scope, "refresh_token": refresh},
    ).json()
    assert set(answer) == {"access_token"}  # ACR's shape: no expires_in
    bearer = {"Authorization": f"Bearer {answer['access_token']}"}
    assert httpx.get(f"{acr_registry.url}/v2/", headers=bearer).status_code == 200
    assert httpx.post(f"{acr_registry.url}/v2/acr/app/blobs/uploads/", headers=bearer).status_code == 202

    # docker login's shape: the null GUID user with the refresh token as password, on GET.
    login = httpx.get(
        first["realm"],
        params={"service": first["service"], "scope": scope},
        auth=("00000000-0000-0000-0000-000000000000", refresh),
    )
    assert login.status_code == 200 and "access_token" in login.json()

    # A pull-only identity gets a token the registry refuses for push.
    reader = acr.new_aad_token(actions={"pull"})
    reader_refresh = httpx.post(
        exchange_url, data={"grant_type": "access_token", "service": first["service"], "access_token": reader}
    ).json()["refresh_token"]
    reader_token = httpx.post(
        first["realm"],
        data={
            "grant_type": "refresh_token",
            "service": first["service"],
            "scope": scope,
            "refresh_token": reader_refresh,
        },
    ).json()
    upload = httpx.post(
        f"{acr_registry.url}/v2/acr/app/blobs/uploads/",
        headers={"Authorization": f"Bearer {reader_token['access_token']}"},
    )
    assert upload.status_code == 401
    assert acr.requests["/oauth2/exchange"] == 3 and acr.requests["/oauth2/token"] == 3

    # The admin user seeds it with skopeo (Basic on GET /oauth2/token).
    image = build_image(tmp_path, layers=[1024])
    assert push(image, acr_registry, "acr/app", "1") == digest_of(inspect_raw("acr/app:1", acr_registry))


def test_standard_set(source_registry: Registry, tmp_path: Path) -> None:
    seeded = seed_standard_set(source_registry, tmp_path)
    assert len(seeded["images"]) == 10
    for ref, digest in seeded["images"].items():
        manifest = json.loads(seeded["oci"][ref].manifest)
        assert [layer["digest"] for layer in manifest["layers"][:3]] == seeded["base_layers"]
        assert digest == seeded["oci"][ref].manifest_digest
    index_raw = inspect_raw(seeded["index"]["ref"], source_registry)
    assert digest_of(index_raw) == seeded["index"]["digest"]
    platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in json.loads(index_raw)["manifests"]}
    assert platforms == {"linux/amd64", "linux/arm64"} == set(seeded["index"]["platforms"])

    signature = json.loads(inspect_raw(seeded["signature"]["ref"], source_registry))
    assert signature["layers"][0]["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"

    referrer = seeded["referrer"]
    artifact = json.loads(inspect_raw(referrer["ref"], source_registry))
    assert artifact["subject"]["digest"] == referrer["subject_digest"] == seeded["images"][referrer["subject"]]
    fallback_raw = inspect_raw(referrer["fallback_ref"], source_registry)
    assert digest_of(fallback_raw) == referrer["fallback_digest"]
    [entry] = json.loads(fallback_raw)["manifests"]
    assert entry["digest"] == referrer["digest"] and entry["artifactType"] == referrer["artifact_type"]
    # distribution 2.8 has no referrers API: clients must use the fallback tag.
    api = httpx.get(f"{source_registry.url}/v2/team/web/referrers/{referrer['subject_digest']}")
    assert api.status_code == 404


def test_multi_platform_index_total_bytes(tmp_path: Path) -> None:
    index = build_index(tmp_path, shared_layers=[4096])
    assert index.platforms == ["linux/amd64", "linux/arm64"]
    assert len(index.layer_digests) == 3  # one shared, one per platform
    assert index.total_bytes < sum(child.total_bytes for child in index.children) + len(index.manifest)


def test_start_failure_reports_the_registry_output(registry_factory) -> None:
    with pytest.raises(RegistryStartError, match="exactly one storage type"):
        registry_factory(extra_config={"storage": {"inmemory": {}}})
