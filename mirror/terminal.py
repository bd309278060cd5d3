"""Everything acr-mirror prints on a terminal: results, summaries, notes and progress.

Data goes to stdout (tables, JSON, diffs); what happened goes to stderr (one line per event,
`error:`/`warning:`/`failed:`/`skipped:` prefixes), so `acr-mirror scan --format json > x`
keeps x clean. Every line holding remote or file text is escaped (`printable`): no manifest,
registry or cluster can forge a line or drive the terminal.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import click
from rich.console import Console

from manifests_rewriter.files import printable
from manifests_rewriter.model import Finding
from manifests_rewriter.output import rewrite_lines
from manifests_rewriter.rewrite import RewriteResult
from manifests_rewriter.scan import ScanResult

from .context import Context
from .engines.base import CopyResult
from .pipeline import CacheRuleRun, MigrationRun, PlanRun, RewriteRun, SyncRun
from .registry.pacing import PaceFigure
from .report import human_size

_STYLE = {"copied": "green", "present": "dim", "failed": "red", "planned": "yellow"}


def err(line: str) -> None:
    click.echo(printable(line), err=True)


def out(line: str) -> None:
    click.echo(line)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


# -- setup ---------------------------------------------------------------------------------------


def setup(context: Context, *, strict: bool = True) -> None:
    """Notes on the config and policy; lint warnings (errors too unless `strict`: then the
    caller stops on them)."""
    for note in context.notes:
        err(f"warning: {note}")
    if not context.policy_from_config:
        err(f"policy from {context.policy.origin}")
    for message in context.lint:
        if not (strict and message.level == "error"):
            err(str(message))


# -- scan and plan -------------------------------------------------------------------------------


def finding_line(f: Finding) -> str:
    """One grep-friendly line: where: image -> target (workload, container; which assignment
    and parameter decided, and 'would be reported, not refused' unless its effect is Deny)."""
    workload = "/".join(x for x in (f.kind, f.namespace, f.name) if x)
    context = ", ".join(x for x in (workload, f.container and f"container {f.container}", f.decided_by()) if x)
    target = f" -> {f.target}" if f.target else f" ({f.reason})"
    return printable(f"{f.location()}: {f.image}{target}" + (f"  [{context}]" if context else ""))


def scan_table(result: ScanResult) -> None:
    screen = console()
    if result.findings:
        screen.print(f"{len(result.findings)} image references the policy would refuse:", style="bold")
        for f in result.findings:
            screen.print("  " + finding_line(f), markup=False)
    if result.warnings:
        screen.print(f"{len(result.warnings)} images outside pod specs (refused later, when an operator creates "
                     f"the pod):", style="bold")
        for w in result.warnings:
            screen.print(printable(f"  {w.location()}: {w.image}: {w.reason}"), markup=False)
    for error in result.errors:
        screen.print(f"error: {error}", markup=False, style="red")
    for note in result.notes:
        screen.print(printable(f"note: {note}"), markup=False)
    screen.print(f"{result.files} files scanned: {len(result.findings)} findings, "
                 f"{len(result.warnings)} warnings, {len(result.errors)} errors.")


def errors(result: ScanResult) -> None:
    for error in result.errors:
        err(f"error: {error}")
    notes(result)


def notes(result: ScanResult) -> None:
    for note in result.notes:
        err(f"note: {note}")


def plan_run(run: PlanRun, *, fmt: str, output: str | None, text: str) -> None:
    errors(run.scan)
    for warning in run.warnings:
        err(f"warning: {warning}")
    if output:
        err(f"wrote {output}: {len(run.plan.entries)} images")
    if fmt == "json" and not output:
        click.echo(text, nl=False)
    elif fmt == "table":
        for entry in run.plan.entries:
            out(f"{entry.source} -> {entry.target}" + (f"  {entry.digest}" if entry.digest else ""))


# -- sync ----------------------------------------------------------------------------------------


def copies_summary(copies: list[CopyResult], *, notes: bool = True) -> None:
    counts: dict[str, int] = {}
    for r in copies:
        counts[r.status] = counts.get(r.status, 0) + 1
    moved = sum(r.bytes_moved or 0 for r in copies)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    err(f"{len(copies)} images: {parts or 'nothing to do'}; {human_size(moved)} moved.")
    failed: dict[str, list[CopyResult]] = {}
    for r in copies:
        if r.status == "failed":
            failed.setdefault(r.error or "failed", []).append(r)
        elif r.note and notes:
            err(f"note: {r.source}: {r.note}")
    for error, same in failed.items():  # a host that cannot be reached is one line, not one per image
        if len(same) == 1:
            err(f"failed: {same[0].source} -> {same[0].target}: {error}")
        else:
            names = ", ".join(r.source for r in same[:3]) + (f" and {len(same) - 3} more" if len(same) > 3 else "")
            err(f"failed: {len(same)} images ({names}): {error}")


def pacing(figures: Iterable[PaceFigure], notes: Iterable[str] = ()) -> None:
    """How close the run came to the target's request budget (mirror.registry.pacing)."""
    for note in notes:
        err(f"note: {note}")
    for figure in figures:
        err(f"pacing: {figure.line()}")


