"""The single place where failed registry operations are retried (tenacity).

Retried: 429 (honouring Retry-After), 5xx, connection resets and timeouts, i.e. a
RegistryError with `retryable` set. Never retried: 401/403/404 and the OCI codes
UNAUTHORIZED, DENIED, NAME_UNKNOWN, MANIFEST_UNKNOWN, BLOB_UNKNOWN (RegistryError marks
those not retryable). Callers retry at one level only: an idempotent request, or a
whole blob transfer, never both nested.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import tenacity

from .registry.errors import RegistryError

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 60.0  # a registry asking for longer is treated as a failure of this attempt's budget
_backoff = tenacity.wait_exponential_jitter(multiplier=0.25, max=8.0, jitter=0.25)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RegistryError) and exc.retryable


def _wait(state: tenacity.RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, RegistryError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER)
    return _backoff(state)


def _log(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("retrying (attempt %d) after: %s", state.attempt_number, exc)


def _before_sleep(on_wait: Callable[[BaseException, float], None] | None) -> Callable[[tenacity.RetryCallState], None]:
    """Log, and tell `on_wait` (the progress display's "waiting" event) what is waited on and for how long."""
    def before_sleep(state: tenacity.RetryCallState) -> None:
        _log(state)
        exc = state.outcome.exception() if state.outcome else None
        if on_wait is not None and exc is not None and state.next_action is not None:
            on_wait(exc, state.next_action.sleep)
    return before_sleep


def call(fn: Callable[[], T], *, retries: int, sleep: Callable[[float], None] | None = None,
         on_wait: Callable[[BaseException, float], None] | None = None) -> T:
    """Run fn, retrying retryable RegistryErrors up to `retries` more times.

    When every attempt failed, the error raised is the one that failed most attempts (the
    cause that persisted, not whichever transient fault happened to come last)."""
    seen: list[RegistryError] = []

    def attempt() -> T:
        try:
            return fn()
        except RegistryError as exc:
            seen.append(exc)
            raise

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=tenacity.stop_after_attempt(max(1, retries + 1)),
        wait=_wait,
        before_sleep=_before_sleep(on_wait),
        reraise=True,
        sleep=sleep or time.sleep,
    )
    try:
        return retrying(attempt)
    except RegistryError as last:
        counts = Counter(str(e) for e in seen)
        if len(counts) < 2:
            raise
        persistent, times = counts.most_common(1)[0]
        first = next(e for e in seen if str(e) == persistent)
        if first is last:
            raise
        raise RegistryError(first.operation, first.status, first.codes,
                            f"{first.message} ({times} of {len(seen)} attempts; the last: {last.cause})",
                            retryable=False) from None
