"""`acr-mirror`: scan, plan, sync, rewrite, migrate, policy lint, audit.

Only this module turns errors into exit codes: 0 ok; 1 findings, failed images, files it
could not read, or changes under --check; 2 usage or config error; 123 internal error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from manifests_rewriter.cli import (
    EXIT_FINDINGS,
    UsageError,
    guarded,
    lint_policy,
    load,
    naming_only,
    report_rewrite,
)
from manifests_rewriter.config import Config
from manifests_rewriter.files import printable
from manifests_rewriter.model import Mapping
from manifests_rewriter.policy import Policy
from manifests_rewriter.reference import ImageRef, ReferenceError, parse
from manifests_rewriter.rewrite import rewrite_paths
from manifests_rewriter.scan import ScanResult, scan_paths

from . import __version__, report
from .migrate import lock_mirrored, run_migration, verify_target, written_target
from .plan import Plan, PlanError, parse_shard, plan_from_findings


@dataclass
class ClusterOptions:
    enabled: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    policy_from_cluster: bool = False
    policy_file: str | None = None


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--cluster", is_flag=True, help="Also scan running workloads (Kubernetes API)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig file."),
        click.option("--context", help="Kubeconfig context."),
        click.option("--namespace", help="Only this namespace (default: all)."),
        click.option("--policy-from-cluster", is_flag=True,
                     help="Read imageRegex and exclusions from the cluster's Gatekeeper constraint."),
        click.option("--policy-file", type=click.Path(dir_okay=False),
                     help="Read the policy from an Azure Policy assignment exported as JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _cluster(kwargs: dict[str, Any]) -> ClusterOptions:
    return ClusterOptions(kwargs.pop("cluster"), kwargs.pop("kubeconfig"), kwargs.pop("context"),
                          kwargs.pop("namespace"), kwargs.pop("policy_from_cluster"), kwargs.pop("policy_file"))


config_option = click.option("--config", "config_path", required=True, envvar="ACR_MIRROR_CONFIG",
                             type=click.Path(dir_okay=False), help="acr-mirror config file.")


class Session:
    """The config, the policy in force (from config, cluster or assignment) and the naming."""

    def __init__(self, config_path: str, cluster: ClusterOptions | None = None, *, strict_lint: bool = True):
        self.cluster = cluster or ClusterOptions()
        optional = self.cluster.policy_from_cluster or bool(self.cluster.policy_file)
        self.config: Config = load(config_path, policy_optional=optional)
        self.to_target = naming_only(self.config)
        self._api: Any = None
        self.policy = self._policy()
        if self.policy.origin != f"config {self.config.path}":
            click.echo(f"policy from {self.policy.origin}", err=True)
        self.lint = lint_policy(self.policy, self.config, strict=strict_lint)

    @property
    def api(self) -> Any:
        if self._api is None:
            from .cluster.scan import connect

            self._api = connect(self.cluster.kubeconfig, self.cluster.context)
        return self._api

    def _policy(self) -> Policy:
        if self.cluster.policy_file:
            from .cluster.policy_source import policy_from_assignment

            return policy_from_assignment(self.cluster.policy_file)
        if self.cluster.policy_from_cluster:
            from .cluster.policy_source import policy_from_cluster

            return policy_from_cluster(self.api)
        return self.config.require_policy()

    def scan(self, paths: tuple[str, ...]) -> ScanResult:
        if not paths and not self.cluster.enabled:
            raise UsageError("nothing to scan: give PATH arguments or --cluster")
        result = scan_paths(paths, self.policy, self.to_target, max_bytes=self.config.scan.max_file_bytes,
                            exclude=self.config.scan.exclude) if paths else ScanResult()
        if self.cluster.enabled:
            from .cluster.scan import scan_cluster

            live = scan_cluster(self.api, self.policy, namespace=self.cluster.namespace, to_target=self.to_target)
            result.findings.extend(live.findings)
            result.warnings.extend(live.warnings)
            result.errors.extend(live.errors)
        return result

    def engine(self, name: str | None = None) -> Any:
        name = name or self.config.copy.engine
        if name == "docker":
            from .docker_engine import DockerEngine

            return DockerEngine(self.config, progress=progress_printer())
        from .copy import CopyEngine

        return CopyEngine(self.config, progress=progress_printer())


def progress_printer() -> Callable[[str, dict[str, Any]], None]:
    """Plain lines on stderr, one per image event (rich's live display is for terminals only)."""
    from .progress import make_progress

    return make_progress(sys.stderr.isatty())


def _exit(code: int) -> None:
    if code:
        sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="acr-mirror")
