"""A migration run: scan, plan, sync, verify, rewrite, check.

A reference is rewritten only when its image was copied (or found present) AND a HEAD of
the target confirms the source's digest there; everything else stays as it was and is
listed as still blocking enforcement.
"""

from __future__ import annotations

import json
from typing import Any

import click

from manifests_rewriter.cli import EXIT_FINDINGS, report_rewrite
from manifests_rewriter.files import printable
from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import ImageRef, parse
from manifests_rewriter.rewrite import rewrite_paths
from manifests_rewriter.scan import scan_paths

from . import report
from .plan import plan_from_findings
from .registry.credentials import CredentialError
from .registry.errors import RegistryError


def verify_target(engine: Any, mapping: Mapping, digest: str | None = None) -> str | None:
    """None when a fresh look at the target shows the image there; otherwise why not.
    Registry trouble while looking is a reason, never an exception: the reference stays."""
    try:
        if engine.verify(mapping, digest):
            return None
    except (RegistryError, CredentialError) as exc:
        return f"cannot verify {mapping.target}: {exc}"
    return f"{mapping.target} is not in the target registry with the source's digest"


def written_target(target: ImageRef, engine_name: str) -> ImageRef:
    """The reference to write into the manifests. The Docker path re-serializes manifests, so a
    pinned source digest does not exist in the target: such references are written by tag (a
    digest-only one by its `sha256-<hex>` tag). Verification allows this only with
    docker.allow_digest_change."""
    if engine_name != "docker" or not target.digest:
        return target
    from .registry.media import digest_tag

    return ImageRef(target.registry, target.repository, target.tag or digest_tag(target.digest), None,
                    original=f"{target.name}:{target.tag or digest_tag(target.digest)}")


def lock_mirrored(config: Any, results: list[Any]) -> list[str]:
    """With copy.lock (ACR): make each mirrored image read-only. Returns the failures, one line each."""
    if not config.copy.lock:
        return []
    from .registry.acr_lock import LockError, lock_image

    failures = []
    for result in results:
        if result.status not in ("copied", "present"):
            continue
        target = parse(result.target)
        try:
            lock_image(target.registry, target.repository, result.target_digest or result.digest or target.reference,
                       settings=config.registry(target.registry))
        except LockError as exc:
            result.add_note(f"not locked: {exc}")
            failures.append(str(exc))
    return failures


def run_migration(session: Any, paths: tuple[str, ...], *, dry_run: bool = False,
                  report_path: str | None = None, engine_name: str | None = None) -> int:
    config, policy = session.config, session.policy
    found = session.scan(paths)
    for error in found.errors:
        click.echo(f"error: {error}", err=True)
    plan = plan_from_findings(found.findings, config.target_registry, config.naming)
    click.echo(f"scan: {len(found.findings)} refused references, {len(plan.entries)} distinct images, "
               f"{len(found.warnings)} warnings, {len(found.errors)} unreadable files", err=True)

    engine = session.engine(engine_name)
    try:
        mappings = plan.mappings()
        results = [engine.status(m) for m in mappings] if dry_run else engine.copy_all(mappings)
        lock_failures = [] if dry_run else lock_mirrored(config, results)
        # verify: a fresh HEAD of each target, never the copy's own word alone. Keys are the
        # references as written (a planned digest may pin the copy, not the rewrite).
        verified: dict[str, ImageRef] = {}
        reasons: dict[str, str] = {}
        for entry, mapping, result in zip(plan.entries, mappings, results, strict=True):
            if dry_run and result.status in ("planned", "present"):
                verified[entry.source] = written_target(parse(entry.target), engine_name or config.copy.engine)
            elif result.status not in ("copied", "present"):
                reasons[entry.source] = result.error or result.status
            elif problem := verify_target(engine, mapping, result.target_digest or result.digest):
                reasons[entry.source] = problem
            else:
                verified[entry.source] = written_target(parse(entry.target), engine_name or config.copy.engine)
    finally:
        engine.close()

    def resolve(ref: ImageRef) -> ImageRef | str:
        key = str(ref)
        if key in verified:
            return verified[key]
        return f"not rewritten: {reasons.get(key, 'not in the plan')}"

    write = not dry_run
    rewrites = rewrite_paths(paths, policy, resolve, write=write, max_bytes=config.scan.max_file_bytes,
                             exclude=config.scan.exclude) if paths else None
    if rewrites is not None:
        report_rewrite(rewrites, write=write, diff=dry_run)

    # check: what admission would still refuse in the files (after the rewrite)
    remaining = scan_paths(paths, policy, session.to_target, max_bytes=config.scan.max_file_bytes,
                           exclude=config.scan.exclude).findings if paths else []
    remaining += [f for f in found.findings if f.file is None]  # live objects change through `rewrite --cluster`
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        click.echo(printable(f"failed: {r.source} -> {r.target}: {r.error}"), err=True)
    click.echo(f"check: {len(remaining)} references would still be refused"
               + ("" if remaining else " - ready to enforce"), err=True)

    if report_path:
        rewritten = [{"file": f.source.display, "changes": [vars(c) for c in f.changes]}
                     for f in (rewrites.changed if rewrites else [])]
        if report_path.endswith(".md"):
            text = report.markdown_summary([r.as_json() for r in results], rewritten, remaining)
        else:
            text = json.dumps({"images": [r.as_json() for r in results], "rewrites": rewritten,
                               "remaining": [f.as_json() for f in remaining],
                               "errors": [e.as_json() for e in found.errors]}, indent=2) + "\n"
        report.write_output(report_path, text)
    for failure in lock_failures:
        click.echo(printable(f"failed: {failure}"), err=True)
    return EXIT_FINDINGS if failed or remaining or found.errors or lock_failures else 0

