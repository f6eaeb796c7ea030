"""Bounds on what one request may cost: body size, time, and a client that has gone away.

`RequestGuard` (ASGI middleware, outermost in catalog/app.py):

- reads the request body first, at most `max_body_bytes` (413 beyond, also when the
  `Content-Length` says so before any byte is read), then replays it to the app;
- runs the app under a time limit (`time_limit` seconds): past it the request is cancelled
  and, if nothing was sent yet, answered 503 with `Retry-After`;
- watches for the client's disconnect and cancels the request then.

Cancelling an `await` is immediate, but work in a worker thread (titiler's sync endpoints,
GDAL reads) cannot be interrupted from outside: it sees the cancellation through
`current_budget()`, a `Budget` the guard sets for each request (contextvars reach the
worker threads: anyio runs them in a copy of the request's context). Loops over many reads
(mosaics) call `Budget.check()` between reads and so stop within one read of the
cancellation, and the thread goes back to the pool instead of piling up.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from terramesh_stac.catalog.errors import RequestCancelled, error_response, service_unavailable

logger = logging.getLogger(__name__)


class Budget:
    """The time left to one request and whether it was cancelled (thread-safe)."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self._cancelled = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        self.reason = self.reason or reason
        self._cancelled.set()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def cancelled(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel("time limit")
        return self._cancelled.is_set()

    def check(self) -> None:
        """RequestCancelled when the request was cancelled or is past its deadline."""
        if self.cancelled:
            raise RequestCancelled(self.reason)


_UNBOUNDED = Budget(None)
_current: contextvars.ContextVar[Budget] = contextvars.ContextVar("terramesh_request_budget", default=_UNBOUNDED)


def current_budget() -> Budget:
    """The budget of the request this code runs for (unbounded outside a guarded request)."""
    return _current.get()


class RequestGuard:
    """Body-size limit, time limit and cancel-on-disconnect for every HTTP request whose
    path starts with one of `timed_prefixes` (others, e.g. file downloads, get the body
    limit only: a large asset may take long to send, and Starlette's file responses stop
    on disconnect by themselves), except the health checks in `untimed_paths` (cheap, and
    what a supervisor asks to learn whether the service is up)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        time_limit: float,
        timed_prefixes: tuple[str, ...],
        untimed_paths: tuple[str, ...] = (),
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.time_limit = time_limit
        self.timed_prefixes = timed_prefixes
        self.untimed_paths = untimed_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body larger than {self.max_body_bytes} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            detail = too_large if length.isdigit() else "invalid Content-Length"
            return await error_response(413, detail)(scope, receive, send)

        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                return await error_response(413, too_large)(scope, receive, send)
            if not message.get("more_body", False):
                break

        path = scope.get("path", "")
        timed = path.startswith(self.timed_prefixes) and path not in self.untimed_paths
        budget = Budget(self.time_limit if timed else None)
        disconnected = anyio.Event()
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        async with anyio.create_task_group() as tasks:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                disconnected.set()
                budget.cancel("client disconnected")
                tasks.cancel_scope.cancel()

            tasks.start_soon(watch_disconnect)
            token = _current.set(budget)
            try:
                with anyio.move_on_after(self.time_limit if timed else None) as timer:
                    await self.app(scope, replay_receive, tracking_send)
            finally:
                _current.reset(token)
            if timer.cancelled_caught:
                budget.cancel("time limit")
                logger.warning(
                    "%s %s: cancelled after the %g s time limit", scope["method"], scope["path"], self.time_limit
                )
                if not response_started:
                    limit = f"the request took longer than the service's {self.time_limit:g} s limit"
                    await service_unavailable(limit)(scope, receive, send)
            tasks.cancel_scope.cancel()
