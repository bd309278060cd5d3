"""The pipeline: scan, plan, sync, rewrite, migrate, each a function that returns a value.

DESIGN.md's stages (scan → plan → sync → verify → rewrite → check) as values: nothing here
prints or exits (no click); mirror.cli turns a result into terminal output (mirror.terminal),
reports (mirror.report) and an exit code (mirror.exits). Engines come from the registry in
mirror.engines; what may be rewritten is decided by mirror.resolve.Resolver.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from manifests_rewriter.errors import UsageError
from manifests_rewriter.files import FileError
from manifests_rewriter.model import Finding
from manifests_rewriter.output import by_cause, counted
from manifests_rewriter.reference import ImageRef, ReferenceError, parse
from manifests_rewriter.rewrite import RewriteResult, rewrite_paths
from manifests_rewriter.scan import ScanResult, scan_paths

from .context import Context
from .engines import DEFAULT_ENGINE, create_engine
from .engines.base import CopyResult, Engine
from .plan import Plan, PlanEntry, plan_from_findings
from .registry.errors import RegistryError
from .registry.pacing import ACR_TIERS, PaceFigure, Pacer
from .resolve import Resolver

if TYPE_CHECKING:
    from .azure.cache import CachedImage, RulePlan
    from .bulk import RepoOutcome
    from .cluster.patch import PatchResult


# -- results -------------------------------------------------------------------------------------


@dataclass
class PlanRun:
    plan: Plan
    scan: ScanResult
    warnings: list[str] = field(default_factory=list)  # images whose source could not be resolved


@dataclass
class SyncRun:
    plan: Plan
    copies: list[CopyResult]
    dry_run: bool = False
    scan: ScanResult = field(default_factory=ScanResult)
    lock_failures: list[str] = field(default_factory=list)
    pacing: list[PaceFigure] = field(default_factory=list)  # how close the run came to the ACR tier's budget
    notes: list[str] = field(default_factory=list)


@dataclass
class CacheRuleRun:
    """`cache-rules`: the rule per upstream registry and, per image, whether it resolves through the cache."""

    plan: Plan
    registry: str  # the target registry's resource id
    rules: list[RulePlan]
    images: list[CachedImage]
    dry_run: bool = False
    scan: ScanResult = field(default_factory=ScanResult)
    notes: list[str] = field(default_factory=list)


@dataclass
class PatchRun:
    results: list[PatchResult]
    errors: list[FileError]  # what the cluster scan could not read
    applied: bool


@dataclass
class RepoRewrite:
    outcomes: list[RepoOutcome]
    results: dict[str, RewriteResult]  # per repository, what its rewrite skipped
    push: bool


@dataclass
class RewriteRun:
    files: RewriteResult | None = None
    repos: RepoRewrite | None = None
    cluster: PatchRun | None = None
    write: bool = True
    check: bool = False
    diff: bool = False
    unverified: dict[str, str] = field(default_factory=dict)  # source -> why it could not be rewritten


@dataclass
class MigrationRun:
    scan: ScanResult
    plan: Plan
    copies: list[CopyResult]
    rewrite: RewriteResult | None
    remaining: list[Finding]
    dry_run: bool
    lock_failures: list[str] = field(default_factory=list)
    pacing: list[PaceFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- scan and plan -------------------------------------------------------------------------------


def scan(context: Context, paths: Sequence[str]) -> ScanResult:
    """Refused references in PATHs and, with --cluster, in running workloads."""
    if not paths and not context.cluster.enabled:
        raise UsageError("nothing to scan: give PATH arguments or --cluster")
    settings = context.config.scan
    result = scan_paths(paths, context.policy, context.to_target, max_bytes=settings.max_file_bytes,
                        exclude=settings.exclude, charts=context.charts,
                        max_nodes=settings.max_file_nodes) if paths else ScanResult()
    if context.cluster.enabled:
        from .cluster.scan import scan_cluster

        live = scan_cluster(context.api, context.policy, namespace=context.cluster.namespace,
                            to_target=context.to_target)
        result.findings.extend(live.findings)
        result.warnings.extend(live.warnings)
        result.errors.extend(live.errors)
    return result


def build_plan(context: Context, paths: Sequence[str], images: Sequence[str] = (), *,
               resolve: bool = False) -> PlanRun:
    """One entry per distinct refused image (plus --image ones); with `resolve`, each source's
    digest and platforms as its registry says now."""
    found = scan(context, paths) if paths or context.cluster.enabled else ScanResult()
    plan = plan_from_findings(found.findings, context.config.target_registry, context.config.naming)
    known = {e.source for e in plan.entries}
    for text in images:
        try:
            ref = parse(text)
        except ReferenceError as exc:
            raise UsageError(f"--image {exc}") from None
        if str(ref) not in known:
            plan.entries.append(PlanEntry(str(ref), str(context.to_target(ref)), found=[{"image": text}]))
            known.add(str(ref))
    plan.entries.sort(key=lambda e: e.source)
    run = PlanRun(plan, found)
    if resolve and plan.entries:
        with create_engine(DEFAULT_ENGINE, context.settings, progress=context.progress) as engine:  # reads sources only
            workers = max(1, min(context.settings.copy.concurrency, len(plan.entries)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resolve") as pool:
                statuses = list(pool.map(lambda e: engine.status(e.mapping()), plan.entries))
            for entry, status in zip(plan.entries, statuses, strict=True):
                if status.digest and not entry.digest:
                    entry.digest = status.digest
                elif status.digest and entry.digest != status.digest and not parse(entry.source).digest:
                    entry.drift = f"{entry.source} now points to {status.digest}; {entry.digest} runs"
                entry.platforms = list(status.platforms or [])
            failed = [(entry.source, status.error or "")
                      for entry, status in zip(plan.entries, statuses, strict=True) if status.error]
            for error, same in by_cause(failed, lambda pair: pair[1]).items():
                sources = [source for source, _ in same]
                names = sources[0] if len(sources) == 1 else counted(sources, "images")
                run.warnings.append(f"{names}: {error} (planned without a digest; check the registry settings, "
                                    f"or plan with --no-resolve)")
    return run


# -- sync ----------------------------------------------------------------------------------------


def engine_for(context: Context, name: str | None = None) -> Engine:
    return create_engine(name or context.settings.copy.engine, context.settings, progress=context.progress)


def sync(context: Context, plan: Plan, *, engine: str | None = None, dry_run: bool = False,
         fail_fast: bool = False, found: ScanResult | None = None) -> SyncRun:
    """Copy the plan's images (or, dry, say whether each is there already)."""
    mappings = plan.mappings()
    notes: list[str] = []
    with engine_for(context, engine) as copier:
        pacer = None if dry_run else pace(context, copier, notes)
        copies = [copier.status(m) for m in mappings] if dry_run else copier.copy_all(mappings, fail_fast=fail_fast)
    run = SyncRun(plan, copies, dry_run, found or ScanResult(), notes=notes)
    run.pacing = pacer.figures() if pacer else []
    if not dry_run:
        run.lock_failures = lock_mirrored(context, copies)
    return run


