"""Everything acr-mirror prints on a terminal: results, summaries, notes and progress.

Data goes to stdout (tables, JSON, diffs); what happened goes to stderr (one line per event,
`error:`/`warning:`/`failed:`/`skipped:` prefixes), so `acr-mirror scan --format json > x`
keeps x clean. Every line holding remote or file text is escaped (`printable`, through `err`
and `out`; JSON is escaped by construction): no manifest, registry or cluster can forge a line
or drive the terminal, and no URL shows its credentials. Log records of the `mirror` loggers
come out the same way (`route_logging`). Diffs are the one exception: they are the files' own
bytes, for `patch` or a reviewer.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from manifests_rewriter.files import printable
from manifests_rewriter.model import Finding
from manifests_rewriter.output import by_cause, counted, rewrite_lines
from manifests_rewriter.policy import quoted
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
    """One line of data on stdout (a table row, an item), escaped like every other line."""
    click.echo(printable(line))


class _EscapedLines(logging.Handler):
    """Log records as `warning: ...` lines on stderr, escaped: messages may quote registry text."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


def route_logging() -> None:
    """Send the `mirror` loggers' records (warnings and above) through `err`, never raw to stderr."""
    logger = logging.getLogger("mirror")
    if not any(isinstance(h, _EscapedLines) for h in logger.handlers):
        logger.addHandler(_EscapedLines(logging.WARNING))


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
    context = ", ".join(x for x in (workload, f.container and f"container {f.container}", f.decided_by(),
                                    f.reason.startswith("chart default") and "chart default") if x)
    target = f" -> {f.target}" if f.target else f" ({f.reason})"
    return printable(f"{f.location()}: {f.image}{target}" + (f"  [{context}]" if context else ""))


def scan_table(result: ScanResult) -> None:
    screen = console()
    if result.findings:
        screen.print(f"{plural(len(result.findings), 'image reference')} the policy would refuse:", style="bold")
        for f in result.findings:
            screen.print("  " + finding_line(f), markup=False)
    if result.warnings:
        screen.print(f"{plural(len(result.warnings), 'image')} outside pod specs (refused later, when an operator "
                     f"creates the pod):", style="bold")
        for w in result.warnings:
            screen.print(printable(f"  {w.location()}: {w.image}: {w.reason}"), markup=False)
    for error in result.errors:
        screen.print(f"error: {error}", markup=False, style="red")
    for unchecked in result.unchecked:  # what could not be checked (a Helm chart not found), never silent
        screen.print(printable(f"warning: {unchecked}"), markup=False)
    for note in result.notes:
        screen.print(printable(f"note: {note}"), markup=False)
    screen.print(f"{plural(result.files, 'file')} scanned: {plural(len(result.findings), 'finding')}, "
                 f"{plural(len(result.warnings), 'warning')}, {plural(len(result.errors), 'error')}.")


def errors(result: ScanResult) -> None:
    for error in result.errors:
        err(f"error: {error}")
    for unchecked in result.unchecked:
        err(f"warning: {unchecked}")
    notes(result)


def notes(result: ScanResult) -> None:
    for note in result.notes:
        err(f"note: {note}")


def plan_run(run: PlanRun, *, fmt: str, output: str | None, text: str) -> None:
    errors(run.scan)
    for warning in run.warnings:
        err(f"warning: {warning}")
    if output:
        err(f"wrote {output}: {plural(len(run.plan.entries), 'image')}")
    if fmt == "json" and not output:
        click.echo(text, nl=False)
    elif fmt == "table":
        for entry in run.plan.entries:
            out(f"{entry.source} -> {entry.target}" + (f"  {entry.digest}" if entry.digest else ""))


def plan_refusals(refused: Iterable[str]) -> None:
    """`sync --plan` / `rewrite --plan`: one line per plan entry that does not match the config."""
    for line in refused:
        err(f"refused: {line}")


# -- sync ----------------------------------------------------------------------------------------


def copies_summary(copies: list[CopyResult], *, notes: bool = True) -> None:
    counts: dict[str, int] = {}
    for r in copies:
        counts[r.status] = counts.get(r.status, 0) + 1
    moved = sum(r.bytes_moved or 0 for r in copies)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    err(f"{plural(len(copies), 'image')}: {parts or 'nothing to do'}; {human_size(moved)} moved.")
    for r in copies:  # registry messages are remote text: escaped (err)
        if r.status != "failed" and r.note and notes:
            err(f"note: {r.source}: {r.note}")
    failed_copies(copies)


