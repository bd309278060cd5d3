"""The Docker-engine path against real daemons: dockerd and podman's Docker-compatible service.

Each daemon starts once for the module (tests/support/engines.py), after the module's registries
(plain source and target, a basic-auth target), so they can be told those are plain HTTP. Every
test runs on both daemons; each daemon writes under its own repository prefix in the target.
What the target holds is cross-checked with skopeo (`inspect_raw`), not with the engine itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import parse
from mirror.engines.base import CopyResult
from mirror.engines.docker import DaemonInfo, DockerEngine, DockerEngineError, client_kwargs
from mirror.registry.credentials import BasicCredential, Credentials, fixed_keychain
from mirror.registry.media import digest_tag
from mirror.settings import CopySettings, DockerSettings, MirrorSettings, RegistrySettings
from tests.support.images import OciImage, build_image, build_index, inspect_raw, push, skopeo
from tests.support.registries import Registry

if TYPE_CHECKING:  # imported by pytest as a plugin (with assertion rewriting), not here
    from tests.support.engines import Daemon, EngineRegistries

pytest_plugins = ["tests.support.engines"]  # engine_registries, dockerd_engine, podman_engine
DAEMONS = ("dockerd", "podman")
pytestmark = [pytest.mark.docker, pytest.mark.registry]

SINGLE = "team/app:1.0"
INDEX = "multi/app:1.0"
OTHER = "other/app:1.0"
ANONYMOUS = Credentials()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images(engine_registries: EngineRegistries, tmp_path_factory: pytest.TempPathFactory) -> dict[str, OciImage]:
    """The source images (OCI, as built): one single-platform image, a 2-platform index, another image."""
    workdir = tmp_path_factory.mktemp("docker-images")
    built = {
        SINGLE: build_image(workdir, layers=[48 * 1024, 16 * 1024], seed="docker/single"),
        INDEX: build_index(workdir, seed="docker/index"),
        OTHER: build_image(workdir, layers=[24 * 1024], seed="docker/other"),
    }
    for ref, image in built.items():
        repository, _, tag = ref.rpartition(":")
        push(image, engine_registries.source, repository, tag)
    push(built[SINGLE], engine_registries.source, "team/app", "latest")  # two tags, one digest
    return built


@pytest.fixture(scope="module", params=DAEMONS)
def daemon(request: pytest.FixtureRequest) -> Daemon:
    """Each test runs on dockerd and on podman (module-scoped: each daemon starts once)."""
    return request.getfixturevalue(f"{request.param}_engine")


class Recorder:
    """A progress callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.events.append((event, info))

    def names(self) -> set[str]:
        return {event for event, _ in self.events}

    def of(self, event: str) -> list[dict[str, Any]]:
        return [info for name, info in self.events if name == event]


def make_config(daemon: Daemon, regs: EngineRegistries, **copy: Any) -> MirrorSettings:
    hosts = {h: RegistrySettings(insecure=True) for r in regs.all for h in r.hosts}
    return MirrorSettings(registries=hosts, copy=CopySettings(**copy), docker=DockerSettings(host=daemon.base_url))


def engine_for(daemon: Daemon, regs: EngineRegistries, *, config: MirrorSettings | None = None,
               credentials: Callable[[str], Any] | None = None) -> tuple[DockerEngine, Recorder]:
    recorder = Recorder()
    engine = DockerEngine(config or make_config(daemon, regs), progress=recorder,
                          keychain=fixed_keychain(credentials or (lambda host: ANONYMOUS)))
    return engine, recorder


def mapping(source: Registry, ref: str, target: Registry, prefix: str) -> Mapping:
    return Mapping(parse(source.ref(ref)), parse(target.ref(f"{prefix}/{ref}")))


def target_manifest(registry: Registry, ref: str) -> dict[str, Any]:
    return json.loads(inspect_raw(ref, registry))


def target_config_digest(registry: Registry, ref: str) -> str:
    return target_manifest(registry, ref)["config"]["digest"]


def config_of(image: OciImage) -> str:
    assert image.config_digest is not None
    return image.config_digest


# --------------------------------------------------------------------------- copies


