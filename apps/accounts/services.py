"""Account writes."""

from typing import Any

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.accounts.authentication import GenerationRefreshToken, forget_user
from apps.accounts.models import User
from apps.core.exceptions import ApplicationError


@transaction.atomic
def user_register(*, email: str, password: str) -> User:
    email = User.objects.normalize_email(email).lower()
    # Checked after lowercasing, as the address is stored: some characters grow when lowercased
    # ("İ" is two), so an address the input's max_length passed can be too long for the column.
    max_length = User._meta.get_field("email").max_length or 254
    if len(email) > max_length:
        message = f"Ensure this field has no more than {max_length} characters (in lower case)."
        raise ApplicationError(
            f"Invalid input: email: {message}",
            code="validation_error",
            fields={"email": [message]},
        )
    if User.objects.filter(email__iexact=email).exists():
        raise ApplicationError(
            "A user with this email already exists.",
            code="email_taken",
            fields={"email": ["A user with this email already exists."]},
        )
    try:
        password_validation.validate_password(password, user=User(email=email))
    except DjangoValidationError as exc:
        raise ApplicationError(
            "The password is too weak.",
            code="weak_password",
            fields={"password": list(exc.messages)},
        ) from exc
    try:
        with transaction.atomic():
            return User.objects.create_user(email=email, password=password)
    except IntegrityError as exc:  # a concurrent registration won the race
        raise ApplicationError(
            "A user with this email already exists.",
            code="email_taken",
            fields={"email": ["A user with this email already exists."]},
        ) from exc


@transaction.atomic
def user_password_change(*, user: User, current_password: str, new_password: str) -> dict[str, str]:
    """Set the user's new password, ending every session of the user (apps.accounts.signals), and
    return a new `{"refresh", "access"}` pair for the caller, of the generation the change raised.

    The user's row is locked from the check of the current password until the new pair's row is
    committed: a login or a refresh under way finishes first (and its token is blacklisted with
    the others), one that comes later sees the new password and generation, and a second change
    waits, then checks its current password against this one's new password."""
    user_lock(user_id=user.pk)
    # Read again under the lock, with the hash: the request's user is the cached row, without it.
    locked = User.objects.filter(pk=user.pk, is_active=True).first()
    if locked is None:  # deleted or deactivated since the request's token was checked
        raise ApplicationError(
            "The account is gone or inactive: log in again.",
            code="user_inactive",
            status_code=401,
        )
    if not locked.check_password(current_password):
        raise ApplicationError(
            "The current password is wrong.",
            code="wrong_password",
            fields={"current_password": ["The current password is wrong."]},
        )
    try:
        password_validation.validate_password(new_password, user=locked)
    except DjangoValidationError as exc:
        raise ApplicationError(
            "The password is too weak.",
            code="weak_password",
            fields={"new_password": list(exc.messages)},
        ) from exc
    locked.set_password(new_password)
    # Through the model: its signals blacklist every refresh token and raise the generation
    # (user_tokens_revoke), which ends every access token issued before, the caller's included.
    locked.save(update_fields=["password"])
    locked.refresh_from_db(fields=["token_generation"])  # the raised one, written by an UPDATE
    refresh = GenerationRefreshToken.for_user(locked)
    return {"refresh": str(refresh), "access": str(refresh.access_token)}


def user_lock(*, user_id: Any) -> None:
    """Lock the user's row until the caller's transaction ends: what a token refresh and the
    revocation of the user's refresh tokens both take first, so that neither misses the other's
    token. FOR NO KEY UPDATE, the lock of an UPDATE of the user; not FOR UPDATE, which would also
    wait for the user's task creates (their foreign key's lock)."""
    locked = User.objects.select_for_update(no_key=True).filter(pk=user_id).order_by()
    list(locked.values_list("pk", flat=True))


def user_lock_by_email(*, email: str) -> None:
    """user_lock for the user a login names (normalised as the login's look-up does); nothing if
    there is none."""
    normalised = User.objects.normalize_email(email).lower()
    locked = User.objects.select_for_update(no_key=True).filter(email=normalised).order_by()
    list(locked.values_list("pk", flat=True))


@transaction.atomic
def user_tokens_revoke(*, user_id: int) -> int:
    """End every session of the user: blacklist each refresh token still live (none refreshes
    again), and raise the user's token generation, so that every access token issued before is
    refused (checked on every request: apps.accounts.authentication). Called when the user's
    password changes or the user is deactivated (apps.accounts.signals), and by a logout
    everywhere (POST /api/logout/all). Returns how many refresh tokens were live.

    The user's row is locked first, as a refresh and a login lock it (apps.accounts.api): one
    under way commits its new token before the tokens are read here, and a later one finds its
    token blacklisted. Within the transaction of the save that changed the user, the lock is held
    already (by its UPDATE)."""
    user_lock(user_id=user_id)
    live = OutstandingToken.objects.filter(
        user_id=user_id, expires_at__gt=timezone.now(), blacklistedtoken__isnull=True
    ).order_by()
    blacklisted = BlacklistedToken.objects.bulk_create(
        [BlacklistedToken(token_id=pk) for pk in live.values_list("pk", flat=True)],
        ignore_conflicts=True,  # one a concurrent logout or refresh blacklisted meanwhile
    )
    # An update, not a save (this runs in the save's signal). The cached user is dropped again
    # once it commits: a request that cached the row before that would let old tokens in.
    User.objects.filter(pk=user_id).update(token_generation=F("token_generation") + 1)
    forget_user(user_id)
    return len(blacklisted)
