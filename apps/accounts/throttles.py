"""Brute-force limits on logging in, registering and changing a password (rates:
LOGIN_RATE_PER_ACCOUNT, LOGIN_RATE_PER_ADDRESS, REGISTER_RATE_PER_ADDRESS,
PASSWORD_CHANGE_RATE_PER_USER). Every attempt counts, right or wrong: counting only failures would
let concurrent guesses all pass before the first failure is counted."""

from typing import Any

from rest_framework.request import Request

from apps.accounts.models import User
from apps.core.throttling import AddressRateThrottle, RateThrottle, key_part


class LoginAccountThrottle(RateThrottle):
    """Login attempts on one account (the email, as login normalizes it), from anywhere."""

    scope = "login_account"

    def ident(self, request: Request, view: Any) -> str | None:
        data = request.data
        email = data.get("email") if hasattr(data, "get") else None
        if not isinstance(email, str) or not email.strip():
            return None  # a 400 from the serializer, not an attempt on an account
        return key_part(User.objects.normalize_email(email.strip()).lower())


class LoginAddressThrottle(AddressRateThrottle):
    """Login attempts from one client address, on any account."""

    scope = "login_address"


class RegisterAddressThrottle(AddressRateThrottle):
    scope = "register_address"


class PasswordChangeUserThrottle(RateThrottle):
    """Password changes of one user, with any of the user's access tokens: a stolen access token
    must not guess the current password faster than a login could."""

    scope = "password_change"

    def ident(self, request: Request, view: Any) -> str | None:
        user = request.user
        if user is None or not user.is_authenticated:
            return None  # a 401 first (the permission runs before the throttles)
        data = request.data
        current = data.get("current_password") if hasattr(data, "get") else None
        if not isinstance(current, str):
            return None  # a 400 from the serializer, not a guess
        return str(user.pk)
