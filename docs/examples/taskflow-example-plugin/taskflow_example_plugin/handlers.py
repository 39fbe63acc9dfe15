"""`word_count`: the words of a text (given, or one of the owner's files), and the most common.

Written with the public SDK only (taskflow.sdk), as any third-party task type would be.
"""

import json
import re
from collections import Counter
from typing import Any

from rest_framework import serializers

from taskflow.sdk import FileRefField, TaskContext, TaskQueue, handler

BATCH = 10_000  # words counted between two progress reports (and cancel checks)
WORD = re.compile(r"\w+(?:'\w+)?")


class WordCountPayload(serializers.Serializer):
    """Give `text` or `file` (one of your files, as text)."""

    text = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, max_length=200_000
    )
    file = FileRefField(required=False, help_text="A file id from /api/files (UTF-8 text).")
    top = serializers.IntegerField(
        min_value=1, max_value=100, default=10, help_text="How many of the most common words."
    )
    save_report = serializers.BooleanField(
        default=False, help_text="Also save the result as a JSON file among your files."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("text" in attrs) == ("file" in attrs):
            raise serializers.ValidationError("Give exactly one of text and file.")
        return attrs


@handler(
    "word_count",
    payload=WordCountPayload,
    queue=TaskQueue.DEFAULT,
    max_retries=2,
    time_limit_seconds=120,
    description="Counts the words of a text or of one of your files, and the most common ones.",
)
def word_count(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    if "file" in payload:
        with ctx.open_file(payload["file"]) as handle:
            text = handle.read().decode("utf-8", errors="replace")
    else:
        text = payload["text"]
    words = WORD.findall(text.lower())
    counts: Counter[str] = Counter()
    for start in range(0, len(words), BATCH):
        ctx.raise_if_cancelled()
        counts.update(words[start : start + BATCH])
        ctx.progress(100 * (start + BATCH) / len(words), f"{min(start + BATCH, len(words))} words")
    result: dict[str, Any] = {
        "words": len(words),
        "distinct": len(counts),
        "top": [[word, n] for word, n in counts.most_common(payload["top"])],
    }
    if payload["save_report"]:
        report = json.dumps(result, indent=2).encode()
        saved = ctx.save_file("word-count.json", report, "application/json", key="report")
        result["report_file"] = str(saved.id)
    ctx.logger.info("counted %d words (%d distinct)", len(words), len(counts))
    return result