def sync_run(run: SyncRun) -> None:
    errors(run.scan)
    if run.dry_run:
        for r in run.copies:  # a dry run's note is the request it would make (acr-import): on its line
            state = "already there" if r.status == "present" else "failed" if r.status == "failed" else "would copy"
            out(printable(f"{r.source} -> {r.target}: {state}"))
            if r.note:
                out(printable(f"  {r.note}"))
    copies_summary(run.copies, notes=not run.dry_run)
    pacing(run.pacing, run.notes)
    for failure in run.lock_failures:
        err(f"failed: {failure}")


# -- cache rules ---------------------------------------------------------------------------------


def cache_rule_run(run: CacheRuleRun) -> None:
    """The rule per upstream (stdout), what each image does (stderr), and what does not fit."""
    errors(run.scan)
    verb = {"planned": "would create" if run.dry_run else "planned", "created": "created", "reused": "reused"}
    for rule in run.rules:
        if rule.status in verb:
            creds = f" with credential set {rule.credential_set}" if rule.credential_set else ""
            out(printable(f"cache rule {rule.name}: {rule.target} <- {rule.source} ({plural(rule.images, 'image')}){creds}: "
                          f"{verb[rule.status]}"))
        else:
            err(f"{'not covered' if rule.status == 'unfit' else 'failed'}: {rule.upstream} "
                f"({plural(rule.images, 'image')}): "
                f"{rule.reason}")
        for note in rule.notes:
            err(f"note: {note}")
    for note in run.notes:
        err(f"note: {note}")
    counts: dict[str, int] = {}
    for image in run.images:
        counts[image.status] = counts.get(image.status, 0) + 1
        if image.status == "cached":
            out(printable(f"{image.source} -> {image.target}: resolves through the cache ({image.digest})"))
        elif image.status == "failed" or (image.status == "unfit" and image.rule):
            err(f"failed: {image.source} -> {image.target}: {image.error}")
    unfit = counts.get("unfit", 0) + counts.get("failed", 0)
    err(f"{plural(len(run.rules), 'upstream')}, {plural(len(run.images), 'image')}: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + (f"; copy the {plural(unfit, 'image')} the cache cannot serve with `acr-mirror sync`" if unfit else "")
        + ("" if run.dry_run or unfit else "; `acr-mirror rewrite` can now rewrite them (no copy needed)"))


# -- rewrite -------------------------------------------------------------------------------------


def rewrite_result(result: RewriteResult, *, write: bool, diff: bool) -> None:
    for stream, line in rewrite_lines(result, write=write, diff=diff):
        click.echo(line, err=stream == "err", nl=stream == "err")


def rewrite_run(run: RewriteRun) -> None:
    if run.files is not None:
        rewrite_result(run.files, write=run.write, diff=run.diff)
    if run.repos is not None:
        from .bulk import summary_table

        for result in run.repos.results.values():
            for skipped in result.skipped:
                err(f"skipped: {skipped}")
        out(summary_table(run.repos.outcomes))
    if run.cluster is not None:
        for error in run.cluster.errors:
            err(f"error: {error}")
        for outcome in run.cluster.results:
            err(str(outcome))
        mode = "patched" if run.cluster.applied else "server-side dry run (add --apply to patch)"
        err(f"{len(run.cluster.results)} workloads: {mode}.")


# -- migrate -------------------------------------------------------------------------------------


def migration(run: MigrationRun) -> None:
    if run.rewrite is not None:
        rewrite_result(run.rewrite, write=not run.dry_run, diff=run.dry_run)
    for r in run.copies:
        if r.status == "failed":
            err(f"failed: {r.source} -> {r.target}: {r.error}")
    pacing(run.pacing, run.notes)
    err(f"check: {len(run.remaining)} references would still be refused"
        + ("" if run.remaining else " - ready to enforce"))
    for failure in run.lock_failures:
        err(f"failed: {failure}")


# -- progress ------------------------------------------------------------------------------------


class ProgressPrinter:
    """Engine and pipeline events as lines on stderr: one per finished image (coloured with
    rich on a terminal), and the scan summary of a migration."""

    def __init__(self, is_terminal: bool | None = None) -> None:
        self._lock = threading.Lock()
        terminal = sys.stderr.isatty() if is_terminal is None else is_terminal
        self._console = Console(stderr=True, highlight=False) if terminal else None

    def __call__(self, event: str, info: Mapping[str, Any], /) -> None:
        if event == "scanned":
            self._print(f"scan: {info['findings']} refused references, {info['images']} distinct images, "
                        f"{info['warnings']} warnings, {info['errors']} unreadable files")
        elif event == "done":
            status = str(info.get("status", ""))
            # not "status:" - the final summary owns the one "failed: ..." line per image
            line = f"{status:>8} {info.get('source', '')} -> {info.get('target', '')}"
            if info.get("bytes_moved"):
                line += f" ({human_size(int(info['bytes_moved']))})"
            if info.get("error"):
                line += f": {info['error']}"
            self._print(line, _STYLE.get(status))

    def _print(self, line: str, style: str | None = None) -> None:
        line = printable(line)  # registry error text is remote input
        with self._lock:
            if self._console is not None:
                self._console.print(line, style=style, markup=False)
            else:
                print(line, file=sys.stderr, flush=True)


def lines(items: Iterable[object], prefix: str) -> None:
    for item in items:
        err(f"{prefix}{item}")
