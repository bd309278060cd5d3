"""The one error type of the registry client and the copy engine.

`str(error)` reads "doing what: cause". Messages are built only from the operation, the
status, the OCI error codes and the registry's own error message (truncated): never from
request headers, so an Authorization header, a token or a password cannot leak into a log.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from manifests_rewriter.errors import AcrMirrorError

# OCI distribution error codes that no retry can fix: credentials, permissions, absence.
PERMANENT_CODES = frozenset({
    "UNAUTHORIZED", "DENIED", "NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN",
    "NAME_INVALID", "TAG_INVALID", "MANIFEST_INVALID", "DIGEST_INVALID", "SIZE_INVALID",
    "UNSUPPORTED", "MANIFEST_BLOB_UNKNOWN",
})
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 413})
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_MESSAGE = 300


class RegistryError(AcrMirrorError):
    """A registry operation that failed: what was being done, and why.

    operation: "GET manifest 127.0.0.1:5000/library/nginx:1.25" (doing what)
    status: the HTTP status, or None for a transport failure or a local check
    codes: OCI error codes from the response body (UNAUTHORIZED, MANIFEST_UNKNOWN, ...)
    retryable: whether trying the same thing again may succeed (429, 5xx, resets, timeouts)
    retry_after: seconds the registry asked us to wait (Retry-After), if any
    transport: for a failure below HTTP: "timeout", "tls", "connect" or "other"; else None
    """

    names_operation = True

    def __init__(self, operation: str, status: int | None = None, codes: tuple[str, ...] = (),
                 message: str = "", retryable: bool = False, retry_after: float | None = None,
                 transport: str | None = None):
        self.operation = operation
        self.status = status
        self.codes = tuple(codes)
        self.message = message[:_MAX_MESSAGE]
        self.retryable = retryable and not (set(self.codes) & PERMANENT_CODES)
        self.retry_after = retry_after
        self.transport = transport
        super().__init__(str(self))

    @property
    def cause(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.codes:
            parts.append(" ".join(self.codes))
        if self.message:
            parts.append(self.message)
        return " ".join(parts) or "failed"

    def __str__(self) -> str:
        return f"{self.operation}: {self.cause}"

    def __reduce__(self):  # keep the fields when the error crosses a process boundary
        return (RegistryError, (self.operation, self.status, self.codes, self.message,
                                self.retryable, self.retry_after, self.transport))


class CredentialError(AcrMirrorError):
    """Credentials for a registry could not be obtained; the message says where, never the secret."""


def parse_error_body(body: bytes) -> tuple[tuple[str, ...], str]:
    """Error codes and message of an error body: the OCI shape ({"errors": [{code, message}]})
    or OAuth2's ({"error": code, "error_description": text}, token endpoints), else the text."""
    try:
        data = json.loads(body)
        errors = data.get("errors") if isinstance(data, dict) else None
    except (ValueError, UnicodeDecodeError):
        data = errors = None
    if isinstance(data, dict) and errors is None and isinstance(data.get("error"), str):
        description = data.get("error_description") or data.get("message") or ""
        return (data["error"],), str(description)[:_MAX_MESSAGE]
    if not isinstance(errors, list):
        text = body[:_MAX_MESSAGE].decode("utf-8", "replace").strip()
        return (), text if text.isprintable() else ""
    codes = tuple(str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code"))
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    return codes, "; ".join(dict.fromkeys(messages))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_error(operation: str, status: int, body: bytes = b"", retry_after: str | None = None) -> RegistryError:
    """The error for an unexpected HTTP status, classified for retries."""
    codes, message = parse_error_body(body)
    retryable = status in RETRYABLE_STATUSES or (status >= 500 and status not in (501, 505))
    return RegistryError(operation, status, codes, message, retryable=retryable,
                         retry_after=parse_retry_after(retry_after))
