"""retry.call: retryable errors are retried; when all attempts fail, the persistent cause is named."""

import pytest

from mirror import retry
from mirror.registry.errors import RegistryError


def failing(errors):
    calls = []

    def fn():
        calls.append(1)
        raise errors[len(calls) - 1]

    return fn, calls


def test_the_cause_that_persisted_is_raised_not_the_last_transient_one():
    corrupt = RegistryError("GET blob r/a@sha256:1", message="content hashes to sha256:2", retryable=True)
    blip = RegistryError("POST upload r/a", 502, message="bad gateway", retryable=True)
    fn, calls = failing([corrupt, blip, corrupt, corrupt, blip])
    with pytest.raises(RegistryError) as info:
        retry.call(fn, retries=4, sleep=lambda s: None)
    assert len(calls) == 5
    assert str(info.value).startswith("GET blob r/a@sha256:1: content hashes to sha256:2 (3 of 5 attempts; the last: "
                                      "HTTP 502 bad gateway)")


def test_permanent_errors_are_not_retried():
    denied = RegistryError("PUT manifest r/a:1", 403, ("DENIED",), "no", retryable=True)
    fn, calls = failing([denied, denied])
    with pytest.raises(RegistryError) as info:
        retry.call(fn, retries=3, sleep=lambda s: None)
    assert info.value is denied and len(calls) == 1


def test_success_after_transient_failures():
    blip = RegistryError("GET manifest r/a:1", 503, retryable=True)
    calls = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise blip
        return "ok"

    assert retry.call(fn, retries=3, sleep=lambda s: None) == "ok" and len(calls) == 3
