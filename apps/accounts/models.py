"""Users log in with their email address; there is no username."""

from collections.abc import Iterator
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> "User":
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> "User":
        # Emails are stored lowercased (create_user), so a login in any case finds its user.
        return self.get(**{self.model.USERNAME_FIELD: self.normalize_email(username).lower()})


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    # Tokens carry the generation they were issued in (claim "gen"; none means 0), and only
    # the current one's are taken: raised when the password changes, the user is deactivated or
    # logs out everywhere (services.user_tokens_revoke), which ends every access token issued
    # before at once.
    token_generation = models.PositiveIntegerField(default=0)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.email

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The row and what its signals do for it in one transaction: a new password and the
        # revocation of the sessions before it (apps.accounts.signals) commit together. Saved in
        # autocommit (`manage.py changepassword`), the password was visible first, and a login
        # in between got tokens that the revocation then ended.
        with transaction.atomic(using=kwargs.get("using")):
            super().save(*args, **kwargs)

    # A browser's session (the admin's, which the API takes too) holds the session auth hash and
    # ends when it no longer matches: Django's is of the password alone, so a logout everywhere
    # (POST /api/logout/all, which raises the token generation) left a stolen session cookie
    # working. Generation 0 keeps Django's own hash (the sessions from before this stay).

    def get_session_auth_hash(self) -> str:
        return self._with_generation(super().get_session_auth_hash(), secret=None)

    def get_session_auth_fallback_hash(self) -> Iterator[str]:
        hashes = super().get_session_auth_fallback_hash()
        for secret, password_hash in zip(settings.SECRET_KEY_FALLBACKS, hashes, strict=True):
            yield self._with_generation(password_hash, secret=secret)

    def _with_generation(self, password_hash: str, *, secret: str | bytes | None) -> str:
        generation = self.token_generation
        if not isinstance(generation, int):  # an expression of a save under way (signals)
            self.refresh_from_db(fields=["token_generation"])
            generation = self.token_generation
        if not generation:
            return password_hash
        return salted_hmac(
            "apps.accounts.models.User.session_auth_hash",
            f"{password_hash}:{generation}",
            secret=secret,
            algorithm="sha256",
        ).hexdigest()
