"""Reports written to files or stdout: JSON for machines, SARIF for code hosts, Markdown for
people. (What goes to the terminal is mirror.terminal's.)"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manifests_rewriter.files import write_atomic
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
}


def write_output(path: str, text: str) -> None:
    """Reports and plans are written whole or not at all (a killed run leaves the old file)."""
    write_atomic(Path(path), text.encode("utf-8"))


def scan_json(result: ScanResult) -> str:
    return json.dumps(result.as_json(), indent=2)


def _sarif_result(rule: str, message: str, file: str | None, line: int | None,
                  finding: Finding | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"ruleId": rule, "level": RULES[rule][0], "message": {"text": message}}
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
        for c in copies:
            status = c.get("status", "")
            if c.get("error"):
                status += f": {c['error']}"
            digest = (c.get("digest") or "")[:19]
            lines.append(f"| `{c.get('source')}` | `{c.get('target')}` | `{digest}` | "
                         f"{', '.join(c.get('platforms') or [])} | {human_size(c.get('bytes_moved'))} | {status} |")
        lines.append("")
    if rewrites:
        lines += ["## Rewritten", ""]
        for r in rewrites:
            lines.append(f"- `{r['file']}`")
            lines += [f"  - line {ch['line']}: `{ch['old']}` → `{ch['new']}`" for ch in r.get("changes", [])]
        lines.append("")
    lines += ["## What still blocks enforcement", ""]
    if remaining:
        lines += [f"- {f.location()}: `{f.image}` ({f.reason})" for f in remaining]
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
        write_output(path, json.dumps({"images": images, "pacing": [f.as_json() for f in run.pacing]},
                                      indent=2) + "\n")


def migration_report(path: str, run: MigrationRun) -> None:
    """`migrate --report`: what was copied, rewritten, and what still blocks enforcement."""
    images = [c.as_json() for c in run.copies]
    rewritten = _rewritten(run.rewrite)
    if path.endswith(".md"):
        text = markdown_summary(images, rewritten, run.remaining)
    else:
        text = json.dumps({"images": images, "rewrites": rewritten, "remaining": [f.as_json() for f in run.remaining],
                           "errors": [e.as_json() for e in run.scan.errors]}, indent=2) + "\n"
    write_output(path, text)
