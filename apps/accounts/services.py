"""Account writes."""

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError


@transaction.atomic
def user_register(*, email: str, password: str) -> User:
    email = User.objects.normalize_email(email).lower()
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
