"""Account writes."""

from typing import Any

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from apps.accounts.authentication import forget_user
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
    password changes or the user is deactivated (apps.accounts.signals). Returns how many refresh
    tokens were live.

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
