"""Long runs survive token expiry (issue 12): the target registry's bearer tokens live 3 s (the
test token server backdates exp past distribution's 60 s leeway), and an upload streams for
longer than that. The copy completes, the token server sees fresh token requests during the
run, and the target holds the source's digest. Bounded by counting tokens, not by timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import parse
from mirror.engines.registry import RegistryEngine
from mirror.registry.credentials import BasicCredential, Credentials, fixed_keychain
from mirror.settings import CopySettings, MirrorSettings, RegistrySettings
from tests.reliability.faultproxy import Fault, FaultProxy, always
from tests.support.images import build_image, inspect_raw, push
from tests.support.registries import TokenServer, start_registry

pytestmark = pytest.mark.registry
TTL = 3


def test_tokens_that_expire_mid_run_are_renewed_and_a_long_upload_still_succeeds(tmp_path: Path,
                                                                                   source_registry) -> None:
    tokens = TokenServer(tmp_path / "token", ttl=TTL, short_lived=True).start()
    target = start_registry(tmp_path / "target", auth="token", token_server=tokens)
    layer = 1_200_000  # streamed at 200 KB/s: a 6 s upload, twice the tokens' life
    image = build_image(tmp_path / "oci", layers=[layer, 4096], seed="expiry")
    push(image, source_registry, "slow/app", "1")
    push(build_image(tmp_path / "oci2", layers=[8192], seed="expiry-2"), source_registry, "fast/app", "1")
    slow = FaultProxy(source_registry.url, always(Fault("throttle", rate=200_000),
                                                  match=lambda r: r.is_blob and r.method == "GET")).start()
    try:
        settings = MirrorSettings(
            registries={slow.host: RegistrySettings(insecure=True), source_registry.host: RegistrySettings(insecure=True),
                        **{h: RegistrySettings(insecure=True) for h in target.hosts}},
            copy=CopySettings(concurrency=1))
        creds = Credentials("test", BasicCredential(target.username or "", target.password or ""))
        mappings = [Mapping(parse(f"{slow.host}/{name}:1"), parse(target.ref(f"mirror/{name}:1")))
                    for name in ("slow/app", "fast/app")]
        with RegistryEngine(settings, keychain=fixed_keychain(lambda h: creds if h == target.host else None)) as engine:
            results = engine.copy_all(mappings)
        assert [r.status for r in results] == ["copied", "copied"], [r.error for r in results]
        push_tokens = [e for e in tokens.log if e.status == 200 and any("push" in s for s in e.scopes)]
        assert len(push_tokens) >= 2, "the tokens never expired: nothing was tested"
        assert inspect_raw("mirror/slow/app:1", target) == image.manifest
    finally:
        slow.stop()
        target.stop()
        tokens.stop()