def failed_copies(copies: list[CopyResult]) -> None:
    """One line per cause: a host that cannot be reached is one line, not one per image."""
    failed = by_cause((r for r in copies if r.status == "failed"), lambda r: r.error or "failed")
    for error, same in failed.items():
        if len(same) == 1:
            err(f"failed: {same[0].source} -> {same[0].target}: {error}")
        else:
            err(f"failed: {counted([r.source for r in same], 'images')}: {error}")


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
            out(f"{r.source} -> {r.target}: {state}")
            if r.note:
                out(f"  {r.note}")
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
        for line in summary_table(run.repos.outcomes).splitlines():
            out(line)
    if run.cluster is not None:
        for error in run.cluster.errors:
            err(f"error: {error}")
        for outcome in run.cluster.results:
            err(str(outcome))
        mode = "patched" if run.cluster.applied else "server-side dry run (add --apply to patch)"
        err(f"{plural(len(run.cluster.results), 'workload')}: {mode}.")


# -- migrate -------------------------------------------------------------------------------------


def migration(run: MigrationRun) -> None:
    if run.rewrite is not None:
        rewrite_result(run.rewrite, write=not run.dry_run, diff=run.dry_run)
    failed_copies(run.copies)
    pacing(run.pacing, run.notes)
    err(f"check: {plural(len(run.remaining), 'reference')} would still be refused"
        + ("" if run.remaining else " - ready to enforce"))
    for failure in run.lock_failures:
        err(f"failed: {failure}")


# -- audit and policy ----------------------------------------------------------------------------


def audit_items(items: Sequence[object]) -> None:
    """`audit`: one line per refusal; event messages and constraint text come from the cluster."""
    for item in items:
        out(str(item))
    err(f"{plural(len(items), 'refusal or stuck workload', 'refusals or stuck workloads')}.")


def policy_ok(context: Context) -> None:
    out(f"policy ok: imageRegex {quoted(context.policy.image_regex)} ({context.policy.origin})")  # may come from a cluster


# -- progress ------------------------------------------------------------------------------------
#
# The events are described once, in mirror.engines.base.Progress. A display counts them under one
# lock (a few additions per event; streams report every 256 KiB, not per chunk) and draws apart:
# on a terminal, rich redraws the live area from its own thread (LiveProgress); elsewhere, lines
# (PlainProgress). Every text from a manifest, a registry or a daemon goes through `printable`.

PROGRESS_MODES = ("auto", "tty", "plain", "none")
HEARTBEAT = 30.0  # seconds between summary lines in plain mode (CI logs see the run is alive)
SHOWN_IN_FLIGHT = 8  # images drawn in the live area; the rest are counted


def progress_mode(mode: str, *, isatty: bool | None = None, env: Mapping[str, str] | None = None) -> str:
    """--progress auto: "tty" on a terminal (stderr) outside CI, else "plain"."""
    if mode != "auto":
        return mode
    env = os.environ if env is None else env
    terminal = sys.stderr.isatty() if isatty is None else isatty
    ci = env.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return "tty" if terminal and not ci and env.get("TERM") != "dumb" else "plain"


def progress_display(mode: str) -> ProgressDisplay:
    resolved = progress_mode(mode)
    if resolved == "tty":
        return LiveProgress(Console(stderr=True, force_terminal=True, highlight=False))
    if resolved == "plain":
        return PlainProgress()
    return ProgressDisplay()


