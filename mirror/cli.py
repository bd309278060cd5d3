"""`acr-mirror`: scan, plan, sync, rewrite, migrate, policy lint, audit.

Each command parses its options, opens a Context, calls one pipeline function and hands the
result to mirror.terminal (what to print), mirror.report (files) and mirror.exits (the exit
code). Errors become one line and their exit code in `guarded` (manifests_rewriter.cli).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from manifests_rewriter.cli import guarded
from manifests_rewriter.errors import EXIT_USAGE, UsageError

from . import __version__, exits, pipeline, report, terminal
from .context import ClusterOptions, Context, naming_errors, open_context
from .engines import ENGINES
from .plan import Plan, parse_shard
from .resolve import Resolver


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--cluster", is_flag=True, help="Also scan running workloads (Kubernetes API)."),
        click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Kubeconfig file."),
        click.option("--context", help="Kubeconfig context."),
        click.option("--namespace", help="Only this namespace (default: all)."),
        click.option("--policy-from-cluster", is_flag=True,
                     help="Read the policy from the cluster's Gatekeeper constraints (and Gatekeeper's Config)."),
        click.option("--policy-file", type=click.Path(dir_okay=False),
                     help="Read the policy from Azure Policy assignments, initiatives and exemptions exported as "
                          "JSON (az policy assignment show/list, az policy exemption list)."),
        click.option("--policy-from-azure", metavar="SCOPE",
                     help="Read the assignments in force at a subscription, resource group or cluster resource id "
                          "from Azure Resource Manager (with their initiatives and exemptions)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _cluster(kwargs: dict[str, Any]) -> ClusterOptions:
    return ClusterOptions(kwargs.pop("cluster"), kwargs.pop("kubeconfig"), kwargs.pop("context"),
                          kwargs.pop("namespace"), kwargs.pop("policy_from_cluster"), kwargs.pop("policy_file"),
                          kwargs.pop("policy_from_azure"))


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="Config file (default: ./acr-mirror.yaml, else $ACR_MIRROR_CONFIG).")
engine_option = click.option("--engine", type=click.Choice(list(ENGINES)), help="Override copy.engine.")


def _open(config_path: str | None, cluster: ClusterOptions | None = None, *, strict: bool = True) -> Context:
    """The context, its notes printed; with `strict`, a naming the regex refuses stops here."""
    context = open_context(config_path, cluster, progress=terminal.ProgressPrinter())
    terminal.setup(context, strict=strict)
    problems = naming_errors(context.policy, context.config)
    if strict and problems:
        raise UsageError(f"{problems[0].message}; nothing was written")
    return context


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
def scan(paths: tuple[str, ...], config_path: str | None, fmt: str, **kwargs: Any) -> None:
    """Find image references the policy would refuse. Exit 1 if there are any."""
    context = _open(config_path, _cluster(kwargs), strict=False)
    result = pipeline.scan(context, paths)
    if fmt in ("json", "sarif"):
        terminal.notes(result)  # stdout holds the document
    if fmt == "json":
        click.echo(report.scan_json(result))
    elif fmt == "sarif":
        click.echo(report.scan_sarif(result))
    else:
        terminal.scan_table(result)
    _exit(exits.exit_code(result))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--image", "images", multiple=True, help="Also plan this image (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the plan as JSON to this file.")
@click.option("--resolve/--no-resolve", default=True, help="Ask the source registry for each digest and platform.")
@guarded
def plan(paths: tuple[str, ...], config_path: str | None, images: tuple[str, ...], fmt: str, output: str | None,
         resolve: bool, **kwargs: Any) -> None:
    """Write the deterministic plan: source, digest, target, platforms, where found."""
    context = _open(config_path, _cluster(kwargs))
    run = pipeline.build_plan(context, paths, images, resolve=resolve)
    text = run.plan.to_json()
    if output:
        report.write_output(output, text)
    terminal.plan_run(run, fmt=fmt, output=output, text=text)
    _exit(exits.exit_code(run))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--image", "images", multiple=True, help="Copy this image too (repeatable).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Execute this plan (no re-scan).")
@click.option("--shard", help="Only shard I/N of the plan (0-based I).")
@engine_option
@click.option("--dry-run", is_flag=True, help="Print the plan and whether each image is already there.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON (or .md) report.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed image.")
@guarded
def sync(paths: tuple[str, ...], config_path: str | None, images: tuple[str, ...], plan_path: str | None,
         shard: str | None, engine: str | None, dry_run: bool, report_path: str | None, fail_fast: bool,
         **kwargs: Any) -> None:
    """Copy every refused image (or the plan's) into the target registry."""
    context = _open(config_path, _cluster(kwargs))
    if plan_path:
        if paths or images:
            raise UsageError("--plan executes the plan as reviewed: give no PATH or --image with it")
        the_plan, found = Plan.load(plan_path), None
    else:
        planned = pipeline.build_plan(context, paths, images)
        the_plan, found = planned.plan, planned.scan
    if shard:
        the_plan = the_plan.shard(*parse_shard(shard))
    run = pipeline.sync(context, the_plan, engine=engine, dry_run=dry_run, fail_fast=fail_fast, found=found)
    if report_path:
        report.sync_report(report_path, run)
    terminal.sync_run(run)
    _exit(exits.exit_code(run))


@main.command("cache-rules")
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--image", "images", multiple=True, help="Also cover this image (repeatable).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Cover this plan's images (no re-scan).")
@click.option("--dry-run", is_flag=True, help="Read the existing rules; create and pull nothing.")
@click.option("--pull/--no-pull", default=True, show_default=True,
              help="Pull each image once through the cache and compare its digest with the source's.")
@guarded
def cache_rules(paths: tuple[str, ...], config_path: str | None, images: tuple[str, ...], plan_path: str | None,
                dry_run: bool, pull: bool, **kwargs: Any) -> None:
    """ACR cache rules instead of copies: one rule per upstream registry (and the credential set
    it needs) so the target names pull through; then `rewrite` needs no copy. Exit 1 if an image
    cannot be served by the cache (copy those with sync)."""
    context = _open(config_path, _cluster(kwargs))
    if plan_path:
        if paths or images:
            raise UsageError("--plan covers the plan as reviewed: give no PATH or --image with it")
        the_plan, found = Plan.load(plan_path), None
    else:
        planned = pipeline.build_plan(context, paths, images)
        the_plan, found = planned.plan, planned.scan
    run = pipeline.cache_rules(context, the_plan, dry_run=dry_run, pull=pull, found=found)
    terminal.cache_rule_run(run)
    _exit(exits.exit_code(run))


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
def rewrite(paths: tuple[str, ...], config_path: str | None, check: bool, diff: bool, verify: bool,
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
    if pin_digests and not plan_path:
        raise UsageError("--pin-digests needs --plan (the plan holds the digests)")
    if not verify and cluster.enabled:
        raise UsageError("--cluster never patches a workload to an unverified image: drop --no-verify")
    context = _open(config_path, cluster)
    pins: dict[str, str | None] = {}
    if plan_path and pin_digests:
        pins = {e.source: e.digest for e in Plan.load(plan_path).entries if e.digest}
    elif plan_path:
        Plan.load(plan_path)  # a plan that cannot be read is an error even when nothing is pinned
    if not verify:
        terminal.err("warning: --no-verify: references are rewritten by name only, whether or not the image "
                     "is in the target")
    # the configured engine knows what its copies look like (and how to verify them)
    engine = pipeline.engine_for(context) if verify else None
    run = pipeline.RewriteRun(write=not (check or diff), check=check, diff=diff)
    try:
        resolver = Resolver(context.to_target, engine, expected=pins, pins=pins)
        if paths:
            run.files = pipeline.rewrite_files(context, paths, resolver, write=run.write)
        if repos:
            run.repos = pipeline.rewrite_repos(context, resolver, repos, branch=branch, push=push, remote=remote)
        if cluster.enabled:
            run.cluster = pipeline.patch_cluster(context, resolver, apply=apply_patches_, force=force)
        run.unverified = resolver.unverified
    finally:
        if engine is not None:
            engine.close()
    terminal.rewrite_run(run)
    _exit(exits.exit_code(run))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@cluster_options
@config_option
@click.option("--dry-run", is_flag=True, help="Plan and show what would change; copy and write nothing.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON (or .md) report.")
@engine_option
@guarded
def migrate(paths: tuple[str, ...], config_path: str | None, dry_run: bool, report_path: str | None,
            engine: str | None, **kwargs: Any) -> None:
    """sync, verify, rewrite, then check that nothing left would be refused."""
    context = _open(config_path, _cluster(kwargs))
    run = pipeline.migrate(context, paths, dry_run=dry_run, engine=engine)
    terminal.errors(run.scan)
    if report_path:
        report.migration_report(report_path, run)
    terminal.migration(run)
    _exit(exits.exit_code(run))


@main.group()
def policy() -> None:
    """Inspect the allow policy."""


@policy.command("lint")
@config_option
@cluster_options
@guarded
def policy_lint(config_path: str | None, **kwargs: Any) -> None:
    """Weak regexes, and target names the regex would refuse (an error)."""
    context = _open(config_path, _cluster(kwargs), strict=False)
    if not context.lint:
        click.echo(f"policy ok: imageRegex {context.policy.image_regex} ({context.policy.origin})")
    _exit(EXIT_USAGE if any(p.level == "error" for p in context.lint) else 0)


@main.command()
@click.option("--cluster", is_flag=True, required=True, help="Audit the cluster (required).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False))
@click.option("--context")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@guarded
def audit(cluster: bool, kubeconfig: str | None, context: str | None, fmt: str) -> None:
    """After enforcement: what the policy is refusing right now."""
    from .cluster.audit import audit_cluster
    from .cluster.kube import connect

    items = audit_cluster(connect(kubeconfig, context))
    if fmt == "json":
        click.echo(json.dumps([i.as_json() for i in items], indent=2))
    else:
        for item in items:
            click.echo(str(item))
        terminal.err(f"{len(items)} refusals or stuck workloads.")
    _exit(1 if items else 0)


if __name__ == "__main__":
    main()