def main() -> None:
    """Mirror container images into your registry and rewrite every reference to them."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif"]), default="table")
@guarded
def scan(paths: tuple[str, ...], config_path: str, fmt: str, **kwargs: Any) -> None:
    """Find image references the policy would refuse. Exit 1 if there are any."""
    session = Session(config_path, _cluster(kwargs), strict_lint=False)
    result = session.scan(paths)
    if fmt == "json":
        click.echo(report.scan_json(result))
    elif fmt == "sarif":
        click.echo(report.scan_sarif(result))
    else:
        report.print_scan_table(result, report.console())
    _exit(EXIT_FINDINGS if result.findings or result.errors else 0)


def _build_plan(session: Session, paths: tuple[str, ...], images: tuple[str, ...] = ()) -> tuple[Plan, ScanResult]:
    result = session.scan(paths) if paths or session.cluster.enabled else ScanResult()
    plan = plan_from_findings(result.findings, session.config.target_registry, session.config.naming)
    known = {e.source for e in plan.entries}
    for text in images:
        try:
            ref = parse(text)
        except ReferenceError as exc:
            raise UsageError(f"--image {exc}") from None
        if str(ref) not in known:
            from .plan import PlanEntry

            plan.entries.append(PlanEntry(str(ref), str(session.to_target(ref)), found=[{"image": text}]))
            known.add(str(ref))
    plan.entries.sort(key=lambda e: e.source)
    return plan, result


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--image", "images", multiple=True, help="Also plan this image (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the plan as JSON to this file.")
@click.option("--resolve/--no-resolve", default=True, help="Ask the source registry for each digest and platform.")
@guarded
def plan(paths: tuple[str, ...], config_path: str, images: tuple[str, ...], fmt: str, output: str | None,
         resolve: bool, **kwargs: Any) -> None:
    """Write the deterministic plan: source, digest, target, platforms, where found."""
    session = Session(config_path, _cluster(kwargs))
    the_plan, result = _build_plan(session, paths, images)
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    if resolve and the_plan.entries:
        engine = session.engine("registry")
        try:
            for entry in the_plan.entries:
                status = engine.status(entry.mapping())
                if status.error:
                    click.echo(f"warning: {entry.source}: {status.error}", err=True)
                if status.digest and not entry.digest:
                    entry.digest = status.digest
                elif status.digest and entry.digest != status.digest and not parse(entry.source).digest:
                    entry.drift = f"{entry.source} now points to {status.digest}; {entry.digest} runs"
                entry.platforms = list(status.platforms or [])
        finally:
            engine.close()
    text = the_plan.to_json()
    if output:
        report.write_output(output, text)
        click.echo(f"wrote {output}: {len(the_plan.entries)} images", err=True)
    if fmt == "json" and not output:
        click.echo(text, nl=False)
    elif fmt == "table":
        for entry in the_plan.entries:
            click.echo(f"{entry.source} -> {entry.target}" + (f"  {entry.digest}" if entry.digest else ""))
    _exit(EXIT_FINDINGS if result.errors else 0)


def _write_report(path: str | None, results: list[Any], extra: dict[str, Any] | None = None) -> None:
    if not path:
        return
    data = {"images": [r.as_json() for r in results], **(extra or {})}
    if path.endswith(".md"):
        report.write_output(path, report.markdown_summary(data["images"], data.get("rewrites", []), []))
    else:
        report.write_output(path, json.dumps(data, indent=2) + "\n")


def _summary(results: list[Any]) -> None:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    moved = sum(r.bytes_moved or 0 for r in results)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    click.echo(f"{len(results)} images: {parts or 'nothing to do'}; {report.human_size(moved)} moved.", err=True)
    for r in results:  # registry messages are remote text: escaped
        if r.status == "failed":
            click.echo(printable(f"failed: {r.source} -> {r.target}: {r.error}"), err=True)
        elif r.note:
            click.echo(printable(f"note: {r.source}: {r.note}"), err=True)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--image", "images", multiple=True, help="Copy this image too (repeatable).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Execute this plan (no re-scan).")
@click.option("--shard", help="Only shard I/N of the plan (0-based I).")
@click.option("--engine", type=click.Choice(["registry", "docker"]), help="Override copy.engine.")
@click.option("--dry-run", is_flag=True, help="Print the plan and whether each image is already there.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON (or .md) report.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed image.")
@guarded
def sync(paths: tuple[str, ...], config_path: str, images: tuple[str, ...], plan_path: str | None,
         shard: str | None, engine: str | None, dry_run: bool, report_path: str | None, fail_fast: bool,
         **kwargs: Any) -> None:
    """Copy every refused image (or the plan's) into the target registry."""
    session = Session(config_path, _cluster(kwargs))
    try:
        if plan_path:
            if paths or images:
                raise UsageError("--plan executes the plan as reviewed: give no PATH or --image with it")
            the_plan = Plan.load(plan_path)
        else:
            the_plan, result = _build_plan(session, paths, images)
            for error in result.errors:
                click.echo(f"error: {error}", err=True)
        if shard:
            the_plan = the_plan.shard(*parse_shard(shard))
    except PlanError as exc:
        raise UsageError(str(exc)) from None
    copier = session.engine(engine)
    try:
        mappings = the_plan.mappings()
        if dry_run:
            results = [copier.status(m) for m in mappings]
            for r in results:
                click.echo(f"{r.source} -> {r.target}: {'already there' if r.status == 'present' else 'would copy'}")
        else:
            results = copier.copy_all(mappings, fail_fast=fail_fast)
    finally:
        copier.close()
    lock_failures = [] if dry_run else lock_mirrored(session.config, results)
    _write_report(report_path, results)
    _summary(results)
    for failure in lock_failures:
        click.echo(f"failed: {failure}", err=True)
    _exit(EXIT_FINDINGS if lock_failures or any(r.status == "failed" for r in results) else 0)


def verified_resolver(session: Session, engine: Any, pin: dict[str, str] | None = None
                      ) -> Callable[[ImageRef], ImageRef | str]:
    """Rewrite only to targets that hold the source's digest; cache one answer per image."""
    cache: dict[str, ImageRef | str] = {}

    def resolve(ref: ImageRef) -> ImageRef | str:
        key = str(ref)
        if key not in cache:
            target = session.to_target(ref)
            digest = (pin or {}).get(key)
            problem = verify_target(engine, Mapping(ref, target), digest) if engine is not None else None
            if problem:
                cache[key] = f"not rewritten: {problem}"
            else:
                target = target.with_digest(digest) if digest and not ref.digest else target
                cache[key] = written_target(target, session.config.copy.engine)
        return cache[key]

    return resolve


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@config_option
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a file would change.")
@click.option("--diff", is_flag=True, help="Print a unified diff; write nothing.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Rewrite only references whose target exists with the source's digest.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Rewrite from this plan.")
@click.option("--pin-digests", is_flag=True, help="With --plan: write repo:tag@sha256:... from the plan.")
@cluster_options
@click.option("--apply", "apply_patches_", is_flag=True,
              help="With --cluster: really patch the owners (default: server-side dry run).")
@click.option("--force", is_flag=True, help="With --cluster: patch objects managed by Helm, Argo CD or Flux too.")
@click.option("--git", "git_repos", multiple=True, type=click.Path(file_okay=False),
              help="A local git checkout to update on a new branch with one commit (repeatable).")
@click.option("--git-list", type=click.Path(dir_okay=False), help="A file listing git checkouts, one per line.")
@click.option("--branch", default="acr-mirror/allowed-images", show_default=True, help="With --git: the new branch.")
@click.option("--push", is_flag=True, help="With --git: push the branch to its remote.")
@click.option("--remote", default="origin", show_default=True, help="With --git --push: the remote.")
@guarded
def rewrite(paths: tuple[str, ...], config_path: str, check: bool, diff: bool, verify: bool,
            plan_path: str | None, pin_digests: bool, apply_patches_: bool, force: bool, git_repos: tuple[str, ...],
            git_list: str | None, branch: str, push: bool, remote: str, **kwargs: Any) -> None:
    """Rewrite refused image references in PATHs (in place), in git checkouts (--git, one branch
    and commit each), or with --cluster in live workloads."""
    cluster = _cluster(kwargs)
    repos = [Path(r) for r in git_repos]
    if git_list:
        from .bulk import read_repo_list

        repos += read_repo_list(git_list)
    if repos and (paths or check or diff):
        raise UsageError("--git rewrites whole checkouts: give no PATH, --check or --diff with it")
    if not paths and not cluster.enabled and not repos:
        raise UsageError("give the files or directories to rewrite, --git checkouts, or --cluster")
    session = Session(config_path, cluster)
    pins: dict[str, str] | None = None
    if plan_path:
        try:
            the_plan = Plan.load(plan_path)
        except PlanError as exc:
            raise UsageError(str(exc)) from None
        pins = {e.source: e.digest for e in the_plan.entries if e.digest} if pin_digests else {}
    elif pin_digests:
        raise UsageError("--pin-digests needs --plan (the plan holds the digests)")
    if not verify:
        if cluster.enabled:
            raise UsageError("--cluster never patches a workload to an unverified image: drop --no-verify")
        click.echo("warning: --no-verify: references are rewritten by name only, whether or not the image "
                   "is in the target", err=True)
    engine = session.engine() if verify else None  # the configured engine knows what its copies look like
    failed = False
    try:
        if paths:
            write = not (check or diff)
            result = rewrite_paths(paths, session.policy, verified_resolver(session, engine, pins), write=write,
                                   max_bytes=session.config.scan.max_file_bytes, exclude=session.config.scan.exclude)
            report_rewrite(result, write=write, diff=diff)
            failed = bool(result.errors or (check and result.changed))
        if repos:
            failed = _rewrite_repos(session, verified_resolver(session, engine, pins), repos,
                                    branch=branch, push=push, remote=remote) or failed
        if cluster.enabled:
            failed = _patch_cluster(session, engine, apply=apply_patches_, force=force) or failed
    finally:
        if engine is not None:
            engine.close()
    _exit(EXIT_FINDINGS if failed else 0)


def _rewrite_repos(session: Session, resolve: Callable[[ImageRef], ImageRef | str], repos: list[Path], *,
                   branch: str, push: bool, remote: str) -> bool:
    """One branch and one commit per clean checkout; a summary table. True if any failed."""
    from .bulk import BulkError, bulk_rewrite, summary_table

    def rewrite_repo(repo: Path, write: bool = True) -> Any:
        result = rewrite_paths([str(repo)], session.policy, resolve, write=write,
                               max_bytes=session.config.scan.max_file_bytes, exclude=session.config.scan.exclude)
        for skipped in result.skipped:
            click.echo(f"skipped: {skipped}", err=True)
        return result

    try:
        outcomes = bulk_rewrite(repos, rewrite_repo, branch=branch, push=push, remote=remote)
    except BulkError as exc:
        raise UsageError(str(exc)) from None
    click.echo(summary_table(outcomes))
    return any(o.status == "failed" or (push and o.status == "changed" and not o.pushed) for o in outcomes)


def _patch_cluster(session: Session, engine: Any, *, apply: bool, force: bool) -> bool:
    """Patch the owners' image fields (never pods), verified images only. True if any failed."""
    from .cluster.patch import apply_patches, plan_patches
    from .cluster.scan import scan_cluster

    live = scan_cluster(session.api, session.policy, namespace=session.cluster.namespace, to_target=session.to_target)
    for error in live.errors:
        click.echo(f"error: {error}", err=True)
    plans = plan_patches(session.api, live.findings, session.to_target,
                         lambda source, target, digest: verify_target(engine, Mapping(source, target), digest) is None,
                         force=force)
    results = apply_patches(session.api, plans, dry_run=not apply)
    for outcome in results:
        click.echo(str(outcome), err=True)
    mode = "patched" if apply else "server-side dry run (add --apply to patch)"
    click.echo(f"{len(results)} workloads: {mode}.", err=True)
    return any(r.status == "failed" for r in results) or bool(live.errors)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--dry-run", is_flag=True, help="Plan and show what would change; copy and write nothing.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON (or .md) report.")
@click.option("--engine", type=click.Choice(["registry", "docker"]), help="Override copy.engine.")
@guarded
def migrate(paths: tuple[str, ...], config_path: str, dry_run: bool, report_path: str | None,
            engine: str | None, **kwargs: Any) -> None:
    """sync, verify, rewrite, then check that nothing left would be refused."""
    session = Session(config_path, _cluster(kwargs))
    code = run_migration(session, paths, dry_run=dry_run, report_path=report_path, engine_name=engine)
    _exit(code)


@main.group()
def policy() -> None:
    """Inspect the allow policy."""


@policy.command("lint")
@config_option
@cluster_options
@guarded
def policy_lint(config_path: str, **kwargs: Any) -> None:
    """Weak regexes, and target names the regex would refuse (an error)."""
    cluster = _cluster(kwargs)
    session = Session(config_path, cluster, strict_lint=False)
    problems = session.lint
    if not problems:
        click.echo(f"policy ok: imageRegex {session.policy.image_regex!r} ({session.policy.origin})")
    _exit(2 if any(p.level == "error" for p in problems) else 0)


@main.command()
@click.option("--cluster", is_flag=True, required=True, help="Audit the cluster (required).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False))
@click.option("--context")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@guarded
def audit(cluster: bool, kubeconfig: str | None, context: str | None, fmt: str) -> None:
    """After enforcement: what the policy is refusing right now."""
    from .cluster.audit import audit_cluster
    from .cluster.scan import connect

    items = audit_cluster(connect(kubeconfig, context))
    if fmt == "json":
        click.echo(json.dumps([i.as_json() for i in items], indent=2))
    else:
        for item in items:
            click.echo(str(item))
        click.echo(f"{len(items)} refusals or stuck workloads.", err=True)
    _exit(EXIT_FINDINGS if items else 0)


if __name__ == "__main__":
    main()
