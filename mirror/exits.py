"""Exit codes from results: the one place that says which outcome fails a command.

The table (manifests_rewriter.errors): 0 ok; 1 findings, failed images, unreadable files,
references left unrewritten for a failure, changes under --check; 2 usage or configuration
error (raised, never returned from here); 123 internal error.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from manifests_rewriter.errors import EXIT_FAILED, EXIT_OK
from manifests_rewriter.scan import ScanResult

from .pipeline import CacheRuleRun, MigrationRun, PlanRun, RewriteRun, SyncRun


def _code(failed: bool) -> int:
    return EXIT_FAILED if failed else EXIT_OK


@singledispatch
def exit_code(result: Any) -> int:
    raise TypeError(f"no exit code for {type(result).__name__}")


@exit_code.register
def _(result: ScanResult) -> int:
    return _code(bool(result.findings or result.errors))


@exit_code.register
def _(run: PlanRun) -> int:
    return _code(bool(run.scan.errors))


@exit_code.register
def _(run: SyncRun) -> int:
    return _code(bool(run.lock_failures or any(c.status == "failed" for c in run.copies)))


@exit_code.register
def _(run: RewriteRun) -> int:
    failed = bool(run.unverified)  # a reference left as it was because it could not be verified
    if run.files is not None:
        failed = failed or bool(run.files.errors or (run.check and run.files.changed))
    if run.repos is not None:
        failed = failed or any(o.status == "failed" or (run.repos.push and o.status == "changed" and not o.pushed)
                               for o in run.repos.outcomes)
    if run.cluster is not None:
        failed = failed or bool(run.cluster.errors) or any(r.status == "failed" for r in run.cluster.results)
    return _code(failed)


@exit_code.register
def _(run: MigrationRun) -> int:
    failed = any(c.status == "failed" for c in run.copies)
    return _code(failed or bool(run.remaining or run.scan.errors or run.lock_failures))


@exit_code.register
def _(run: CacheRuleRun) -> int:
    """Failed: a rule or image failed, or an image no cache rule can serve (it needs a copy)."""
    return _code(bool(run.scan.errors) or any(r.status in ("failed", "unfit") for r in run.rules)
                 or any(i.status in ("failed", "unfit") for i in run.images))
