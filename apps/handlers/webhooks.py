"""Webhook task types: created in the admin with no deploy; a worker POSTs each task to a URL.

The request: `POST <url>` with the JSON body `{"id", "type", "payload", "attempt"}` and the
header `X-TaskFlow-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
(apps.handlers.signing), through the SSRF guard (apps.handlers.net), no redirects followed. The
answer decides the attempt:

- 2xx with a JSON body: success, the body is the task's result (204: success, result null);
  2xx with anything else: a permanent failure (the receiver is broken, retrying will not fix it).
- 408, 425, 429 and 5xx, timeouts and connection errors: retried with the type's backoff, or after
  the Retry-After the receiver sent (429, 503).
- Any other 4xx: a permanent failure, with the status and the start of the body.
"""

import email.utils
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jsonschema import FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.validators import validator_for
from rest_framework import serializers

from apps.core.parsers import json_problem
from apps.core.text import ascii_digits
from apps.handlers import net
from apps.handlers.context import TaskContext
from apps.handlers.errors import PermanentError, RetryableError
from apps.handlers.registry import TaskTypeSpec
from apps.handlers.signing import SIGNATURE_HEADER, sign
from apps.tasks.queues import TaskQueue

if TYPE_CHECKING:
    from apps.handlers.models import TaskType

DEFAULT_TIMEOUT_SECONDS = 30.0
# An attempt's time limit, unless staff set one: the request's timeout and this margin.
TIME_LIMIT_MARGIN_SECONDS = 30
MAX_RESPONSE_BYTES = 1024 * 1024
EXCERPT_BYTES = 500
RETRYABLE_4XX = frozenset({408, 425, 429})
MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_SCHEMA_ERRORS = 50
MAX_ERROR_MESSAGE = 300


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: str
    timeout_seconds: float


# --- The payload, checked against the type's JSON Schema when a task is created ----------------


def check_json_schema(schema: Any) -> None:
    """Raise SchemaError if `schema` is not a JSON Schema (of its declared draft, or 2020-12)."""
    if not isinstance(schema, dict):
        raise SchemaError("A JSON Schema must be a JSON object.")
    validator_for(schema).check_schema(schema)


def _bounded_multiple_of(check: Callable[..., Iterator[ValidationError]]) -> Callable[..., Any]:
    """jsonschema's multipleOf (draft 3: divisibleBy), where a number too large for the float
    division a float divisor needs is an error on the field: jsonschema divides before its own
    OverflowError guard, so 10**400 against `multipleOf: 0.5` raised OverflowError (a 500)."""

    def multiple_of(validator: Any, divisor: Any, instance: Any, schema: Any) -> Any:
        try:
            yield from check(validator, divisor, instance, schema)
        except OverflowError:
            yield ValidationError(
                f"Too large a number to check against multipleOf {divisor} "
                f"(the limit is about ±{sys.float_info.max:.1e})."
            )

    return multiple_of


@functools.cache
def _validator_class(cls: Any) -> Any:
    keywords = {
        keyword: _bounded_multiple_of(cls.VALIDATORS[keyword])
        for keyword in ("multipleOf", "divisibleBy")
        if keyword in cls.VALIDATORS
    }
    return validators.extend(cls, keywords) if keywords else cls


def schema_errors(schema: dict[str, Any], payload: Any) -> dict[str, list[str]]:
    """{"field.path": [messages]} for what in `payload` breaks `schema`; "non_field_errors" for
    the payload as a whole. A missing required property is named itself."""
    cls = _validator_class(validator_for(schema))
    validator = cls(schema, format_checker=FormatChecker())
    errors: dict[str, list[str]] = {}

    def add(path: list[str], message: str) -> None:
        errors.setdefault(".".join(path) or "non_field_errors", []).append(
            message[:MAX_ERROR_MESSAGE]
        )

    found = sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.path])
    for error in found[:MAX_SCHEMA_ERRORS]:
        path = [str(part) for part in error.absolute_path]
        instance = error.instance
        if error.validator == "required" and isinstance(instance, dict):
            for name in error.validator_value:
                if name not in instance:
                    add([*path, str(name)], "This field is required.")
        elif error.validator == "additionalProperties" and isinstance(instance, dict):
            known = set(error.schema.get("properties", {}))
            for name in instance:
                if name not in known:
                    add([*path, str(name)], "Unknown field (the schema allows no other fields).")
        else:
            add(path, error.message)
    return errors