def pace(context: Context, copier: Engine, notes: list[str]) -> Pacer | None:
    """Pace the engine's requests to the target under its ACR tier's budget: the tier from
    copy.acr_sku, else from ARM when the azure: section locates the registry. None: not paced."""
    target = context.config.target_registry
    sku = context.settings.copy.acr_sku
    if sku is None and context.settings.azure.locates_registry:
        from .azure.arm import Arm, ArmError

        shared = getattr(copier, "arm", None)  # the acr-import engine has one already
        owned = not isinstance(shared, Arm)
        arm = Arm(context.settings.azure, retries=context.settings.copy.retries) if owned else shared
        assert isinstance(arm, Arm)
        try:
            sku = arm.registry(target).sku
        except ArmError as exc:
            notes.append(f"requests to {target} are not paced to its tier: {exc}")
        finally:
            if owned:
                arm.close()
    if sku is None:
        return None
    budget = ACR_TIERS.get(sku)
    if budget is None:
        notes.append(f"requests to {target} are not paced: no documented budget for the ACR tier {sku!r}")
        return None
    copier.pacer = Pacer({target: budget})
    return copier.pacer


def lock_mirrored(context: Context, copies: Sequence[CopyResult]) -> list[str]:
    """With copy.lock (ACR): make each mirrored image read-only. Returns the failures, one line each."""
    if not context.settings.copy.lock:
        return []
    from .azure.acr_lock import LockError, lock_image

    failures = []
    for result in copies:
        if result.status not in ("copied", "present"):
            continue
        target = parse(result.target)
        try:
            lock_image(target.registry, target.repository, result.target_digest or result.digest or target.reference,
                       settings=context.settings.registry(target.registry))
        except LockError as exc:
            result.add_note(f"not locked: {exc}")
            failures.append(str(exc))
    return failures


