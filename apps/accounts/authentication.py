"""JWT authentication that accepts `Authorization: Bearer <token>` and the bare token.

Seed 002's README sends the token as `Authorization: <token>`; both forms work here.

The user a token names is read from the cache (Redis) rather than PostgreSQL: a `SELECT` of the
user on every request was 18% of `POST /api/tasks` in `make bench` (docs/benchmarks.md). The
cached entry is the user's row without its password hash, for AUTH_USER_CACHE_SECONDS. Saving or
deleting a user (the admin, a service, `user.save()`, a cascade) drops the entry at once and again
after the commit, so a deactivated or deleted user's token is refused on the next request as
before; a request that read the row before the change committed does not cache it again (the
user's generation, below). Only a write that bypasses the model's signals (`QuerySet.update()`,
raw SQL) waits up to AUTH_USER_CACHE_SECONDS; and with Redis away every request reads PostgreSQL
again (Redis is not asked for a while after it failed to answer: the rate limits' breaker). The
cached user is read in the same round trip to Redis as the per-user rate count
(apps.core.throttling); a miss costs two more (the generation, then the row cached if current).

A verified access token is kept in the process (by its exact bytes) until it expires, so that a
client's next requests skip decoding and verifying it again (an access token has no revocation
list: only its expiry and the user's row decide, and both are checked on every request). The row
decides by `is_active` and `token_generation`: a token issued before the user's password last
changed, before a deactivation or before a logout everywhere (POST /api/logout/all), carries an
older generation and is refused (at no cost: the cached row carries it).
"""

import logging
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken, Token
from rest_framework_simplejwt.utils import aware_utcnow, datetime_from_epoch

from apps.accounts.models import User
from apps.core.throttling import UserRateThrottle, breaker

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


_NOT_READ: Any = object()

# The claim with the user's token generation at issue (User.token_generation). A refresh token
# gets it at login; the access tokens and the rotated refresh tokens made from it copy it.
TOKEN_GENERATION_CLAIM = "gen"  # noqa: S105 (a claim name, not a secret)


class GenerationRefreshToken(RefreshToken):
    """The login's refresh token, with the user's token generation in it."""

    @classmethod
    def for_user(cls, user: Any) -> "GenerationRefreshToken":
        # simplejwt's BlacklistMixin.for_user writes the token's row from the token as it is:
        # the claim must be in before, so this is Token.for_user, the claim, then that row.
        token = Token.for_user.__func__(cls, user)  # type: ignore[attr-defined]
        token[TOKEN_GENERATION_CLAIM] = user.token_generation
        OutstandingToken.objects.create(
            user=user,
            jti=token[jwt_settings.JTI_CLAIM],
            token=str(token),
            created_at=token.current_time,
            expires_at=datetime_from_epoch(token["exp"]),
        )
        return token


# A user's generation: a counter in Redis that forget_user raises before it drops the cached row.
# A request that missed the cache reads the generation before it reads the user from PostgreSQL,
# and caches the row only if the generation is still the same (checked and set in one Lua script):
# a row read before a change committed, and written after the change dropped the entry, would
# otherwise be cached again for AUTH_USER_CACHE_SECONDS (a deactivated user let in).
GENERATION_SECONDS = 24 * 3600  # kept far longer than a request takes between its two reads

# KEYS[1]: the cached row's key, KEYS[2]: the generation's. ARGV: the generation read before the
# database, the row (encoded by the cache), its time to live in seconds. 1 if cached, else 0.
_CACHE_IF_CURRENT = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def _generation_key(user_id: Any) -> str:
    return f"auth:user-generation:{user_id}"


def _redis(client: Any) -> Any:
    """django-redis' raw Redis client under the cache's `client`; None for another cache."""
    get_client = getattr(client, "get_client", None)
    return get_client(write=True) if get_client is not None else None


def cached_user(user_id: Any, *, cached: Any = _NOT_READ) -> User | None:
    """The user with this id (None if there is none), from the cache when it has it. `cached`:
    the cache's value for the user, already read (UserRateThrottle.count_ahead)."""
    ttl = settings.AUTH_USER_CACHE_SECONDS
    client = _cache_client() if ttl > 0 else None
    generation: Any = None
    values: Any = None
    if client is not None:
        try:
            values = cached
            if values is _NOT_READ:  # the row and the generation, in one round trip
                values, generation = _read(client, user_id)
            hit = isinstance(values, tuple) and len(values) == len(_CACHED_FIELDS)
            if not hit and generation is None:  # a miss in the throttle's pipeline (row only)
                generation = _read_generation(client, user_id)
        except Exception as exc:  # Redis away: PostgreSQL answers, and Redis is left alone
            logger.debug("Cached user lookup failed: %s", exc)
            breaker.trip()
            client = None
            values = None
    # Outside the try: only Redis' failures trip the breaker.
    if isinstance(values, tuple) and len(values) == len(_CACHED_FIELDS):
        return User.from_db(DEFAULT_DB_ALIAS, list(_CACHED_FIELDS), list(values))
    user = User.objects.filter(pk=user_id).defer("password").first()
    if user is not None and client is not None:
        try:
            row = tuple(getattr(user, name) for name in _CACHED_FIELDS)
            _cache_if_current(client, user_id, generation, row, ttl)
        except Exception as exc:
            logger.debug("Caching a user failed: %s", exc)
            breaker.trip()
    return user


