"""Transient storage and network errors: told apart from corrupt data, retried with backoff.

A corrupt or truncated file is reported and never retried (it will not heal). A dropped
connection, a timeout, an HTTP 429/5xx or an S3 "SlowDown" may heal, so the shard that hit
it is run again from the start (its writes are idempotent) after an exponential wait.
"""

from __future__ import annotations

import asyncio
import logging

import tenacity

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_RETRY_S3_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "503",
    "500",
}


class TransientError(Exception):
    """Raised around a transient error found inside a library's own exception chain."""


def _transient_types() -> tuple[type, ...]:
    types: list[type] = [ConnectionError, TimeoutError, asyncio.TimeoutError, TransientError]
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:
        pass
    try:
        from botocore import exceptions as be

        types += [
            be.EndpointConnectionError,
            be.ConnectionClosedError,
            be.ReadTimeoutError,
            be.ConnectTimeoutError,
            be.ResponseStreamingError,
        ]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT_TYPES = _transient_types()


def is_transient(exc: BaseException | None) -> bool:
    """True for errors worth retrying, looking through `raise ... from` chains."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _TRANSIENT_TYPES):
            return True
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
        if isinstance(status, int) and status in _RETRY_STATUS:
            return True
        response = getattr(exc, "response", None)  # botocore ClientError
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            http = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _RETRY_S3_CODES or http in _RETRY_STATUS:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(
    attempts: int = 5, base_seconds: float = 1.0, max_seconds: float = 60.0, on_retry=None
) -> tenacity.Retrying:
    """A tenacity controller: retry transient errors only, exponential backoff with jitter.

    for attempt in retrying():
        with attempt:
            do_the_work()
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning(
            "transient error (attempt %d of %d), retrying: %s: %s",
            state.attempt_number,
            attempts,
            type(exc).__name__,
            exc,
        )
        if on_retry:
            on_retry(exc)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential_jitter(initial=base_seconds, max=max_seconds),
        stop=tenacity.stop_after_attempt(attempts),
        before_sleep=before_sleep,
        reraise=True,
    )
