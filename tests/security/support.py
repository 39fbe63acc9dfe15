"""Helpers for the attacker's-eye tests: the error shape, forged tokens, and the URL map."""

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from apps.accounts.models import User

PASSWORD = "correct-horse-battery"


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's own algorithm and format, with few iterations (tests only)."""

    iterations = 1


def assert_error(response: Any, status: int, code: str, fields: tuple[str, ...] = ()) -> dict:
    """`response` is our error shape, with this status and code (and these fields named)."""
    assert response.status_code == status, (response.status_code, response.content)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "fields"} <= set(error), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    for field in fields:
        assert field in error["fields"], error
    return error


# --- Tokens ------------------------------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def access_claims(user_id: Any, **overrides: Any) -> dict[str, Any]:
    now = timezone.now()
    return {
        "token_type": "access",
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "iat": int(now.timestamp()),
        "jti": uuid.uuid4().hex,
        "user_id": str(user_id),
        **overrides,
    }


def sign(claims: dict[str, Any], key: str | None = None) -> str:
    return jwt.encode(claims, key or settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS256")


def expired_token(user: User) -> str:
    past = int((timezone.now() - timedelta(hours=1)).timestamp())
    return sign(access_claims(user.id, exp=past, iat=past - 60))


def wrong_signature_token(user: User) -> str:
    return sign(access_claims(user.id), key="an-attackers-own-key-long-enough-for-hs256-0123")


def alg_none_token(user: User) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(access_claims(user.id))}."


# --- The URL map -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    params: tuple[str, ...]
    view: type[APIView]
    methods: tuple[str, ...]

    def path(self, **values: str) -> str:
        return reverse(self.name, kwargs={p: values[p] for p in self.params})

    @property
    def public(self) -> bool:
        """Open without logging in (no permission, or AllowAny)."""
        permissions = list(self.view.permission_classes)
        return not permissions or any(p is AllowAny for p in permissions)

    def __str__(self) -> str:
        return self.name


def _patterns(patterns: list[Any], namespace: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            found.extend(_patterns(entry.url_patterns, inner))
        elif isinstance(entry, URLPattern) and entry.name:
            found.append((f"{namespace}{entry.name}", entry))
    return found


def api_routes() -> list[Route]:
    """Every DRF view under /api/ (and the probes), with its path parameters and its methods,
    from the URL resolver: an endpoint added later is covered without a change here."""
    routes = []
    seen = set()
    for name, pattern in _patterns(get_resolver().url_patterns):
        view = getattr(pattern.callback, "cls", None)
        if view is None or not issubclass(view, APIView) or name in seen:
            continue
        seen.add(name)
        regex = getattr(pattern.pattern, "regex", None)
        params = tuple(regex.groupindex) if regex is not None else ()
        methods = tuple(
            m
            for m in ("get", "post", "put", "patch", "delete")
            if m in view.http_method_names and hasattr(view, m)
        )
        routes.append(Route(name=name, params=params, view=view, methods=methods))
    return routes
