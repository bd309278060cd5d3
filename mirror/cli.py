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

from manifests_rewriter.cli import EXIT_CODES_HELP, guarded, require_paths
from manifests_rewriter.errors import EXIT_USAGE, UsageError
from manifests_rewriter.scan import ScanResult

from . import __version__, exits, pipeline, report, terminal
from .context import ClusterOptions, Context, naming_errors, open_context
from .engines import ENGINES
from .plan import Plan, PlanError, check_plan, parse_shard
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


def chart_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where Helm releases' charts come from (their default images: the chart pass)."""
    options = [
        click.option("--chart-dir", "chart_dirs", multiple=True, type=click.Path(file_okay=False),
                     help="Helm charts on disk (<name>-<version>.tgz or unpacked), repeatable; charts downloaded "
                          "are kept in the first (default ~/.cache/acr-mirror/charts)."),
        click.option("--offline-charts", is_flag=True,
                     help="Never download a chart: the scanned tree and --chart-dir only (air-gapped runs)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _charts(context: Context, kwargs: dict[str, Any], paths: tuple[str, ...]) -> None:
    from manifests_rewriter.charts import Charts, LocalCharts

    from .charts import RemoteCharts, default_cache_dir

    dirs = list(kwargs.pop("chart_dirs") or ()) or [default_cache_dir()]
    offline = kwargs.pop("offline_charts")
    remote = None if offline else RemoteCharts(context.settings, dirs[0])
    context.charts = Charts(LocalCharts(dirs, paths), remote)


def _cluster(kwargs: dict[str, Any]) -> ClusterOptions:
    return ClusterOptions(kwargs.pop("cluster"), kwargs.pop("kubeconfig"), kwargs.pop("context"),
                          kwargs.pop("namespace"), kwargs.pop("policy_from_cluster"), kwargs.pop("policy_file"),
                          kwargs.pop("policy_from_azure"))


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="Config file (default: ./acr-mirror.yaml, else $ACR_MIRROR_CONFIG).")


def source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where a command finds images: PATHS, the cluster (and where the policy comes from), Helm
    charts, and the config file."""
    for option in (config_option, chart_options, cluster_options, click.argument("paths", nargs=-1, type=click.Path())):
        func = option(func)
    return func


engine_option = click.option("--engine", type=click.Choice(list(ENGINES)), help="Override copy.engine.")
progress_option = click.option(
    "--progress", "progress_mode", type=click.Choice(terminal.PROGRESS_MODES), default="auto", show_default=True,
    help="Progress on stderr: tty (a live display: images, bytes, rate, ETA, waits), plain (lines), none; "
         "auto is tty on a terminal and plain in CI or a pipe.")


def _open(config_path: str | None, cluster: ClusterOptions | None = None, *, strict: bool = True,
          progress: terminal.ProgressDisplay | None = None) -> Context:
    """The context, its notes printed; with `strict` (every command but `policy lint`, which
    reports it), a naming the regex refuses is a usage error and stops here."""
    context = open_context(config_path, cluster, progress=progress)
    terminal.setup(context, strict=strict)
    problems = naming_errors(context.policy, context.config)
    if strict and problems:
        raise UsageError(f"{problems[0].message}; nothing was written")
    return context


def _given_or_built_plan(context: Context, plan_path: str | None, paths: tuple[str, ...], images: tuple[str, ...],
                         verb: str, nothing: str) -> tuple[Plan, ScanResult | None]:
    """The plan given with --plan (then no PATH or --image may come with it), else one built from
    PATHS and --image, with the scan that found its images."""
    if plan_path:
        if paths or images:
            raise UsageError(f"--plan {verb} the plan as reviewed: give no PATH or --image with it")
        return _load_plan(plan_path, context, nothing), None
    planned = pipeline.build_plan(context, paths, images)
    return planned.plan, planned.scan


def _load_plan(path: str, context: Context, nothing_done: str) -> Plan:
    """A plan file, held against the configuration in force before anything is done with it:
    one line per refused entry, then exit 2 (plan.check_plan)."""
    the_plan = Plan.load(path)
    config = context.config
    refused = check_plan(the_plan, path, target_registry=config.target_registry, naming=config.naming,
                         to_target=context.to_target, policy=context.policy)
    if refused:
        terminal.plan_refusals(refused)
        raise PlanError(f"{path}: {len(refused)} entr{'y does' if len(refused) == 1 else 'ies do'} not match the "
                        f"configuration; {nothing_done} (make the plan again with acr-mirror plan)")
    return the_plan


def _command(func: Callable[..., Any]) -> Callable[..., Any]:
    """A subcommand whose --help ends with the exit codes."""
    return main.command(epilog=EXIT_CODES_HELP)(func)


def _exit(code: int) -> None:
    if code:
        sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="acr-mirror")
def main() -> None:
    """Mirror container images into your registry and rewrite every reference to them."""
    terminal.route_logging()


@_command
@source_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif"]), default="table")
@guarded
def scan(paths: tuple[str, ...], config_path: str | None, fmt: str, **kwargs: Any) -> None:
    """Find image references the policy would refuse. Exit 1 if there are any."""
    require_paths(paths)
    context = _open(config_path, _cluster(kwargs))
    _charts(context, kwargs, paths)
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


@_command
@source_options
@click.option("--image", "images", multiple=True, help="Also plan this image (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the plan as JSON to this file.")
@click.option("--resolve/--no-resolve", default=True, help="Ask the source registry for each digest and platform.")
@progress_option
@guarded
def plan(paths: tuple[str, ...], config_path: str | None, images: tuple[str, ...], fmt: str, output: str | None,
         resolve: bool, progress_mode: str, **kwargs: Any) -> None:
    """Write the deterministic plan: source, digest, target, platforms, where found."""
    require_paths(paths)
    report.check_output(output)
    with terminal.progress_display(progress_mode) as progress:
        context = _open(config_path, _cluster(kwargs), progress=progress)
        _charts(context, kwargs, paths)
        run = pipeline.build_plan(context, paths, images, resolve=resolve)
    text = run.plan.to_json()
    if output:
        report.write_output(output, text)
    terminal.plan_run(run, fmt=fmt, output=output, text=text)
    _exit(exits.exit_code(run))


@_command
@source_options
@click.option("--image", "images", multiple=True, help="Copy this image too (repeatable).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Execute this plan (no re-scan).")
@click.option("--shard", help="Only shard I/N of the plan (0-based I).")
@engine_option
@click.option("--dry-run", is_flag=True, help="Print the plan and whether each image is already there.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON (or .md) report.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed image.")
@progress_option
@guarded
def sync(paths: tuple[str, ...], config_path: str | None, images: tuple[str, ...], plan_path: str | None,
         shard: str | None, engine: str | None, dry_run: bool, report_path: str | None, fail_fast: bool,
         progress_mode: str, **kwargs: Any) -> None:
    """Copy every refused image (or the plan's) into the target registry."""
    require_paths(paths)
    report.check_output(report_path)
    with terminal.progress_display(progress_mode) as progress:
        context = _open(config_path, _cluster(kwargs), progress=progress)
        _charts(context, kwargs, paths)
        the_plan, found = _given_or_built_plan(context, plan_path, paths, images, "executes", "nothing was copied")
        if shard:
            the_plan = the_plan.shard(*parse_shard(shard))
        run = pipeline.sync(context, the_plan, engine=engine, dry_run=dry_run, fail_fast=fail_fast, found=found)
    if report_path:
        report.sync_report(report_path, run)
    terminal.sync_run(run)
    _exit(exits.exit_code(run))


@main.command("cache-rules", epilog=EXIT_CODES_HELP)
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
    require_paths(paths)
    context = _open(config_path, _cluster(kwargs))
    the_plan, found = _given_or_built_plan(context, plan_path, paths, images, "covers", "no rule was created")
    run = pipeline.cache_rules(context, the_plan, dry_run=dry_run, pull=pull, found=found)
    terminal.cache_rule_run(run)
    _exit(exits.exit_code(run))


@_command
@click.argument("paths", nargs=-1, type=click.Path())
@config_option
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a file would change.")
@click.option("--diff", is_flag=True, help="Print a unified diff; write nothing.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Rewrite only references whose target exists with the source's digest.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Rewrite from this plan.")
@click.option("--pin-digests", is_flag=True, help="With --plan: write repo:tag@sha256:... from the plan.")
@cluster_options
@chart_options
@click.option("--apply", "apply_patches_", is_flag=True,
              help="With --cluster: really patch the owners (default: server-side dry run).")
@click.option("--force", is_flag=True, help="With --cluster: patch objects managed by Helm, Argo CD or Flux too.")
@click.option("--git", "git_repos", multiple=True, type=click.Path(file_okay=False),
              help="A local git checkout to update on a new branch with one commit (repeatable).")
@click.option("--git-list", type=click.Path(dir_okay=False), help="A file listing git checkouts, one per line.")
@click.option("--branch", default="acr-mirror/allowed-images", show_default=True, help="With --git: the new branch.")
@click.option("--push", is_flag=True, help="With --git: push the branch to its remote.")
@click.option("--remote", default="origin", show_default=True, help="With --git --push: the remote.")
@progress_option
@guarded
def rewrite(paths: tuple[str, ...], config_path: str | None, check: bool, diff: bool, verify: bool,
            plan_path: str | None, pin_digests: bool, apply_patches_: bool, force: bool, git_repos: tuple[str, ...],
            git_list: str | None, branch: str, push: bool, remote: str, progress_mode: str, **kwargs: Any) -> None:
    """Rewrite refused image references in PATHs (in place), in git checkouts (--git, one branch
    and commit each), or with --cluster in live workloads."""
    cluster = _cluster(kwargs)
    require_paths([*paths, *git_repos])
    repos = [Path(r) for r in git_repos]
    if git_list:
        from .bulk import read_repo_list

        try:
            repos += read_repo_list(git_list)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a UTF-8 text file"
            raise UsageError(f"--git-list {git_list}: cannot read it: {reason}") from None
    if repos and (paths or check or diff):
        raise UsageError("--git rewrites whole checkouts: give no PATH, --check or --diff with it")
    if not paths and not cluster.enabled and not repos:
        raise UsageError("give the files or directories to rewrite, --git checkouts, or --cluster")
    if pin_digests and not plan_path:
        raise UsageError("--pin-digests needs --plan (the plan holds the digests)")
    if not verify and cluster.enabled:
        raise UsageError("--cluster never patches a workload to an unverified image: drop --no-verify")
    with terminal.progress_display(progress_mode) as progress:
        context = _open(config_path, cluster, progress=progress)
        _charts(context, kwargs, paths)
        pins: dict[str, str | None] = {}
        if plan_path:  # a plan that cannot be read, or does not match the config, is an error even unpinned
            the_plan = _load_plan(plan_path, context, "nothing was rewritten")
            if pin_digests:
                pins = {e.source: e.digest for e in the_plan.entries if e.digest}
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


@_command
@source_options
@click.option("--dry-run", is_flag=True, help="Plan and show what would change; copy and write nothing.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write a JSON (or .md) report.")
@engine_option
@progress_option
@guarded
def migrate(paths: tuple[str, ...], config_path: str | None, dry_run: bool, report_path: str | None,
            engine: str | None, progress_mode: str, **kwargs: Any) -> None:
    """sync, verify, rewrite, then check that nothing left would be refused."""
    require_paths(paths)
    report.check_output(report_path)
    with terminal.progress_display(progress_mode) as progress:
        context = _open(config_path, _cluster(kwargs), progress=progress)
        _charts(context, kwargs, paths)
        run = pipeline.migrate(context, paths, dry_run=dry_run, engine=engine)
    terminal.errors(run.scan)
    if report_path:
        report.migration_report(report_path, run)
    terminal.migration(run)
    _exit(exits.exit_code(run))


@main.group(epilog=EXIT_CODES_HELP)
def policy() -> None:
    """Inspect the allow policy."""


@policy.command("lint", epilog=EXIT_CODES_HELP)
@config_option
@cluster_options
@guarded
def policy_lint(config_path: str | None, **kwargs: Any) -> None:
    """Weak regexes, and target names the regex would refuse (an error)."""
    context = _open(config_path, _cluster(kwargs), strict=False)
    if not context.lint:
        terminal.policy_ok(context)
    _exit(EXIT_USAGE if any(p.level == "error" for p in context.lint) else 0)


@_command
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
        terminal.audit_items(items)
    _exit(1 if items else 0)


if __name__ == "__main__":
    main()