def test_copy_single_platform_image(daemon: Daemon, engine_registries: EngineRegistries,
                                    images: dict[str, OciImage]) -> None:
    regs, source = engine_registries, images[SINGLE]
    m = mapping(regs.source, SINGLE, regs.target, daemon.kind)
    engine, recorder = engine_for(daemon, regs)
    with engine:
        result = engine.copy(m)
        assert isinstance(result, CopyResult)
        assert result.status == "copied", result.error
        assert result.error is None
        assert result.digest == source.manifest_digest
        assert result.platforms == ["linux/amd64"]
        # the image survives, its manifest does not: same config (image ID), another digest
        held = target_manifest(regs.target, f"{daemon.kind}/{SINGLE}")
        assert held["config"]["digest"] == config_of(source)
        assert result.target_digest and result.target_digest != source.manifest_digest
        assert f"not the source's {source.manifest_digest}" in (result.note or "")
        assert "re-serialized" in (result.note or "") and "verified at the target" in (result.note or "")
        assert result.blobs_copied == 2 and result.bytes_moved > 64 * 1024
        assert engine.verify(m) and engine.verify(m, result.digest)
        assert engine.status(m).status == "present"
        again = engine.copy(m)  # a re-run: the same image is there, nothing is pulled
        assert again.status == "present" and again.target_digest == result.target_digest
        assert json.loads(json.dumps(result.as_json()))["status"] == "copied"
    # warned before copying; pull and push progress; one done event per image
    events = [name for name, _ in recorder.events]
    assert events.index("image-warning") < events.index("pull") < events.index("push") < events.index("done")
    assert {"pull", "push", "done"} <= recorder.names()
    assert [d["status"] for d in recorder.of("done")] == ["copied", "present"]
    done = recorder.of("done")[0]
    assert done["source"] == str(m.source) and done["target"] == str(m.target) and done["error"] is None


def test_copy_index_keeps_one_platform(daemon: Daemon, engine_registries: EngineRegistries,
                                       images: dict[str, OciImage]) -> None:
    regs, index = engine_registries, images[INDEX]
    m = mapping(regs.source, INDEX, regs.target, daemon.kind)
    engine, recorder = engine_for(daemon, regs)
    with engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert result.digest == index.manifest_digest
        assert result.target_digest != index.manifest_digest
        assert result.platforms == ["linux/amd64"]
        note = result.note or ""
        assert "multi-platform index (linux/amd64, linux/arm64)" in note
        assert "keeps one platform, linux/amd64 (dropped: linux/arm64)" in note
        assert "digest at the target will differ" in note
        held = target_manifest(regs.target, f"{daemon.kind}/{INDEX}")
        assert "manifests" not in held  # the index is gone: one image manifest
        amd64 = next(c for c in index.children if c.platforms == ["linux/amd64"])
        assert held["config"]["digest"] == config_of(amd64)
        assert engine.verify(m, result.digest)
    warnings = [w["warning"] for w in recorder.of("image-warning")]
    assert any("keeps one platform" in w for w in warnings)


def test_copy_platforms_setting_chooses_the_kept_platform(daemon: Daemon, engine_registries: EngineRegistries,
                                                          images: dict[str, OciImage]) -> None:
    regs, index = engine_registries, images[INDEX]
    m = Mapping(parse(regs.source.ref(INDEX)), parse(regs.target.ref(f"{daemon.kind}/arm64/{INDEX}")))
    engine, _ = engine_for(daemon, regs, config=make_config(daemon, regs, platforms=("linux/arm64",)))
    with engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert result.platforms == ["linux/arm64"]
        arm64 = next(c for c in index.children if c.platforms == ["linux/arm64"])
        assert target_config_digest(regs.target, f"{daemon.kind}/arm64/{INDEX}") == config_of(arm64)
        assert engine.verify(m)


def test_failing_pull_is_reported_clearly(daemon: Daemon, engine_registries: EngineRegistries,
                                          images: dict[str, OciImage]) -> None:
    regs = engine_registries
    m = mapping(regs.source, "team/does-not-exist:9.9", regs.target, daemon.kind)
    engine, recorder = engine_for(daemon, regs)
    with engine:
        result = engine.copy(m)
        assert not engine.verify(m)
    assert result.status == "failed"
    error = result.error or ""
    # the daemon's own reason, naming what was pulled; not docker-py's misleading ImageNotFound
    assert error.startswith(f"pull {regs.source.host}/team/does-not-exist:9.9 with {daemon.kind}")
    assert "manifest unknown" in error
    assert "ImageNotFound" not in error and "No such image" not in error
    done = recorder.of("done")
    assert len(done) == 1 and done[0]["status"] == "failed" and done[0]["error"] == error


