"""JWT authentication that accepts `Authorization: Bearer <token>` and the bare token.

Seed 002's README sends the token as `Authorization: <token>`; both forms work here.
"""

from typing import Any

from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication


class BearerOrBareJWTAuthentication(JWTAuthentication):
    def get_raw_token(self, header: bytes) -> bytes | None:
        parts = header.split()
        if len(parts) == 1:
            return parts[0]
        return super().get_raw_token(header)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'

    def authenticate(self, request: Request) -> Any:
        header = self.get_header(request)
        if header is None:
            return None
        # A session-style "Basic ..." header is someone else's business.
        if header.split()[:1] == [b"Basic"]:
            return None
        return super().authenticate(request)
