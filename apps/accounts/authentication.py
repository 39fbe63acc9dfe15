"""JWT authentication that accepts `Authorization: Bearer <token>` and the bare token.

Seed 002's README sends the token as `Authorization: <token>`; both forms work here.

The user a token names is read from the cache (Redis) rather than PostgreSQL: a `SELECT` of the
user on every request was 18% of `POST /api/tasks` in `make bench` (docs/benchmarks.md). The
cached entry is the user's row without its password hash, for AUTH_USER_CACHE_SECONDS. Saving or
deleting a user (the admin, a service, `user.save()`, a cascade) drops the entry at once and again
after the commit, so a deactivated or deleted user's token is refused on the next request as
before. Only a write that bypasses the model's signals (`QuerySet.update()`, raw SQL) waits up to
AUTH_USER_CACHE_SECONDS; and with Redis away every request reads PostgreSQL again (Redis is not
asked for a while after it failed to answer: the rate limits' breaker).
"""

import logging
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import Token

from apps.accounts.models import User
from apps.core.throttling import breaker

logger = logging.getLogger(__name__)

# Every concrete column but the password hash (deferred: read from PostgreSQL if ever used).
# The field names are part of the key, so a schema change never reads an entry of another shape.
_CACHED_FIELDS = tuple(f.attname for f in User._meta.concrete_fields if f.attname != "password")


def _cache_key(user_id: Any) -> str:
    return f"auth:user:{'.'.join(_CACHED_FIELDS)}:{user_id}"


def _cache_client() -> Any:
    """The cache's own client, whose errors are not swallowed (django-redis' IGNORE_EXCEPTIONS
    would turn a Redis that does not answer into a miss after every socket timeout); None while
    Redis is known to be away (the rate limits' breaker, apps.core.throttling)."""
    if breaker.is_open():
        return None
    cache = caches["default"]
    client = getattr(cache, "client", None)
    return client if hasattr(client, "get") and hasattr(client, "set") else cache


def cached_user(user_id: Any) -> User | None:
    """The user with this id (None if there is none), from the cache when it has it."""
    ttl = settings.AUTH_USER_CACHE_SECONDS
    key = _cache_key(user_id)
    client = _cache_client() if ttl > 0 else None
    if client is not None:
        try:
            values = client.get(key)
        except Exception as exc:  # Redis away: PostgreSQL answers, and Redis is left alone a while
            logger.debug("Cached user lookup failed: %s", exc)
            breaker.trip()
            client = None
        else:
            if isinstance(values, tuple) and len(values) == len(_CACHED_FIELDS):
                return User.from_db(DEFAULT_DB_ALIAS, list(_CACHED_FIELDS), list(values))
    user = User.objects.filter(pk=user_id).defer("password").first()
    if user is not None and client is not None:
        try:
            client.set(key, tuple(getattr(user, name) for name in _CACHED_FIELDS), ttl)
        except Exception as exc:
            logger.debug("Caching a user failed: %s", exc)
            breaker.trip()
    return user


def forget_user(user_id: Any) -> None:
    """Drop the cached row now and after the current transaction commits (a request that read the
    old row meanwhile may have cached it again)."""
    key = _cache_key(user_id)
    caches["default"].delete(key)
    transaction.on_commit(lambda: caches["default"].delete(key))


@receiver(post_save, sender=User, dispatch_uid="accounts.forget_saved_user")
@receiver(post_delete, sender=User, dispatch_uid="accounts.forget_deleted_user")
def _forget_changed_user(sender: type[User], instance: User, **kwargs: Any) -> None:
    forget_user(instance.pk)


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
        # simplejwt's own get_user, with the row from the cache (its password-hash check, off
        # here, needs the hash: then the row is read as simplejwt reads it).
        if jwt_settings.CHECK_REVOKE_TOKEN:
            return self._get_user_from_database(validated_token)
        try:
            user_id = validated_token[jwt_settings.USER_ID_CLAIM]
        except KeyError as exc:
            raise InvalidToken("Token contained no recognizable user identification") from exc
        # A signed token whose user_id the id column cannot hold ("abc", a list) is a 401 too,
        # not the ValueError of the lookup (a 500).
        try:
            user = cached_user(user_id)
        except (ValueError, TypeError, OverflowError, DjangoValidationError) as exc:
            raise AuthenticationFailed("User not found", code="user_not_found") from exc
        if user is None:
            raise AuthenticationFailed("User not found", code="user_not_found")
        if jwt_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        return user

    def _get_user_from_database(self, validated_token: Token) -> Any:
        try:
            return super().get_user(validated_token)
        except (ValueError, TypeError, OverflowError, DjangoValidationError) as exc:
            raise AuthenticationFailed("User not found", code="user_not_found") from exc