def duration(seconds: float) -> str:
    """0:07, 1:20, 1:02:03."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class _Image:
    source: str
    target: str
    total: int = 0  # bytes of blobs it needs ("size" events); 0: not told
    done: int = 0  # of those, moved or found in place
    moved: int = 0  # bytes it moved
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> bytes of its current transfer
    sizes: dict[str, int] = field(default_factory=dict)  # digest -> size announced by "transfer"

    @property
    def expected(self) -> int:
        return self.total or sum(self.sizes.values())


@dataclass(frozen=True)
class ProgressView:
    """One consistent reading of the counts, for drawing."""

    images: int | None
    finished: dict[str, int]
    moved: int
    rate: float | None  # bytes per second since the first image started
    eta: float | None  # seconds, when sizes are known
    in_flight: list[_Image]
    waits: list[tuple[str, str, float]]  # host, cause, seconds left

    @property
    def done(self) -> int:
        return sum(self.finished.values())

    def summary(self) -> str:
        parts = []
        if self.images is not None:
            parts.append(f"{self.done}/{plural(self.images, 'image')}")
        if self.finished.get("failed"):
            parts.append(f"{self.finished['failed']} failed")
        parts.append(f"{human_size(self.moved)} moved")
        if self.rate:
            parts.append(f"{human_size(int(self.rate))}/s")
        if self.eta is not None:
            parts.append(f"ETA {duration(self.eta)}")
        return " · ".join(parts)


class ProgressDisplay:
    """Counts the progress events; shows nothing (`--progress none`). Subclasses draw."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._images: int | None = None
        self._finished: dict[str, int] = {}
        self._moved = 0
        self._started_at: float | None = None
        self._in_flight: dict[str, _Image] = {}
        self._started = 0
        self._sized: set[str] = set()  # images told their size; without any, no ETA
        self._sized_bytes = 0  # what they need, for an estimate of the others
        self._waits: dict[str, tuple[str, float]] = {}  # host -> (cause, until)
        self._errors_shown: set[str] = set()  # a cause is spelled out once, then "as above"

    def __call__(self, event: str, info: Mapping[str, Any], /) -> None:
        with self._lock:
            lines = self._count(event, info, self.clock())
        self.show(event, lines)

    def close(self) -> None:
        """The run is over: stop drawing (the summary comes next)."""

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counting ------------------------------------------------------------------------------

    def _count(self, event: str, info: Mapping[str, Any], now: float) -> list[str]:
        """Update the counts; returns the lines the event itself prints (finished images, notes)."""
        source = str(info.get("source", ""))
        image = self._in_flight.get(source)
        if event == "images":
            self._images = (self._images or 0) + int(info.get("count") or 0)
        elif event == "start":
            self._in_flight[source] = _Image(source, str(info.get("target", "")))
            self._started += 1
            if self._started_at is None:
                self._started_at = now
        elif event == "size" and image is not None:
            image.total += int(info.get("bytes") or 0)
            self._sized_bytes += int(info.get("bytes") or 0)
            self._sized.add(source)
        elif event == "transfer" and image is not None:
            digest = str(info.get("digest"))
            image.done -= image.blobs.get(digest, 0)  # a retried transfer starts again
            image.blobs[digest] = 0
            if info.get("size"):
                image.sizes[digest] = int(info["size"])
        elif event == "bytes":
            n = int(info.get("n") or 0)
            self._moved += n
            if image is not None:
                digest = str(info.get("digest"))
                image.blobs[digest] = image.blobs.get(digest, 0) + n
                image.done += n
                image.moved += n
        elif event == "blob" and image is not None:
            size = int(info.get("size") or 0)
            if info.get("outcome") == "copied":  # what "bytes" events did not count (or none were sent)
                missing = max(0, size - image.blobs.pop(str(info.get("digest")), 0))
                image.done += missing
                image.moved += missing
                self._moved += missing
            else:  # mounted or skipped: in place without moving
                image.done += size
        elif event == "done":
            self._in_flight.pop(source, None)
            status = str(info.get("status", ""))
            self._finished[status] = self._finished.get(status, 0) + 1
            if (image is None or not image.moved) and info.get("bytes_moved"):
                self._moved += int(info["bytes_moved"])  # an engine that sent no byte counts
            return [self._done_line(info)]
        elif event == "waiting":
            self._waits[str(info.get("host", ""))] = (str(info.get("cause", "")),
                                                      now + float(info.get("delay") or 0))
        elif event == "note":
            return [str(info.get("text", ""))]
        elif event == "scanned":
            return [f"scan: {plural(info['findings'], 'refused reference')}, "
                    f"{plural(info['images'], 'distinct image')}, {plural(info['warnings'], 'warning')}, "
                    f"{plural(info['errors'], 'unreadable file')}"]
        return []

    def _done_line(self, info: Mapping[str, Any]) -> str:
        status = str(info.get("status", ""))
        # not "status:" - the final summary owns the "failed: ..." lines, one per cause
        line = f"{status:>8} {info.get('source', '')} -> {info.get('target', '')}"
        if info.get("bytes_moved"):
            line += f" ({human_size(int(info['bytes_moved']))})"
        error = str(info.get("error") or "")
        if error:
            line += ": the same cause as above" if error in self._errors_shown else f": {error}"
            self._errors_shown.add(error)
        return line

    def view(self) -> ProgressView:
        with self._lock:
            now = self.clock()
            elapsed = now - self._started_at if self._started_at is not None else 0.0
            rate = self._moved / elapsed if elapsed > 0 and self._moved else None
            eta = None
            if rate and self._sized and self._images is not None:
                # images not told their size yet are estimated at the average of those that were
                average = self._sized_bytes / len(self._sized)
                left = sum(max(0, i.total - i.done) if i.source in self._sized else average
                           for i in self._in_flight.values())
                eta = (left + max(0, self._images - self._started) * average) / rate
            self._waits = {h: w for h, w in self._waits.items() if w[1] > now}
            in_flight = [_Image(i.source, i.target, i.total, i.done, i.moved, {}, dict(i.sizes))
                         for i in self._in_flight.values()]
            waits = [(host, cause, until - now) for host, (cause, until) in sorted(self._waits.items())]
            return ProgressView(self._images, dict(self._finished), self._moved, rate, eta, in_flight, waits)

    # -- showing ---------------------------------------------------------------------------------

    def show(self, event: str, lines: list[str]) -> None:
        """Called after each event, outside the lock, with the lines it printed."""


