"""Reports written to files or stdout: JSON for machines, SARIF for code hosts, Markdown for
people. (What goes to the terminal is mirror.terminal's.)

Remote text (registry errors, cluster messages, file names and images from manifests) is
escaped for each format: JSON by construction, with URL credentials hidden (redact_url);
SARIF messages and Markdown as single printable lines (`printable`), Markdown's own syntax
escaped too (`_md`, `_code`), so no registry can add a line, a table row or a link to a report.
Output files are never written through a symbolic link (files.write_atomic), and one that
cannot be written is refused before the command starts (`check_output`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manifests_rewriter.errors import UsageError
from manifests_rewriter.files import printable, redact_url, write_atomic
from manifests_rewriter.model import Finding
from manifests_rewriter.rewrite import RewriteResult
from manifests_rewriter.scan import ScanResult

from . import __version__

if TYPE_CHECKING:
    from .pipeline import MigrationRun, SyncRun

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
RULES = {
    "disallowed-image": ("error", "Container image refused by the allowed-images policy"),
    "image-outside-pod-spec": ("warning", "Image outside a pod spec that will become a pod image later"),
    "unreadable-file": ("error", "File could not be scanned"),
    "not-checked": ("warning", "Images that could not be checked (a Helm chart not found)"),
}


def check_output(path: str | None) -> None:
    """Before any work: refuse an output path that write_output would refuse after it (a
    symbolic link, not a regular file, a directory that does not exist)."""
    if path is None:
        return
    where = Path(path)
    if where.is_symlink():
        raise UsageError(f"{path}: is a symbolic link; reports and plans are never written through one "
                         f"(remove the link or name another file)")
    if where.exists() and not where.is_file():
        raise UsageError(f"{path}: not a regular file; name a file to write")
    if not where.parent.is_dir():
        raise UsageError(f"{path}: directory {where.parent} does not exist; create it or name another file")
    if not os.access(where.parent, os.W_OK):
        raise UsageError(f"{path}: directory {where.parent} is not writable; name another file")


def write_output(path: str, text: str) -> None:
    """Reports and plans are written whole or not at all (a killed run leaves the old file),
    never through a symbolic link."""
    write_atomic(Path(path), text.encode("utf-8"))


def redacted(value: Any) -> Any:
    """A JSON value with the credentials of every URL in its strings hidden."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


_MD_SYNTAX = re.compile(r"([\\`*_{}\[\]<>|~!#&])")


def _md(text: object) -> str:
    """Remote text as Markdown that shows exactly it: one line, no markup, no table cell break."""
    return _MD_SYNTAX.sub(r"\\\1", printable(str(text)))


def _code(text: object, *, cell: bool = True) -> str:
    """Remote text as a code span (a fence longer than any backtick run inside; `|` escaped
    in table cells, where GFM splits on it even inside code)."""
    body = printable(str(text))
    if not body:
        return ""
    if cell:
        body = body.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def scan_json(result: ScanResult) -> str:
    return json.dumps(redacted(result.as_json()), indent=2)


def _sarif_result(rule: str, message: str, file: str | None, line: int | None,
                  finding: Finding | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"ruleId": rule, "level": RULES[rule][0], "message": {"text": printable(message)}}
    if finding is not None and finding.assignment:  # which assignment and parameter decided
        item["properties"] = {"assignment": finding.assignment, "parameter": finding.parameter,
                              "effect": finding.effect, "refused": finding.refused}
        if not finding.refused:
            item["level"] = "warning"  # Audit, warn, Disabled: reported, not refused
    if file:
        location: dict[str, Any] = {"artifactLocation": {"uri": file.removeprefix("./")}}
        if line:
            location["region"] = {"startLine": line}
        item["locations"] = [{"physicalLocation": location}]
    return item


