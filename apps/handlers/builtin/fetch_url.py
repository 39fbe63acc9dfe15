"""`fetch_url` (seed 003's consumer): one HTTP request through the SSRF guard; the result keeps
the status, final URL, timing, size, content type, selected headers and a bounded body excerpt.

Any HTTP status is a result (a 503 is worth knowing); a connection failure or timeout retries; an
address the guard refuses fails at once. Only methods without side effects are offered, so that a
retried fetch cannot repeat one.
"""

import re
import time
from typing import Any

from rest_framework import serializers

from apps.core.api import TextField, json_type_name
from apps.handlers import net
from apps.handlers.fields import is_single_line
from taskflow.sdk import HttpUrlField, NumberField, TaskContext, TaskQueue, handler

METHODS = ("GET", "HEAD", "OPTIONS")
MAX_TIMEOUT_SECONDS = 120
DEFAULT_TIMEOUT_SECONDS = 10
MAX_HEADERS = 20
MAX_BODY_BYTES = 10 * 1024 * 1024  # read (and counted) at most; the rest is left unread
EXCERPT_BYTES = 2048
KEPT_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "last-modified",
    "etag",
    "cache-control",
    "expires",
    "date",
    "server",
    "location",
    "retry-after",
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the client (or meaningless through it); a payload may not set them.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    }
)
_TEXT_TYPES = re.compile(
    r"^(text/|application/([\w.+-]+\+)?(json|xml|javascript|x-www-form-urlencoded))"
)


class MethodField(serializers.ChoiceField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            # Checked before `in self.choices`: a list or an object is unhashable (a 500).
            raise serializers.ValidationError(
                f"{json_type_name(data).capitalize()} is not allowed; use one of "
                f"{', '.join(METHODS)} (a string).",
                code="invalid_choice",
            )
        data = data.upper()
        if data not in self.choices:
            raise serializers.ValidationError(
                f"{data!r} is not allowed; use one of {', '.join(METHODS)} (fetch_url only reads).",
                code="invalid_choice",
            )
        return str(data)


class FetchUrlPayload(serializers.Serializer):
    url = HttpUrlField()
    method = MethodField(choices=METHODS, required=False, default="GET")
    headers = serializers.DictField(
        child=TextField(allow_blank=True, max_length=4096, trim_whitespace=False),
        required=False,
        default=dict,
        help_text=f"Request headers, at most {MAX_HEADERS}.",
    )
    timeout = NumberField(
        required=False,
        positive=True,
        max_value=MAX_TIMEOUT_SECONDS,
        default=DEFAULT_TIMEOUT_SECONDS,
        help_text=f"Seconds, > 0 and at most {MAX_TIMEOUT_SECONDS} (default "
        f"{DEFAULT_TIMEOUT_SECONDS}), for the whole request.",
    )

    def validate_headers(self, headers: dict[str, str]) -> dict[str, str]:
        if len(headers) > MAX_HEADERS:
            raise serializers.ValidationError(f"At most {MAX_HEADERS} headers.")
        errors: dict[str, list[str]] = {}
        for name, value in headers.items():
            if not _TOKEN.match(name):
                errors[name] = ["Not a valid header name."]
            elif name.lower() in FORBIDDEN_HEADERS:
                errors[name] = ["This header is set by TaskFlow and cannot be given."]
            elif not is_single_line(value):
                errors[name] = ["Must be a single line (no line breaks or control characters)."]
            elif not value.isascii():  # httpx sends header values as ASCII
                other = next(char for char in value if not char.isascii())
                errors[name] = [
                    f"Must be ASCII text: {other!r} cannot be sent in a header "
                    "(percent-encode it, for example)."
                ]
        if errors:
            raise serializers.ValidationError(errors)
        return headers


def _excerpt(body: bytes, content_type: str, charset: str | None) -> str | None:
    if content_type and not _TEXT_TYPES.match(content_type.lower()):
        return None
    try:
        return body[:EXCERPT_BYTES].decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return body[:EXCERPT_BYTES].decode("utf-8", errors="replace")


@handler(
    "fetch_url",
    payload=FetchUrlPayload,
    queue=TaskQueue.IO,
    time_limit_seconds=MAX_TIMEOUT_SECONDS + 30,
    retry_on=(),
    description="Requests a URL (GET, HEAD or OPTIONS; SSRF guarded) and records the status, "
    "final URL, time, size, content type, selected headers and a body excerpt.",
)
def fetch_url(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    timeout = float(payload["timeout"])
    deadline = time.monotonic() + timeout
    with net.guarded_request(
        payload["method"], payload["url"], headers=payload["headers"], timeout=timeout
    ) as guarded:
        response = guarded.response
        head = bytearray()
        size = 0
        complete = True
        for chunk in net.read_body(guarded, max_bytes=2**62, deadline=deadline):
            size += len(chunk)
            if len(head) < EXCERPT_BYTES:
                head.extend(chunk[: EXCERPT_BYTES - len(head)])
            if size >= MAX_BODY_BYTES:
                complete = False
                break
        elapsed_ms = round((time.monotonic() - guarded.started) * 1000)
        content_type = response.headers.get("content-type", "")
        return {
            "url": payload["url"],
            "method": payload["method"],
            "final_url": guarded.url,
            "redirects": guarded.redirects,
            "status_code": response.status_code,
            "reason": response.reason_phrase,
            "elapsed_ms": elapsed_ms,
            "size": size,
            "size_complete": complete,
            "content_type": content_type,
            "headers": {k: response.headers[k] for k in KEPT_HEADERS if k in response.headers},
            "body_excerpt": _excerpt(bytes(head), content_type, response.charset_encoding),
            "body_truncated": size > len(head) or not complete,
        }