def _read(client: Any, user_id: Any) -> tuple[Any, Any]:
    """(the cached row or None, the user's generation)."""
    key, generation_key = _cache_key(user_id), _generation_key(user_id)
    redis = _redis(client)
    if redis is None:
        found = client.get_many([key, generation_key])
        return found.get(key), found.get(generation_key, 0)
    make_key = caches["default"].make_key
    value, generation = redis.mget([make_key(key), make_key(generation_key)])
    return (None if value is None else client.decode(value)), generation or b"0"


def _read_generation(client: Any, user_id: Any) -> Any:
    redis = _redis(client)
    if redis is None:
        return client.get(_generation_key(user_id), 0)
    return redis.get(caches["default"].make_key(_generation_key(user_id))) or b"0"


def _cache_if_current(client: Any, user_id: Any, generation: Any, row: tuple, ttl: int) -> None:
    """Cache `row` unless the user's generation changed since it was `generation`."""
    key, generation_key = _cache_key(user_id), _generation_key(user_id)
    redis = _redis(client)
    if redis is None:  # another cache: the same check, though not atomic with the set
        if client.get(generation_key, 0) == generation:
            client.set(key, row, ttl)
        return
    make_key = caches["default"].make_key
    redis.register_script(_CACHE_IF_CURRENT)(  # EVALSHA (EVAL the first time)
        keys=[make_key(key), make_key(generation_key)],
        args=[generation, client.encode(row), ttl],
    )


def forget_user(user_id: Any) -> None:
    """Drop the cached row now and after the current transaction commits, raising the user's
    generation each time: a request that read the old row meanwhile does not cache it again."""
    _forget(user_id)
    transaction.on_commit(lambda: _forget(user_id))


def _forget(user_id: Any) -> None:
    cache = caches["default"]
    key, generation_key = _cache_key(user_id), _generation_key(user_id)
    try:
        redis = _redis(getattr(cache, "client", None))
        if redis is None:
            cache.add(generation_key, 0, GENERATION_SECONDS)
            cache.incr(generation_key)
            cache.delete(key)
            return
        pipe = redis.pipeline(transaction=True)  # one round trip; the generation first
        pipe.incr(cache.make_key(generation_key))
        pipe.expire(cache.make_key(generation_key), GENERATION_SECONDS)
        pipe.delete(cache.make_key(key))
        pipe.execute()
    except Exception as exc:  # Redis away: the entry, if any, expires within its time to live
        logger.warning("Could not drop the cached user %s: %s", user_id, exc)


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
        # simplejwt's authenticate, with the request at hand for get_user.
        raw_token = self.get_raw_token(header)
        if raw_token is None:
            return None
        validated_token = self.get_validated_token(raw_token)
        try:
            return self._get_user(validated_token, request), validated_token
        except AuthenticationFailed:
            UserRateThrottle.uncount_ahead(request)  # refused: the throttles never see it
            raise

    def get_validated_token(self, raw_token: bytes) -> Token:
        # A token verified before, still unexpired, is not decoded and verified again: that was
        # 6% of a create's CPU, for the same token on every request of a client. Only the exact
        # bytes whose signature was verified match; an expired one is dropped and decoded again,
        # which gives simplejwt's own error.
        token = _verified_tokens.get(raw_token)
        if token is not None:
            try:
                token.check_exp(current_time=aware_utcnow())
            except TokenError:
                _verified_tokens.pop(raw_token, None)
            else:
                return token
        token = super().get_validated_token(raw_token)
        if len(_verified_tokens) >= VERIFIED_TOKENS_KEPT:
            _verified_tokens.clear()  # a bound, not an LRU: clients keep a token for minutes
        _verified_tokens[raw_token] = token
        return token

    def get_user(self, validated_token: Token) -> Any:
        return self._get_user(validated_token, None)

    def _get_user(self, validated_token: Token, request: Request | None) -> Any:
        user = self._get_active_user(validated_token, request)
        if validated_token.get(TOKEN_GENERATION_CLAIM, 0) != user.token_generation:
            raise AuthenticationFailed(
                "Token was issued before the password changed, the account was deactivated or "
                "every session was ended: log in again.",
                code="token_not_valid",
            )
        return user

    def _get_active_user(self, validated_token: Token, request: Request | None) -> Any:
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
            cached = _NOT_READ
            if request is not None and settings.AUTH_USER_CACHE_SECONDS > 0:
                # The user rate limit's count and the cached user: one round trip to Redis.
                counted, value = UserRateThrottle.count_ahead(
                    request, user_id, also_get=_cache_key(user_id)
                )
                cached = value if counted else _NOT_READ
            user = cached_user(user_id, cached=cached)
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


# Verified access tokens by their bytes (BearerOrBareJWTAuthentication.get_validated_token), per
# process. Dropped when the JWT settings change (tests; a key rotation restarts the processes).
VERIFIED_TOKENS_KEPT = 1024
_verified_tokens: dict[bytes, Token] = {}


@receiver(setting_changed, dispatch_uid="accounts.forget_verified_tokens")
def _forget_verified_tokens(setting: str, **kwargs: Any) -> None:
    if setting in ("SIMPLE_JWT", "SECRET_KEY"):
        _verified_tokens.clear()
