"""Brute-force limits on logging in and registering (rates: LOGIN_RATE_PER_ACCOUNT,
LOGIN_RATE_PER_ADDRESS, REGISTER_RATE_PER_ADDRESS). Every attempt counts, right or wrong: counting
only failures would let concurrent guesses all pass before the first failure is counted."""

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
