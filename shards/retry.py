"""Which storage errors are worth another try: one predicate, :func:`is_transient`.

The read path's retry loop (storage.read_object) and the Ray build engine both ask it,
so a missing file or a permission error is never retried and a reset, a timeout, a 5xx
or throttling always is.
"""
from __future__ import annotations

import contextlib
import errno


def _transient_types() -> tuple[type, ...]:
    """Exception types that mean "try again": network, timeouts, cut or garbled bodies."""
    import asyncio  # noqa: PLC0415 - asked only once an error is seen: a build never pays its import (~25 ms)

    types: list[type] = [ConnectionError, TimeoutError, asyncio.TimeoutError, ShortReadError]
    try:
        import botocore.exceptions as boto
        from botocore.parsers import ResponseParserError  # throttling answers with broken XML

        types += [boto.HTTPClientError, boto.ConnectionError, boto.IncompleteReadError, boto.FlexibleChecksumError,
                  ResponseParserError]
    except ImportError:
        pass
    try:
        import aiohttp

        types.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(types)


def client_errors() -> tuple[type, ...]:
    """Errors of the remote storage clients that fsspec lets through untranslated (an unreachable
    endpoint, a refused request, a bad bucket name): the store's or its settings' fault, not a bug."""
    types: list[type] = []
    with contextlib.suppress(ImportError):
        import botocore.exceptions as boto
        types += [boto.BotoCoreError, boto.ClientError]
    with contextlib.suppress(ImportError):
        import aiohttp
        types.append(aiohttp.ClientError)
    return tuple(types)


_TRANSIENT_TYPES: tuple[type, ...] | None = None
# S3 error codes and errnos (as s3fs translates them) that a later try may not see.
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests", "500", "502", "503", "504"}
TRANSIENT_ERRNOS = {errno.EIO, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                    errno.EPIPE, errno.EAGAIN, getattr(errno, "EREMOTEIO", errno.EIO)}
PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class ShortReadError(OSError):
    """A response body ended before the bytes asked for (a cut connection or a lying server)."""


def _http_status(exc: BaseException) -> tuple[str | None, int | None]:
    """(S3 error code, HTTP status) of a botocore ClientError in the explicit cause chain.

    Only ``__cause__`` is followed (s3fs sets it when translating): an implicit
    ``__context__`` may be an unrelated error handled earlier (a 404 probe).
    """
    seen = 0
    while exc is not None and seen < 8:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return response["Error"].get("Code"), status
        exc = exc.__cause__
        seen += 1
    return None, None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed read is worth another try: by type, S3 error code or HTTP status."""
    global _TRANSIENT_TYPES
    if isinstance(exc, PERMANENT_TYPES):
        return False
    code, status = _http_status(exc)
    if code in TRANSIENT_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return True
    if status is not None:
        return False  # other 4xx: bad request, auth, range: another try gets the same answer
    if _TRANSIENT_TYPES is None:
        _TRANSIENT_TYPES = _transient_types()
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS
