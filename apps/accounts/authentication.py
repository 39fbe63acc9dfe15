"""JWT authentication that accepts `Authorization: Bearer <token>` and the bare token.

Seed 002's README sends the token as `Authorization: <token>`; both forms work here.
"""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed
from rest_framework_simplejwt.tokens import Token


class BearerOrBareJWTAuthentication(JWTAuthentication):
    def get_raw_token(self, header: bytes) -> bytes | None:
        parts = header.split()
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2 and parts[0].lower() == b"bearer":  # schemes are case-insensitive
            return parts[1]
        return super().get_raw_token(header)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'

    def authenticate(self, request: Request) -> Any:
        header = self.get_header(request)
        if header is None:
            return None
        # A session-style "Basic ..." header is someone else's business.
        if header.split()[:1] in ([b"Basic"], [b"basic"]):
            return None
        return super().authenticate(request)

    def get_user(self, validated_token: Token) -> Any:
        # A signed token whose user_id the id column cannot hold ("abc", a list) is a 401 too,
        # not the ValueError of the lookup (a 500).
        try:
            return super().get_user(validated_token)
        except (ValueError, TypeError, OverflowError, DjangoValidationError) as exc:
            raise AuthenticationFailed("User not found", code="user_not_found") from exc