def json_schema_payload(schema: dict[str, Any] | None) -> type[serializers.Serializer]:
    """A payload serializer class that checks a JSON object against `schema` (if any)."""

    class WebhookPayload(serializers.Serializer):
        json_schema = schema

        def to_internal_value(self, data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
            if schema:
                errors = schema_errors(schema, data)
                if errors:
                    raise serializers.ValidationError(errors)
            return data

    return WebhookPayload


# --- Running a task: the signed POST and what its answer means ----------------------------------


def request_body(ctx: TaskContext, payload: dict[str, Any]) -> bytes:
    document = {
        "id": ctx.task_id,
        "type": ctx.task_type,
        "payload": payload,
        "attempt": ctx.attempt,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if ascii_digits(value):
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(tz=UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def _read(guarded: net.GuardedResponse, *, limit: int, deadline: float) -> bytes:
    body = bytearray()
    for chunk in net.read_body(guarded, max_bytes=limit, deadline=deadline):
        body.extend(chunk)
    return bytes(body)


def _excerpt(guarded: net.GuardedResponse, deadline: float) -> str:
    """The start of an error answer's body (the rest is left unread)."""
    head = bytearray()
    try:
        for chunk in net.read_body(guarded, max_bytes=2**62, deadline=deadline):
            head.extend(chunk)
            if len(head) >= EXCERPT_BYTES:
                break
    except net.NetworkError:
        pass  # the status is what matters; the body was a courtesy
    text = bytes(head[:EXCERPT_BYTES]).decode("utf-8", errors="replace").strip()
    return f": {text}" if text else ""


def _parse_result(data: bytes, status: int) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        result = json.loads(data, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        start = data[:EXCERPT_BYTES].decode("utf-8", errors="replace")
        raise PermanentError(
            f"The webhook answered {status}, but its body is not JSON ({exc}): {start!r}. "
            "A webhook must answer 2xx with a JSON body (the task's result)."
        ) from exc
    problem = json_problem(result, root="result")
    if problem is not None:
        raise PermanentError(f"The webhook's JSON answer cannot be stored: {problem}")
    return result


def run_webhook(target: WebhookTarget, ctx: TaskContext, payload: dict[str, Any]) -> Any:
    body = request_body(ctx, payload)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        SIGNATURE_HEADER: sign(target.secret, body),
        "X-TaskFlow-Task-Id": ctx.task_id,
        "X-TaskFlow-Attempt": str(ctx.attempt),
    }
    deadline = time.monotonic() + target.timeout_seconds
    ctx.logger.info("POST %s (%d bytes)", target.url, len(body))
    try:
        with net.guarded_request(
            "POST",
            target.url,
            headers=headers,
            content=body,
            timeout=target.timeout_seconds,
            max_redirects=0,
        ) as guarded:
            response = guarded.response
            status = response.status_code
            if 200 <= status < 300:
                if status == 204:
                    return None
                try:
                    data = _read(guarded, limit=MAX_RESPONSE_BYTES, deadline=deadline)
                except net.BodyTooLarge as exc:
                    raise PermanentError(
                        f"The webhook's answer is larger than {MAX_RESPONSE_BYTES} bytes."
                    ) from exc
                return _parse_result(data, status)
            said = f"The webhook answered {status} {response.reason_phrase}".rstrip()
            said += _excerpt(guarded, deadline)
            if status >= 500 or status in RETRYABLE_4XX:
                wait = (
                    retry_after_seconds(response.headers.get("retry-after"))
                    if status in {429, 503}
                    else None
                )
                raise RetryableError(said, retry_after=wait)
            raise PermanentError(said)
    except net.TooManyRedirects as exc:
        raise PermanentError(
            "The webhook answered with a redirect. Redirects are not followed (the signed "
            "request goes only where the type points): set the type's URL to the final one."
        ) from exc


def webhook_spec_for(row: "TaskType") -> TaskTypeSpec:
    timeout = row.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
    target = WebhookTarget(url=row.url, secret=row.signing_secret, timeout_seconds=timeout)
    return TaskTypeSpec(
        name=row.name,
        run=functools.partial(run_webhook, target),
        payload_serializer=json_schema_payload(row.payload_json_schema),
        queue=TaskQueue(row.queue) if row.queue else TaskQueue.IO,
        max_retries=row.default_max_retries,
        time_limit_seconds=row.time_limit_seconds or math.ceil(timeout) + TIME_LIMIT_MARGIN_SECONDS,
        retry_on=(),
        description=row.description or "A webhook handler (the task is POSTed to its service).",
        backoff_base_seconds=row.backoff_base_seconds,
        backoff_cap_seconds=row.backoff_cap_seconds,
        max_retries_limit=row.max_retries_limit,
        concurrency_limit=row.concurrency_limit,
        kind="webhook",
        enabled=row.enabled,
    )
