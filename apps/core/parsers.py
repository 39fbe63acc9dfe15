"""JSON in: only what PostgreSQL can store and Python can walk.

Valid JSON that still broke requests with a 500:
- "\\u0000" in a string or a key: PostgreSQL's jsonb (and text) cannot hold NUL;
- a lone surrogate ("\\ud800"): not encodable as UTF-8, so the database driver fails on it;
- thousands of nested arrays: json.loads runs out of stack (RecursionError);
- a number too large for a float (1e999): json.loads makes it Infinity, which jsonb refuses.
These are 400s now, naming where in the document the problem is.

And input that was silently changed:
- a key given twice in one JSON object, of which json.loads keeps the last value
  ({"payload": {"duration": 5}, "payload": {"duration": 600}} ran 600 s);
- a form body (urlencoded or multipart) with bytes that are not text in its charset: Django
  reads them as U+FFFD (or a whole urlencoded body as Latin-1).
400s too (malformed_request).
"""

import codecs
import math
import re
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import QueryDict
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json

MAX_JSON_DEPTH = 100
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# How much of a duplicated key an error message quotes.
_KEY_QUOTE_CHARS = 100


def json_problem(value: Any, *, root: str = "", max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """What makes a parsed JSON value unstorable (with its path), or None if nothing does.

    Iterative, so that a deep document cannot exhaust the stack here either.
    """
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return f"{path or 'the body'}: {_describe(found.group())} is not allowed in text."
        elif isinstance(item, float) and not math.isfinite(item):
            # From a JSON body only by an overflow (1e999): the parser refuses the NaN and
            # Infinity literals. Other callers may pass any float.
            if math.isnan(item):
                return f"{path or 'the body'}: NaN is not allowed."
            sign = "-" if item < 0 else ""
            return f"{path or 'the body'}: a number out of range (it overflows to {sign}Infinity)."
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return f"{path or 'the body'}: nested more than {max_depth} levels deep."
            entries = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in entries:
                child_path = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
                child_path = child_path.lstrip(".")
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    return f"{path or 'the body'}: a key holds {_describe(key)}, not allowed."
                stack.append((child, child_path, depth + 1))
    return None


def _describe(text: str) -> str:
    return "a NUL character (\\u0000)" if "\x00" in text else "a lone UTF-16 surrogate"


class DuplicateKeyError(ValueError):
    """A JSON object names a key twice (json.load would keep the last value, silently)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.load's object_pairs_hook: the object json.load would make, if no key repeats.

    On the hot path of every JSON request, so cheap: a dict from the pairs (as json.load's own)
    and a length comparison; the duplicate is looked for only when the lengths differ.
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= _KEY_QUOTE_CHARS else key[:_KEY_QUOTE_CHARS] + "..."
                raise DuplicateKeyError(f"duplicate key {shown!r}: give each key once.")
            seen.add(key)
    return obj


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with the unstorable refused as a 400 (malformed_request)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        try:
            decoded = codecs.getreader(encoding)(stream)
            parse_constant = json.strict_constant if self.strict else None
            data = json.load(
                decoded,  # type: ignore[arg-type]
                parse_constant=parse_constant,
                object_pairs_hook=unique_keys,
            )
        except RecursionError as exc:
            raise ParseError(
                f"JSON parse error - nested more than {MAX_JSON_DEPTH} levels deep."
            ) from exc
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        problem = json_problem(data)
        if problem is not None:
            raise ParseError(f"JSON parse error - {problem}")
        return data


class FormParser(parsers.FormParser):
    """DRF's form parser, refusing a body that is not text in its charset (malformed_request).

    Django's QueryDict reads such a body as Latin-1, and a percent-escape that is not text
    (%FF) as U+FFFD: the request went on with other values than were sent.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        try:
            pairs = parse_qsl(
                stream.read().decode(encoding),
                keep_blank_values=True,
                encoding=encoding,
                errors="strict",
                max_num_fields=limit,
            )
        except UnicodeDecodeError as exc:
            raise ParseError(f"Form parse error - the body is not valid {encoding} text.") from exc
        except ValueError as exc:  # parse_qsl's other one: more than max_num_fields fields
            raise TooManyFieldsSent(f"More than {limit} fields.") from exc
        data = QueryDict(mutable=True, encoding=encoding)
        for key, value in pairs:
            data.appendlist(key, value)
        data._mutable = False  # as QueryDict(body) makes it (Django's multipart parser does this)
        return data


# Django's multipart parser decodes each field's value with errors="replace", and offers no other
# way to refuse bytes that are not text: it is given the name of a codec that decodes as the
# request's charset does, but strictly whatever `errors` it is asked for. The UnicodeDecodeError
# ends the parse (Django closes the files received so far).
_STRICT_CODEC_PREFIX = "taskflow_strict_"


def _strict_codec(name: str) -> codecs.CodecInfo | None:
    if not name.startswith(_STRICT_CODEC_PREFIX):
        return None
    charset = codecs.lookup(name.removeprefix(_STRICT_CODEC_PREFIX))

    def decode(data: Any, errors: str = "strict", /) -> tuple[str, int]:
        return charset.decode(data, "strict")

    return codecs.CodecInfo(charset.encode, decode, name=name)


codecs.register(_strict_codec)


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser, refusing a field whose value is not text in the body's charset
    (malformed_request)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        context = dict(parser_context or {})
        encoding = parsers.get_encoding(context)  # type: ignore[attr-defined]
        context["encoding"] = _STRICT_CODEC_PREFIX + encoding
        try:
            return super().parse(stream, media_type, context)
        except UnicodeDecodeError as exc:
            raise ParseError(
                f"Multipart form parse error - a field's value is not valid {encoding} text."
            ) from exc