def _style_of(line: str) -> str | None:
    words = line.split(maxsplit=1)
    return _STYLE.get(words[0]) if words else None


def waiting_line(host: str, cause: str, left: float) -> str:
    return printable(f"waiting: retrying {host}: {cause}, {math.ceil(max(0.0, left))} s")


class PlainProgress(ProgressDisplay):
    """Lines on stderr for logs and CI: each finished image, each wait (once per host and cause
    until it changes), and every HEARTBEAT seconds a summary with rate and ETA."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream
        self._print_lock = threading.Lock()
        self._last_wait: dict[str, str] = {}
        self._last_summary: float | None = None

    def show(self, event: str, lines: list[str]) -> None:
        with self._print_lock:
            if event == "waiting":
                for host, cause, left in self.view().waits:
                    if self._last_wait.get(host) != cause:
                        self._last_wait[host] = cause
                        lines = [*lines, waiting_line(host, cause, left)]
            elif event == "done":
                self._last_wait.clear()  # moving again: the next wait is news
            now = self.clock()
            if self._last_summary is None:
                self._last_summary = now
            elif now - self._last_summary >= HEARTBEAT:
                self._last_summary = now
                lines = [*lines, f"progress: {self.view().summary()}"]
            for line in lines:
                print(printable(line), file=self.stream or sys.stderr, flush=True)


class LiveProgress(ProgressDisplay):
    """A live area on a terminal (rich), redrawn a few times a second from rich's own thread:
    overall images and bytes with rate and ETA, the images in flight with their bytes, and what
    is being waited on. Finished images print as lines above it. It starts with the first event,
    so a command that emits none never draws."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic, *,
                 auto_refresh: bool = True) -> None:
        super().__init__(clock)
        self.console = console
        self._live: Live | None = None
        self._auto_refresh = auto_refresh
        self._live_lock = threading.Lock()

    def show(self, event: str, lines: list[str]) -> None:
        with self._live_lock:
            if self._live is None and event not in ("scanned", "note"):
                # transient: the live area goes away at the end, the summary follows the lines
                self._live = Live(get_renderable=self.render, console=self.console, transient=True,
                                  auto_refresh=self._auto_refresh, refresh_per_second=4,
                                  redirect_stdout=False, redirect_stderr=True)
                self._live.start()
            for line in lines:
                self.console.print(printable(line), style=_style_of(line), markup=False, highlight=False)

    def close(self) -> None:
        with self._live_lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    def render(self) -> RenderableType:
        view = self.view()
        rows: list[RenderableType] = []
        if view.images is not None or view.in_flight:
            rows.append(Text(f"copying {view.summary()}", style="bold"))
        if view.in_flight:
            table = Table.grid(padding=(0, 1))
            table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
            table.add_column(width=20, no_wrap=True)
            table.add_column(no_wrap=True, justify="right")
            for image in view.in_flight[:SHOWN_IN_FLIGHT]:
                expected = image.expected
                amount = (f"{human_size(image.done)} / {human_size(expected)}" if expected
                          else human_size(image.moved))
                bar = ProgressBar(total=expected or None, completed=min(image.done, expected), width=20)
                table.add_row(Text(printable(f"  {image.source}")), bar, Text(amount))
            rows.append(table)
            if len(view.in_flight) > SHOWN_IN_FLIGHT:
                rows.append(Text(f"  and {len(view.in_flight) - SHOWN_IN_FLIGHT} more in flight", style="dim"))
        for host, cause, left in view.waits:
            rows.append(Text(waiting_line(host, cause, left), style="yellow"))
        return Group(*rows)


def lines(items: Iterable[object], prefix: str) -> None:
    for item in items:
        err(f"{prefix}{item}")
