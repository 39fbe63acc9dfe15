"""A Python client for the TaskFlow REST API (docs/client.md).

A plain httpx client: it imports neither Django nor the project's apps, so that it works in any
Python process that has httpx.

    from taskflow.client import Client

    with Client("http://localhost:8000", email="alice@example.com", password="…") as tf:
        task = tf.submit("long_computation", {"duration": 5})
        done = tf.wait(task["id"], timeout=60, on_progress=lambda t: print(t["progress"]))

Every error the API answers is raised as a TaskFlowError subclass that carries the API's error
code, message and fields (`{"error": {"code", "message", "fields"}}`, docs/api.md#errors).
"""

from __future__ import annotations

import builtins
import mimetypes
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx

__all__ = [
    "FINAL_STATUSES",
    "AuthenticationError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "NotFound",
    "RateLimited",
    "ServerError",
    "TaskFlowError",
    "Timeout",
    "ValidationError",
    "error_from_response",
]

USER_AGENT = "taskflow-client/0.1"
DEFAULT_TIMEOUT_SECONDS = 30.0
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

Task = dict[str, Any]
FileInfo = dict[str, Any]
Schedule = dict[str, Any]
# The JSON body of a request, or the query of a list request.
Params = builtins.list[tuple[str, str]]


# --- Errors ------------------------------------------------------------------------------------


class TaskFlowError(Exception):
    """An error the API answered (or a failure to get an answer at all).

    `status` is the HTTP status (None when no answer came), `code` the API's machine-readable
    code (e.g. `task_not_found`), `message` its text for humans, `fields` the input fields to blame
    ({} when none is), and `body` the whole `error` object, extra keys included (a 409 about a
    task's state has `status`, `unknown_task_type` has `valid_types`).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        fields: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields: dict[str, Any] = dict(fields or {})
        self.body: dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"


class ValidationError(TaskFlowError):
    """400 (and 413, 415): the request was refused as invalid; see `fields`."""


class AuthenticationError(TaskFlowError):
    """401 or 403: no valid credentials (log in again), or not allowed."""


class NotFound(TaskFlowError):
    """404: no such task or file among yours (`task_not_found`, `file_not_found`), or path."""


class Conflict(TaskFlowError):
    """409: the task's state does not allow it (`task_not_cancellable`, `task_not_retryable`, …)."""

    @property
    def task_status(self) -> str | None:
        """The task's status at the time, when the API named it."""
        value = self.body.get("status")
        return value if isinstance(value, str) else None


class RateLimited(TaskFlowError):
    """429: too many requests; try again after `retry_after` seconds (None if not said)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(TaskFlowError):
    """5xx: the server failed (a bug, or a proxy in front of it that got no answer)."""


class ConnectionFailed(TaskFlowError):
    """No answer: the server could not be reached, or the connection broke or timed out."""


class Timeout(TaskFlowError):
    """`Client.wait` gave up before the task finished; `task` is the task as last seen."""

    def __init__(self, message: str, *, task: Task, **kwargs: Any) -> None:
        super().__init__(message, code="wait_timeout", **kwargs)
        self.task = task


def _retry_after(response: httpx.Response, error: Mapping[str, Any]) -> float | None:
    value = error.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    header = response.headers.get("Retry-After")
    if not header:
        return None
    try:
        return float(header)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> TaskFlowError:
    """The typed error for an error answer: its class from the HTTP status, its code, message and
    fields from the API's error shape (or made up from the status, for an answer not in it, such
    as a proxy's HTML page)."""
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message") or response.reason_phrase)
        fields = error.get("fields") if isinstance(error.get("fields"), dict) else {}
    else:
        error = {}
        code = f"http_{status}"
        text = " ".join(response.text.split())[:200] if response.content else ""
        message = f"{response.reason_phrase or 'HTTP error'}" + (f": {text}" if text else "")
        fields = {}
    kwargs: dict[str, Any] = {"status": status, "code": code, "fields": fields, "body": error}
    if status == 429:
        return RateLimited(message, retry_after=_retry_after(response, error), **kwargs)
    cls: type[TaskFlowError]
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status in (400, 413, 415, 422):
        cls = ValidationError
    elif status >= 500:
        cls = ServerError
    else:
        cls = TaskFlowError
    return cls(message, **kwargs)


# --- Helpers -----------------------------------------------------------------------------------