def scan_sarif(result: ScanResult) -> str:
    results = [
        _sarif_result("disallowed-image", f"{f.image} {f.reason}" + (f"; mirror it as {f.target}" if f.target else ""),
                      f.file, f.line, f) for f in result.findings
    ] + [_sarif_result("image-outside-pod-spec", f"{w.image}: {w.reason}", w.file, w.line) for w in result.warnings]
    results += [_sarif_result("unreadable-file", e.message, e.file, None) for e in result.errors]
    results += [_sarif_result("not-checked", n.message, n.file, None) for n in result.unchecked]
    rules = [{"id": rule, "shortDescription": {"text": text}, "defaultConfiguration": {"level": level}}
             for rule, (level, text) in RULES.items()]
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "acr-mirror", "version": __version__,
                                      "informationUri": "https://github.com/acr-mirror/acr-mirror", "rules": rules}},
                  "results": results}],
    }
    return json.dumps(document, indent=2)


def human_size(n: int | None) -> str:
    if not n:
        return "0 B"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def markdown_summary(copies: Iterable[dict[str, Any]], rewrites: Iterable[dict[str, Any]],
                     remaining: Sequence[Finding]) -> str:
    """A migration summary a person reads: images, sizes, digests, status, rewrites, blockers."""
    copies = list(copies)
    rewrites = list(rewrites)
    lines = ["# acr-mirror migration report", ""]
    failed = [c for c in copies if c.get("status") == "failed"]
    lines += [f"- images: {len(copies)} ({len(failed)} failed)",
              f"- bytes moved: {human_size(sum(c.get('bytes_moved') or 0 for c in copies))}",
              f"- files rewritten: {len(rewrites)}",
              f"- still refused by the policy: {len(remaining)}", ""]
    if copies:
        lines += ["## Images", "", "| source | target | digest | platforms | moved | status |",
                  "|---|---|---|---|---|---|"]
        for c in copies:  # every cell may hold registry text
            status = str(c.get("status", ""))
            if c.get("error"):
                status += f": {c['error']}"
            digest = str(c.get("digest") or "")[:19]
            lines.append(f"| {_code(c.get('source'))} | {_code(c.get('target'))} | {_code(digest)} | "
                         f"{_md(', '.join(c.get('platforms') or []))} | {human_size(c.get('bytes_moved'))} | "
                         f"{_md(status)} |")
        lines.append("")
    if rewrites:
        lines += ["## Rewritten", ""]
        for r in rewrites:
            lines.append(f"- {_code(r['file'], cell=False)}")
            lines += [f"  - line {ch['line']}: {_code(ch['old'], cell=False)} → {_code(ch['new'], cell=False)}"
                      for ch in r.get("changes", [])]
        lines.append("")
    lines += ["## What still blocks enforcement", ""]
    if remaining:
        lines += [f"- {_md(f.location())}: {_code(f.image, cell=False)} ({_md(f.reason)})" for f in remaining]
    else:
        lines.append("Nothing: every container image found matches the policy.")
    return "\n".join(lines) + "\n"


def _rewritten(result: RewriteResult | None) -> list[dict[str, Any]]:
    return [{"file": f.source.display, "changes": [vars(c) for c in f.changes]}
            for f in (result.changed if result else [])]


def sync_report(path: str, run: SyncRun) -> None:
    """`sync --report`: JSON, or a Markdown summary for a path ending in .md."""
    images = [c.as_json() for c in run.copies]
    if path.endswith(".md"):
        write_output(path, markdown_summary(images, [], []))
    else:
        write_output(path, json.dumps(redacted({"images": images, "pacing": [f.as_json() for f in run.pacing]}),
                                      indent=2) + "\n")


def migration_report(path: str, run: MigrationRun) -> None:
    """`migrate --report`: what was copied, rewritten, and what still blocks enforcement."""
    images = [c.as_json() for c in run.copies]
    rewritten = _rewritten(run.rewrite)
    if path.endswith(".md"):
        text = markdown_summary(images, rewritten, run.remaining)
    else:
        text = json.dumps(redacted({"images": images, "rewrites": rewritten,
                                    "remaining": [f.as_json() for f in run.remaining],
                                    "errors": [e.as_json() for e in run.scan.errors]}), indent=2) + "\n"
    write_output(path, text)
