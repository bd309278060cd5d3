"""The deploy/ manifests (an Indexed Job running plan shards) are valid Kubernetes objects,
pass the policy themselves, and shard a plan into disjoint slices whose union is the plan."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from mirror.cli import main
from mirror.plan import Plan, PlanEntry, parse_shard
from tests.support.kubeapi import KubeAPI

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = sorted((ROOT / "deploy").glob("*.yaml"))


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_manifests_validate_strictly_against_the_api_schema(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_client_dry_run(tmp_path: Path) -> None:
    with KubeAPI() as api:  # kubectl needs discovery to map kinds; no object is created
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        out = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--dry-run=client",
                              "--validate=false", "-f", str(ROOT / "deploy" / "job.yaml"), "-o", "name"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["job.batch/acr-mirror-sync"]  # the served API has no ServiceAccounts


def test_the_jobs_own_image_passes_the_policy() -> None:
    result = CliRunner().invoke(main, ["scan", str(ROOT / "deploy"), "--config", str(ROOT / "config.example.yaml")])
    assert result.exit_code == 0, result.output


def test_job_shard_argument_matches_its_completions() -> None:
    job = yaml.safe_load((ROOT / "deploy" / "job.yaml").read_text())
    count = job["spec"]["completions"]
    [shard] = [a for a in job["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--shard=")]
    assert shard == f"--shard=$(JOB_COMPLETION_INDEX)/{count}" and job["spec"]["parallelism"] == count
    assert parse_shard(f"{count - 1}/{count}") == (count - 1, count)


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_shards_are_disjoint_and_cover_the_plan(count: int) -> None:
    entries = [PlanEntry(f"docker.io/library/app{i}:{i}", f"r.io/docker.io/library/app{i}:{i}") for i in range(60)]
    plan = Plan("r.io", "{registry}/{repository}", entries)
    shards = [plan.shard(i, count) for i in range(count)]
    sources = [e.source for s in shards for e in s.entries]
    assert sorted(sources) == sorted(e.source for e in entries) and len(set(sources)) == len(sources)
    # stable under re-ordering: an image's shard depends on the image alone
    reversed_plan = Plan("r.io", "{registry}/{repository}", list(reversed(entries)))
    assert [{e.source for e in reversed_plan.shard(i, count).entries} for i in range(count)] == \
        [{e.source for e in s.entries} for s in shards]
    if count > 1:
        assert all(s.entries for s in shards)  # 60 images spread over every shard