def _segment(value: object) -> str:
    """An id as one path segment (a '/' or '..' in it cannot reach another endpoint)."""
    return quote(str(value), safe="")


def _as_time(value: datetime | str) -> str:
    """RFC 3339. A naive datetime is taken as local time."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.isoformat()
    return value


def _filename_from(response: httpx.Response) -> str | None:
    """The file name of a Content-Disposition header, as a bare name (no directory)."""
    header = response.headers.get("Content-Disposition", "")
    encoded = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", header)
    if encoded:
        name = unquote(encoded.group(2).strip().strip('"'), encoding=encoded.group(1) or "utf-8")
    else:
        plain = re.search(r'filename\s*=\s*"((?:[^"\\]|\\.)*)"|filename\s*=\s*([^;]+)', header)
        if not plain:
            return None
        name = (plain.group(1) or plain.group(2) or "").replace('\\"', '"').strip()
    name = Path(name.replace("\\", "/")).name
    return name if name not in ("", ".", "..") else None


# --- The client --------------------------------------------------------------------------------


class Client:
    """A TaskFlow API client.

    Give it an access token, a refresh token, or both (`Client(url, token, refresh_token=…)`), or
    an email and a password to log in with (`Client(url, email=…, password=…)`). With a refresh
    token, an access token that has expired is refreshed once, transparently, and the request
    repeated; `on_tokens(access, refresh)` is called with the new tokens (refresh tokens rotate:
    the old one stops working, so keep the new one).

    Methods return the API's JSON as dicts (docs/api.md describes the fields) and raise
    TaskFlowError subclasses. Usable as a context manager; one instance may be shared by threads.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        refresh_token: str | None = None,
        email: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        on_tokens: Callable[[str, str | None], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.access_token = token
        self.refresh_token = refresh_token
        self.on_tokens = on_tokens
        self._lock = threading.RLock()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=transport,
        )
        if email is not None or password is not None:
            if email is None or password is None:
                self.close()
                raise ValueError("Give both email and password, or neither.")
            try:
                self.login(email, password)
            except BaseException:
                self.close()
                raise

    # -- plumbing

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connection_failed(self, exc: httpx.TransportError) -> ConnectionFailed:
        if isinstance(exc, httpx.TimeoutException):
            message = f"No answer from {self.base_url} in time ({type(exc).__name__})."
        else:
            message = f"Could not talk to {self.base_url}: {exc or type(exc).__name__}."
        return ConnectionFailed(message, code="connection_failed")

    def _send(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        stream: bool = False,
        body: Callable[[ExitStack], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call. With `auth`, the access token goes along; a 401 with a refresh token at
        hand refreshes it once and repeats the call. `body(stack)` builds the request's content
        for each try (an upload reopens its file). An error answer is raised as a TaskFlowError."""
        extra_headers = dict(kwargs.pop("headers", None) or {})
        refreshed = False
        if auth and self.access_token is None and self.refresh_token is not None:
            self.refresh()
            refreshed = True
        while True:
            sent_token = self.access_token if auth else None
            headers = dict(extra_headers)
            if sent_token:
                headers["Authorization"] = f"Bearer {sent_token}"
            try:
                with ExitStack() as stack:
                    content = body(stack) if body is not None else {}
                    request = self._http.build_request(
                        method, path, headers=headers, **kwargs, **content
                    )
                    response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise self._connection_failed(exc) from exc
            if (
                response.status_code == 401
                and auth
                and not refreshed
                and self.refresh_token is not None
            ):
                response.close()
                with self._lock:
                    if self.access_token == sent_token:  # not refreshed by another thread meanwhile
                        self.refresh()
                refreshed = True
                continue
            if response.is_error:
                try:
                    if stream:
                        response.read()
                except httpx.TransportError as exc:
                    raise self._connection_failed(exc) from exc
                finally:
                    response.close()
                raise error_from_response(response)
            return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code in (204, 205) or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(
                f"The answer to {method} {path} is not JSON.",
                status=response.status_code,
                code="invalid_response",
            ) from exc

    def _pages(self, path: str, params: Params) -> Iterator[dict[str, Any]]:
        """The items of a cursor-paginated list: the first page now (a bad filter raises at once),
        the next ones as the iteration reaches them."""
        page = self._json("GET", path, params=params)

        def items(page: dict[str, Any]) -> Iterator[dict[str, Any]]:
            while True:
                yield from page["results"]
                link = page.get("next")
                if not link:
                    return
                # The server's link carries the cursor; its host may be one only the server knows
                # (behind a proxy), so the query is sent to our own base URL.
                query = parse_qsl(urlsplit(link).query, keep_blank_values=True)
                page = self._json("GET", path, params=query)

        return items(page)

    def _tokens_changed(self) -> None:
        if self.on_tokens is not None and self.access_token is not None:
            self.on_tokens(self.access_token, self.refresh_token)

    # -- accounts

    def login(self, email: str, password: str) -> dict[str, str]:
        """Log in: keeps the access and refresh tokens (and returns them)."""
        tokens: dict[str, str] = self._json(
            "POST", "/api/login", auth=False, json={"email": email, "password": password}
        )
        with self._lock:
            self.access_token = tokens["access"]
            self.refresh_token = tokens.get("refresh")
            self._tokens_changed()
        return tokens

    def refresh(self) -> str:
        """Trade the refresh token for a new access token (and, as refresh tokens rotate, a new
        refresh token); returns the access token."""
        with self._lock:
            if self.refresh_token is None:
                raise AuthenticationError(
                    "No refresh token: log in again.", code="not_authenticated"
                )
            tokens = self._json(
                "POST", "/api/token/refresh", auth=False, json={"refresh": self.refresh_token}
            )
            self.access_token = str(tokens["access"])
            self.refresh_token = tokens.get("refresh") or self.refresh_token
            self._tokens_changed()
            return self.access_token

    def logout(self) -> None:
        """End the session: the refresh token is revoked on the server, and both tokens dropped."""
        with self._lock:
            if self.refresh_token is not None:
                self._json("POST", "/api/logout", auth=False, json={"refresh": self.refresh_token})
            self.access_token = self.refresh_token = None

    def change_password(self, current: str, new: str) -> dict[str, str]:
        """Set a new password (`POST /api/password`). Every session of the user ends, on every
        device, this client's tokens too: the new pair the server answers is kept (and returned,
        and handed to `on_tokens`), so this client stays logged in. A wrong `current` raises
        ValidationError `wrong_password`, a weak `new` `weak_password`; both leave the tokens."""
        tokens: dict[str, str] = self._json(
            "POST", "/api/password", json={"current_password": current, "new_password": new}
        )
        with self._lock:
            self.access_token = tokens["access"]
            self.refresh_token = tokens.get("refresh")
            self._tokens_changed()
        return tokens

    def logout_all(self) -> None:
        """End every session of the user, on every device, this one included (`POST
        /api/logout/all`): all refresh tokens are revoked and all access tokens refused. Both
        tokens are dropped here; log in again to go on."""
        with self._lock:
            self._json("POST", "/api/logout/all", json={})
            self.access_token = self.refresh_token = None

    def me(self) -> dict[str, Any]:
        """The logged-in user: id, email, is_staff, date_joined."""
        user: dict[str, Any] = self._json("GET", "/api/me")
        return user

    # -- tasks

    def task_types(self) -> builtins.list[dict[str, Any]]:
        """The registered task types, with their payload's JSON Schema."""
        types: builtins.list[dict[str, Any]] = self._json("GET", "/api/task-types")
        return types

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        run_at: datetime | str | None = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create a task. `run_at` (a future time) postpones it. With an `idempotency_key`, a
        repeat of the same request returns the first task instead of a second one."""
        body: dict[str, Any] = {"type": type, "payload": dict(payload or {})}
        if run_at is not None:
            body["run_at"] = _as_time(run_at)
        if max_retries is not None:
            body["max_retries"] = max_retries
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        task: Task = self._json("POST", "/api/tasks", json=body, headers=headers)
        return task

    def get(self, task_id: str) -> Task:
        """The task, with its `attempts` and status `history`."""
        task: Task = self._json("GET", f"/api/tasks/{_segment(task_id)}")
        return task

    def result(self, task_id: str) -> dict[str, Any]:
        """The short polling view: task_id, status, result, error, progress and times."""
        found: dict[str, Any] = self._json("GET", f"/api/tasks/{_segment(task_id)}/result")
        return found

    def cancel(self, task_id: str) -> Task:
        """Cancel a waiting task at once, or ask a running one to stop (`cancel_requested`)."""
        task: Task = self._json("POST", f"/api/tasks/{_segment(task_id)}/cancel")
        return task

    def retry(self, task_id: str) -> Task:
        """Queue a failed or cancelled task again."""
        task: Task = self._json("POST", f"/api/tasks/{_segment(task_id)}/retry")
        return task

    def delete(self, task_id: str) -> None:
        """Delete a finished task, with its attempts and history."""
        self._json("DELETE", f"/api/tasks/{_segment(task_id)}")

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.25,
        max_interval: float = 5.0,
        backoff: float = 1.5,
        on_progress: Callable[[Task], None] | None = None,
    ) -> Task:
        """Poll the task until it is `succeeded`, `failed` or `cancelled`, and return it (a failed
        task is returned, not raised: look at its `status` and `error`).

        Polls every `poll_interval` seconds while something moves, and backs off (times
        `backoff`, up to `max_interval`) while nothing does. `on_progress(task)` is called on the
        first poll and whenever the status, progress or progress message changes. After
        `timeout` seconds (None: no limit) raises Timeout, whose `task` is the task as last seen.
        A 429 on the way is waited out (within the timeout).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll_interval
        seen: tuple[Any, ...] | None = None
        task: Task | None = None
        while True:
            pause = interval
            try:
                task = self.get(task_id)
            except RateLimited as exc:
                pause = max(interval, exc.retry_after or max_interval)
            else:
                state = (task.get("status"), task.get("progress"), task.get("progress_message"))
                if state != seen:
                    seen = state
                    interval = poll_interval  # it moves: look again soon
                    if on_progress is not None:
                        on_progress(task)
                else:
                    interval = min(max_interval, interval * backoff)
                if task.get("status") in FINAL_STATUSES:
                    return task
                pause = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    last = task or {"id": str(task_id)}
                    raise Timeout(
                        f"Task {task_id} is still {last.get('status', 'unknown')} after "
                        f"{timeout:g}s.",
                        task=last,
                    )
                pause = min(pause, left)
            time.sleep(pause)

    def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        type: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dead_lettered: bool | None = None,
        page_size: int | None = None,
    ) -> Iterator[Task]:
        """Your tasks, newest first, as an iterator that follows the cursor pages as it goes.

        `status` is one status or several; `created_after` is inclusive, `created_before` not.
        List items leave out `payload` and `result` (get() has them). An invalid filter raises
        ValidationError here, not later in the iteration.
        """
        params: Params = []
        statuses = [status] if isinstance(status, str) else builtins.list(status or [])
        params += [("status", value) for value in statuses]
        if type is not None:
            params.append(("type", type))
        if created_after is not None:
            params.append(("created_after", _as_time(created_after)))
        if created_before is not None:
            params.append(("created_before", _as_time(created_before)))
        if dead_lettered is not None:
            params.append(("dead_lettered", "true" if dead_lettered else "false"))
        if page_size is not None:
            params.append(("page_size", str(page_size)))
        return self._pages("/api/tasks", params)

    # -- schedules (docs/api.md#schedules)

    def create_schedule(
        self,
        name: str,
        type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        every_seconds: int | None = None,
        timezone: str | None = None,
        enabled: bool = True,
    ) -> Schedule:
        """A recurring schedule: give `cron` (5 fields, read in `timezone`, default UTC) or
        `every_seconds`. Each firing creates a task of `type` with `payload`."""
        body: dict[str, Any] = {"name": name, "type": type, "payload": dict(payload or {})}
        if cron is not None:
            body["cron"] = cron
        if every_seconds is not None:
            body["every_seconds"] = every_seconds
        if timezone is not None:
            body["timezone"] = timezone
        if not enabled:
            body["enabled"] = False
        schedule: Schedule = self._json("POST", "/api/schedules", json=body)
        return schedule

    def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule, with next_run_at and last_run_at, last_task_id, last_error."""
        schedule: Schedule = self._json("GET", f"/api/schedules/{_segment(schedule_id)}")
        return schedule

    def list_schedules(self, *, page_size: int | None = None) -> Iterator[Schedule]:
        """Your schedules, newest first (an iterator over the cursor pages, like list())."""
        params: Params = [("page_size", str(page_size))] if page_size is not None else []
        return self._pages("/api/schedules", params)

    def update_schedule(self, schedule_id: str, **changes: Any) -> Schedule:
        """Change a schedule: any of name, type, payload, cron, every_seconds, timezone,
        enabled. A change of its timing (or enabled) computes next_run_at again from now."""
        schedule: Schedule = self._json(
            "PATCH", f"/api/schedules/{_segment(schedule_id)}", json=changes
        )
        return schedule

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete a schedule; the tasks it created stay."""
        self._json("DELETE", f"/api/schedules/{_segment(schedule_id)}")

    def run_schedule(self, schedule_id: str, *, idempotency_key: str | None = None) -> Task:
        """Create the schedule's task now, once (next_run_at does not change): the task. With an
        `idempotency_key`, a repeat returns the first task instead of a second one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        task: Task = self._json(
            "POST", f"/api/schedules/{_segment(schedule_id)}/run", headers=headers
        )
        return task

    # -- files

    def upload(
        self,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        name: str | None = None,
        *,
        content_type: str | None = None,
    ) -> FileInfo:
        """Upload a file: a path (a `str` is a path), bytes, or a binary file object. `name` is
        the name it gets (default: the path's or file object's name; "file" for bytes)."""
        if isinstance(source, bytes | bytearray | memoryview):
            default_name = "file"
        elif isinstance(source, str | os.PathLike):
            default_name = Path(source).name
        else:
            default_name = Path(str(getattr(source, "name", "file"))).name or "file"
        filename = name or default_name
        kind = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        start = None
        if not isinstance(source, bytes | bytearray | memoryview | str | os.PathLike):
            seekable = getattr(source, "seekable", None)
            start = source.tell() if seekable is not None and seekable() else None

        def body(stack: ExitStack) -> dict[str, Any]:
            content: bytes | IO[bytes]
            if isinstance(source, bytes | bytearray | memoryview):
                content = bytes(source)
            elif isinstance(source, str | os.PathLike):
                content = stack.enter_context(open(source, "rb"))  # noqa: SIM115
            else:
                if start is not None:
                    source.seek(start)  # a repeat (after a token refresh) sends it all again
                content = source
            form = {"name": name} if name else {}
            return {"files": {"file": (filename, content, kind)}, "data": form}

        created: FileInfo = self._json("POST", "/api/files", body=body)
        return created

    def get_file(self, file_id: str) -> FileInfo:
        """A file's metadata: name, size, content_type, sha256, created_at, source_task."""
        found: FileInfo = self._json("GET", f"/api/files/{_segment(file_id)}")
        return found

    def list_files(
        self,
        *,
        name: str | None = None,
        source_task: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[FileInfo]:
        """Your files, newest first (an iterator over the cursor pages, like list())."""
        params: Params = []
        if name is not None:
            params.append(("name", name))
        if source_task is not None:
            params.append(("source_task", str(source_task)))
        if page_size is not None:
            params.append(("page_size", str(page_size)))
        return self._pages("/api/files", params)

    def delete_file(self, file_id: str) -> None:
        self._json("DELETE", f"/api/files/{_segment(file_id)}")

    def download_to(self, file_id: str, out: IO[bytes]) -> tuple[int, str | None]:
        """Stream a file's content into the binary file object `out`; returns the bytes written
        and the file's name as the server gives it."""
        response = self._send("GET", f"/api/files/{_segment(file_id)}/download", stream=True)
        written = 0
        try:
            for chunk in response.iter_bytes(64 * 1024):
                out.write(chunk)
                written += len(chunk)
        except httpx.TransportError as exc:
            raise self._connection_failed(exc) from exc
        finally:
            response.close()
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != written:
            raise ConnectionFailed(
                f"Download of {file_id} ended after {written} of {expected} bytes.",
                code="incomplete_download",
            )
        return written, _filename_from(response)

    def download(self, file_id: str, to_path: str | os.PathLike[str] = ".") -> Path:
        """Download a file to `to_path`, streaming; returns the path written. If `to_path` is a
        directory, the file keeps the name the server gives it. The file appears complete or not
        at all (written next to it under a temporary name, then renamed)."""
        target = Path(to_path)
        directory = target if target.is_dir() else target.parent
        # Created as open() creates files (0666 less the umask), under a name nobody else uses.
        partial = directory / f".taskflow-download-{uuid.uuid4().hex}"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as out:
                _, server_name = self.download_to(file_id, out)
            if target.is_dir():
                target = target / (server_name or str(file_id))
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target
