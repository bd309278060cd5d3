"""The one error root, and the exit codes every command of both CLIs shares.

Every error a user can cause or meet carries its exit code, so each command maps errors the
same way: the CLI prints `error: <message>` (one line) and exits with `exit_code`.

    0  ok
    1  findings, failed images, unreadable files, unreachable cluster or registry,
       references that could not be verified, changes under --check
    2  usage or configuration error (bad option, missing path, config or policy unusable)
    123 internal error (a bug: please report it with ACR_MIRROR_DEBUG=1)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 123
EXIT_INTERRUPTED = 130


class AcrMirrorError(Exception):
    """An expected failure: its message is one line saying what was being done and why."""

    exit_code = EXIT_FAILED
    names_operation = False  # True when every message starts with what was being done


class UsageError(AcrMirrorError):
    """A bad invocation: an option, a path, a combination of flags."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """Unusable configuration; the message names the file and key."""


class PolicyError(UsageError):
    """The policy itself is unusable (e.g. a regex RE2 rejects)."""
