"""The copy engine on real registries: digests preserved, each blob once, signatures along.

Every copy is cross-checked with `skopeo inspect --raw`: the target serves the source's bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import parse
from mirror.engines.base import CopyResult
from mirror.engines.registry import RegistryEngine as CopyEngine
from mirror.registry.credentials import BasicCredential, Credentials, fixed_keychain
from mirror.registry.media import digest_tag
from mirror.settings import CopySettings, MirrorSettings, RegistrySettings
from tests.support.images import build_image, inspect_raw, push, seed_standard_set
from tests.support.registries import Registry
from tests.test_registry_client import Proxy, Reply

pytestmark = pytest.mark.registry


def config(target: Registry, *registries: Registry, insecure: bool = True, **copy: Any) -> MirrorSettings:
    hosts = {r.host: RegistrySettings(insecure=insecure) for r in (target, *registries)}
    return MirrorSettings(registries=hosts, copy=CopySettings(**copy))


def mapping(source: Registry, ref: str, target: Registry, prefix: str = "mirror/") -> Mapping:
    return Mapping(parse(source.ref(ref)), parse(target.ref(prefix + ref)))


def path_of(ref: str) -> str:
    return ref.split("/", 1)[1]


def same_bytes(m: Mapping, source: Registry, target: Registry) -> bool:
    return inspect_raw(path_of(str(m.source)), source) == inspect_raw(path_of(str(m.target)), target)


@pytest.fixture
def proxies():
    """Fault proxies (tests/test_registry_client.Proxy) in front of registries; stopped at teardown."""
    started: list[Proxy] = []

    def make(upstream: str, rule: Any = None, rewrite: Any = None) -> Proxy:
        started.append(Proxy(upstream, rule, rewrite).start())
        return started[-1]

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def seeded(source_registry: Registry, tmp_path: Path) -> dict[str, Any]:
    return seed_standard_set(source_registry, tmp_path / "images")


def test_single_image_and_index_byte_for_byte(source_registry, target_registry, seeded):
    one = mapping(source_registry, "library/nginx:1.25", target_registry)
    index = mapping(source_registry, "multi/app:1.0", target_registry)
    with CopyEngine(config(target_registry, source_registry)) as engine:
        first, second = engine.copy_all([one, index])
        assert first.status == "copied" and first.error is None
        assert first.digest == first.target_digest == seeded["images"]["library/nginx:1.25"]
        assert second.status == "copied" and second.digest == seeded["index"]["digest"]
        assert sorted(second.platforms) == ["linux/amd64", "linux/arm64"]
        target = engine.client(target_registry.host).repo("mirror/multi/app")
        for child in seeded["index"]["platforms"].values():
            assert target.head_manifest(child) is not None
        assert engine.verify(one) and engine.verify(index, second.digest)
    assert same_bytes(one, source_registry, target_registry)
    assert same_bytes(index, source_registry, target_registry)
    assert json.loads(json.dumps(first.as_json()))["status"] == "copied"


def test_platform_filter_writes_a_new_index_and_says_so(source_registry, target_registry, seeded):
    m = mapping(source_registry, "multi/app:1.0", target_registry)
    with CopyEngine(config(target_registry, source_registry, platforms=("linux/arm64",))) as engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert result.platforms == ["linux/arm64"]
        assert result.target_digest != result.digest and result.note and "linux/arm64" in result.note
        target = engine.client(target_registry.host).repo("mirror/multi/app")
        assert target.head_manifest(seeded["index"]["platforms"]["linux/amd64"]) is None
        assert target.head_manifest(seeded["index"]["platforms"]["linux/arm64"]) is not None
        assert engine.verify(m, result.target_digest) and not engine.verify(m, result.digest)
        assert engine.copy(m).status == "present"  # the filtered index is recognised on the next run


def test_shared_layers_move_once_and_are_mounted(source_registry, target_registry, seeded):
    refs = [*seeded["images"], seeded["index"]["ref"]]
    mappings = [mapping(source_registry, r, target_registry) for r in refs]
    with CopyEngine(config(target_registry, source_registry, signatures=False, concurrency=4)) as engine:
        results = engine.copy_all(mappings)
    assert [r.status for r in results] == ["copied"] * len(refs), [r.error for r in results]
    unique: dict[str, int] = {}
    for ref in refs:
        image = seeded["oci"][ref]
        for item in [image, *image.children]:
            for desc in [json.loads(item.manifest).get("config")] + json.loads(item.manifest).get("layers", []):
                if desc:
                    unique[desc["digest"]] = desc["size"]
    assert sum(r.bytes_moved for r in results) == sum(unique.values())
    assert sum(r.blobs_copied for r in results) == len(unique)
    assert sum(r.blobs_mounted for r in results) >= 3 * (len(seeded["images"]) - 1) - 3  # base layers, in other repos
    for m in mappings[:3]:
        assert same_bytes(m, source_registry, target_registry)


def test_present_costs_one_head(source_registry, target_registry, seeded):
    m = mapping(source_registry, "team/api:1.1", target_registry)
    cfg = config(target_registry, source_registry)
    with CopyEngine(cfg) as engine:
        assert engine.copy(m).status == "copied"
    with CopyEngine(cfg) as engine:
        result = engine.copy(m)
        assert result.status == "present" and result.bytes_moved == 0
        # besides each registry's ping (GET /v2/, once per client and run): one HEAD each
        assert dict(engine.client(target_registry.host).requests) == {"GET": 1, "HEAD": 1}
        assert dict(engine.client(source_registry.host).requests) == {"GET": 1, "HEAD": 1}
        assert engine.status(m).status == "present"
    with CopyEngine(cfg) as engine:
        other = mapping(source_registry, "team/api:1.1", target_registry, prefix="elsewhere/")
        assert engine.status(other).status == "planned"
        assert engine.client(target_registry.host).requests["PUT"] == 0


def test_digest_only_reference_gets_a_tag(source_registry, target_registry, seeded):
    digest = seeded["images"]["tools/kubectl:1.29"]
    m = Mapping(parse(f"{source_registry.host}/tools/kubectl@{digest}"),
                parse(f"{target_registry.host}/mirror/tools/kubectl@{digest}"))
    with CopyEngine(config(target_registry, source_registry)) as engine:
        result = engine.copy(m)
        assert result.status == "copied" and result.target_digest == digest
        tags = engine.client(target_registry.host).repo("mirror/tools/kubectl").tags()
        assert tags == [digest_tag(digest)]
        assert engine.verify(m)
    assert inspect_raw(f"mirror/tools/kubectl:{digest_tag(digest)}", target_registry) == \
        inspect_raw("tools/kubectl:1.29", source_registry)


def test_signature_tag_and_referrer_come_along(source_registry, target_registry, seeded):
    signed = mapping(source_registry, "team/api:1.0", target_registry)
    referred = mapping(source_registry, "team/web:2.0", target_registry)
    with CopyEngine(config(target_registry, source_registry)) as engine:
        a, b = engine.copy_all([signed, referred])
        assert a.status == b.status == "copied" and a.referrers == 1 and b.referrers == 1
    sig_tag = seeded["signature"]["ref"].split(":", 1)[1]
    assert inspect_raw(f"mirror/team/api:{sig_tag}", target_registry) == \
        inspect_raw(seeded["signature"]["ref"], source_registry)
    referrer = seeded["referrer"]
    assert inspect_raw(f"mirror/team/web@{referrer['digest']}", target_registry) == \
        inspect_raw(referrer["ref"], source_registry)
    fallback_tag = referrer["fallback_ref"].split(":", 1)[1]
    assert inspect_raw(f"mirror/team/web:{fallback_tag}", target_registry) == \
        inspect_raw(referrer["fallback_ref"], source_registry)
    with CopyEngine(config(target_registry, source_registry, signatures=False)) as engine:
        plain = engine.copy(mapping(source_registry, "team/api:1.0", target_registry, prefix="nosig/"))
        assert plain.status == "copied" and plain.referrers == 0
        assert all(".sig" not in t for t in engine.client(target_registry.host).repo("nosig/team/api").tags())


def test_authenticated_and_tls_registries(basic_registry, token_registry, tls_registry, tmp_path):
    image = build_image(tmp_path, layers=[20_000, 30_000], seed="auth")
    push(image, basic_registry, "sec/app", "1")
    creds = {
        basic_registry.host: Credentials("t", BasicCredential(basic_registry.username, basic_registry.password)),
        token_registry.host: Credentials("t", BasicCredential(token_registry.username, token_registry.password)),
    }
    registries = {
        basic_registry.host: RegistrySettings(insecure=True),
        **{host: RegistrySettings(insecure=True) for host in token_registry.hosts},  # the realm too
        tls_registry.host: RegistrySettings(ca_file=str(tls_registry.ca_file)),
    }
    cfg = MirrorSettings(registries=registries)
    to_token = mapping(basic_registry, "sec/app:1", token_registry)
    to_tls = Mapping(parse(token_registry.ref("mirror/sec/app:1")), parse(tls_registry.ref("tls/sec/app:1")))
    with CopyEngine(cfg, keychain=fixed_keychain(creds.get)) as engine:
        assert engine.copy(to_token).status == "copied"
        result = engine.copy(to_tls)
        assert result.status == "copied", result.error
        assert engine.client(token_registry.host).auth.token_requests >= 1
    assert same_bytes(to_token, basic_registry, token_registry)
    assert inspect_raw("tls/sec/app:1", tls_registry) == image.manifest
    # Without the CA the TLS registry is refused, and the error says what to configure.
    untrusted = MirrorSettings(registries={**registries, tls_registry.host: RegistrySettings()})
    with CopyEngine(untrusted, keychain=fixed_keychain(creds.get)) as engine:
        failed = engine.copy(Mapping(to_tls.source, parse(tls_registry.ref("tls/other:1"))))
    assert failed.status == "failed" and "ca_file" in (failed.error or "")


def test_insecure_applies_to_the_named_host_only(source_registry, target_registry, seeded):
    cfg = MirrorSettings(registries={source_registry.host: RegistrySettings(insecure=True)}, copy=CopySettings(retries=0))
    with CopyEngine(cfg) as engine:
        result = engine.copy(mapping(source_registry, "library/redis:7.2", target_registry))
    assert result.status == "failed" and target_registry.host in (result.error or "")
    assert "insecure" in (result.error or "")


def test_endpoint_redirection_keeps_image_names(source_registry, target_registry, seeded):
    registries = {  # plain-HTTP endpoints: allowed only where the host is marked insecure
        "registry.example.test": RegistrySettings(endpoint=source_registry.url, insecure=True),
        "mirror.example.test": RegistrySettings(endpoint=target_registry.url, insecure=True),
    }
    cfg = MirrorSettings(registries=registries)
    m = Mapping(parse("registry.example.test/library/busybox:1.36"), parse("mirror.example.test/hub/busybox:1.36"))
    with CopyEngine(cfg) as engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert engine.verify(m)
    assert inspect_raw("hub/busybox:1.36", target_registry) == inspect_raw("library/busybox:1.36", source_registry)


def test_faults_are_retried_until_every_image_is_copied(source_registry, target_registry, seeded, proxies):
    counter = {"n": 0}

    def every_fifth(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        counter["n"] += 1
        if path == "/v2/" or counter["n"] % 5:
            return None
        return (429, {"retry-after": "0"}, b"") if counter["n"] % 2 else (500, {}, b"injected")

    proxy = proxies(target_registry.host, every_fifth)
    target = Registry(host=proxy.host, url=f"http://{proxy.host}", root=target_registry.root)
    refs = list(seeded["images"])
    with CopyEngine(config(target, source_registry, signatures=False)) as engine:
        results = engine.copy_all([mapping(source_registry, r, target) for r in refs])
    assert [r.status for r in results] == ["copied"] * len(refs), [r.error for r in results]
    assert counter["n"] > 5
    for ref in refs[:2]:
        assert inspect_raw("mirror/" + ref, target_registry) == inspect_raw(ref, source_registry)


def test_corrupt_blob_fails_the_image_and_commits_nothing(source_registry, target_registry, seeded, proxies):
    layer = seeded["oci"]["team/worker:3.1"].layer_digests[-1]

    def corrupt(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Reply:
        if method == "GET" and path.endswith(layer) and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        return status, headers, body

    proxy = proxies(source_registry.host, rewrite=corrupt)
    source = Registry(host=proxy.host, url=f"http://{proxy.host}", root=source_registry.root)
    m = mapping(source, "team/worker:3.1", target_registry)
    with CopyEngine(config(target_registry, source, retries=1)) as engine:
        result = engine.copy(m)
        assert result.status == "failed" and "not the requested digest" in (result.error or "")
        target = engine.client(target_registry.host).repo("mirror/team/worker")
        assert target.head_blob(layer) is None
        assert target.head_manifest("3.1") is None


def test_missing_image_fails_alone_without_retries(source_registry, target_registry, seeded):
    good = mapping(source_registry, "library/nginx:1.25", target_registry)
    missing = mapping(source_registry, "library/nginx:0.0-missing", target_registry)
    with CopyEngine(config(target_registry, source_registry)) as engine:
        results = engine.copy_all([missing, good])
        assert [r.status for r in results] == ["failed", "copied"]
        assert "HEAD manifest" in (results[0].error or "") and "404" in (results[0].error or "")
        assert engine.client(source_registry.host).requests["HEAD"] == 2  # one per image, no retry
    with CopyEngine(config(target_registry, source_registry, concurrency=1)) as engine:
        stopped = engine.copy_all([missing, good], fail_fast=True)
    assert stopped[0].status == "failed" and "fail-fast" in (stopped[1].error or "")
    assert isinstance(stopped[1], CopyResult)


def test_progress_events(source_registry, target_registry, seeded):
    events: list[tuple[str, dict[str, Any]]] = []
    with CopyEngine(config(target_registry, source_registry), progress=lambda e, d: events.append((e, d))) as engine:
        engine.copy(mapping(source_registry, "library/busybox:1.36", target_registry))
    kinds = [e for e, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "blob" in kinds
    assert events[-1][1]["status"] == "copied"


def test_interrupted_copy_leaves_no_tag_and_completes_next_run(source_registry, target_registry, seeded, proxies):
    refuse_tag = {"on": True}

    def no_tag_writes(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        # The run "dies" where the tag would be written: everything before it is in place.
        if refuse_tag["on"] and method == "PUT" and path.endswith("/manifests/2.0"):
            return 503, {}, b"gone"
        return None

    proxy = proxies(target_registry.host, no_tag_writes)
    target = Registry(host=proxy.host, url=f"http://{proxy.host}", root=target_registry.root)
    m = mapping(source_registry, "team/web:2.0", target)
    cfg = config(target, source_registry, retries=0)
    with CopyEngine(cfg) as engine:
        first = engine.copy(m)
        assert first.status == "failed" and "503" in (first.error or "")
        assert not engine.verify(m)  # nothing points at a half-copied image
    refuse_tag["on"] = False
    with CopyEngine(cfg) as engine:
        second = engine.copy(m)
    assert second.status == "copied" and second.bytes_moved == 0 and second.blobs_copied == 0
    assert second.blobs_skipped == 5  # the image's own; its referrer's manifest was already there
    assert inspect_raw("mirror/team/web:2.0", target_registry) == inspect_raw("team/web:2.0", source_registry)


def test_referrers_api_at_the_source_become_a_tag_schema_index_in_the_target(
        source_registry, target_registry, seeded, proxies):
    referrer = seeded["referrer"]
    fallback = inspect_raw(referrer["fallback_ref"], source_registry)

    def referrers_api(proxy: Proxy, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        # A source with the OCI 1.1 referrers API (distribution 2.8 has none): serve it here.
        if "/referrers/" not in path:
            return None
        body = fallback if path.endswith(referrer["subject_digest"]) else \
            json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": []}).encode()
        return 200, {"content-type": "application/vnd.oci.image.index.v1+json"}, body

    proxy = proxies(source_registry.host, referrers_api)
    source = Registry(host=proxy.host, url=f"http://{proxy.host}", root=source_registry.root)
    with CopyEngine(config(target_registry, source)) as engine:
        result = engine.copy(mapping(source, "team/web:2.0", target_registry))
        assert result.status == "copied" and result.referrers == 1, result.error
        assert engine.client(source.host).supports_referrers is True
        assert engine.client(target_registry.host).supports_referrers is False
    index = json.loads(inspect_raw(f"mirror/team/web:{digest_tag(referrer['subject_digest'])}", target_registry))
    assert [(m["digest"], m["artifactType"]) for m in index["manifests"]] == \
        [(referrer["digest"], referrer["artifact_type"])]
    assert inspect_raw(f"mirror/team/web@{referrer['digest']}", target_registry) == \
        inspect_raw(referrer["ref"], source_registry)
