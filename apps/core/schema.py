"""OpenAPI: every operation documents our error shape (apps.core.exceptions), so that clients (and
the schema tests) know what a 4xx or 5xx answer holds."""

from typing import Any

ERROR_COMPONENT = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error answer: a machine-readable code, a message, and the fields at "
    "fault (field name -> messages).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "example": "validation_error"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": True},
                "retry_after": {
                    "type": "integer",
                    "description": "With 429 from a rate limit: seconds to wait (as Retry-After).",
                },
            },
            "required": ["code", "message", "fields"],
            "additionalProperties": True,
        }
    },
    "required": ["error"],
}
_ERROR_RESPONSE = {
    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}
}


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook: the Error component, and 4XX and 5XX answers in its
    shape on every operation (unless the operation documents them itself)."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.setdefault(
                "4XX", {"description": "The request was refused.", **_ERROR_RESPONSE}
            )
            responses.setdefault(
                "5XX", {"description": "The server failed (a bug).", **_ERROR_RESPONSE}
            )
    return result