# -- rewrite -------------------------------------------------------------------------------------


def rewrite_files(context: Context, paths: Sequence[str], resolver: Resolver, *, write: bool) -> RewriteResult:
    settings = context.config.scan
    found = None  # with the Helm releases' charts resolved; else rewrite_paths resolves them
    if resolver.verifies:  # verify every refused image at once, not one round trip after another
        found = scan_paths(paths, context.policy, context.to_target, max_bytes=settings.max_file_bytes,
                           exclude=settings.exclude, charts=context.charts, max_nodes=settings.max_file_nodes)
        resolver.prefetch((parse(f.image) for f in found.findings if f.target), context.settings.copy.concurrency)
    result = rewrite_paths(paths, context.policy, resolver, write=write, max_bytes=settings.max_file_bytes,
                           exclude=settings.exclude, charts=context.charts, views=found.views if found else None,
                           max_nodes=settings.max_file_nodes)
    if found is not None:
        result.unchecked.extend(found.unchecked)
    return result


def rewrite_repos(context: Context, resolver: Resolver, repos: Sequence[Path], *, branch: str, push: bool,
                  remote: str) -> RepoRewrite:
    """One branch and one commit per clean checkout (mirror.bulk)."""
    from .bulk import BulkError, bulk_rewrite

    results: dict[str, RewriteResult] = {}

    def rewrite_repo(repo: Path, write: bool = True) -> RewriteResult:
        results[str(repo)] = result = rewrite_files(context, [str(repo)], resolver, write=write)
        return result

    try:
        outcomes = bulk_rewrite(list(repos), rewrite_repo, branch=branch, push=push, remote=remote)
    except BulkError as exc:
        raise UsageError(str(exc)) from None
    return RepoRewrite(outcomes, results, push)


def patch_cluster(context: Context, resolver: Resolver, *, apply: bool, force: bool) -> PatchRun:
    """Patch the owners' image fields in live workloads (never pods), verified images only."""
    from manifests_rewriter.model import Mapping

    from .cluster.patch import apply_patches, plan_patches
    from .cluster.scan import scan_cluster

    live = scan_cluster(context.api, context.policy, namespace=context.cluster.namespace,
                        to_target=context.to_target)
    plans = plan_patches(context.api, live.findings, context.to_target,
                         lambda source, target, digest: resolver.verify(Mapping(source, target), digest) is None,
                         force=force)
    return PatchRun(apply_patches(context.api, plans, dry_run=not apply), list(live.errors), apply)


# -- migrate -------------------------------------------------------------------------------------