def test_failing_push_is_reported_clearly(daemon: Daemon, engine_registries: EngineRegistries,
                                          images: dict[str, OciImage]) -> None:
    """The basic-auth target refuses an anonymous push: the daemon says so inside a 200 stream."""
    regs = engine_registries
    m = mapping(regs.source, SINGLE, regs.basic, f"{daemon.kind}-anonymous")
    engine, recorder = engine_for(daemon, regs)  # anonymous everywhere
    before = daemon.image_names()
    with engine:
        result = engine.copy(m)
    assert result.status == "failed"
    error = result.error or ""
    assert error.startswith(f"push {regs.basic.host}/{daemon.kind}-anonymous/{SINGLE} with {daemon.kind}")
    assert any(text in error for text in ("no basic auth credentials", "authentication required", "unauthorized"))
    assert recorder.of("done")[0]["status"] == "failed" and recorder.of("done")[0]["error"] == error
    assert daemon.image_names() == before  # cleaned up after a failure too


def test_credentials_are_passed_per_call(daemon: Daemon, engine_registries: EngineRegistries,
                                         images: dict[str, OciImage], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Basic-auth target: credentials from the config (the default lookup), and from a callable;
    nothing is written to a Docker config.json."""
    regs = engine_registries
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
    basic = regs.basic
    assert basic.username and basic.password
    hosts = {h: RegistrySettings(insecure=True) for r in regs.all for h in r.hosts}
    hosts[basic.host] = RegistrySettings(insecure=True, username=basic.username, password=basic.password)
    config = MirrorSettings(registries=hosts, docker=DockerSettings(host=daemon.base_url))

    from_config = mapping(regs.source, SINGLE, basic, f"{daemon.kind}-config")
    with DockerEngine(config) as engine:  # default credential lookup: registries.<host>.username/password
        result = engine.copy(from_config)
        assert result.status == "copied", result.error
        assert engine.verify(from_config)

    given = Credentials("test", BasicCredential(basic.username, basic.password))
    from_callable = mapping(regs.source, INDEX, basic, f"{daemon.kind}-callable")
    engine, _ = engine_for(daemon, regs, config=make_config(daemon, regs),
                           credentials=lambda host: given if host == basic.host else ANONYMOUS)
    with engine:
        result = engine.copy(from_callable)
        assert result.status == "copied", result.error
        assert engine.verify(from_callable)
    assert list(docker_config.iterdir()) == []


def test_acr_refresh_token_as_identity_token(daemon: Daemon, engine_registries: EngineRegistries,
                                              images: dict[str, OciImage]) -> None:
    """An ACR refresh token (what the Entra ID exchange yields) goes to the daemon as the identity
    token, as `az acr login` stores it. (No anonymous push here: dockerd retries a refused token
    request for ~50 s, 5 + 10 + 15 + 20 s, before it gives up.)"""
    regs = engine_registries
    acr = regs.acr.acr
    assert acr is not None
    token = acr.issue_refresh("aad:docker-engine-test", regs.acr.host)
    creds = Credentials("test", identity_token=token)
    m = mapping(regs.source, SINGLE, regs.acr, f"{daemon.kind}-acr")
    engine, _ = engine_for(daemon, regs, credentials=lambda host: creds if host == regs.acr.host else ANONYMOUS)
    seen = len(acr.log)
    with engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert engine.verify(m)
    assert any(entry.subject == "aad:docker-engine-test" and entry.status == 200 for entry in acr.log[seen:])


def test_verify_compares_the_image_not_the_tag(daemon: Daemon, engine_registries: EngineRegistries,
                                               images: dict[str, OciImage]) -> None:
    regs = engine_registries
    m = mapping(regs.source, SINGLE, regs.target, f"{daemon.kind}-verify")
    engine, _ = engine_for(daemon, regs)
    with engine:
        assert not engine.verify(m)  # absent
        assert engine.copy(m).status == "copied"
        assert engine.verify(m)
        # another image under the same target tag: same tag, different image ID
        push(images[OTHER], regs.target, f"{daemon.kind}-verify/team/app", "1.0")
        assert not engine.verify(m)
        assert engine.status(m).status == "planned"
        # the other source, copied by this path, is the image the tag holds now
        other = Mapping(parse(regs.source.ref(OTHER)), m.target)
        assert engine.verify(other)


def test_digest_pinned_source(daemon: Daemon, engine_registries: EngineRegistries,
                              images: dict[str, OciImage]) -> None:
    regs, source = engine_registries, images[SINGLE]
    pinned = f"team/app@{source.manifest_digest}"
    m = Mapping(parse(regs.source.ref(pinned)), parse(regs.target.ref(f"{daemon.kind}-pinned/{pinned}")))
    engine, _ = engine_for(daemon, regs)
    with engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert result.digest == source.manifest_digest
        assert result.target_digest and result.target_digest != source.manifest_digest
        assert f"the source is pinned to {source.manifest_digest}" in (result.note or "")
        assert "cannot be rewritten to the same digest" in (result.note or "")
        # a digest-only target is pushed under sha256-<hex>, as the registry engine tags it
        tag = digest_tag(source.manifest_digest)
        assert target_config_digest(regs.target, f"{daemon.kind}-pinned/team/app:{tag}") == config_of(source)
        assert not engine.verify(m, result.digest)  # the pinned digest is not in the target
    allowed = make_config(daemon, regs)
    allowed = MirrorSettings(registries=allowed.registries,
                             docker=DockerSettings(host=daemon.base_url, allow_digest_change=True))
    engine, _ = engine_for(daemon, regs, config=allowed)
    with engine:
        assert engine.verify(m, source.manifest_digest)  # the same image, rewritten by tag


def test_endpoint_pulls_from_the_endpoint_host(daemon: Daemon, engine_registries: EngineRegistries,
                                               images: dict[str, OciImage]) -> None:
    """docker.io stands for the source registry through `registries.docker.io.endpoint`."""
    regs = engine_registries
    config = make_config(daemon, regs)
    hosts = {**config.registries, "docker.io": RegistrySettings(endpoint=regs.source.url, insecure=True)}
    config = MirrorSettings(registries=hosts, docker=config.docker)
    m = Mapping(parse("docker.io/team/app:1.0"), parse(regs.target.ref(f"{daemon.kind}-endpoint/team/app:1.0")))
    engine, _ = engine_for(daemon, regs, config=config)
    with engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert f"pulled from {regs.source.host} (registries.docker.io.endpoint)" in (result.note or "")
        assert "cannot keep the host name docker.io" in (result.note or "")
        assert engine.verify(m)


def test_local_names_are_cleaned_up(daemon: Daemon, engine_registries: EngineRegistries,
                                    images: dict[str, OciImage]) -> None:
    regs = engine_registries
    daemon.remove_all_images()
    # at the same time: two tags of one digest (one pulled reference, shared), and an index
    m1 = mapping(regs.source, SINGLE, regs.target, f"{daemon.kind}-clean")
    m1b = mapping(regs.source, "team/app:latest", regs.target, f"{daemon.kind}-clean")
    m2 = mapping(regs.source, INDEX, regs.target, f"{daemon.kind}-clean")
    engine, _ = engine_for(daemon, regs)
    with engine:
        results = engine.copy_all([m1, m1b, m2])
        assert all(engine.verify(m) for m in (m1, m1b, m2))
    assert [r.status for r in results] == ["copied"] * 3, [r.error for r in results]
    assert daemon.image_names() == set()
    assert daemon.images() == []  # pulled here, so removed with the last name

    # an image that was local before keeps its name (and stays); the target tag still goes
    pulled = daemon.request("POST", "/images/create", params={"fromImage": regs.source.ref("other/app"), "tag": "1.0"})
    assert pulled.status_code == 200, pulled.text
    before = daemon.image_names()  # the tag, and for dockerd the digest it resolved to
    assert regs.source.ref(OTHER) in before
    m3 = mapping(regs.source, OTHER, regs.target, f"{daemon.kind}-clean")
    engine, _ = engine_for(daemon, regs)
    with engine:
        assert engine.copy(m3).status == "copied"
    assert daemon.image_names() == before
    assert len(daemon.images()) == 1
    daemon.remove_all_images()


def test_docker_host_over_tls(dockerd_engine: Daemon, engine_registries: EngineRegistries,
                              images: dict[str, OciImage], tmp_path: Path) -> None:
    """docker.host tcp://... with docker.tls_verify and docker.cert_path (ca.pem) reach dockerd over
    TLS; a CA that did not sign the daemon's certificate is refused at connect time."""
    daemon, regs = dockerd_engine, engine_registries
    assert daemon.tls_url and daemon.cert_dir
    hosts = {h: RegistrySettings(insecure=True) for r in regs.all for h in r.hosts}
    tls = DockerSettings(host=daemon.tls_url, tls_verify=True, cert_path=str(daemon.cert_dir))
    m = mapping(regs.source, SINGLE, regs.target, "dockerd-tls")
    with DockerEngine(MirrorSettings(registries=hosts, docker=tls),
                      keychain=fixed_keychain(lambda host: ANONYMOUS)) as engine:
        result = engine.copy(m)
        assert result.status == "copied", result.error
        assert engine.verify(m)
    from tests.support.registries import make_ca

    other = make_ca(tmp_path / "other")
    (tmp_path / "other" / "ca.pem").write_bytes(other.cert_file.read_bytes())
    wrong = DockerSettings(host=daemon.tls_url, tls_verify=True, cert_path=str(tmp_path / "other"))
    with DockerEngine(MirrorSettings(registries=hosts, docker=wrong),
                      keychain=fixed_keychain(lambda host: ANONYMOUS)) as engine:
        refused = engine.copy(m)
    assert refused.status == "failed"
    assert (refused.error or "").startswith(f"connect to the Docker engine at {daemon.tls_url}")
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")


# --------------------------------------------------------------------------- no daemon needed


def test_unreachable_daemon_fails_clearly(tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    config = MirrorSettings(docker=DockerSettings(host=f"unix://{sock}"))
    m = Mapping(parse("127.0.0.1:1/team/app:1.0"), parse("127.0.0.1:2/team/app:1.0"))
    with DockerEngine(config, keychain=fixed_keychain(lambda host: ANONYMOUS)) as engine:
        result = engine.copy(m)
    assert result.status == "failed"
    assert (result.error or "").startswith(f"connect to the Docker engine at unix://{sock}")


def test_error_items_in_a_200_stream_fail_the_step() -> None:
    """The stream reader raises on the first error item, with the daemon's message."""
    from mirror.engines.docker import _Plan

    m = Mapping(parse("127.0.0.1:1/a:1"), parse("127.0.0.1:2/a:1"))
    plan = _Plan(m, "127.0.0.1:1/a", "1", None, "127.0.0.1:2/a", "1", None)
    engine = DockerEngine(MirrorSettings(), keychain=fixed_keychain(lambda host: ANONYMOUS))
    stream = [{"status": "Preparing", "id": "0123456789ab"},
              {"errorDetail": {"message": "no basic auth credentials"}, "error": "no basic auth credentials"},
              {"status": "never read"}]
    with pytest.raises(DockerEngineError, match="^push x: no basic auth credentials$"):
        engine._follow(iter(stream), "push", "push x", plan)
    ok = [{"status": "1: digest: sha256:" + "a" * 64 + " size: 528"}]
    assert engine._follow(iter(ok), "push", "push x", plan).digest == "sha256:" + "a" * 64


def test_daemon_kind_and_client_settings(tmp_path: Path) -> None:
    podman = {"Version": "4.3.1", "Os": "linux", "Arch": "arm64", "ApiVersion": "1.41",
              "Components": [{"Name": "Podman Engine"}]}
    dockerd = {"Version": "20.10.24", "Os": "linux", "Arch": "amd64", "ApiVersion": "1.41",
               "Components": [{"Name": "Engine"}, {"Name": "containerd"}]}
    assert DaemonInfo.from_version(podman).kind == "podman"
    assert DaemonInfo.from_version(podman).platform == "linux/arm64"
    assert DaemonInfo.from_version(dockerd).label == "dockerd 20.10.24"
    env = {"DOCKER_HOST": "tcp://10.0.0.1:2376"}
    assert client_kwargs(DockerSettings(), env)["base_url"] == "tcp://10.0.0.1:2376"
    assert client_kwargs(DockerSettings(host="unix:///run/x.sock"), env)["base_url"] == "unix:///run/x.sock"
    with pytest.raises(DockerEngineError, match="no ca.pem"):
        client_kwargs(DockerSettings(tls_verify=True, cert_path=str(tmp_path)), {})
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    tls = client_kwargs(DockerSettings(host="tcp://10.0.0.1:2376", tls_verify=True, cert_path=str(tmp_path)), {})["tls"]
    assert tls.verify is True and tls.ca_cert == str(tmp_path / "ca.pem")
    assert tls.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_skopeo_sees_what_the_daemon_pushed(daemon: Daemon, engine_registries: EngineRegistries,
                                            images: dict[str, OciImage]) -> None:
    """Cross-check: the daemon's push is a readable image for a third tool, with the source's layers' content."""
    regs = engine_registries
    m = mapping(regs.source, SINGLE, regs.target, f"{daemon.kind}-skopeo")
    engine, _ = engine_for(daemon, regs)
    with engine:
        assert engine.copy(m).status == "copied"
    out = skopeo("inspect", "--config", "--tls-verify=false", f"docker://{m.target}").stdout
    config = json.loads(out)
    source_config = json.loads(skopeo("inspect", "--config", "--tls-verify=false", f"docker://{m.source}").stdout)
    assert config["rootfs"]["diff_ids"] == source_config["rootfs"]["diff_ids"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
