"""What the service answers when a request fails, shared by the STAC API and the tile service.

- the database unavailable (refused, reset, shutting down, starting up, pool exhausted or
  timed out): 503 with `Retry-After`. Both pools reconnect on their own once it is back
  (asyncpg replaces a broken connection on the next acquire; psycopg_pool reconnects in
  its workers), so no restart is needed;
- an asset that cannot be read (file moved away, object store down): 503, without the
  path or URL;
- anything else not mapped by a handler of the sub-app: 500 "internal error", with the
  trace in the log and nothing of it in the body.

`redact(text)` takes server paths out of a message that a library built from them.
"""

from __future__ import annotations

import logging
import re

import asyncpg
import psycopg
from rasterio.errors import RasterioIOError
from starlette.requests import Request
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5

# asyncpg (STAC API) and psycopg (tile service) errors that mean "no database right now".
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now, query cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.InterfaceError,  # "connection is closed", "pool is closing"
    asyncpg.exceptions.InternalClientError,  # protocol state of a connection lost mid-query
    psycopg.OperationalError,  # connection failures, PoolTimeout, PoolClosed, TooManyRequests
    ConnectionError,  # refused / reset while connecting (OSError subclasses)
)


class RequestCancelled(Exception):
    """Work stopped because its request was cancelled (client gone) or ran out of time
    (raised by catalog.guard.Budget.check)."""


# Absolute filesystem paths and object-store URLs inside a message.
_PATH_IN_TEXT = re.compile(r"(?:/vsi\w+/|s3://|file://)\S+|(?<![\w:/.])/(?:[\w.@+-]+/)+[\w.@+-]*")


def redact(text: str) -> str:
    """`text` with absolute paths and object URLs replaced by `<path>`.

    Keeps URL paths that follow a host (`http://host/a/b`) and words joined by slashes
    in prose such as "and/or"; an absolute path starts with "/" after a space, quote or
    the start of the text.
    """
    return _PATH_IN_TEXT.sub("<path>", text)


def error_response(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body of both APIs: `{"code": ..., "description": ...}` as stac-fastapi
    answers, plus titiler's `detail`, so clients of either find the message."""
    code = {400: "BadRequest", 404: "NotFound", 413: "PayloadTooLarge", 503: "ServiceUnavailable"}.get(
        status_code, "Error" if status_code < 500 else "InternalError"
    )
    return JSONResponse(
        {"code": code, "description": detail, "detail": detail}, status_code=status_code, headers=headers
    )


def service_unavailable(detail: str) -> JSONResponse:
    return error_response(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def database_unavailable_response(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc)
    return service_unavailable("the catalog database is unavailable; retry shortly")


def query_timeout_response(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("statement timeout for %s %s", request.method, request.url.path)
    return service_unavailable("the database query took longer than the service's time limit per request")


def asset_unavailable_response(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("asset unreadable for %s %s: %s", request.method, request.url.path, exc)
    return service_unavailable("an asset of this request cannot be read right now; retry shortly")


def request_cancelled_response(request: Request, exc: Exception) -> JSONResponse:
    # The client is usually gone by now; when it is not, the time limit passed.
    return service_unavailable(f"the request was stopped ({exc}): the service's time limit per request passed")


def internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


def add_fault_handlers(app) -> None:
    """Register the 503 and last-resort 500 handlers on a Starlette/FastAPI app.

    Call it after the app's own handlers: Starlette picks the handler of the most specific
    class in the exception's MRO, so these only answer what nothing more specific does.
    """
    for exc in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc, database_unavailable_response)
    # statement_timeout (catalog/api.py): more specific than the classes above, so it wins
    for exc in (asyncpg.exceptions.QueryCanceledError, psycopg.errors.QueryCanceled):
        app.add_exception_handler(exc, query_timeout_response)
    app.add_exception_handler(RasterioIOError, asset_unavailable_response)
    app.add_exception_handler(RequestCancelled, request_cancelled_response)
    app.add_exception_handler(Exception, internal_error_response)