def migrate(context: Context, paths: Sequence[str], *, dry_run: bool = False, engine: str | None = None) -> MigrationRun:
    """scan, plan, sync, verify, rewrite, check: a reference is rewritten only when its image was
    copied (or found present) and a fresh look at the target confirms the source's digest there."""
    found = scan(context, paths)
    plan = plan_from_findings(found.findings, context.config.target_registry, context.config.naming)
    if context.progress is not None:
        context.progress("scanned", {"findings": len(found.findings), "images": len(plan.entries),
                                     "warnings": len(found.warnings), "errors": len(found.errors)})
    mappings = plan.mappings()
    notes: list[str] = []
    with engine_for(context, engine) as copier:
        pacer = None if dry_run else pace(context, copier, notes)
        copies = [copier.status(m) for m in mappings] if dry_run else copier.copy_all(mappings)
        lock_failures = [] if dry_run else lock_mirrored(context, copies)
        done = ("planned", "present") if dry_run else ("copied", "present")
        resolver = Resolver(
            context.to_target, copier, verify=not dry_run,
            # keys are the references as written: a planned digest pins the copy, not the rewrite
            expected={e.source: r.target_digest or r.digest for e, r in zip(plan.entries, copies, strict=True)},
            refused={e.source: r.error or r.status for e, r in zip(plan.entries, copies, strict=True)
                     if r.status not in done},
            only=[e.source for e in plan.entries])
        resolver.prefetch((parse(e.source) for e in plan.entries), context.settings.copy.concurrency)
        rewritten = rewrite_paths(paths, context.policy, resolver, write=not dry_run,
                                  max_bytes=context.config.scan.max_file_bytes, exclude=context.config.scan.exclude,
                                  views=found.views, max_nodes=context.config.scan.max_file_nodes) if paths else None
    # check: what admission would still refuse in the files (after the rewrite), and what runs
    settings = context.config.scan
    remaining = scan_paths(paths, context.policy, context.to_target, max_bytes=settings.max_file_bytes,
                           exclude=settings.exclude, charts=context.charts,
                           max_nodes=settings.max_file_nodes).findings if paths else []
    remaining += [f for f in found.findings if f.file is None]  # live objects change through `rewrite --cluster`
    return MigrationRun(found, plan, copies, rewritten, remaining, dry_run, lock_failures,
                        pacer.figures() if pacer else [], notes)


# -- cache rules -----------------------------------------------------------------------------------


def cache_rules(context: Context, plan: Plan, *, dry_run: bool = False, pull: bool = True,
                found: ScanResult | None = None) -> CacheRuleRun:
    """ACR cache rules (and credential sets) so the plan's target names pull through from their
    upstreams, instead of copies; then each image pulled once through the cache and its digest
    compared with the source's. Dry: the existing rules are read, nothing is created or pulled."""
    from .azure.arm import Arm
    from .azure.cache import apply_rules, pull_through

    settings = context.settings
    with Arm(settings.azure, retries=settings.copy.retries, timeout=settings.copy.timeout) as arm, \
            create_engine(DEFAULT_ENGINE, settings) as reader:
        registry = arm.registry(context.config.target_registry)
        outcome = apply_rules(arm, registry, plan.entries, context.config.naming, settings.azure, reader.keychain,
                              dry_run=dry_run)
        if pull and not dry_run:
            def read_digest(ref: ImageRef) -> str | None:
                info = reader.client(ref.registry).repo(ref.repository).head_manifest(ref.reference)
                return info.digest if info is not None else None

            def pull_manifest(ref: ImageRef) -> str | None:
                """A GET, not a HEAD: a manifest GET is the pull that makes ACR fetch it from upstream."""
                try:
                    return reader.client(ref.registry).repo(ref.repository).get_manifest(ref.reference).digest
                except RegistryError as exc:
                    if exc.status == 404:
                        return None
                    raise

            pull_through(outcome, read_digest, pull_manifest, workers=settings.copy.concurrency)
    return CacheRuleRun(plan, outcome.registry, outcome.rules, outcome.images, dry_run, found or ScanResult(),
                        outcome.notes)
