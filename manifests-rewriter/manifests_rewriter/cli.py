"""`manifests-rewriter`: the pre-commit hook. Offline: it rewrites by the naming template only.

Exit codes (shared with acr-mirror, manifests_rewriter.errors): 0 nothing to do, 1 files
changed (or would change under --check) or files that could not be read, 2 usage or config
error (a FILE that does not exist too), 123 internal error.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from .charts import LocalCharts
from .config import find_config, installed_sections, load_config
from .errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, AcrMirrorError, UsageError
from .files import printable
from .naming import target_for
from .output import rewrite_lines
from .policy import lint
from .rewrite import rewrite_paths

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


# The one table, for every command's --help; README.md "Exit codes" explains each line.
EXIT_CODES_HELP = ("Exit codes: 0 ok; 1 something to fix or that failed; 2 usage or configuration error; "
                   "123 internal error. The table: README.md, \"Exit codes\".")


def require_paths(paths: Iterable[str]) -> None:
    """A path named on the command line that does not exist is a usage error (exit 2), found
    before anything is read or written. (A broken link exists: it is reported as a file problem.)"""
    for path in paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or directory")


def guarded(func: F) -> F:
    """Turn expected errors into one line and their exit code; never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AcrMirrorError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("ACR_MIRROR_DEBUG"):
                raise
            fail(f"internal error: {type(exc).__name__}: {exc} (set ACR_MIRROR_DEBUG=1 for a traceback)",
                 EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="acr-mirror config (target, policy); default ./acr-mirror.yaml, else $ACR_MIRROR_CONFIG.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a file would change.")
@click.option("--diff", is_flag=True, help="Print a unified diff; write nothing.")
@click.option("--chart-dir", "chart_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Helm charts on disk (<name>-<version>.tgz or unpacked) for releases' default images; repeatable. "
                   "Charts in the repository are read anyway; nothing is downloaded.")
@click.argument("files", nargs=-1, type=click.Path())
@guarded
def main(config_path: str | None, check: bool, diff: bool, chart_dirs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Rewrite container image references in FILES so they pass the allowed-images policy."""
    require_paths(files)
    # registries/copy/docker are acr-mirror's: checked when it is installed, else left alone
    config = load_config(find_config(config_path), sections=installed_sections(), others="ignore")
    for warning in config.warnings:
        click.echo(f"warning: {warning}", err=True)
    policy = config.require_policy()
    to_target = functools.partial(target_for, registry=config.target_registry, template=config.naming)
    problems = lint(policy, config.target_registry, to_target)
    errors = [p for p in problems if p.level == "error"]
    for problem in problems:
        if problem not in errors:
            click.echo(str(problem), err=True)
    if errors:
        raise UsageError(f"{errors[0].message}; nothing was written")
    write = not (check or diff)
    # offline: charts in the repository (the hook runs at its root) and --chart-dir only
    charts = LocalCharts(chart_dirs, ["."])
    result = rewrite_paths(files, policy, to_target, write=write, max_bytes=config.scan.max_file_bytes,
                           exclude=config.scan.exclude, charts=charts, max_nodes=config.scan.max_file_nodes)
    for stream, line in rewrite_lines(result, write=write, diff=diff):
        click.echo(line, err=stream == "err", nl=stream == "err")
    if result.errors or (result.changed and (write or check)):
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
