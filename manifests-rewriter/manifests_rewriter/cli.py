"""`manifests-rewriter`: the pre-commit hook. Offline: it rewrites by the naming template only.

Exit codes (shared with acr-mirror): 0 nothing to do, 1 files changed (or would change
under --check) or files that could not be read, 2 usage or config error, 123 internal error.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from .config import Config, ConfigError, load_config
from .files import printable
from .naming import target_for
from .policy import LintMessage, Policy, PolicyError, lint
from .reference import ImageRef
from .rewrite import RewriteResult, rewrite_paths

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 123
F = TypeVar("F", bound=Callable[..., Any])


class UsageError(Exception):
    """A bad invocation or configuration: one line, exit 2."""


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def guarded(func: F) -> F:
    """Turn expected errors into one line and an exit code; never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, PolicyError, UsageError) as exc:
            fail(str(exc), EXIT_USAGE)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("ACR_MIRROR_DEBUG"):
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (set ACR_MIRROR_DEBUG=1 for a traceback)",
                 EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def load(config_path: str, *, policy_optional: bool = False) -> Config:
    config = load_config(config_path, policy_optional=policy_optional)
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    return config


def naming_only(config: Config) -> Callable[[ImageRef], ImageRef]:
    return functools.partial(target_for, registry=config.target_registry, template=config.naming)  # picklable


def lint_policy(policy: Policy, config: Config, *, strict: bool = True) -> list[LintMessage]:
    """Print lint warnings; with `strict`, a target naming the regex refuses stops the run."""
    problems = lint(policy, config.target_registry, naming_only(config))
    errors = [p for p in problems if p.level == "error"]
    for problem in problems:
        if not (strict and problem in errors):
            click.echo(str(problem), err=True)
    if strict and errors:
        raise UsageError(f"{errors[0].message}; nothing was written")
    return problems


def report_rewrite(result: RewriteResult, *, write: bool, diff: bool) -> None:
    """Print what changed, as black does: 'rewrote' vs 'would rewrite', then a summary."""
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    for skipped in result.skipped:
        click.echo(f"skipped: {skipped}", err=True)
    for planned in result.changed:
        if diff:
            click.echo(planned.diff(), nl=False)
        verb = "rewrote" if write and planned.source.display in result.written else "would rewrite"
        click.echo(f"{verb} {printable(planned.source.display)}", err=True)
        for change in planned.changes:
            click.echo(f"  line {change.line}: {printable(change.old)} -> {printable(change.new)}", err=True)
    changed = len(result.changed)
    unchanged = len(result.files) - changed
    verb = "rewritten" if write else "would be rewritten"
    click.echo(f"{changed} file{'s' * (changed != 1)} {verb}, {unchanged} left unchanged"
               f"{f', {len(result.errors)} with errors' if result.errors else ''}.", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, envvar="ACR_MIRROR_CONFIG",
              type=click.Path(dir_okay=False), help="acr-mirror config (target, policy).")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a file would change.")
@click.option("--diff", is_flag=True, help="Print a unified diff; write nothing.")
@click.argument("files", nargs=-1, type=click.Path())
@guarded
def main(config_path: str, check: bool, diff: bool, files: tuple[str, ...]) -> None:
    """Rewrite container image references in FILES so they pass the allowed-images policy."""
    config = load(config_path)
    policy = config.require_policy()
    lint_policy(policy, config)
    write = not (check or diff)
    result = rewrite_paths(files, policy, naming_only(config), write=write,
                           max_bytes=config.scan.max_file_bytes, exclude=config.scan.exclude)
    report_rewrite(result, write=write, diff=diff)
    if result.errors or (result.changed and (write or check)):
        sys.exit(EXIT_FINDINGS)


if __name__ == "__main__":
    main()
