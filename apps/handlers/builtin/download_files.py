"""`download_files` (seed 002): 1..20 http(s) URLs streamed into the owner's files.

Every request and redirect goes through the SSRF guard (apps.handlers.net). Each file is capped at
DOWNLOAD_MAX_FILE_BYTES, all of them together at DOWNLOAD_MAX_TOTAL_BYTES, and each download at
DOWNLOAD_TIMEOUT_SECONDS. Every file stored is linked to the task under the URL's position, so a
retry (after a 5xx, a timeout, a refused connection) downloads only the URLs that failed.
"""

import tempfile
import time
from email.message import Message
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote

import httpx
from django.conf import settings
from rest_framework import serializers

from apps.files.services import file_summary
from apps.handlers import net
from taskflow.sdk import (
    HandlerError,
    HttpUrlField,
    PermanentError,
    RetryableError,
    TaskContext,
    TaskQueue,
    handler,
)

MAX_URLS = 20
# The attempt's own limit; the time left bounds each download, and what is left over when it runs
# out is retried (only that).
TIME_LIMIT_SECONDS = 1500
TIME_MARGIN_SECONDS = 30
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
# Statuses worth another try: timeout, too early, too many requests, and every 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


class DownloadFilesPayload(serializers.Serializer):
    urls = serializers.ListField(
        child=HttpUrlField(),
        min_length=1,
        max_length=MAX_URLS,
        help_text=f"1..{MAX_URLS} http(s) URLs.",
        error_messages={
            "empty": "Give at least 1 URL.",
            "min_length": "Give at least 1 URL.",
            "max_length": f"At most {MAX_URLS} URLs.",
        },
    )

    def validate_urls(self, urls: list[str]) -> list[str]:
        seen: set[str] = set()
        for url in urls:
            if url in seen:
                raise serializers.ValidationError(f"{url} is listed twice; give each URL once.")
            seen.add(url)
        return urls


class HttpStatusError(HandlerError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason}".strip())
        self.status = status
        self.transient = status >= 500 or status in TRANSIENT_STATUSES


def file_name(guarded: net.GuardedResponse) -> str:
    """From Content-Disposition, else the last segment of the final URL's path."""
    disposition = guarded.response.headers.get("content-disposition", "")
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        name = message.get_filename()
        if name:
            return name
    segment = PurePosixPath(unquote(httpx.URL(guarded.url).path)).name
    return segment or httpx.URL(guarded.url).host or "download"


def _download(
    ctx: TaskContext, url: str, *, key: str, max_bytes: int, total_left: int, deadline: float
) -> Any:
    timeout = max(1.0, min(settings.DOWNLOAD_TIMEOUT_SECONDS, deadline - time.monotonic()))
    limit = min(max_bytes, total_left)
    with net.guarded_request("GET", url, timeout=timeout) as guarded:
        response = guarded.response
        if response.status_code >= 400:
            raise HttpStatusError(response.status_code, response.reason_phrase)
        per_file_deadline = min(deadline, time.monotonic() + settings.DOWNLOAD_TIMEOUT_SECONDS)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            try:
                for chunk in net.read_body(guarded, max_bytes=limit, deadline=per_file_deadline):
                    spool.write(chunk)
                    ctx.raise_if_cancelled()
            except net.BodyTooLarge as exc:
                if limit < max_bytes:
                    raise net.BodyTooLarge(
                        f"{url}: the downloads together passed the total limit of "
                        f"{settings.DOWNLOAD_MAX_TOTAL_BYTES} bytes."
                    ) from exc
                raise
            return ctx.save_file(
                file_name(guarded), spool, response.headers.get("content-type", ""), key=key
            )


@handler(
    "download_files",
    payload=DownloadFilesPayload,
    queue=TaskQueue.IO,
    time_limit_seconds=TIME_LIMIT_SECONDS,
    retry_on=(),
    description="Downloads 1..20 http(s) URLs into your files (size and time limited, SSRF "
    "guarded); a retry downloads only the URLs that failed.",
)
def download_files(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = payload["urls"]
    deadline = time.monotonic() + TIME_LIMIT_SECONDS - TIME_MARGIN_SECONDS
    outcomes: list[dict[str, Any] | None] = [None] * len(urls)
    total = 0
    for index, url in enumerate(urls):
        earlier = ctx.saved_file(f"url:{index}")
        if earlier is not None:
            total += earlier.size
            outcomes[index] = {"url": url, "status": "downloaded", "file": file_summary(earlier)}

    transient: list[str] = []
    for index, url in enumerate(urls):
        if outcomes[index] is not None:
            continue
        ctx.progress(100 * index / len(urls), f"downloading {index + 1} of {len(urls)}")
        outcome: dict[str, Any] = {"url": url, "status": "failed"}
        total_left = settings.DOWNLOAD_MAX_TOTAL_BYTES - total
        try:
            if total_left <= 0:
                raise PermanentError(
                    f"not downloaded: the total limit of {settings.DOWNLOAD_MAX_TOTAL_BYTES} "
                    "bytes is used up"
                )
            if time.monotonic() >= deadline:
                raise RetryableError("not downloaded: this attempt's time is used up")
            saved = _download(
                ctx,
                url,
                key=f"url:{index}",
                max_bytes=settings.DOWNLOAD_MAX_FILE_BYTES,
                total_left=total_left,
                deadline=deadline,
            )
        except HttpStatusError as exc:
            outcome.update(error=str(exc), http_status=exc.status, retryable=exc.transient)
        except (PermanentError, RetryableError) as exc:
            outcome.update(error=str(exc), retryable=isinstance(exc, RetryableError))
        else:
            total += saved.size
            outcome.update(status="downloaded", file=file_summary(saved))
        if outcome.get("retryable"):
            transient.append(f"{url}: {outcome['error']}")
        outcomes[index] = outcome

    done = [o for o in outcomes if o is not None]
    failed = [o for o in done if o["status"] == "failed"]
    if transient:
        raise RetryableError(
            f"{len(transient)} of {len(urls)} URL(s) failed for now; a retry downloads only the "
            f"ones not yet downloaded: {'; '.join(transient)}"
        )
    if len(failed) == len(urls):
        raise PermanentError(
            "No URL could be downloaded: " + "; ".join(f"{o['url']}: {o['error']}" for o in failed)
        )
    ctx.progress(100, "done")
    return {
        "downloaded": len(done) - len(failed),
        "failed": len(failed),
        "total_bytes": total,
        "files": [o["file"] for o in done if o["status"] == "downloaded"],
        "urls": done,
    }
