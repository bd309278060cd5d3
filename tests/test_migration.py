"""Migration runs through the CLI on real registries: plan files, sharded sync, resume,
rewrite from a plan, migrate end to end (only verified images are rewritten), dry runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mirror.cli import main
from tests.support.images import inspect_raw, seed_standard_set, sha256

pytestmark = pytest.mark.registry


def write_config(path: Path, source: Any, target: Any, **copy: Any) -> Path:
    escaped = target.host.replace(".", r"\.")
    copy_lines = "".join(f"\n  {k}: {v}" for k, v in copy.items())
    path.write_text(
        f"target: {{registry: '{target.host}'}}\n"
        f"policy: {{imageRegex: '^{escaped}/.+$', excludedNamespaces: [kube-system]}}\n"
        f"registries:\n  '{source.host}': {{insecure: true}}\n  '{target.host}': {{insecure: true}}\n"
        + (f"copy:{copy_lines}\n" if copy else ""))
    return path


def manifests(root: Path, source: Any, seeded: dict[str, Any], missing: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    containers = "".join(f"        - name: c{i}\n          image: {source.host}/{ref}\n"
                         for i, ref in enumerate(sorted(seeded["images"])[:6]))
    if missing:
        containers += f"        - name: missing\n          image: {source.host}/{missing}\n"
    (root / "app.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: shop}\nspec:\n"
        "  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n"
        f"      containers:\n{containers}")
    index = seeded["index"]["ref"]
    (root / "values.yaml").write_text(f"image:\n  registry: {source.host}\n  repository: {index.split(':')[0]}\n"
                                      f"  tag: '{index.split(':')[1]}'\n")
    return root


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, [*args], catch_exceptions=False)


def target_state(target: Any, refs: list[str]) -> dict[str, str]:
    return {ref: sha256(inspect_raw(f"{target.host}/{ref}", target)) for ref in refs}


@pytest.fixture
def seeded(source_registry: Any, tmp_path: Path) -> dict[str, Any]:
    return seed_standard_set(source_registry, tmp_path / "images")


def test_plan_is_deterministic_and_resolves_digests(source_registry, target_registry, seeded, tmp_path):
    config = write_config(tmp_path / "c.yaml", source_registry, target_registry)
    tree = manifests(tmp_path / "k8s", source_registry, seeded)
    first, second = tmp_path / "plan1.json", tmp_path / "plan2.json"
    for out in (first, second):
        result = invoke("plan", str(tree), "--config", str(config), "--output", str(out))
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()
    plan = json.loads(first.read_text())
    by_source = {i["source"]: i for i in plan["images"]}
    assert len(by_source) == 7  # six images and the index, each once
    for ref, digest in seeded["images"].items():
        if f"{source_registry.host}/{ref}" in by_source:
            assert by_source[f"{source_registry.host}/{ref}"]["digest"] == digest
    index = by_source[f"{source_registry.host}/{seeded['index']['ref']}"]
    assert index["digest"] == seeded["index"]["digest"]
    assert sorted(index["platforms"]) == ["linux/amd64", "linux/arm64"]
    assert index["found"] == [{"file": str(tree / "values.yaml"), "line": 3, "path": "/image"}]  # the repository line
    assert all(i["target"].startswith(f"{target_registry.host}/127.0.0.1-{source_registry.port}/") for i in plan["images"])


def test_four_shards_equal_one_unsharded_run(source_registry, registry_factory, seeded, tmp_path):
    sharded, whole = registry_factory(), registry_factory()
    tree = manifests(tmp_path / "k8s", source_registry, seeded)
    plan = tmp_path / "plan.json"
    config_sharded = write_config(tmp_path / "s.yaml", source_registry, sharded)
    config_whole = write_config(tmp_path / "w.yaml", source_registry, whole)
    assert invoke("plan", str(tree), "--config", str(config_sharded), "--output", str(plan)).exit_code == 0
    reports = []
    for i in range(4):
        report = tmp_path / f"shard{i}.json"
        result = invoke("sync", "--plan", str(plan), "--shard", f"{i}/4", "--config", str(config_sharded),
                        "--report", str(report))
        assert result.exit_code == 0, result.output
        reports.append(json.loads(report.read_text())["images"])
    shard_sources = [img["source"].split("@")[0] for r in reports for img in r]  # the plan pins each digest
    planned = [i["source"] for i in json.loads(plan.read_text())["images"]]
    assert sorted(shard_sources) == sorted(planned) and len(set(shard_sources)) == len(shard_sources)
    # the same plan, unsharded, into another registry whose host differs only in the port
    plan_whole = tmp_path / "plan-whole.json"
    plan_whole.write_text(plan.read_text().replace(sharded.host, whole.host))
    assert invoke("sync", "--plan", str(plan_whole), "--config", str(config_whole)).exit_code == 0
    paths = [i["target"].split("/", 1)[1] for i in json.loads(plan.read_text())["images"]]
    assert target_state(sharded, paths) == target_state(whole, paths)


def test_resume_skips_what_is_done_and_dry_run_copies_nothing(source_registry, target_registry, seeded, tmp_path):
    config = write_config(tmp_path / "c.yaml", source_registry, target_registry)
    tree = manifests(tmp_path / "k8s", source_registry, seeded)
    dry = invoke("sync", str(tree), "--config", str(config), "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.count("would copy") == 7
    assert not any(target_registry.root.rglob("data"))  # nothing written to the target's storage
    first = tmp_path / "first.json"
    assert invoke("sync", str(tree), "--config", str(config), "--report", str(first)).exit_code == 0
    assert {i["status"] for i in json.loads(first.read_text())["images"]} == {"copied"}
    again = tmp_path / "again.json"
    assert invoke("sync", str(tree), "--config", str(config), "--report", str(again)).exit_code == 0
    images = json.loads(again.read_text())["images"]
    assert {i["status"] for i in images} == {"present"} and sum(i["bytes_moved"] for i in images) == 0


def test_rewrite_from_plan_pins_digests(source_registry, target_registry, seeded, tmp_path):
    config = write_config(tmp_path / "c.yaml", source_registry, target_registry)
    tree = manifests(tmp_path / "k8s", source_registry, seeded)
    plan = tmp_path / "plan.json"
    assert invoke("plan", str(tree), "--config", str(config), "--output", str(plan)).exit_code == 0
    assert invoke("sync", "--plan", str(plan), "--config", str(config)).exit_code == 0
    result = invoke("rewrite", str(tree / "app.yaml"), "--config", str(config), "--plan", str(plan), "--pin-digests")
    assert result.exit_code == 0, result.output
    text = (tree / "app.yaml").read_text()
    for ref, digest in sorted(seeded["images"].items())[:6]:
        assert f"image: {target_registry.host}/127.0.0.1-{source_registry.port}/{ref}@{digest}\n" in text


def test_migrate_rewrites_only_verified_images(source_registry, target_registry, seeded, tmp_path):
    config = write_config(tmp_path / "c.yaml", source_registry, target_registry)
    tree = manifests(tmp_path / "k8s", source_registry, seeded, missing="team/ghost:0.0")
    report = tmp_path / "report.json"
    result = invoke("migrate", str(tree), "--config", str(config), "--report", str(report))
    assert result.exit_code == 1  # the ghost image cannot be copied, so one reference still blocks
    data = json.loads(report.read_text())
    failed = [i for i in data["images"] if i["status"] == "failed"]
    assert [i["source"] for i in failed] == [f"{source_registry.host}/team/ghost:0.0"]
    text = (tree / "app.yaml").read_text()
    assert f"image: {source_registry.host}/team/ghost:0.0\n" in text  # never rewritten to a missing image
    assert text.count(f"image: {target_registry.host}/") == 6
    assert [r["image"] for r in data["remaining"]] == [f"{source_registry.host}/team/ghost:0.0"]
    values = (tree / "values.yaml").read_text()
    assert values.startswith(f"image:\n  registry: {target_registry.host}\n")
    md = tmp_path / "report.md"
    invoke("migrate", str(tree), "--config", str(config), "--report", str(md))
    summary = md.read_text()
    assert "# acr-mirror migration report" in summary and "team/ghost:0.0" in summary
    assert "What still blocks enforcement" in summary


def test_migrate_dry_run_changes_nothing(source_registry, target_registry, seeded, tmp_path):
    config = write_config(tmp_path / "c.yaml", source_registry, target_registry)
    tree = manifests(tmp_path / "k8s", source_registry, seeded)
    before = {p: p.read_bytes() for p in tree.iterdir()}
    result = invoke("migrate", str(tree), "--config", str(config), "--dry-run")
    assert "would rewrite" in result.stderr and result.exit_code == 1  # nothing copied: all still refused
    assert {p: p.read_bytes() for p in tree.iterdir()} == before
    assert not any(target_registry.root.rglob("data"))
